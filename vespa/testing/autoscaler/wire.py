# -*- test-case-name: tests.test_autoscaler_standin -*-
"""
The autoscaler's side of the wire: the fields of the reports it reads, how it
checks them, and how it signs routing answers.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeGuard

from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15

#: The signed-message modes: ``url`` signs the url only, once per worker, as
#: Vast's autoscaler does today; ``full`` signs cost, endpoint, reqnum,
#: request_idx and url for every request (the 2024-2025 form).
SIGNING_MODES = ("url", "full")

#: What :meth:`Autoscaler.fail` can do to a request.
FAILURE_MODES = ("500", "hang", "refuse")

#: The routes, by the name :meth:`Autoscaler.fail` uses, and their HTTP paths.
PATHS: Mapping[str, bytes] = {
    "pubkey": b"/pubkey/",
    "route": b"/route/",
    "worker_status": b"/worker_status/",
    "delete_requests": b"/delete_requests/",
}

def is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_text(value: object) -> TypeGuard[str]:
    return isinstance(value, str)


def _is_ints(value: object) -> bool:
    return isinstance(value, list) and all(_is_int(i) for i in value)


#: The fields of a ``/worker_status/`` report from vastai 1.9.1, with the
#: wire's misspelling, and the check of each one's JSON value (numbers are
#: finite). This is the stand-in's own reading of the protocol, kept apart
#: from the worker's, so that it catches the worker's mistakes.
STATUS_TYPES: Mapping[str, Callable[[object], bool]] = {
    "id": _is_int, "mtoken": _is_text, "version": _is_text, "loadtime": is_number,
    "cur_load": is_number, "rej_load": is_number, "new_load": is_number,
    "error_msg": _is_text, "max_perf": is_number, "cur_perf": is_number,
    "cur_capacity": is_number, "max_capacity": is_number,
    "num_requests_working": _is_int, "num_requests_recieved": _is_int,
    "additional_disk_usage": is_number, "disk_usage": is_number,
    "working_request_idxs": _is_ints, "url": _is_text,
}  # fmt: skip

#: The 18 fields of a ``/worker_status/`` report from vastai 1.9.1.
STATUS_FIELDS = frozenset(STATUS_TYPES)

#: The 17 fields of a 2024-2025 report (protocol section 5.1): no disk_usage.
LEGACY_STATUS_FIELDS = STATUS_FIELDS - {"disk_usage"}

#: The fields of a ``/delete_requests/`` body of records (vastai 1.9.1).
DELETE_FIELDS = frozenset({"worker_id", "mtoken", "requests"})

#: The statuses a record of a ``/delete_requests/`` body may have.
_RECORD_STATUSES = ("Success", "Error", "Cancelled", "Rejected")


def _is_seconds(value: object) -> bool:
    return is_number(value) and value >= 0


#: The fields of each record of a ``/delete_requests/`` body, each with its
#: check and what the check asks for.
RECORD_TYPES: Mapping[str, tuple[Callable[[object], bool], str]] = {
    "request_idx": (_is_int, "an integer"),
    "success": (lambda value: isinstance(value, bool), "a boolean"),
    "status": (_RECORD_STATUSES.__contains__, f"one of {', '.join(_RECORD_STATUSES)}"),
    "entered_queue_at": (_is_seconds, "a finite number of seconds"),
    "work_started_at": (_is_seconds, "a finite number of seconds"),
    "work_completed_at": (_is_seconds, "a finite number of seconds"),
}

#: The fields of each record of a ``/delete_requests/`` body.
RECORD_FIELDS = frozenset(RECORD_TYPES)

#: The fields of a 2024-2025 ``/delete_requests/`` body (protocol section 5.3).
LEGACY_DELETE_FIELDS = frozenset({"worker_id", "mtoken", "request_idxs", "success"})

#: The report forms the stand-in can expect: today's, or 2024-2025's.
REPORT_FORMATS = ("records", "legacy")

_FULL_FIELDS = ("cost", "endpoint", "reqnum", "request_idx", "url")


def sign_auth(key: RSA.RsaKey, auth: Mapping[str, Any], mode: str = "full") -> str:
    """
    Sign routing data as the autoscaler does.

    The message is ``json.dumps(fields, indent=4, sort_keys=True)`` of the
    values as they are (an int cost stays ``100``, a float ``100.0``), signed
    with RSA PKCS#1 v1.5 over SHA-256.

    :param key: the private key.
    :param auth: holds at least the signed fields; other keys are ignored.
    :param mode: ``"full"`` (cost, endpoint, reqnum, request_idx, url) or
        ``"url"`` (url only).
    :return: the signature, standard base64.
    :raises KeyError: a signed field is missing from ``auth``.
    :raises ValueError: an unknown ``mode``.
    """
    if mode == "full":
        fields = {name: auth[name] for name in _FULL_FIELDS}
    elif mode == "url":
        fields = {"url": auth["url"]}
    else:
        raise ValueError(f"unknown signing mode {mode!r}; expected one of {SIGNING_MODES}")
    message = json.dumps(fields, indent=4, sort_keys=True).encode("utf-8")
    signature = pkcs1_15.new(key).sign(SHA256.new(message))
    return base64.b64encode(signature).decode("ascii")


def report_problem(name: str, body: dict[str, Any], report_format: str) -> str | None:
    """
    Why ``body`` is not a ``name`` report (``"worker_status"`` or
    ``"delete_requests"``) of ``report_format``, or ``None``.
    """
    legacy = report_format == "legacy"
    if name == "worker_status":
        # A report without url applies to the last one its id gave (see above).
        required = (LEGACY_STATUS_FIELDS if legacy else STATUS_FIELDS) - {"url"}
        return _fields_problem(body, required, STATUS_FIELDS) or _status_problem(body)
    if legacy:
        problem = _fields_problem(body, LEGACY_DELETE_FIELDS, LEGACY_DELETE_FIELDS)
        if problem is None and not (
            isinstance(body["request_idxs"], list)
            and all(_is_int(i) for i in body["request_idxs"])
            and isinstance(body["success"], bool)
        ):
            problem = "request_idxs must be a list of integers and success a boolean"
        return problem
    problem = _fields_problem(body, DELETE_FIELDS, DELETE_FIELDS)
    if problem is not None:
        return problem
    if not isinstance(body["requests"], list):
        return "requests must be a list of records"
    for record in body["requests"]:
        if not isinstance(record, dict):
            return "requests must be a list of records"
        problem = _fields_problem(record, RECORD_FIELDS, RECORD_FIELDS) or _record_problem(record)
        if problem is not None:
            return f"record {record.get('request_idx')!r}: {problem}"
    return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_object(raw: bytes) -> dict[str, Any] | None:
    """A JSON object, or ``None`` for anything else (NaN and Infinity included)."""
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _fields_problem(
    body: dict[str, Any], required: frozenset[str], allowed: frozenset[str]
) -> str | None:
    missing = sorted(required - set(body))
    unknown = sorted(set(body) - allowed)
    if missing or unknown:
        return f"missing fields {missing}, unknown fields {unknown}"
    return None


def _status_problem(body: dict[str, Any]) -> str | None:
    for field, value in body.items():
        if not STATUS_TYPES[field](value):
            return f"{field} has the wrong type or is not finite: {value!r:.40}"
    return None


def _record_problem(record: dict[str, Any]) -> str | None:
    for field, (check, wanted) in RECORD_TYPES.items():
        if not check(record[field]):
            return f"{field} must be {wanted}"
    return None
