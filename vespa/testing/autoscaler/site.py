# -*- test-case-name: tests.test_autoscaler_standin -*-
"""
The autoscaler stand-in over HTTP: the four routes, after failure injection.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from twisted.web.server import NOT_DONE_YET, Request, Site

from vespa._typing import Resource
from vespa.testing.autoscaler.standin import Autoscaler, InjectedFailure, abort, log
from vespa.testing.autoscaler.wire import PATHS, parse_object, report_problem


class AutoscalerResource(Resource):
    """Dispatches on the exact path, after failure injection."""

    isLeaf = True

    _METHODS: Mapping[bytes, bytes] = {
        b"/pubkey/": b"GET",
        b"/route/": b"POST",
        b"/worker_status/": b"POST",
        b"/delete_requests/": b"POST",
    }

    def __init__(self, autoscaler: Autoscaler) -> None:
        super().__init__()
        self._autoscaler = autoscaler

    def render(self, request: Request) -> bytes | int:
        scaler = self._autoscaler
        path = request.path
        name = next((n for n, p in PATHS.items() if p == path), None)
        if name is None:
            return _json(request, 404, {"error": "not found"})
        mode = scaler._injected(name)
        if mode is not None:
            return self._inject(request, name, mode)
        allowed = self._METHODS[path]
        # twisted.web answers HEAD by rendering GET and dropping the body.
        if request.method != allowed and not (allowed == b"GET" and request.method == b"HEAD"):
            request.setHeader(b"allow", allowed)
            return _json(request, 405, {"error": "method not allowed"})
        if name == "pubkey":
            request.setHeader(b"content-type", b"text/plain")
            return scaler.public_key_pem
        assert request.content is not None
        raw = request.content.read()
        body = parse_object(raw)
        if name == "route":
            if body is not None:
                scaler.route_requests.append(body)
            if not scaler._authorized(request):
                return _json(request, 401, {"error": "invalid api key"})
            if body is None:
                return _json(request, 400, {"error": "invalid JSON"})
            code, answer = scaler._route(body)
            log.debug("route {code} {answer}", code=code, answer=answer)
            return _json(request, code, answer)
        if body is None:
            return _json(request, 400, {"error": "invalid JSON"})
        problem = report_problem(name, body, scaler.report_format)
        if problem is not None:
            log.info("refused {name} ({problem}): {body}", name=name, problem=problem, body=body)
            scaler.refused_reports.append((name, body, problem))
            return _json(request, 422, {"error": problem})
        _json(request, 200, {"ok": True}, finish=True)
        if name == "worker_status":
            log.debug("worker_status {body}", body=body)
            scaler._accept_status(body)
            scaler._status_waiters.notify(body)
        else:
            log.debug("delete_requests {body}", body=body)
            scaler._accept_delete(body)
            scaler._delete_waiters.notify(body)
        return NOT_DONE_YET

    def _inject(self, request: Request, name: str, mode: str) -> bytes | int:
        scaler = self._autoscaler
        failure = InjectedFailure(name, mode)
        scaler.injected_failures.append(failure)
        log.debug("injected {mode} on {path}", mode=mode, path=name)
        if mode == "500":
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain")
            result: bytes | int = b"Internal Server Error\n"
        elif mode == "hang":
            scaler._hanging.add(request)
            request.notifyFinish().addBoth(lambda _: scaler._hanging.discard(request))
            result = NOT_DONE_YET
        else:
            abort(request)
            result = NOT_DONE_YET
        scaler._failure_waiters.notify(failure)
        return result


def _json(request: Request, code: int, body: object, *, finish: bool = False) -> bytes:
    data = json.dumps(body).encode("utf-8")
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    if finish:
        request.write(data)
        request.finish()
    return data


def autoscaler_site(autoscaler: Autoscaler) -> Site:
    """
    A :class:`Site` serving ``autoscaler``, without an access log.
    """
    site = Site(autoscaler.resource())
    site.log = lambda request: None  # type: ignore[method-assign]
    return site
