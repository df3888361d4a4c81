# -*- test-case-name: tests.test_client_api -*-
"""
The Python API: call a Vast endpoint from Twisted or asyncio code, with the
same routing, retries, hedging and batching as the local proxy.

::

    from vespa.client.api import VespaClient

    client = VespaClient("my-endpoint", api_key="...")   # or VAST_API_KEY
    response = await client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 20})
    print(response.code, await response.json())

    response = await client.post("/v1/completions", json={..., "stream": True})
    async for chunk in response.iter_chunks():
        print(chunk.decode(), end="")
    await client.close()

Every method returns something to ``await``: a Deferred in Twisted code (a
coroutine run by ``ensureDeferred``, or ``react``), an asyncio future inside
an asyncio task, which needs Twisted's asyncio reactor installed first
(``twisted.internet.asyncioreactor.install()``), as the Twisted side runs on
it. Cancelling the await (an asyncio task cancelled, a Deferred cancelled)
cancels the request: routing, backoff and the worker's request stop at once.

Like the proxy, the API answers failures it produces (no worker ready, the
autoscaler refused the key, every worker failed) as a :class:`VespaResponse`
with the error's status and JSON ``{"error", "origin"}``;
:meth:`VespaResponse.raise_for_status` turns any 4xx/5xx into
:class:`VespaHTTPError`. Read or :meth:`~VespaResponse.close` every response:
it holds one of the client's in-flight places until its body is over.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import Any, TypeVar
from urllib.parse import urlencode

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from vespa.client.config import ClientConfig
from vespa.client.core import _UNSET, ClientParts, Reply, build_parts
from vespa.client.policy import PREFERENCE_CHECKS, DispatchFailed, Slot, parse_preferences
from vespa.client.wrapping import COST_HEADER
from vespa.errors import VespaError

__all__ = ["VespaClient", "VespaHTTPError", "VespaResponse"]

T = TypeVar("T")

#: Chunks held for a reader before the worker's body is paused.
_HIGH_WATER = 1 << 20


def _awaitable(d: Deferred[T]) -> Awaitable[T]:
    """``d`` itself in Twisted code; an asyncio future inside an asyncio task."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return d
    if asyncio.current_task(loop) is None:
        return d
    return d.asFuture(loop)


class VespaHTTPError(Exception):
    """
    A response with a 4xx or 5xx status, from :meth:`VespaResponse.raise_for_status`.

    :ivar response: the response.
    :ivar origin: ``vespa``, ``autoscaler`` or ``worker`` for a failure the
        client produced; ``None`` for the model server's own answer.
    """

    def __init__(self, response: VespaResponse, body: bytes) -> None:
        self.response = response
        self.origin = response.origin
        detail = body[:300].decode("utf-8", "replace")
        super().__init__(f"{response.code} from {response.origin or 'the model server'}: {detail}")


class _Body:
    """The body of a response as it arrives: a queue of chunks a reader drains."""

    def __init__(self, reply: Reply | None, data: bytes, slot: Slot | None) -> None:
        self._reply = reply
        self._slot = slot
        self._chunks: deque[bytes] = deque([data] if data else [])
        self._held = len(data)
        self._ended = reply is None or reply.answer is None
        self._error: VespaError | None = None
        self._waiter: Deferred[None] | None = None
        self._paused = False
        if self._ended:
            self._release()
        elif reply is not None and reply.answer is not None:
            reply.answer.attach(self)

    # BodySink

    def chunk(self, data: bytes) -> None:
        self._chunks.append(data)
        self._held += len(data)
        if self._held > _HIGH_WATER and not self._paused and self._reply is not None:
            self._paused = True
            assert self._reply.answer is not None
            self._reply.answer.pause()
        self._wake()

    def end(self, error: VespaError | None) -> None:
        self._ended = True
        self._error = error
        self._release()
        self._wake()

    # Reading

    def next(self) -> Deferred[bytes | None]:
        """The next chunk, or ``None`` at the end; fails if the body was cut short."""
        if self._chunks:
            data = self._chunks.popleft()
            self._held -= len(data)
            if self._paused and self._held <= _HIGH_WATER // 2 and self._reply is not None:
                self._paused = False
                assert self._reply.answer is not None
                self._reply.answer.resume()
            return _succeed(data)
        if self._ended:
            if self._error is not None:
                d: Deferred[bytes | None] = Deferred()
                d.errback(Failure(self._error))
                return d
            return _succeed(None)
        waiter: Deferred[None] = Deferred(lambda _: self.close())
        self._waiter = waiter
        return waiter.addCallback(lambda _: self.next())

    def close(self) -> None:
        """Drop the rest of the body."""
        if not self._ended:
            self._ended = True
            self._chunks.clear()
            if self._reply is not None:
                self._reply.discard()
        self._release()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    def _release(self) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()


def _succeed(value: Any) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.callback(value)
    return d


@dataclass(eq=False)
class VespaResponse:
    """
    A response from the endpoint (or a failure the client produced), its
    body still streaming.

    :ivar code: the status code.
    :ivar phrase: the reason phrase.
    :ivar headers: the response headers (``X-Vespa-*`` included).
    :ivar worker: the worker that answered, or the last one tried, or ``None``.
    :ivar attempts: worker requests made.
    :ivar route_ms: milliseconds spent routing.
    :ivar origin: for a failure the client produced, who caused it
        (``vespa``, ``autoscaler``, ``worker``); ``None`` otherwise.
    """

    code: int
    phrase: bytes
    headers: Headers
    _body: _Body = field(repr=False)
    _: KW_ONLY
    worker: str | None
    attempts: int
    route_ms: float
    origin: str | None = None

    def __post_init__(self) -> None:
        self.headers.setRawHeaders(b"X-Vespa-Worker", [(self.worker or "none").encode()])
        self.headers.setRawHeaders(b"X-Vespa-Attempts", [b"%d" % (self.attempts,)])
        self.headers.setRawHeaders(b"X-Vespa-Route-Ms", [b"%d" % (round(self.route_ms),)])

    def header(self, name: str) -> str | None:
        """The first value of header ``name``, or ``None``."""
        values = self.headers.getRawHeaders(name.encode("latin-1"))
        return values[0].decode("latin-1") if values else None

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """
        The body, chunk by chunk as the worker sends it (server-sent events
        arrive as they are produced). Raises the error if the body was cut short.
        """
        body = self._body

        class _Iterator:
            def __aiter__(self) -> _Iterator:
                return self

            def __anext__(self) -> Awaitable[bytes]:
                async def step() -> bytes:
                    chunk = await body.next()
                    if chunk is None:
                        raise StopAsyncIteration
                    return chunk

                return _awaitable(ensureDeferred(step()))

        return _Iterator()

    def content(self) -> Awaitable[bytes]:
        """The whole body."""
        return _awaitable(ensureDeferred(self._collect()))

    def text(self, encoding: str = "utf-8") -> Awaitable[str]:
        """The whole body, decoded."""

        async def decode() -> str:
            return (await self._collect()).decode(encoding, "replace")

        return _awaitable(ensureDeferred(decode()))

    def json(self) -> Awaitable[Any]:
        """The whole body, parsed as JSON."""

        async def parse() -> Any:
            return jsonlib.loads(await self._collect())

        return _awaitable(ensureDeferred(parse()))

    async def _collect(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            chunk = await self._body.next()
            if chunk is None:
                return b"".join(chunks)
            chunks.append(chunk)

    def raise_for_status(self) -> Awaitable[None]:
        """Fails with :class:`VespaHTTPError` (the body read) for a 4xx or 5xx."""

        async def check() -> None:
            if self.code >= 400:
                raise VespaHTTPError(self, await self._collect())

        return _awaitable(ensureDeferred(check()))

    def close(self) -> None:
        """Drop the body unread (the worker's request is closed)."""
        self._body.close()


class VespaClient:
    """
    Calls one Vast endpoint.

    Settings not given are read from the environment as the daemon reads
    them (``VAST_ENDPOINT``, ``VAST_API_KEY``, ``VAST_ACCOUNT_KEY`` or
    ``~/.vast_api_key``, ``VESPA_*``).

    :param endpoint: the endpoint name.
    :param api_key: the endpoint key.
    :param account_key: an account key, to look the endpoint key up.
    :param instance: ``prod``, ``alpha``, ``candidate`` or ``local``.
    :param autoscaler_url: overrides the instance's autoscaler.
    :param ca_file: extra CA certificates for https workers (Vast's root CA).
    :param config: a whole :class:`ClientConfig` instead of the above.
    :param reactor: the reactor; the global one if ``None``.
    :param clock: for every timer; ``reactor`` if ``None``.
    :param preferences: defaults for every request (``timeout_s``,
        ``max_retries``, ``hedge_delay``, ``idempotent``, ... as the header
        takes them).
    :raise ValueError: (a :class:`~vespa.config.ConfigError`) a missing
        endpoint or key, or a bad setting.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        api_key: str | None = None,
        *,
        account_key: str | None = None,
        instance: str | None = None,
        autoscaler_url: str | None = None,
        ca_file: str | None = None,
        config: ClientConfig | None = None,
        reactor: Any = None,
        clock: Any = None,
        **preferences: Any,
    ) -> None:
        if config is None:
            given = {
                "endpoint": endpoint,
                "api-key": api_key,
                "account-key": account_key,
                "instance": instance,
                "autoscaler-url": autoscaler_url,
                "ca-file": ca_file,
            }
            config = ClientConfig.from_sources(given, dict(os.environ))
        if preferences:
            unknown = sorted(set(preferences) - set(PREFERENCE_CHECKS))
            if unknown:
                raise TypeError(f"unknown preferences: {', '.join(unknown)}")
            header = jsonlib.dumps(preferences).encode()
            try:
                defaults = parse_preferences(header, config.defaults)
            except VespaError as e:
                raise ValueError(e.message) from None
            config = replace(config, defaults=defaults)
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.config = config
        self.parts: ClientParts = build_parts(config, reactor, clock)
        self._core = self.parts.core

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = _UNSET,
        data: bytes | str | None = None,
        params: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        headers: Mapping[str, str | list[str]] | None = None,
        cost: float | None = None,
        preferences: Mapping[str, Any] | None = None,
    ) -> Awaitable[VespaResponse]:
        """
        Send a request to the endpoint.

        :param method: ``GET``, ``POST``, ...
        :param path: the path (and query) at the model server, ``/v1/completions``.
        :param json: the JSON body (body methods).
        :param data: a raw body; it must be JSON for ``POST``/``PUT``/``PATCH``.
        :param params: query parameters added to ``path`` (lists repeat the key).
        :param headers: headers to send to the model server.
        :param cost: the workload for ``/route/`` (else detected, else the default).
        :param preferences: this request's preferences (see the daemon's header).
        :return: the :class:`VespaResponse` once its first byte is in.
        :raise ValueError: a non-JSON body for a body method, bad preferences.
        """
        target = path if path.startswith("/") else "/" + path
        if params:
            pairs = params.items() if isinstance(params, Mapping) else params
            query = urlencode([(k, _param(v)) for k, v in pairs], doseq=True)
            target += ("&" if "?" in target else "?") + query
        incoming = Headers()
        for name, value in (headers or {}).items():
            incoming.setRawHeaders(
                name.encode("latin-1"),
                [v.encode("latin-1") for v in (value if isinstance(value, list) else [value])],
            )
        if cost is not None:
            incoming.setRawHeaders(COST_HEADER, [repr(float(cost)).encode()])
        raw = data.encode("utf-8") if isinstance(data, str) else (data or b"")
        if json is not _UNSET and not incoming.hasHeader(b"content-type"):
            incoming.setRawHeaders(b"Content-Type", [b"application/json"])
        try:
            prefs = self._core.defaults
            if preferences:
                prefs = parse_preferences(jsonlib.dumps(dict(preferences)).encode(), prefs)
            call = self._core.call(
                method.upper().encode("ascii"), target.encode("utf-8"), incoming, raw, payload=json
            )
        except VespaError as e:
            raise ValueError(e.message) from None
        return _awaitable(ensureDeferred(self._send(call, prefs)))

    async def _send(self, call: Any, prefs: Any) -> VespaResponse:
        core = self._core
        try:
            slot = await core.limiter.acquire()
        except VespaError as error:
            return _error_response(error, None, 0, 0.0)
        try:
            reply = await core.send(call, prefs, core.deadline(prefs))
        except DispatchFailed as failed:
            slot.release()
            return _error_response(failed.error, failed.worker, failed.attempts, failed.route_ms)
        except CancelledError:
            slot.release()
            raise
        except VespaError as error:
            slot.release()
            return _error_response(error, None, 0, 0.0)
        except BaseException:
            slot.release()
            raise
        headers = Headers()
        for name, values in reply.headers.getAllRawHeaders():
            headers.setRawHeaders(name, values)
        if reply.answer is not None:
            body = _Body(reply, b"", slot)
        else:
            body = _Body(None, reply.body or b"", slot)
        return VespaResponse(
            reply.code,
            reply.phrase,
            headers,
            body,
            worker=",".join(reply.workers),
            attempts=reply.attempts,
            route_ms=reply.route_ms,
        )

    def get(self, path: str, **kwargs: Any) -> Awaitable[VespaResponse]:
        """``GET path``; see :meth:`request`."""
        return self.request("GET", path, **kwargs)

    def head(self, path: str, **kwargs: Any) -> Awaitable[VespaResponse]:
        """``HEAD path``; see :meth:`request`."""
        return self.request("HEAD", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Awaitable[VespaResponse]:
        """``DELETE path``; see :meth:`request`."""
        return self.request("DELETE", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Awaitable[VespaResponse]:
        """``POST path``; see :meth:`request`."""
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Awaitable[VespaResponse]:
        """``PUT path``; see :meth:`request`."""
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Awaitable[VespaResponse]:
        """``PATCH path``; see :meth:`request`."""
        return self.request("PATCH", path, **kwargs)

    def health(self) -> dict[str, Any]:
        """The counters, as the daemon's ``/health`` shows them."""
        return self.parts.health()

    def close(self) -> Awaitable[None]:
        """Close the client's connections."""
        return _awaitable(self.parts.close())


def _param(value: Any) -> Any:
    """A query value as a caller means it: JSON's spelling for booleans and null."""
    if isinstance(value, bool) or value is None:
        return jsonlib.dumps(value)
    if isinstance(value, (list, tuple)):
        return [_param(v) for v in value]
    return value


def _error_response(
    error: VespaError, worker: str | None, attempts: int, route_ms: float
) -> VespaResponse:
    body = jsonlib.dumps(error.body()).encode("utf-8")
    headers = Headers({b"Content-Type": [b"application/json"]})
    for name, value in error.headers.items():
        headers.setRawHeaders(name.encode("ascii"), [value.encode("latin-1")])
    return VespaResponse(
        error.status,
        b"",
        headers,
        _Body(None, body, None),
        worker=worker,
        attempts=attempts,
        route_ms=route_ms,
        origin=error.origin,
    )
