# -*- test-case-name: tests.test_headers -*-
"""
Header filtering for a transparent proxy, one pass per message.

Hop-by-hop headers (RFC 9110 section 7.6.1) describe one connection, not the
message, so they are removed in both directions, together with every header a
``Connection`` header names.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from twisted.web.http_headers import Headers, _nameEncoder

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# Removed from requests only: the backend gets its own Host, the body producer
# sets the length, Vespa has already answered any 100-continue, and the
# forwarding headers are rebuilt below.
_REQUEST_ONLY = frozenset(
    {b"host", b"content-length", b"expect", b"x-forwarded-proto", b"x-forwarded-host"}
)


_DROPPED = HOP_BY_HOP | _REQUEST_ONLY
_DROPPED_WITH_AUTHORIZATION = _DROPPED | {b"authorization"}


def connection_tokens(values: Iterable[bytes]) -> frozenset[bytes]:
    """
    The lower-case names listed in ``Connection`` header values: the
    headers that sender says are about its connection alone.
    """
    return frozenset(
        token.strip().lower() for value in values for token in value.split(b",") if token.strip()
    )


def forwarded_headers(
    incoming: Headers,
    *,
    host: bytes,
    client_ip: bytes | None,
    proto: bytes,
    drop_authorization: bool,
    authorization: bytes | None,
) -> Iterator[tuple[bytes, Sequence[bytes]]]:
    """
    The headers to send to the backend, ``(name, values)`` in order, as
    :func:`request_headers` describes them, without a ``Headers`` built
    (see :func:`head_lines`).
    """
    replaced = drop_authorization or authorization is not None
    drop = _DROPPED_WITH_AUTHORIZATION if replaced else _DROPPED
    tokens = connection_tokens(incoming.getRawHeaders(b"connection") or ())
    if tokens:
        drop = drop | tokens
    forwarded_for: list[bytes] = []
    for name, values in incoming.getAllRawHeaders():
        lower = name.lower()
        if lower in drop:
            continue
        if lower == b"x-forwarded-for":
            forwarded_for.extend(values)
        else:
            yield name, values
    if client_ip is not None:
        forwarded_for.append(client_ip)
    if forwarded_for:
        yield b"X-Forwarded-For", [b", ".join(forwarded_for)]
    original_host = incoming.getRawHeaders(b"host")
    if original_host:
        yield b"X-Forwarded-Host", original_host[:1]
    yield b"X-Forwarded-Proto", [proto]
    yield b"Host", [host]
    if authorization is not None:
        yield b"Authorization", [authorization]


def request_headers(
    incoming: Headers,
    *,
    host: bytes,
    client_ip: bytes | None,
    proto: bytes,
    drop_authorization: bool = False,
    authorization: bytes | None = None,
) -> Headers:
    """
    The headers to send to the backend for a client's request.

    End-to-end headers are kept in order with repeats; hop-by-hop ones are
    dropped; ``Host`` becomes the backend's; ``X-Forwarded-For`` gets the client
    appended; ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` describe the
    client's request.

    :param incoming: the client's request headers.
    :param host: the backend's ``Host`` value.
    :param client_ip: the client's address, or ``None`` when not known.
    :param proto: ``http`` or ``https``, as the client connected.
    :param drop_authorization: remove the caller's ``Authorization``: its key
        is for the proxy (the endpoint key), not for the backend.
    :param authorization: the ``Authorization`` value the backend gets
        instead of the caller's, e.g. ``b"Bearer KEY"``.
    """
    out = Headers()
    for name, values in forwarded_headers(
        incoming,
        host=host,
        client_ip=client_ip,
        proto=proto,
        drop_authorization=drop_authorization,
        authorization=authorization,
    ):
        out.setRawHeaders(name, values)
    return out


def head_lines(headers: Iterable[tuple[bytes, Sequence[bytes]]]) -> bytes:
    """
    ``(name, values)`` pairs as the header lines of a message head
    (``Name: value`` and CRLF each), in one ``bytes``.
    """
    return b"".join([b"%s: %s\r\n" % (name, value) for name, values in headers for value in values])


def copy_response_headers(upstream: Headers, downstream: Headers) -> None:
    """
    Copy a backend response's end-to-end headers onto the client's response.

    A header the backend sent replaces Vespa's own of the same name (``Date``);
    Vespa's ``Server`` header is removed so the backend's shows, or none.

    :param upstream: the backend's response headers.
    :param downstream: the client response's headers, changed in place.
    """
    copy_response_lines(
        [(name, value) for name, values in upstream.getAllRawHeaders() for value in values],
        downstream,
    )


def copy_response_lines(
    lines: list[tuple[bytes, bytes]], downstream: Headers, *, drop: frozenset[bytes] = frozenset()
) -> None:
    """
    :func:`copy_response_headers` for a response's header lines as received.

    The lines are stored as ``Headers.addRawHeader`` would store them
    (canonical names, values in order) without its per-value sanitising,
    which would change nothing: every name is a token and no value holds a
    CR or LF (:func:`vespa.http.backend_response.parse_head` refuses such a
    line, and ``Headers`` has already replaced them).

    :param lines: the backend's header lines, ``(name, value)`` in order.
    :param downstream: the client response's headers, changed in place.
    :param drop: more (lower-case) names not to copy.
    """
    stored = downstream._rawHeaders
    stored.pop(b"Server", None)
    tokens = connection_tokens(value for name, value in lines if name.lower() == b"connection")
    drop = HOP_BY_HOP | tokens | drop
    replaced: set[bytes] = set()
    for name, value in lines:
        if name.lower() in drop:
            continue
        canonical = canonical_name(name)
        if canonical in replaced:
            stored[canonical].append(value)
        else:
            # Replaces Vespa's own (``Date``), moved to the end as removeHeader
            # then addRawHeader would.
            replaced.add(canonical)
            stored.pop(canonical, None)
            stored[canonical] = [value]


#: Canonical header names by name as received (twisted.web's own encoder
#: fills it), bounded as twisted.web bounds its own cache: a peer can send
#: endless variants.
_canonical: dict[bytes, bytes] = {}
_MAX_CANONICAL = 10_000


def canonical_name(name: bytes) -> bytes:
    """
    ``name`` as twisted.web's ``Headers`` stores it (``Content-Type``,
    ``ETag``), from a cache.

    :raises twisted.web.http_headers.InvalidHeaderName: ``name`` is not a token.
    """
    canonical = _canonical.get(name)
    if canonical is None:
        canonical = _nameEncoder.encode(name)
        if len(_canonical) < _MAX_CANONICAL:
            _canonical[name] = canonical
    return canonical
