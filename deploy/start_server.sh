#!/usr/bin/env bash
# Vespa's on-start script for a Vast.ai instance (or any machine).
#
#   bash deploy/start_server.sh [worker options...]
#
# 1. settings    check the variables (and Vast's PYWORKER_* aliases)
# 2. virtualenv  create $VESPA_VENV with "python3 -m venv", or reuse it
# 3. install     pip install $VESPA_PACKAGE into it (first boot, or when the spec changed)
# 4. tls         (VESPA_USE_SSL=true) new key + CSR with openssl, the certificate from
#                Vast's signing endpoint, checked, installed atomically
# 5. worker config  the worker parses its options, so a bad setting is reported here
# 6. exec        twistd --nodaemon --pidfile= vespa "$@" in the foreground (or supervisord
#                with VESPA_EXEC=supervisord), so what started this script supervises it
#
# Any failure is reported to the autoscaler (POST <each REPORT_ADDR>/worker_status/ with
# error_msg "Vespa start failed: <step>: <reason>") before exiting non-zero. Logs go to
# stdout. Every variable is listed in deploy/README.md.

set -euo pipefail

STEP="settings"
REPORTED=false
WORK_DIR=""
LAST_COMMAND=""

log() {
    printf '%s [vespa-start] %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"
}

# A JSON string literal, for when no Python can build the report (the only place JSON
# is made without json.dumps): escapes \ and ", turns newlines and tabs into escapes and
# drops the other control characters.
json_string() {
    local s
    s=$(printf '%s' "$1" | tr -d '\000-\010\013\014\016-\037')
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\r'/\\r}
    s=${s//$'\t'/\\t}
    printf '"%s"' "$s"
}

# The /worker_status/ body of protocol section 5.1 for a failed start, every value
# passed through the environment (never argv: MASTER_TOKEN must not show in ps).
status_json() {
    local message=$1 id=${CONTAINER_ID:-0}
    if VESPA_REPORT_MESSAGE=$message VESPA_REPORT_URL=$(public_url) \
        VESPA_REPORT_VERSION=$(report_version) \
        "${VESPA_PYTHON:-python3}" -c '
import json, os
env = os.environ
try:
    worker_id = int(env.get("CONTAINER_ID", "").strip() or 0)
except ValueError:
    worker_id = 0
numbers = ("loadtime", "cur_load", "rej_load", "new_load", "max_perf", "cur_perf",
           "cur_capacity", "max_capacity", "additional_disk_usage", "disk_usage")
report = {"id": worker_id, "mtoken": env.get("MASTER_TOKEN", ""),
          "version": env["VESPA_REPORT_VERSION"], "error_msg": env["VESPA_REPORT_MESSAGE"],
          "url": env["VESPA_REPORT_URL"], "num_requests_working": 0,
          "num_requests_recieved": 0, "working_request_idxs": []}
report.update(dict.fromkeys(numbers, 0.0))
print(json.dumps(report))
' 2>/dev/null; then
        return 0
    fi
    [[ $id =~ ^[0-9]+$ ]] || id=0
    printf '{"id": %s, "mtoken": %s, "version": %s, "error_msg": %s, "url": %s, ' \
        "$((10#$id))" "$(json_string "${MASTER_TOKEN:-}")" "$(json_string "$(report_version)")" \
        "$(json_string "$message")" "$(json_string "$(public_url)")"
    printf '"loadtime": 0.0, "cur_load": 0.0, "rej_load": 0.0, "new_load": 0.0, '
    printf '"max_perf": 0.0, "cur_perf": 0.0, "cur_capacity": 0.0, "max_capacity": 0.0, '
    printf '"num_requests_working": 0, "num_requests_recieved": 0, '
    printf '"additional_disk_usage": 0.0, "disk_usage": 0.0, "working_request_idxs": []}\n'
}

report_version() {
    printf '%s' "${VESPA_VERSION:-${PYWORKER_VERSION:-0}}"
}

# The url the worker advertises (as the worker computes it), or "" when Vast did not
# say where this port is mapped.
public_url() {
    local port=${VESPA_WORKER_PORT:-${PYWORKER_WORKER_PORT:-3000}} scheme=http host
    local external_var="VAST_TCP_PORT_${port}"
    local external=""
    if [[ $port =~ ^[0-9]+$ ]]; then
        external=${!external_var:-}
    fi
    host=${PUBLIC_IPADDR:-}
    if [[ -z $host || -z $external ]]; then
        return 0
    fi
    [[ $host == *:* ]] && host="[$host]"
    [[ ${USE_SSL:-} == true ]] && scheme=https
    printf '%s://%s:%s' "$scheme" "$host" "$external"
}

# Report "Vespa start failed: <step>: <reason>" to every REPORT_ADDR and exit 1.
fail() {
    local message="Vespa start failed: ${STEP}: $1" body addr url
    local -a addresses
    REPORTED=true
    log "ERROR: $message"
    body=$(status_json "$message")
    IFS=',' read -ra addresses <<<"${REPORT_ADDR:-}"
    for addr in "${addresses[@]}"; do
        addr=${addr//[[:space:]]/}
        [[ -n $addr ]] || continue
        url="${addr%/}/worker_status/"
        if printf '%s' "$body" | curl --silent --show-error --fail --output /dev/null \
            --max-time "${VESPA_REPORT_TIMEOUT:-10}" --retry 2 --retry-delay 1 \
            --header 'Content-Type: application/json' --data-binary @- "$url"; then
            log "reported the failure to $url"
        else
            log "could not report the failure to $url"
        fi
    done
    cleanup
    exit 1
}

# Files to remove when the script stops before exec: the work directory, and the new
# key and certificate until they are installed.
CLEANUP=()
cleanup() {
    if ((${#CLEANUP[@]})); then
        rm -rf -- "${CLEANUP[@]}"
        CLEANUP=()
    fi
}

# Anything that fails without going through fail() (a bug, or set -e) is still reported.
on_exit() {
    local status=$?
    trap - EXIT
    if ((status != 0)) && [[ $REPORTED == false ]]; then
        fail "exited with status $status${LAST_COMMAND:+ at: $LAST_COMMAND}"
    fi
    cleanup
}

on_signal() {
    # Stopped on purpose (supervisord, docker stop): not a failure to report.
    REPORTED=true
    log "stopped by SIG$1 during $STEP"
    cleanup
    trap - EXIT
    exit $((128 + $2))
}

trap on_exit EXIT
trap 'LAST_COMMAND=$BASH_COMMAND' ERR
trap 'on_signal TERM 15' TERM
trap 'on_signal INT 2' INT

# The reason to report for a command's output in FILE: its last line that says "error",
# else its last line; at most 300 characters.
reason_in() {
    local line
    line=$(grep -i 'error' -- "$1" | tail -n 1 || true)
    [[ -n $line ]] || line=$(grep -v '^[[:space:]]*$' -- "$1" | tail -n 1 || true)
    line=${line#"${line%%[![:space:]]*}"}
    printf '%s' "${line:0:300}"
}

# run CMD...: run a command with its output in the log; on failure, fail() with the
# reason its output gives.
run() {
    local output="$WORK_DIR/output" reason
    if ! "$@" 2>&1 | tee "$output"; then
        reason=$(reason_in "$output")
        fail "${reason:-$1 failed}"
    fi
}

# bool NAME VAR VALUE: set NAME to true or false as the worker reads VALUE (from VAR);
# an unknown value is an error, not "false".
bool() {
    local value
    value=$(printf '%s' "$3" | tr '[:upper:]' '[:lower:]')
    case $value in
    true | 1 | yes | on) printf -v "$1" true ;;
    false | 0 | no | off) printf -v "$1" false ;;
    *) fail "$2: expected true or false, not '$3'" ;;
    esac
}

# -- 1. settings ------------------------------------------------------------------------

WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/vespa-start.XXXXXX")
CLEANUP+=("$WORK_DIR")

WORKSPACE_DIR=${WORKSPACE_DIR:-/workspace}
# Unset: Vast's autoscaler. Set and empty: no autoscaler (local use; nothing reported).
REPORT_ADDR=${REPORT_ADDR-https://run.vast.ai}
VESPA_WORKER_PORT=${VESPA_WORKER_PORT:-${PYWORKER_WORKER_PORT:-3000}}
BACKEND_URL=${VESPA_BACKEND_URL:-${PYWORKER_BACKEND_URL:-}}
VESPA_PYTHON=${VESPA_PYTHON:-python3}
VESPA_VENV=${VESPA_VENV:-$WORKSPACE_DIR/vespa-env}
VESPA_INSTALL=${VESPA_INSTALL:-auto}
VESPA_EXEC=${VESPA_EXEC:-twistd}
VESPA_TLS_DIR=${VESPA_TLS_DIR:-/etc}
TLS_CERT=${VESPA_TLS_CERT:-${PYWORKER_TLS_CERT:-$VESPA_TLS_DIR/instance.crt}}
TLS_KEY=${VESPA_TLS_KEY:-${PYWORKER_TLS_KEY:-$VESPA_TLS_DIR/instance.key}}
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname -- "$SCRIPT_DIR")
if [[ -z ${VESPA_PACKAGE:-} && -f $REPO_DIR/setup.py ]]; then
    VESPA_PACKAGE=$REPO_DIR
fi

log "Vespa start: workspace $WORKSPACE_DIR, reporting to ${REPORT_ADDR:-(no autoscaler: REPORT_ADDR is empty)}"
bool USE_SSL VESPA_USE_SSL "${VESPA_USE_SSL:-${PYWORKER_USE_SSL:-true}}"
bool CHECK_CONFIG VESPA_CHECK_CONFIG "${VESPA_CHECK_CONFIG:-true}"
SIGN_RETRIES=${VESPA_SIGN_CERT_RETRIES:-3}
[[ $SIGN_RETRIES =~ ^[0-9]+$ ]] ||
    fail "VESPA_SIGN_CERT_RETRIES: not a number: '$SIGN_RETRIES'"
[[ -n $BACKEND_URL ]] ||
    fail "VESPA_BACKEND_URL (or PYWORKER_BACKEND_URL) is not set: the model server's origin, e.g. http://127.0.0.1:8000"
[[ $VESPA_WORKER_PORT =~ ^[0-9]+$ ]] ||
    fail "VESPA_WORKER_PORT: not a port number: '$VESPA_WORKER_PORT'"
if [[ $USE_SSL == true && ! ${CONTAINER_ID:-} =~ ^[0-9]+$ ]]; then
    fail "CONTAINER_ID is not set (or not a number), and it is needed to sign the TLS certificate (or set VESPA_USE_SSL=false)"
fi
case $VESPA_INSTALL in
auto | always | never) ;;
*) fail "VESPA_INSTALL: expected auto, always or never, not '$VESPA_INSTALL'" ;;
esac
case $VESPA_EXEC in
twistd) ;;
supervisord)
    (($# == 0)) || fail "VESPA_EXEC=supervisord takes no worker options (got '$*'): set them as VESPA_* variables"
    ;;
*) fail "VESPA_EXEC: expected twistd or supervisord, not '$VESPA_EXEC'" ;;
esac
if [[ $VESPA_INSTALL != never && -z ${VESPA_PACKAGE:-} ]]; then
    fail "VESPA_PACKAGE is not set and $REPO_DIR is not a Vespa checkout: set it to a pip requirement (e.g. git+https://github.com/ORG/vespa@main) or a directory"
fi
[[ -n ${HF_TOKEN:-} ]] || log "note: HF_TOKEN is not set (the model server may need it)"
# Vast's base images start the official worker themselves when SERVERLESS=true, unless
# SUPERVISOR_SKIP_PYWORKER=true: then two workers would bind the same port. The image reads
# it before this script runs, so the template must set it; exported here as well, for
# anything started below that looks at it.
if [[ ${SERVERLESS:-} == true && ${SUPERVISOR_SKIP_PYWORKER:-} != true ]]; then
    log "warning: SERVERLESS=true without SUPERVISOR_SKIP_PYWORKER=true: a Vast base image also starts the official worker, on port $VESPA_WORKER_PORT too; set SUPERVISOR_SKIP_PYWORKER=true in the template's environment"
fi
export SUPERVISOR_SKIP_PYWORKER=true
mkdir -p -- "$WORKSPACE_DIR" || fail "cannot create WORKSPACE_DIR $WORKSPACE_DIR"

# What the worker reads: the same values, under its own names.
export REPORT_ADDR WORKSPACE_DIR VESPA_WORKER_PORT VESPA_VENV
export VESPA_USE_SSL=$USE_SSL VESPA_TLS_CERT=$TLS_CERT VESPA_TLS_KEY=$TLS_KEY

# -- 2. virtualenv ----------------------------------------------------------------------

STEP="virtualenv"
created=false
if "$VESPA_VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    log "reusing the virtualenv $VESPA_VENV"
else
    # --clear below empties the directory: never one that is not a virtualenv.
    if [[ -d $VESPA_VENV && ! -f $VESPA_VENV/pyvenv.cfg && -n "$(ls -A -- "$VESPA_VENV")" ]]; then
        fail "$VESPA_VENV exists and is not a virtualenv (no pyvenv.cfg); set VESPA_VENV to another directory"
    fi
    command -v "$VESPA_PYTHON" >/dev/null 2>&1 ||
        fail "$VESPA_PYTHON not found (set VESPA_PYTHON to a Python 3.10+)"
    "$VESPA_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
        fail "$VESPA_PYTHON is Python $("$VESPA_PYTHON" -c 'import sys; print(sys.version.split()[0])'); Vespa needs 3.10+ (set VESPA_PYTHON)"
    log "creating the virtualenv $VESPA_VENV with $VESPA_PYTHON"
    # --clear: a virtualenv left half-made by an interrupted first boot is made again.
    run "$VESPA_PYTHON" -m venv --clear "$VESPA_VENV"
    created=true
fi

# -- 3. install -------------------------------------------------------------------------

STEP="install"
marker="$VESPA_VENV/.vespa-package"
spec=${VESPA_PACKAGE:-}
requirements=("$spec")
[[ $VESPA_EXEC == supervisord ]] && requirements+=(supervisor)
install=false
case $VESPA_INSTALL in
always) install=true ;;
auto)
    if [[ $created == true || ! -f $marker || "$(cat -- "$marker")" != "${requirements[*]}" ]]; then
        install=true
    fi
    ;;
esac
if [[ $install == true ]]; then
    read -ra pip_args <<<"${VESPA_PIP_ARGS:-}"
    log "installing ${requirements[*]} into $VESPA_VENV"
    run "$VESPA_VENV/bin/python" -m pip install --no-input --disable-pip-version-check \
        "${pip_args[@]}" "${requirements[@]}"
    printf '%s\n' "${requirements[*]}" >"$marker.tmp" && mv -f -- "$marker.tmp" "$marker"
else
    log "not installing (VESPA_INSTALL=$VESPA_INSTALL; installed: $(cat -- "$marker" 2>/dev/null || echo unknown))"
fi

# -- 4. tls -----------------------------------------------------------------------------

if [[ $USE_SSL == true ]]; then
    STEP="tls key"
    sign_url=${VESPA_SIGN_CERT_URL:-https://console.vast.ai/api/v0/sign_cert/?instance_id=$CONTAINER_ID}
    for path in "$TLS_CERT" "$TLS_KEY"; do
        mkdir -p -- "$(dirname -- "$path")" || fail "cannot create the directory of $path"
    done
    # Made next to their destinations (mode 600), so installing them is an atomic rename.
    new_key=$(mktemp "$(dirname -- "$TLS_KEY")/.instance.key.XXXXXX") ||
        fail "cannot write in $(dirname -- "$TLS_KEY")"
    CLEANUP+=("$new_key")
    new_cert=$(mktemp "$(dirname -- "$TLS_CERT")/.instance.crt.XXXXXX") ||
        fail "cannot write in $(dirname -- "$TLS_CERT")"
    CLEANUP+=("$new_cert")
    csr="$WORK_DIR/instance.csr"
    log "creating a key and a certificate request"
    run openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$new_key" -out "$csr" \
        -subj "/C=US/ST=CA/CN=pyworker.vast.ai/" -addext "subjectAltName=IP:0.0.0.0"

    STEP="tls sign"
    log "getting the certificate signed at ${sign_url%%\?*}"
    # --fail: an HTTP error page is an error, never saved as a certificate.
    if ! curl --fail --silent --show-error --max-time "${VESPA_SIGN_CERT_TIMEOUT:-60}" \
        --retry "$SIGN_RETRIES" --retry-delay 2 --retry-connrefused \
        --header 'Content-Type: application/octet-stream' --data-binary "@$csr" \
        --output "$new_cert" "$sign_url" 2>"$WORK_DIR/curl.err"; then
        cat -- "$WORK_DIR/curl.err"
        fail "$(reason_in "$WORK_DIR/curl.err") (POST ${sign_url})"
    fi

    STEP="tls check"
    first_line=$(grep -v '^[[:space:]]*$' -- "$new_cert" | head -n 1 | tr -d '\r' || true)
    [[ $first_line == "-----BEGIN CERTIFICATE-----" ]] ||
        fail "the signing endpoint did not answer with a PEM certificate (it began: '${first_line:0:60}')"
    openssl x509 -in "$new_cert" -noout 2>"$WORK_DIR/x509.err" ||
        fail "the certificate does not parse: $(reason_in "$WORK_DIR/x509.err")"
    [[ "$(openssl x509 -in "$new_cert" -noout -pubkey)" == "$(openssl pkey -in "$new_key" -pubout)" ]] ||
        fail "the certificate is not for the key just made"
    openssl x509 -in "$new_cert" -noout -checkend 0 >/dev/null ||
        fail "the certificate has expired"

    STEP="tls install"
    if ! { chmod 644 -- "$new_cert" && mv -f -- "$new_key" "$TLS_KEY" &&
        mv -f -- "$new_cert" "$TLS_CERT"; }; then
        fail "cannot install $TLS_KEY and $TLS_CERT"
    fi
    log "installed $TLS_CERT and $TLS_KEY: $(openssl x509 -in "$TLS_CERT" -noout -subject -enddate | tr '\n' ' ')"
fi

# -- 5. worker config -------------------------------------------------------------------

STEP="worker config"
if [[ $CHECK_CONFIG == true ]]; then
    # The worker's own option parsing (command line and environment), so that a bad
    # setting is reported now rather than making twistd exit where nobody reports it.
    config_check='
import sys
from twisted.python import usage
from vespa.worker.tap import Options
try:
    Options().parseOptions(sys.argv[1:])
except usage.UsageError as e:
    print(e)
    sys.exit(1)
'
    run "$VESPA_VENV/bin/python" -c "$config_check" "$@"
fi

# -- 6. exec ----------------------------------------------------------------------------

STEP="exec"
cd -- "$WORKSPACE_DIR" # the benchmark cache (.has_benchmark) lives here across reboots
if [[ $VESPA_EXEC == supervisord ]]; then
    program=${VESPA_SUPERVISORD:-$VESPA_VENV/bin/supervisord}
    conf=${VESPA_SUPERVISORD_CONF:-$SCRIPT_DIR/supervisord.conf}
    [[ -f $conf ]] || fail "no supervisord configuration at $conf (VESPA_SUPERVISORD_CONF)"
    export VESPA_SUPERVISOR_DIR=${VESPA_SUPERVISOR_DIR:-$WORKSPACE_DIR/supervisor}
    export VESPA_LOG_FILE=${VESPA_LOG_FILE:-/dev/stdout}
    export VESPA_LOG_MAXBYTES=${VESPA_LOG_MAXBYTES:-0}
    mkdir -p -- "$VESPA_SUPERVISOR_DIR" || fail "cannot create $VESPA_SUPERVISOR_DIR"
    command=("$program" --nodaemon --configuration "$conf")
else
    program=${VESPA_TWISTD:-$VESPA_VENV/bin/twistd}
    command=("$program" --nodaemon --pidfile= vespa "$@")
fi
# A failed exec would end the script where nothing reports it.
[[ -x $program ]] || fail "$program is not an executable (is Vespa installed in $VESPA_VENV?)"
log "starting the worker: ${command[*]}"
cleanup
trap - EXIT ERR TERM INT
exec "${command[@]}"
