"""
Raw HTTP/1.1 over a loopback socket, for the attack tests: request heads,
huge form bodies, and the parse of an answer a parsing client would hide.
Not a test module.
"""

from __future__ import annotations

import io

from twisted.web.client import FileBodyProducer

from .support import raw_connect

#: A form body of this size froze a worker for 9 s (urlencoded) to 25 s (multipart).
FORM_SIZE = 60 << 20

URLENCODED = b"application/x-www-form-urlencoded"


def urlencoded_form(size: int) -> bytes:
    """An ``application/x-www-form-urlencoded`` body of about ``size`` bytes, many fields."""
    field = b"field%07d=" + b"v" * 100
    return b"&".join(field % (i,) for i in range(size // (len(field) + 2)))


BOUNDARY = b"vespa-attack-boundary"
MULTIPART = b"multipart/form-data; boundary=" + BOUNDARY


def multipart_form(size: int) -> bytes:
    """A ``multipart/form-data`` body of about ``size`` bytes, many parts."""
    part = (
        b"--"
        + BOUNDARY
        + b'\r\nContent-Disposition: form-data; name="f%07d"\r\n\r\n'
        + b"v" * 100
        + b"\r\n"
    )
    return b"".join(part % (i,) for i in range(size // len(part))) + b"--" + BOUNDARY + b"--\r\n"


def post_head(target: bytes, content_type: bytes, length: int) -> bytes:
    """The head of a raw HTTP/1.1 POST that closes the connection."""
    return (
        b"POST %s HTTP/1.1\r\nHost: worker\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n" % (target, content_type, length)
    )


async def exchange(port: int, head: bytes, body: bytes = b"") -> bytes:
    """
    Send ``head`` then ``body`` on a new connection; return all that comes
    back until it closes. The body is sent as fast as the peer reads it, in
    pieces (one 60 MB write would stall this process copying it).
    """
    client = await raw_connect(port)
    client.transport.write(head)
    if body:
        producer = FileBodyProducer(io.BytesIO(body), readSize=1 << 18)
        client.transport.registerProducer(producer, True)
        await producer.startProducing(client.transport)
        client.transport.unregisterProducer()
    await client.closed
    return client.data


def parse(answer: bytes) -> tuple[bytes, dict[bytes, list[bytes]], bytes]:
    """The status line, headers (lower-case names) and body of a raw response."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers: dict[bytes, list[bytes]] = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return status, headers, body
