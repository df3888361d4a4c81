# -*- test-case-name: tests.test_client_wrapping -*-
"""
What a caller's request becomes on its way to a worker.

A caller sends plain HTTP (``POST /v1/chat/completions`` with a JSON body);
a Vast worker wants the same request carrying the autoscaler's signed routing
data:

* ``POST``, ``PUT``, ``PATCH``: the JSON body becomes
  ``{"auth_data": {...}, "payload": <the body>}``. A body that is not JSON is
  refused with 415 (the original silently sent ``{}``); an empty one is ``{}``.
* every other method: the six ``serverless_*`` query parameters are appended
  to the caller's query string, which is kept byte for byte (repeated
  parameters, order and encoding included); a body, if any, goes as it is.

The caller's end-to-end headers are forwarded (hop-by-hop ones dropped,
``X-Forwarded-*`` added, ``Host`` set to the worker's); Vespa's own control
headers are not.

The workload sent to ``/route/`` as ``cost`` (:func:`detect_cost`): the
``X-Serverless-Cost`` header if given; else the first of these body fields
that holds a number: ``max_tokens``, ``max_completion_tokens``,
``max_new_tokens``, ``parameters.max_new_tokens`` (TGI),
``options.num_predict`` (Ollama), ``n_predict`` (llama.cpp), ``steps``, the
sum of ``steps`` over a ComfyUI workflow's nodes (``prompt.*.inputs.steps``),
or the number of inputs of a list ``input``/``inputs``/``texts``
(embeddings, classification, rerank); else the configured default.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from twisted.web.http_headers import Headers

from vespa.client.errors import UnsupportedBody
from vespa.client.upstream import WorkerRequest
from vespa.errors import BadRequest
from vespa.http.headers import request_headers
from vespa.protocol.envelope import AUTH_FIELDS, BODY_METHODS, auth_query, wrap_body

#: The header that sets a request's cost (workload) explicitly.
COST_HEADER = b"x-serverless-cost"
#: The header of per-request preferences (JSON), see :mod:`vespa.client.policy`.
PREFERENCES_HEADER = b"x-vespa-request-preferences"
#: The header telling a worker which attempt of a request this is (1, 2, ...),
#: so retried and hedged load can be told apart at the worker.
ATTEMPT_HEADER = b"X-Vespa-Attempt"

# Control headers of this client: meaningless to a worker.
_NOT_FORWARDED = (COST_HEADER, PREFERENCES_HEADER, b"content-type")

#: Body fields read as the cost, first match wins: a path of keys.
COST_FIELDS: tuple[tuple[str, ...], ...] = (
    ("max_tokens",),
    ("max_completion_tokens",),
    ("max_new_tokens",),
    ("parameters", "max_new_tokens"),
    ("options", "num_predict"),
    ("n_predict",),
    ("steps",),
)
#: List fields whose length is the cost (one unit per input).
COUNT_FIELDS = ("input", "inputs", "texts")

_JSON_TYPES = (b"application/json", b"text/json")


@dataclass(frozen=True)
class Call:
    """
    One caller request, ready to be sent to any worker.

    :ivar method: the HTTP method.
    :ivar target: the origin-form target, ``/path?query``, as the caller sent it.
    :ivar headers: the end-to-end headers to forward (no ``Host`` yet).
    :ivar payload: for body methods, the JSON value to wrap; ``None`` otherwise.
    :ivar body: for other methods, a body to pass as it is, or ``None``.
    :ivar cost: the workload announced to ``/route/``.
    """

    method: bytes
    target: bytes
    headers: Headers
    payload: Any
    body: bytes | None
    cost: int | float

    @property
    def path(self) -> bytes:
        """The target's path, without the query."""
        return self.target.split(b"?", 1)[0]

    def with_payload(self, payload: Any, cost: int | float) -> Call:
        """A copy for another body (a part of a split batch)."""
        return Call(self.method, self.target, self.headers, payload, None, cost)


def forwarded_headers(incoming: Headers, *, client_ip: bytes | None, proto: bytes) -> Headers:
    """
    The caller's headers to forward to every worker: end-to-end only, with
    ``X-Forwarded-*`` and without this client's control headers.
    """
    headers = request_headers(incoming, host=b"", client_ip=client_ip, proto=proto)
    headers.removeHeader(b"host")
    for name in _NOT_FORWARDED:
        headers.removeHeader(name)
    return headers


def read_payload(content_type: bytes | None, body: bytes) -> Any:
    """
    The JSON value of a body method's body.

    :param content_type: the caller's ``Content-Type``, if any.
    :param body: the body.
    :return: the parsed value; ``{}`` for an empty body.
    :raise UnsupportedBody: a body that is not JSON (415).
    :raise BadRequest: a body that says it is JSON and is not (400).
    """
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:
        media = (content_type or b"").split(b";", 1)[0].strip().lower()
        if media in _JSON_TYPES or media.endswith(b"+json"):
            raise BadRequest(f"the request body is not valid JSON: {e}") from None
        shown = media.decode("latin-1") or "no Content-Type"
        raise UnsupportedBody(
            f"Vast workers accept JSON request bodies only; this body ({shown}) is not JSON",
            details={"content_type": shown},
        ) from None


def _as_cost(value: float) -> int | float:
    """An integral cost as an int (``100``, as a caller would write it), else the float."""
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def detect_cost(headers: Headers, payload: Any, default: float) -> int | float:
    """
    The workload of a request (see the module's docstring for the order).

    :param headers: the caller's headers.
    :param payload: the JSON body, or ``None``.
    :param default: the cost when nothing says otherwise.
    :raise BadRequest: an ``X-Serverless-Cost`` that is not a number of 0 or more.
    """
    given = headers.getRawHeaders(COST_HEADER)
    if given:
        text = given[0].decode("latin-1").strip()
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number < 0:
            raise BadRequest(
                f"X-Serverless-Cost must be a number of 0 or more, got {text[:40]!r}",
                details={"header": "X-Serverless-Cost"},
            )
        return _as_cost(number)
    if isinstance(payload, Mapping):
        found = _cost_from_body(payload)
        if found is not None:
            return _as_cost(found)
    return _as_cost(float(default))


def _cost_from_body(payload: Mapping[str, Any]) -> float | None:
    for path in COST_FIELDS:
        value: Any = payload
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        number = _number(value)
        if number is not None:
            return number
    workflow = payload.get("prompt")
    if isinstance(workflow, Mapping):
        steps = [
            _number(node.get("inputs", {}).get("steps"))
            for node in workflow.values()
            if isinstance(node, Mapping) and isinstance(node.get("inputs"), Mapping)
        ]
        total = sum(s for s in steps if s is not None)
        if total:
            return total
    for name in COUNT_FIELDS:
        items = payload.get(name)
        if isinstance(items, list) and items and not all(_number(i) is not None for i in items):
            return float(len(items))
    return None


def build_worker_request(
    call: Call, worker: str, auth: Mapping[str, Any], attempt: int
) -> WorkerRequest:
    """
    The request to send to ``worker`` for ``call``, carrying ``auth``.

    :param call: the caller's request.
    :param worker: the worker's base URL from ``/route/``.
    :param auth: the routing fields from ``/route/``.
    :param attempt: the attempt number (1 for the first), sent as a header.
    """
    base = worker.rstrip("/").encode("utf-8")
    headers = call.headers.copy()
    headers.setRawHeaders(b"Host", [urlsplit(worker).netloc.encode("idna")])
    headers.setRawHeaders(ATTEMPT_HEADER, [b"%d" % (attempt,)])
    fields = {name: auth[name] for name in AUTH_FIELDS if name in auth}
    if call.method in BODY_METHODS:
        headers.setRawHeaders(b"Content-Type", [b"application/json"])
        return WorkerRequest(
            call.method, base + call.target, headers, wrap_body(fields, call.payload)
        )
    query = urlencode(auth_query(fields)).encode("ascii")
    target = call.target
    if b"?" not in target:
        target += b"?" + query
    elif target.endswith((b"?", b"&")):
        target += query
    else:
        target += b"&" + query
    return WorkerRequest(call.method, base + target, headers, call.body)
