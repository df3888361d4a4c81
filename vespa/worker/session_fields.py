# -*- test-case-name: tests.test_sessions -*-
"""
The fields of the session routes' bodies, checked: what ``/session/create``
asks for (:func:`create_settings`), which session a control route names
(:func:`control_fields`), and whether an ``auth_data`` is a session's own
(:func:`same_auth`). Pure functions; :mod:`vespa.worker.sessions` acts on them.
"""

from __future__ import annotations

import hmac
import json
import math
from dataclasses import asdict
from typing import Any

from vespa.errors import VespaError
from vespa.protocol.envelope import AuthData

#: The lifetime of a session whose create payload gives none (the official default).
DEFAULT_LIFETIME = 60.0


class SessionRequestInvalid(VespaError, status=422):
    """A session route's body is not JSON, or lacks a field (422)."""


def create_settings(payload_json: bytes | None) -> tuple[float, str | None, Any]:
    """The ``lifetime``, ``on_close_route`` and ``on_close_payload`` of a create payload."""
    try:
        payload = json.loads(payload_json or b"{}")
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise SessionRequestInvalid(
            "the payload must be an object with lifetime, on_close_route and on_close_payload",
            details={"payload": "must be an object"},
        )
    lifetime = payload.get("lifetime")
    if lifetime is None:
        lifetime = DEFAULT_LIFETIME
    if (
        isinstance(lifetime, bool)
        or not isinstance(lifetime, (int, float))
        or not math.isfinite(lifetime)
        or lifetime <= 0
    ):
        raise SessionRequestInvalid(
            "lifetime must be a positive number of seconds",
            details={"payload": {"lifetime": "must be a positive number"}},
        )
    route = payload.get("on_close_route")
    if route is not None and not (
        isinstance(route, str) and route.startswith("/") and not route.startswith("//")
    ):
        raise SessionRequestInvalid(
            "on_close_route must be a path on the backend, such as /session-closed",
            details={"payload": {"on_close_route": "must be a path starting with /"}},
        )
    return float(lifetime), route, payload.get("on_close_payload") if route is not None else None


def control_fields(body: bytes) -> tuple[str, Any]:
    """``session_id`` and ``session_auth`` of a control route's body."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise SessionRequestInvalid("invalid JSON") from None
    session_id = data.get("session_id") if isinstance(data, dict) else None
    if not session_id or not isinstance(session_id, str):
        raise SessionRequestInvalid("missing session_id", details={"session_id": "field missing"})
    return session_id, data.get("session_auth")


def same_auth(given: object, auth: AuthData) -> bool:
    """
    Whether ``given`` (a JSON ``auth_data``) carries exactly ``auth``'s routing
    fields; other keys (``__request_id``) are ignored. Compared in constant time.
    """
    if not isinstance(given, dict):
        return False
    expected = asdict(auth)
    if not expected.keys() <= given.keys():
        return False
    theirs = json.dumps({name: given[name] for name in expected}, sort_keys=True)
    ours = json.dumps(expected, sort_keys=True)
    return hmac.compare_digest(theirs.encode("utf-8"), ours.encode("utf-8"))
