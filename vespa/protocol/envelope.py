# -*- test-case-name: tests.test_envelope -*-
"""
The routing envelope: where a request carries its ``auth_data``, and what is
left to forward once it is taken off.

A request routed by the Vast autoscaler carries six routing fields
(:data:`AUTH_FIELDS`). Body methods (``POST``, ``PUT``, ``PATCH``) wrap the real
body as ``{"auth_data": {...}, "payload": <any JSON>}``; every other method
carries the fields as ``serverless_*`` query parameters. :func:`parse_envelope`
reads either form and says what to forward: the payload's bytes exactly as the
caller wrote them (body methods), the query without any ``serverless_*``
parameter, and the :class:`AuthData` to verify and account.

The whole body is validated as JSON (``NaN`` and ``Infinity`` are not JSON and
are refused); the payload is sliced out of the body, never re-encoded, so
``1e400``, duplicate keys and deep nesting reach the backend as written. A
small body (:data:`SMALL_BODY`) is parsed in C, its payload's value kept for
the workload estimate; of a larger one only ``auth_data`` and ``session_id``
are built (a large payload costs no memory beyond its bytes), and the parser
calls back into Python for every object and number, so that in a thread (see
:data:`LARGE_BODY`) it gives the reactor thread the interpreter lock often. A
large body that cannot be JSON by how it starts (a form, a file upload) is
judged by that start alone: decoding it would hold the lock throughout.

The values are kept with the JSON type they arrived with (``100`` stays an
``int``, ``100.0`` a ``float``), because the signature covers their JSON text.

:func:`wrap_body` and :func:`auth_query` build the two forms, for the client
and the autoscaler stand-in.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any
from urllib.parse import unquote_to_bytes

from vespa.errors import BadRequest, VespaError
from vespa.protocol.auth_data import AuthData as AuthData  # re-exported: where callers find it
from vespa.protocol.members import NOT_PARSED as NOT_PARSED  # re-exported, for Envelope.payload
from vespa.protocol.members import NotAnObject, TooLarge, byte_span, walk

AUTH_FIELDS = ("cost", "endpoint", "reqnum", "request_idx", "signature", "url")
"""The six routing fields, in their declaration (and alphabetical) order."""

QUERY_PREFIX = "serverless_"
"""The prefix of the query parameters that carry routing data."""

BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})
"""The methods whose routing data is in the JSON body; all others use the query."""

_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?", re.ASCII)
_INTEGER = re.compile(r"-?[0-9]+", re.ASCII)
_STRING_FIELDS = ("endpoint", "signature", "url")
_INT_FIELDS = ("reqnum", "request_idx")
_AUTH_VALUES = itemgetter(*AUTH_FIELDS)
SMALL_BODY = 64 * 1024
"""
Bodies up to this size (bytes) are parsed in C with every member built, so
the payload's value comes with the envelope (:attr:`Envelope.payload`) and the
workload estimate need not parse it again. Larger ones: routing members only.
"""

LARGE_BODY = 256 * 1024
"""
Bodies larger than this (bytes) are worth parsing off the reactor thread: a
JSON body of this size parses in a few milliseconds, a larger one may take
long enough to delay other streams.
"""


class EnvelopeInvalid(VespaError):
    """
    A body method's JSON envelope is malformed (422), as the original worker
    answers: invalid JSON, a missing ``auth_data``/``payload``, or a missing or
    mistyped routing field. The offending fields are named in the body.
    """

    status = 422


class NestedTooDeep(EnvelopeInvalid):
    """
    The body nests deeper than the parser could follow from where it was
    called. A thread's stack is shallower than the reactor's: parsing there
    again may succeed.
    """


@dataclass(frozen=True)
class Envelope:
    """
    What a request carries, and what to forward of it.

    :param auth: the routing data, or ``None`` for an unsecured passthrough
        (the request carried no routing data at all) or an unsecured envelope
        whose ``auth_data`` is not valid routing data.
    :param body: the body to forward: the ``payload``'s bytes as the caller
        wrote them, for a body method with ``auth_data``; ``None`` to forward
        the request's own body untouched.
    :param target: the origin-form target to forward: the request's, with every
        ``serverless_*`` query parameter (and any other asked for) removed and
        all others kept byte for byte and in order.
    :param session_id: the envelope's ``session_id``, when it is a string.
    :param payload: the payload's parsed value (the body's, for a
        passthrough), when the parser built it (a body of at most
        :data:`SMALL_BODY`); else :data:`NOT_PARSED`.
    """

    auth: AuthData | None
    body: bytes | None
    target: bytes
    session_id: str | None = None
    payload: Any = field(default=NOT_PARSED, repr=False, compare=False)


def parse_envelope(
    method: bytes,
    target: bytes,
    body: bytes,
    *,
    unsecured: bool,
    drop_params: frozenset[str] = frozenset(),
    read_span: Callable[[int, int], bytes] | None = None,
) -> Envelope:
    """
    Read the routing data of a request.

    Whatever the method, ``serverless_*`` query parameters are removed from the
    forwarded target, so the backend never sees routing data.

    This is pure CPU work and touches nothing shared: it may run in a thread.

    :param method: the request method, as received (methods are case-sensitive).
    :param target: the origin-form target (``/path?query``), fragment removed.
    :param body: the request body (``b""`` if none).
    :param unsecured: whether a request without routing data is allowed through
        (as a passthrough: ``auth=None``, everything forwarded as received), and
        whether any ``auth_data`` is good enough to unwrap a payload.
    :param drop_params: names of other query parameters to remove from the
        forwarded target (the caller's ``api_key``).
    :param read_span: reads ``body[start:end]`` from where the body came from
        (a file can do it without holding the interpreter lock); ``None``
        slices ``body``.
    :return: the routing data and what to forward.
    :raise EnvelopeInvalid: for a body method whose envelope is malformed (422);
        :class:`NestedTooDeep` when it nests deeper than the stack allows here.
    :raise BadRequest: for another method whose query routing data is missing or
        malformed (400).
    """
    forward, params = _split_query(target, drop_params)
    if method in BODY_METHODS:
        return _parse_body(forward, body, unsecured=unsecured, read_span=read_span)
    return _parse_query(method, target, forward, params, unsecured=unsecured)


def wrap_body(auth: Mapping[str, Any], payload: Any) -> bytes:
    """
    The JSON body of a body-method request: ``{"auth_data": auth, "payload": payload}``.

    :param auth: the routing fields, passed on as given (extra keys such as
        ``__request_id`` included: the worker ignores them).
    :param payload: any JSON value; the worker forwards it as the body.
    :return: the UTF-8 JSON body.
    """
    return json.dumps({"auth_data": dict(auth), "payload": payload}).encode("utf-8")


def auth_query(auth: Mapping[str, Any]) -> list[tuple[str, str]]:
    """
    The ``serverless_*`` query parameters that carry ``auth`` on a non-body method.

    Numbers are written with Python's ``str``, which is also the JSON text of
    the number (``1.0`` stays ``"1.0"``, ``100`` stays ``"100"``), so the worker
    reads them back with the type they were signed with. A cost given as a
    string reads back as a number: a query string has no types.

    :param auth: the routing fields; keys outside :data:`AUTH_FIELDS` are left out.
    :return: ``(name, value)`` pairs in :data:`AUTH_FIELDS` order, ready for
        :func:`urllib.parse.urlencode`.
    :raise TypeError: for a value that is not a string or a number (a ``bool``
        is not a number here).
    """
    pairs = []
    for name in AUTH_FIELDS:
        if name not in auth:
            continue
        value = auth[name]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TypeError(f"auth field {name} must be a string or a number, got {value!r}")
        pairs.append((QUERY_PREFIX + name, str(value)))
    return pairs


def _split_query(
    target: bytes, drop: frozenset[str] = frozenset()
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """
    Split ``target`` into the target to forward and its ``serverless_*`` parameters.

    :param drop: names of other parameters to leave out of the forwarded target.
    :return: the target without ``serverless_*`` parameters or those in
        ``drop`` (``target`` itself, unchanged, when it had none), and the
        ``serverless_*`` parameters as (decoded name, raw value) pairs in order.
    """
    path, mark, query = target.partition(b"?")
    # The common case, no routing parameter at all, costs a few scans.
    if not mark or (
        b"serverless" not in query
        and b"%" not in query
        and not any(name.encode() in query for name in drop)
    ):
        return target, []
    kept: list[bytes] = []
    params: list[tuple[str, bytes]] = []
    dropped = False
    for piece in query.split(b"&"):
        raw_name, _, raw_value = piece.partition(b"=")
        name = _form_decode(raw_name).decode("utf-8", "replace")
        if name.startswith(QUERY_PREFIX):
            params.append((name, raw_value))
        elif name in drop:
            dropped = True
        elif piece:
            kept.append(piece)
    if not params and not dropped:
        return target, []
    rest = b"&".join(kept)
    return (path + b"?" + rest if rest else path), params


def _form_decode(raw: bytes) -> bytes:
    """Percent-decode ``raw`` with ``+`` as a space, as form encoding does."""
    return unquote_to_bytes(raw.replace(b"+", b" "))


def _parse_body(
    forward: bytes,
    body: bytes,
    *,
    unsecured: bool,
    read_span: Callable[[int, int], bytes] | None = None,
) -> Envelope:
    try:
        try:
            members, payload_span = _members(body)
        except _NotUTF8 as other:
            # JSON allows UTF-16 and UTF-32: the same text, in UTF-8, is what
            # the backend gets (and what the spans are counted in).
            body = other.args[0].encode("utf-8", "surrogatepass")
            read_span = None
            members, payload_span = _members(body)
    except NotAnObject:
        if unsecured:
            return Envelope(auth=None, body=None, target=forward)
        raise EnvelopeInvalid(
            "the body must be a JSON object with auth_data and payload",
            details={"auth_data": "field missing", "payload": "field missing"},
        ) from None
    except NestedTooDeep:
        raise
    except EnvelopeInvalid:
        if unsecured:
            return Envelope(auth=None, body=None, target=forward)
        raise
    if unsecured and "auth_data" not in members:
        # The whole body is forwarded: its value, when every member was built,
        # is the object of those members (the last of duplicates, as json.loads).
        whole = members if len(body) <= SMALL_BODY else NOT_PARSED
        return Envelope(auth=None, body=None, target=forward, payload=whole)
    missing = {key: "field missing" for key in ("auth_data", "payload") if key not in members}
    if missing:
        raise EnvelopeInvalid(f"the body has no {' or '.join(missing)}", details=missing)
    auth_data = members["auth_data"]
    if unsecured:
        # Unsecured, nothing is verified: any auth_data unwraps its payload,
        # such as the partial one the official client sends a debug worker.
        try:
            auth: AuthData | None = _auth_from_json(auth_data)
        except EnvelopeInvalid:
            auth = None
    else:
        auth = _auth_from_json(auth_data)
    session_id = members.get("session_id")
    if session_id is not None and not isinstance(session_id, str):
        raise EnvelopeInvalid(
            "session_id must be a string or null", details={"session_id": "must be a string"}
        )
    assert payload_span is not None  # there is a payload
    start, end = payload_span
    return Envelope(
        auth=auth,
        body=read_span(start, end) if read_span is not None else body[start:end],
        target=forward,
        session_id=session_id,
        payload=members["payload"],
    )


class _NotUTF8(Exception):
    """The body is UTF-16 or UTF-32; ``args[0]`` is its text."""


def _members(body: bytes) -> tuple[dict[str, Any], tuple[int, int] | None]:
    """
    Validate ``body`` as a JSON text and return its top-level object's
    members, and where the payload's bytes are in ``body``.

    Every member's value is built for a body of at most :data:`SMALL_BODY`;
    otherwise only ``auth_data`` and ``session_id`` are (the rest are
    :data:`NOT_PARSED`).
    Duplicate keys: the last one wins, as in :func:`json.loads`.

    :return: the members' values, and where the payload is in ``body`` (in
        bytes), if there is one.
    :raise NotAnObject: valid JSON, but not an object.
    :raise EnvelopeInvalid: not valid JSON (:class:`NestedTooDeep` if too deep).
    """
    try:
        encoding = json.detect_encoding(body)
        if len(body) > SMALL_BODY and _starts_as_no_json(body, encoding):
            # Decoding a large body holds the interpreter lock throughout
            # (30 ms for a 60 MB form, a stall of the reactor thread).
            raise EnvelopeInvalid("invalid JSON")
        text = body.decode(encoding, "surrogatepass")
    except (UnicodeDecodeError, LookupError):
        raise EnvelopeInvalid("invalid JSON") from None
    if encoding not in ("utf-8", "utf-8-sig"):
        raise _NotUTF8(text)
    try:
        members, start_ends = walk(text, build_all=len(body) <= SMALL_BODY)
    except TooLarge as error:
        raise EnvelopeInvalid(
            f"{error.args[0]} is too large", details={error.args[0]: "too large"}
        ) from None
    except RecursionError:
        raise NestedTooDeep("invalid JSON: nested too deeply") from None
    except ValueError:
        # ValueError covers JSONDecodeError, over-long integers and NaN.
        raise EnvelopeInvalid("invalid JSON") from None
    if "payload" not in start_ends:
        return members, None
    return members, byte_span(body, text, encoding, *start_ends["payload"])


#: How a JSON value starts, in UTF-8.
_VALUE_START = re.compile(rb'[{\["0-9]|-[0-9]|true|false|null')
#: How much of a body :func:`_starts_as_no_json` looks at.
_PREFIX = 4096


def _starts_as_no_json(body: bytes, encoding: str) -> bool:
    """
    Whether the UTF-8 ``body`` cannot be JSON, judged by how its first value
    starts (a form or a file upload): ``False`` when it might be, or when it
    is in another encoding.
    """
    if encoding == "utf-8-sig":
        body = body[3 : 3 + _PREFIX]
    elif encoding != "utf-8":
        return False
    start = body[:_PREFIX].lstrip(b" \t\r\n")
    if len(start) < len(b"false"):
        return False  # whitespace, or too little to tell: the parse decides
    return _VALUE_START.match(start) is None


def _auth_from_json(fields: object) -> AuthData:
    if not isinstance(fields, dict):
        raise EnvelopeInvalid(
            "auth_data must be a JSON object", details={"auth_data": "must be an object"}
        )
    try:
        cost, endpoint, reqnum, request_idx, signature, url = _AUTH_VALUES(fields)
    except KeyError:
        pass  # reported below
    else:  # the common case, every field sound, in one pass with no report built
        strings = type(endpoint) is str and type(signature) is str and type(url) is str
        if strings and type(reqnum) is int and type(request_idx) is int:
            if _cost_problem(cost) is None:
                return AuthData(cost, endpoint, reqnum, request_idx, signature, url)
    problems: dict[str, str] = {}
    for name in AUTH_FIELDS:
        if name not in fields:
            problems[name] = "missing parameter"
            continue
        value = fields[name]
        if name in _INT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int):
                problems[name] = "must be an integer"
        elif name in _STRING_FIELDS:
            if not isinstance(value, str):
                problems[name] = "must be a string"
        else:
            reason = _cost_problem(value)
            if reason is not None:
                problems[name] = reason
    if problems:
        said = "; ".join(f"{name}: {reason}" for name, reason in problems.items())
        raise EnvelopeInvalid(f"invalid auth_data ({said})", details={"auth_data": problems})
    return AuthData(*_AUTH_VALUES(fields))


def _cost_problem(value: object) -> str | None:
    """
    Why ``value`` is not an acceptable cost, or ``None`` if it is.

    A cost is a JSON number or a numeric string (OFFICIAL declared it ``str``),
    finite and not negative: a negative or infinite workload would corrupt the
    worker's load and wait estimates.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return "must be a number"
    if isinstance(value, str) and not _NUMBER.fullmatch(value):
        return "must be a number"
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return "must be a finite number"
    if not math.isfinite(number):
        return "must be a finite number"
    if number < 0:
        return "must not be negative"
    return None


def _parse_query(
    method: bytes,
    target: bytes,
    forward: bytes,
    params: list[tuple[str, bytes]],
    *,
    unsecured: bool,
) -> Envelope:
    given: dict[str, bytes] = {}
    for name, raw in params:
        field = name[len(QUERY_PREFIX) :]
        # The first of repeated keys wins, as aiohttp's dict(request.query) did.
        if field in AUTH_FIELDS and field not in given:
            given[field] = raw
    if not given:
        if unsecured:
            return Envelope(auth=None, body=None, target=forward)
        names = ", ".join(QUERY_PREFIX + field for field in AUTH_FIELDS)
        raise BadRequest(
            f"{method.decode('ascii', 'replace')} requests require auth_data"
            f" in query params ({names})"
        )
    values: dict[str, str] = {}
    for field, raw in given.items():
        try:
            values[field] = _form_decode(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise _query_error(f"{QUERY_PREFIX}{field} is not UTF-8") from None
    path = target.partition(b"?")[0]
    return Envelope(
        auth=AuthData(
            cost=_query_cost(values.get("cost", "1.0")),
            endpoint=values.get("endpoint", unquote_to_bytes(path).decode("utf-8", "replace")),
            reqnum=_query_int("reqnum", values.get("reqnum", "0")),
            request_idx=_query_int("request_idx", values.get("request_idx", "0")),
            signature=values.get("signature", ""),
            url=values.get("url", ""),
        ),
        body=None,
        target=forward,
    )


def _query_error(reason: str) -> BadRequest:
    return BadRequest(f"Invalid auth_data in query params: {reason}")


def _query_int(field: str, text: str) -> int:
    if _INTEGER.fullmatch(text):
        try:
            return int(text)
        except ValueError:  # over Python's integer-string digit limit
            pass
    raise _query_error(f"{QUERY_PREFIX}{field} must be an integer, got {text[:40]!r}")


def _query_cost(text: str) -> int | float:
    """
    The cost of a query, typed as the JSON number it was written from: an
    integer literal is an ``int``, one with a fraction or exponent a ``float``.
    """
    if not _NUMBER.fullmatch(text):
        raise _query_error(f"{QUERY_PREFIX}cost must be a number, got {text[:40]!r}")
    cost: int | float
    try:
        cost = int(text) if _INTEGER.fullmatch(text) else float(text)
    except ValueError:  # over Python's integer-string digit limit
        raise _query_error(f"{QUERY_PREFIX}cost is too large, got {text[:40]!r}") from None
    reason = _cost_problem(cost)
    if reason is not None:
        raise _query_error(f"{QUERY_PREFIX}cost {reason}, got {text[:40]!r}")
    return cost
