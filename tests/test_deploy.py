"""
``deploy/start_server.sh``, run for real with bash in a temporary workspace.

The Vast services it talks to are stand-ins on 127.0.0.1, in this process: the
autoscaler (:mod:`vespa.testing.autoscaler`, which records every
``/worker_status/`` report) and the certificate-signing endpoint (below: it signs
the CSR with a private CA, or fails as a test asks). Most tests reuse the
virtualenv the tests run in (``VESPA_VENV=sys.prefix``, ``VESPA_INSTALL=never``);
one creates, reuses and reinstalls a virtualenv of its own, offline, with a
small wheel made here.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import zipfile
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.support import shared_key
from vespa.testing.autoscaler import STATUS_FIELDS, Autoscaler, autoscaler_site

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "deploy", "start_server.sh")
CONTAINER_ID = 4242
MASTER_TOKEN = "master-token"


def free_port() -> int:
    """A port nothing listens on now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _CA:
    """A private certificate authority, standing in for Vast's."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Vespa test CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def sign(self, csr_pem: bytes, *, expired: bool = False) -> bytes:
        csr = x509.load_pem_x509_csr(csr_pem)
        now = datetime.datetime.now(datetime.timezone.utc)
        start, days = (now - datetime.timedelta(days=3), 1) if expired else (now, 1)
        cert = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(self.name)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - datetime.timedelta(minutes=5))
            .not_valid_after(start + datetime.timedelta(days=days))
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)


_CA_ONCE: list[_CA] = []


def the_ca() -> _CA:
    if not _CA_ONCE:
        _CA_ONCE.append(_CA())
    return _CA_ONCE[0]


class Signer(Resource):
    """
    The ``sign_cert`` endpoint: ``POST`` a PEM CSR, get the PEM certificate.

    :ivar mode: ``"sign"``, ``"500"``, ``"page"`` (200 with an HTML page),
        ``"expired"``, ``"other-key"`` (a certificate for another key) or
        ``"hang"`` (never answers).
    :ivar requests: ``(query args, content type, body)`` of each request.
    """

    isLeaf = True

    def __init__(self, mode: str = "sign") -> None:
        super().__init__()
        self.mode = mode
        self.requests: list[tuple[dict[bytes, list[bytes]], bytes | None, bytes]] = []
        self.hanging: list[Request] = []
        self.arrived: Deferred[None] = Deferred()

    def render_POST(self, request: Request) -> bytes | int:
        assert request.content is not None
        body = request.content.read()
        self.requests.append((dict(request.args or {}), request.getHeader(b"content-type"), body))
        if not self.arrived.called:
            self.arrived.callback(None)
        if self.mode == "500":
            request.setResponseCode(500)
            return b"<html><body>Internal Server Error</body></html>"
        if self.mode == "page":
            return b"<html><body>Please log in</body></html>\n"
        if self.mode == "hang":
            self.hanging.append(request)
            return NOT_DONE_YET
        if self.mode == "other-key":
            from cryptography.x509 import CertificateSigningRequestBuilder

            key = ec.generate_private_key(ec.SECP256R1())
            other = (
                CertificateSigningRequestBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other")]))
                .sign(key, hashes.SHA256())
            )
            body = other.public_bytes(serialization.Encoding.PEM)
        return the_ca().sign(body, expired=self.mode == "expired")


class ScriptProcess(ProcessProtocol):
    """The script (and, after ``exec``, the worker), its output, its end."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred[int] = Deferred()
        self.status: int | None = None

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        code = getattr(value, "exitCode", None)
        self.status = code if code is not None else -int(getattr(value, "signal", 0) or 0)
        self.ended.callback(self.status)

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")


def make_wheel(directory: str, name: str, version: str) -> str:
    """A pure-Python wheel with one module ``name`` (``VERSION = version``)."""
    dist = f"{name}-{version}"
    files = {
        f"{name}.py": f"VERSION = {version!r}\n",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, text in files.items():
        digest = hashlib.sha256(text.encode()).digest()
        b64 = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        record.append(f"{path},sha256={b64},{len(text.encode())}")
    record.append(f"{dist}.dist-info/RECORD,,")
    files[f"{dist}.dist-info/RECORD"] = "\n".join(record) + "\n"
    wheel = os.path.join(directory, f"{dist}-py3-none-any.whl")
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel


STUB = """#!/bin/sh
# Stands in for twistd or supervisord: records how it was started.
{{
  printf 'argv:'; for a in "$@"; do printf ' [%s]' "$a"; done; echo
  echo "cwd: $(pwd)"
  for v in VESPA_USE_SSL VESPA_TLS_CERT VESPA_TLS_KEY VESPA_WORKER_PORT REPORT_ADDR \\
           WORKSPACE_DIR VESPA_VENV VESPA_SUPERVISOR_DIR VESPA_LOG_FILE VESPA_LOG_MAXBYTES \\
           SUPERVISOR_SKIP_PYWORKER; do
    eval "echo \\"$v=\\${{$v-<unset>}}\\""
  done
}} > {record}
"""


class StartScriptTests(TestCase):
    """The start script: each step, its failures reported, the worker started."""

    timeout = 60

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.workspace = os.path.join(self.root, "workspace")
        self.tls_dir = os.path.join(self.root, "tls")
        self.tmp = os.path.join(self.root, "tmp")
        for d in (self.workspace, self.tmp):
            os.makedirs(d)
        self.autoscaler, self.autoscaler_url = self.start_autoscaler()
        self.signer = Signer()
        self.signer_url = self.listen(Site(self.signer)) + "/api/v0/sign_cert/"
        self.worker_port = free_port()

    def listen(self, site: Site) -> str:
        # Knows its open connections, so that cleanup can wait for them to close.
        factory = WrappingFactory(site)
        port: Any = reactor.listenTCP(0, cast(Any, factory), interface="127.0.0.1")

        async def stop() -> None:
            await maybeDeferred(port.stopListening)
            for protocol in list(factory.protocols):
                protocol.transport.abortConnection()
            await self.until(lambda: not factory.protocols, "connections to close")

        self.addCleanup(stop)
        return f"http://127.0.0.1:{port.getHost().port}"

    def start_autoscaler(self) -> tuple[Autoscaler, str]:
        autoscaler = Autoscaler(reactor, key=shared_key())
        self.addCleanup(autoscaler.close)
        return autoscaler, self.listen(autoscaler_site(autoscaler))

    def env(self, **overrides: str | None) -> dict[str, str]:
        """The script's whole environment: what Vast sets, pointed at the stand-ins."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "TMPDIR": self.tmp,
            "WORKSPACE_DIR": self.workspace,
            "REPORT_ADDR": self.autoscaler_url,
            "CONTAINER_ID": str(CONTAINER_ID),
            "MASTER_TOKEN": MASTER_TOKEN,
            "PUBLIC_IPADDR": "127.0.0.1",
            f"VAST_TCP_PORT_{self.worker_port}": str(self.worker_port),
            "VESPA_WORKER_PORT": str(self.worker_port),
            "VESPA_BACKEND_URL": f"http://127.0.0.1:{free_port()}",
            "VESPA_VENV": sys.prefix,
            "VESPA_INSTALL": "never",
            "VESPA_TLS_DIR": self.tls_dir,
            "VESPA_SIGN_CERT_URL": f"{self.signer_url}?instance_id={CONTAINER_ID}",
            "VESPA_SIGN_CERT_RETRIES": "0",
            "VESPA_METRICS_LISTEN": "none",
            "HF_TOKEN": "hf-test",
        }
        for name, value in overrides.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def spawn(self, env: dict[str, str], *args: str) -> ScriptProcess:
        process = ScriptProcess()
        transport = reactor.spawnProcess(
            process, "/bin/bash", ["bash", SCRIPT, *args], env=env, path=self.root
        )

        async def stop() -> None:
            if not process.ended.called:
                transport.signalProcess("KILL")
                await process.ended

        self.addCleanup(stop)
        return process

    async def run_script(self, env: dict[str, str], *args: str) -> ScriptProcess:
        process = self.spawn(env, *args)
        await process.ended
        return process

    async def until(self, condition: Any, what: str, timeout: float = 20.0) -> None:
        deadline = reactor.seconds() + timeout
        while not condition():
            if reactor.seconds() > deadline:
                self.fail(f"timed out waiting for {what}")
            await deferLater(reactor, 0.02, lambda: None)

    def stub(self, name: str) -> tuple[str, str]:
        """An executable standing in for twistd/supervisord; returns it and its record file."""
        record = os.path.join(self.root, f"{name}.record")
        path = os.path.join(self.root, name)
        with open(path, "w") as f:
            f.write(STUB.format(record=record))
        os.chmod(path, 0o755)
        return path, record

    def assert_failure_reported(
        self,
        process: ScriptProcess,
        step: str,
        *words: str,
        autoscaler: Autoscaler | None = None,
        worker_id: int = CONTAINER_ID,
    ) -> dict[str, Any]:
        """The script exited 1 after sending exactly one report naming the step."""
        self.assertEqual(process.status, 1, process.text)
        reports = (autoscaler or self.autoscaler).status_reports
        self.assertEqual(len(reports), 1, process.text)
        report = reports[0]
        self.assertEqual(set(report), STATUS_FIELDS | {"disk_usage"})
        self.assertTrue(
            report["error_msg"].startswith(f"Vespa start failed: {step}: "), report["error_msg"]
        )
        for word in words:
            self.assertIn(word, report["error_msg"])
        self.assertEqual(report["id"], worker_id)
        self.assertEqual(report["mtoken"], MASTER_TOKEN)
        self.assertEqual(report["working_request_idxs"], [])
        numbers = (STATUS_FIELDS | {"disk_usage"}) - {"id", "mtoken", "version", "error_msg", "url"}
        for field in numbers:
            if field != "working_request_idxs":
                self.assertEqual(report[field], 0, field)
        self.assertNotIn("starting the worker:", process.text)
        self.assertEqual(os.listdir(self.tmp), [], "the script left temporary files")
        return report

    def tls_files(self) -> list[str]:
        return sorted(os.listdir(self.tls_dir)) if os.path.isdir(self.tls_dir) else []

    # -- success -------------------------------------------------------------------

    async def test_success_installs_the_certificate_and_starts_the_worker(self) -> None:
        """
        With every step passing: a new key, the CSR signed by the endpoint (with
        the instance id), the pair installed (key mode 600, no temporary files
        left), then the real worker started in the foreground in place of the
        script, serving HTTPS with that certificate and reporting its https url
        to the autoscaler; SIGTERM stops it with status 0.
        """
        process = self.spawn(self.env())
        report = await self.autoscaler.wait_for_status(
            lambda r: r.get("id") == CONTAINER_ID
        ).addTimeout(30, reactor)
        self.assertEqual(report["url"], f"https://127.0.0.1:{self.worker_port}")
        self.assertEqual(report["mtoken"], MASTER_TOKEN)
        self.assertFalse(report["error_msg"].startswith("Vespa start failed"))

        ((query, content_type, csr),) = self.signer.requests
        self.assertEqual(query, {b"instance_id": [str(CONTAINER_ID).encode()]})
        self.assertEqual(content_type, b"application/octet-stream")
        self.assertIn(b"BEGIN CERTIFICATE REQUEST", csr)
        self.assertEqual(self.tls_files(), ["instance.crt", "instance.key"])
        cert_path = os.path.join(self.tls_dir, "instance.crt")
        key_path = os.path.join(self.tls_dir, "instance.key")
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        self.assertEqual(cert.issuer, the_ca().name)
        the_ca().key.public_key().verify(
            cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256())
        )
        self.assertEqual(
            cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )

        await self.until(lambda: _accepts(self.worker_port), "the worker to listen")
        ca_path = os.path.join(self.root, "ca.pem")
        with open(ca_path, "wb") as f:
            f.write(the_ca().cert.public_bytes(serialization.Encoding.PEM))
        served, body = await deferToThread(_https_get, self.worker_port, "/ping", ca_path)
        self.assertEqual(served, cert.public_bytes(serialization.Encoding.DER))
        self.assertIn(b"pong", body)
        self.assertEqual(os.listdir(self.tmp), [])
        self.assertIn("starting the worker", process.text)

        os.kill(self.spawned_pid(process), signal.SIGTERM)
        self.assertEqual(await process.ended, 0, process.text)
        self.assertIn("Server Shut Down", process.text)

    def spawned_pid(self, process: ScriptProcess) -> int:
        assert process.transport is not None
        pid = process.transport.pid
        assert pid is not None
        return int(pid)

    # -- failures reported -----------------------------------------------------------

    async def test_signing_endpoint_error_is_reported(self) -> None:
        """
        The signing endpoint answers 500 (once, then again on the retry): the
        script reports "tls sign" with curl's reason and exits 1; nothing is
        installed, the error page is not saved anywhere.
        """
        self.signer.mode = "500"
        process = await self.run_script(self.env(VESPA_SIGN_CERT_RETRIES="1"))
        report = self.assert_failure_reported(process, "tls sign", "500")
        self.assertEqual(report["url"], f"https://127.0.0.1:{self.worker_port}")
        self.assertEqual(len(self.signer.requests), 2)
        self.assertEqual(self.tls_files(), [])

    async def test_an_error_page_answered_200_is_not_installed(self) -> None:
        """
        A 200 answer that is not a PEM certificate is refused ("tls check"), and
        the certificate and key already in place are left as they were.
        """
        self.signer.mode = "page"
        os.makedirs(self.tls_dir)
        for name in ("instance.crt", "instance.key"):
            with open(os.path.join(self.tls_dir, name), "w") as f:
                f.write(f"old {name}\n")
        process = await self.run_script(self.env())
        self.assert_failure_reported(process, "tls check", "not", "PEM certificate", "<html>")
        self.assertEqual(self.tls_files(), ["instance.crt", "instance.key"])
        for name in ("instance.crt", "instance.key"):
            with open(os.path.join(self.tls_dir, name)) as f:
                self.assertEqual(f.read(), f"old {name}\n")

    async def test_a_certificate_for_another_key_is_refused(self) -> None:
        """A certificate whose public key is not the new key's: "tls check"."""
        self.signer.mode = "other-key"
        process = await self.run_script(self.env())
        self.assert_failure_reported(process, "tls check", "not for the key")
        self.assertEqual(self.tls_files(), [])

    async def test_an_expired_certificate_is_refused(self) -> None:
        """An expired certificate: "tls check"."""
        self.signer.mode = "expired"
        process = await self.run_script(self.env())
        self.assert_failure_reported(process, "tls check", "expired")

    async def test_missing_backend_url_is_reported_to_every_address(self) -> None:
        """
        Without VESPA_BACKEND_URL or PYWORKER_BACKEND_URL the script stops at
        "settings" and reports to each address in REPORT_ADDR.
        """
        second, second_url = self.start_autoscaler()
        env = self.env(VESPA_BACKEND_URL=None)
        env["REPORT_ADDR"] = f"{self.autoscaler_url}, {second_url}/"
        process = await self.run_script(env)
        for autoscaler in (self.autoscaler, second):
            self.assert_failure_reported(
                process, "settings", "VESPA_BACKEND_URL", autoscaler=autoscaler
            )
        self.assertEqual(self.signer.requests, [])

    async def test_empty_report_addr_reports_nothing(self) -> None:
        """
        REPORT_ADDR set and empty means no autoscaler (local use): a failure
        is logged and exits 1, and nothing is sent anywhere (unset, it would
        go to https://run.vast.ai).
        """
        process = await self.run_script(self.env(REPORT_ADDR="", VESPA_BACKEND_URL=None))
        self.assertEqual(process.status, 1, process.text)
        self.assertIn("no autoscaler", process.text)
        self.assertIn("ERROR: Vespa start failed: settings: VESPA_BACKEND_URL", process.text)
        self.assertNotIn("report", process.text.split("ERROR:")[1])
        self.assertEqual(self.autoscaler.status_reports, [])

    async def test_pyworker_names_are_accepted(self) -> None:
        """
        The PYWORKER_* names of an existing Vast template work: backend url,
        port (in the advertised url) and SSL off.
        """
        twistd, record = self.stub("twistd")
        env = self.env(
            VESPA_BACKEND_URL=None,
            VESPA_WORKER_PORT=None,
            VESPA_TWISTD=twistd,
            PYWORKER_BACKEND_URL="http://127.0.0.1:8000",
            PYWORKER_WORKER_PORT=str(self.worker_port),
            PYWORKER_USE_SSL="false",
        )
        process = await self.run_script(env)
        self.assertEqual(process.status, 0, process.text)
        with open(record) as f:
            recorded = f.read()
        self.assertIn(f"VESPA_WORKER_PORT={self.worker_port}\n", recorded)
        self.assertIn("VESPA_USE_SSL=false\n", recorded)
        self.assertEqual(self.signer.requests, [])

    async def test_supervisor_skip_pyworker(self) -> None:
        """
        On a Vast base image with SERVERLESS=true, the official worker starts too
        unless SUPERVISOR_SKIP_PYWORKER=true: the script warns when it is missing
        and exports it to the worker either way.
        """
        twistd, record = self.stub("twistd")
        for skip, warned in ((None, True), ("true", False)):
            env = self.env(
                VESPA_TWISTD=twistd,
                VESPA_USE_SSL="false",
                SERVERLESS="true",
                SUPERVISOR_SKIP_PYWORKER=skip,
            )
            process = await self.run_script(env)
            self.assertEqual(process.status, 0, process.text)
            warning = "SUPERVISOR_SKIP_PYWORKER=true in the template" in process.text
            self.assertEqual(warning, warned)
            with open(record) as f:
                self.assertIn("SUPERVISOR_SKIP_PYWORKER=true\n", f.read())

    async def test_settings_errors(self) -> None:
        """
        SSL on without CONTAINER_ID, a USE_SSL that is neither true nor false:
        each is reported at "settings" naming the variable.
        """
        cases: list[tuple[dict[str, str | None], str]] = [
            ({"CONTAINER_ID": None}, "CONTAINER_ID"),
            ({"VESPA_USE_SSL": "maybe"}, "VESPA_USE_SSL"),
            ({"VESPA_WORKER_PORT": "http"}, "VESPA_WORKER_PORT"),
        ]
        for overrides, word in cases:
            del self.autoscaler.status_reports[:]
            process = await self.run_script(self.env(**overrides))
            worker_id = 0 if "CONTAINER_ID" in overrides else CONTAINER_ID
            self.assert_failure_reported(process, "settings", word, worker_id=worker_id)

    async def test_a_bad_worker_setting_is_reported(self) -> None:
        """
        A value the worker would refuse (VESPA_MAX_BODY_SIZE=banana) is found
        by the worker's own option parsing before exec, and reported.
        """
        env = self.env(VESPA_USE_SSL="false", VESPA_MAX_BODY_SIZE="banana")
        process = await self.run_script(env)
        report = self.assert_failure_reported(process, "worker config", "max-body-size")
        self.assertEqual(report["url"], f"http://127.0.0.1:{self.worker_port}")

    async def test_reports_are_valid_json_whatever_the_values(self) -> None:
        """
        Quotes, backslashes, newlines and non-ASCII in the values reach the
        autoscaler exactly, whether the report is built by Python's
        json.dumps or, with no Python to be found, by the shell fallback.
        """
        token = 'to"k\\en\n\u00e9"}, "id": 1'
        for python in (sys.executable, "/nonexistent/python3"):
            del self.autoscaler.status_reports[:]
            env = self.env(
                MASTER_TOKEN=token,
                VESPA_PYTHON=python,
                VESPA_USE_SSL="false",
                VESPA_BACKEND_URL=None,
                VESPA_VERSION="v\t1",
            )
            process = await self.run_script(env)
            self.assertEqual(process.status, 1)
            (report,) = self.autoscaler.status_reports
            self.assertEqual(report["mtoken"], token, python)
            self.assertEqual(report["version"], "v\t1", python)
            self.assertEqual(report["id"], CONTAINER_ID, python)
            self.assertEqual(set(report), STATUS_FIELDS | {"disk_usage"}, python)
            self.assertIn("VESPA_BACKEND_URL", report["error_msg"])
            self.assertNotIn(token, process.text, "MASTER_TOKEN was logged")

    async def test_stopped_during_start_is_not_a_failure(self) -> None:
        """
        SIGTERM while the certificate is being signed (to the script and its
        curl, as supervisord or docker stop a process group): exit 143, no
        report, the new key removed.
        """
        me = os.getpid()
        if not os.path.exists(f"/proc/{me}/task/{me}/children"):
            raise SkipTest("needs /proc/<pid>/task/<tid>/children (Linux)")
        self.signer.mode = "hang"
        self.addCleanup(lambda: [r.loseConnection() for r in self.signer.hanging])
        process = self.spawn(self.env())
        await self.signer.arrived.addTimeout(20, reactor)
        pid = self.spawned_pid(process)
        os.kill(pid, signal.SIGTERM)
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            for child in f.read().split():
                os.kill(int(child), signal.SIGTERM)
        self.assertEqual(await process.ended.addTimeout(20, reactor), 143, process.text)
        self.assertIn("stopped by SIGTERM during tls sign", process.text)
        self.assertEqual(self.autoscaler.status_reports, [])
        self.assertEqual(self.tls_files(), [])
        self.assertEqual(os.listdir(self.tmp), [])

    # -- virtualenv and install ---------------------------------------------------------

    async def test_virtualenv_is_created_then_reused(self) -> None:
        """
        First boot: the virtualenv is made with ``python -m venv`` and the
        package installed; next boot: both reused as they are; a changed
        VESPA_PACKAGE is installed; one that pip cannot install is reported at
        "install". The worker is exec'd with the script's arguments, in the
        workspace (a stub twistd records how).
        """
        venv = os.path.join(self.root, "venv")
        wheels = os.path.join(self.root, "wheels")
        os.makedirs(wheels)
        first = make_wheel(wheels, "vespa_deploy_probe", "1.0")
        second = make_wheel(wheels, "vespa_deploy_probe", "2.0")
        twistd, record = self.stub("twistd")

        def env(package: str) -> dict[str, str]:
            return self.env(
                VESPA_VENV=venv,
                VESPA_INSTALL=None,
                VESPA_PACKAGE=package,
                VESPA_PIP_ARGS="--no-deps --no-index",
                VESPA_PYTHON=sys.executable,
                VESPA_CHECK_CONFIG="false",
                VESPA_USE_SSL="false",
                VESPA_TWISTD=twistd,
            )

        def probe_version() -> str:
            return subprocess.run(
                [
                    os.path.join(venv, "bin", "python"),
                    "-c",
                    "import vespa_deploy_probe as p; print(p.VERSION)",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()

        process = await self.run_script(env(first), "--max-concurrency", "4")
        self.assertEqual(process.status, 0, process.text)
        self.assertIn("creating the virtualenv", process.text)
        self.assertEqual(probe_version(), "1.0")
        with open(record) as f:
            recorded = f.read()
        self.assertIn("argv: [--nodaemon] [--pidfile=] [vespa] [--max-concurrency] [4]\n", recorded)
        self.assertIn(f"cwd: {self.workspace}\n", recorded)
        self.assertIn("VESPA_USE_SSL=false\n", recorded)
        python = os.stat(os.path.join(venv, "bin", "python"))

        process = await self.run_script(env(first))
        self.assertEqual(process.status, 0, process.text)
        self.assertIn("reusing the virtualenv", process.text)
        self.assertNotIn("installing", process.text.replace("not installing", ""))
        self.assertEqual(os.stat(os.path.join(venv, "bin", "python")).st_ino, python.st_ino)

        process = await self.run_script(env(second))
        self.assertEqual(process.status, 0, process.text)
        self.assertIn("reusing the virtualenv", process.text)
        self.assertEqual(probe_version(), "2.0")

        process = await self.run_script(env(os.path.join(wheels, "missing-1.0-py3-none-any.whl")))
        self.assert_failure_reported(process, "install", "missing-1.0")
        self.assertEqual(probe_version(), "2.0")

    async def test_no_python_for_the_virtualenv(self) -> None:
        """No Python to make the virtualenv with: reported at "virtualenv"."""
        env = self.env(
            VESPA_VENV=os.path.join(self.root, "venv"),
            VESPA_PYTHON="/nonexistent/python3",
            VESPA_USE_SSL="false",
        )
        process = await self.run_script(env)
        self.assert_failure_reported(process, "virtualenv", "/nonexistent/python3 not found")

    async def test_a_directory_that_is_not_a_virtualenv_is_left_alone(self) -> None:
        """
        VESPA_VENV naming a directory with files but no pyvenv.cfg: reported at
        "virtualenv", and nothing in it is deleted (venv --clear would).
        """
        venv = os.path.join(self.root, "not-a-venv")
        os.makedirs(venv)
        precious = os.path.join(venv, "precious")
        with open(precious, "w") as f:
            f.write("keep me\n")
        env = self.env(VESPA_VENV=venv, VESPA_PYTHON=sys.executable, VESPA_USE_SSL="false")
        process = await self.run_script(env)
        self.assert_failure_reported(process, "virtualenv", "not a virtualenv")
        self.assertEqual(os.listdir(venv), ["precious"])

    async def test_no_worker_to_exec_is_reported(self) -> None:
        """A twistd that is not there is reported at "exec" (a failed exec reports nothing)."""
        env = self.env(VESPA_TWISTD="/nonexistent/twistd", VESPA_USE_SSL="false")
        process = await self.run_script(env)
        self.assert_failure_reported(process, "exec", "/nonexistent/twistd")

    # -- supervisord ------------------------------------------------------------------

    async def test_exec_supervisord(self) -> None:
        """
        VESPA_EXEC=supervisord execs supervisord with deploy/supervisord.conf,
        the variables the config needs set (worker output to stdout, no
        rotation); worker options on the command line are refused there.
        """
        supervisord, record = self.stub("supervisord")
        env = self.env(
            VESPA_EXEC="supervisord", VESPA_SUPERVISORD=supervisord, VESPA_USE_SSL="false"
        )
        process = await self.run_script(env)
        self.assertEqual(process.status, 0, process.text)
        with open(record) as f:
            recorded = f.read()
        conf = os.path.join(REPO, "deploy", "supervisord.conf")
        self.assertIn(f"argv: [--nodaemon] [--configuration] [{conf}]\n", recorded)
        self.assertIn(f"VESPA_SUPERVISOR_DIR={self.workspace}/supervisor\n", recorded)
        self.assertIn("VESPA_LOG_FILE=/dev/stdout\n", recorded)
        self.assertIn("VESPA_LOG_MAXBYTES=0\n", recorded)
        self.assertIn(f"VESPA_VENV={sys.prefix}\n", recorded)
        self.assertTrue(os.path.isdir(os.path.join(self.workspace, "supervisor")))

        process = await self.run_script(env, "--max-concurrency", "4")
        self.assert_failure_reported(process, "settings", "VESPA_EXEC=supervisord")

    # -- lint -------------------------------------------------------------------------

    def test_shellcheck_clean(self) -> None:
        """shellcheck finds nothing in the start script (skipped without shellcheck)."""
        shellcheck = shutil.which("shellcheck")
        if shellcheck is None:
            raise SkipTest("shellcheck is not installed (apt-get install shellcheck)")
        result = subprocess.run(
            [shellcheck, "--shell=bash", SCRIPT], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _https_get(port: int, path: str, ca_path: str) -> tuple[bytes, bytes]:
    """GET over TLS, trusting only the test CA (no host name check: the cert is for 0.0.0.0)."""
    context = ssl.create_default_context(cafile=ca_path)
    context.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            served = tls.getpeercert(binary_form=True)
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            chunks = []
            while chunk := tls.recv(65536):
                chunks.append(chunk)
    assert served is not None
    return served, b"".join(chunks)
