# -*- test-case-name: tests.test_backend_client -*-
"""
Reading a backend's HTTP/1.x response: its head, its body's framing, and a
chunked body's chunk sizes.

Only what a relay needs is parsed: the status line, the header lines, and how
the body ends (a length, chunks, the connection's close, or no body). Every
limit is fixed, so a broken or hostile backend cannot grow memory without
bound; whatever does not parse raises :class:`MalformedResponse`, which the
relay answers like any broken backend (502, or an abnormal end mid-body).

:class:`ChunkedBody` follows a chunked body either **raw** (the bytes as
received, framing included, minus the last-chunk and the trailers, for a
caller that speaks chunked too; a size line with extensions is rewritten
plain, as strict clients such as twisted.web's refuse spaces in it) or
**decoded** (the payload only).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = [
    "MAX_HEAD",
    "MAX_HEADERS",
    "ChunkedBody",
    "Framing",
    "MalformedResponse",
    "ResponseHead",
    "head_end",
    "parse_head",
]

#: The most bytes a response head (status line and headers) may take.
MAX_HEAD = 64 * 1024
#: The most header lines a response head may have.
MAX_HEADERS = 100
#: The longest chunk-size line (size and extensions).
MAX_CHUNK_LINE = 4096
#: The most bytes of trailers after the last chunk.
MAX_TRAILERS = 16 * 1024

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# Header lines, each ending in CRLF; a value holds no CR, LF or NUL.
_HEADER_LINES = re.compile(rb"(?:" + _TOKEN + rb":[^\r\n\0]*\r\n)*")
_HEADER = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([^\r\n\0]*)\r\n")
# HTTP/1.x, a three-digit status and an optional phrase (no CR or NUL).
_STATUS_LINE = re.compile(rb"(HTTP/1\.[01]) ([0-9]{3})(?: ([^\r\0]*))?")
# The lengths of Connection, Content-Length and Transfer-Encoding.
_FRAMING_NAME_LENGTHS = frozenset({10, 14, 17})
_HEX = b"0123456789abcdefABCDEF"
_NO_BODY_STATUS = frozenset({204, 304})


class MalformedResponse(Exception):
    """The backend sent something that is not an HTTP/1.x response."""


class Framing(enum.Enum):
    """How a response body ends."""

    #: No body at all (a HEAD response, 1xx, 204, 304).
    NONE = "none"
    #: ``Content-Length`` bytes.
    LENGTH = "length"
    #: Chunks, up to the last-chunk and its trailers.
    CHUNKED = "chunked"
    #: Whatever arrives until the backend closes the connection.
    UNTIL_CLOSE = "until-close"


@dataclass(slots=True)
class ResponseHead:
    """
    A response's status line and headers.

    :ivar status: the status code.
    :ivar phrase: the reason phrase, as sent.
    :ivar headers: every header line as ``(name, value)``, in order, as sent.
    :ivar framing: how the body ends.
    :ivar length: the body's length for :attr:`Framing.LENGTH`, else 0.
    :ivar keep_alive: whether the connection may carry another request after
        this response.
    """

    status: int
    phrase: bytes
    headers: list[tuple[bytes, bytes]]
    framing: Framing
    length: int = 0
    keep_alive: bool = True


def head_end(data: bytes) -> int:
    """
    Where the head in ``data`` ends (just past its empty line), or -1 while
    it is incomplete. Lines end in CRLF; a bare LF is accepted, as most
    clients do.
    """
    crlf = data.find(b"\n\r\n")
    bare = data.find(b"\n\n", 0, len(data) if crlf < 0 else crlf + 1)
    if bare >= 0:
        return bare + 2
    return crlf + 3 if crlf >= 0 else -1


def parse_head(head: bytes, *, head_request: bool) -> ResponseHead:
    """
    Parse a complete response head (as :func:`head_end` delimits it).

    :param head: the status line, the header lines and the empty line.
    :param head_request: the request was ``HEAD``: the response has no body
        whatever its headers say.
    :raises MalformedResponse: for anything that is not a valid head.
    """
    if head.count(b"\n") != head.count(b"\r\n"):  # bare LFs: made CRLF
        head = head.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    status_end = head.find(b"\r\n")
    version, status, phrase = _status_line(head[:status_end])
    # Two passes in C over all the header lines, not a few calls per line
    # (10 us a response less): one checks them, one splits them.
    block = head[status_end + 2 : -2]
    if _HEADER_LINES.fullmatch(block) is None:
        raise MalformedResponse(f"a malformed header line in {block[:120]!r}")
    headers: list[tuple[bytes, bytes]] = _HEADER.findall(block)
    if b" \r\n" in block or b"\t\r\n" in block:  # rare: trailing spaces, not the value's
        headers = [(name, value.rstrip(b" \t")) for name, value in headers]
    if len(headers) > MAX_HEADERS:
        raise MalformedResponse(f"the response has more than {MAX_HEADERS} headers")
    lengths: list[bytes] = []
    codings: list[bytes] = []
    close = version != b"HTTP/1.1"
    for name, value in headers:
        if len(name) not in _FRAMING_NAME_LENGTHS:
            continue
        lower = name.lower()
        if lower == b"content-length":
            lengths.extend(v.strip() for v in value.split(b","))
        elif lower == b"transfer-encoding":
            codings.extend(c.strip().lower() for c in value.split(b",") if c.strip())
        elif lower == b"connection" and b"close" in (t.strip().lower() for t in value.split(b",")):
            close = True
    framing, length = _framing(status, head_request, lengths, codings)
    keep_alive = not close and framing is not Framing.UNTIL_CLOSE
    return ResponseHead(status, phrase, headers, framing, length, keep_alive)


def _status_line(line: bytes) -> tuple[bytes, int, bytes]:
    match = _STATUS_LINE.fullmatch(line)
    if match is None:
        raise MalformedResponse(f"not an HTTP/1.x status line: {line[:80]!r}")
    version, code, phrase = match.groups()
    return version, int(code), phrase or b""


def _framing(
    status: int, head_request: bool, lengths: list[bytes], codings: list[bytes]
) -> tuple[Framing, int]:
    # RFC 9112 section 6.3, in its order.
    if head_request or status < 200 or status in _NO_BODY_STATUS:
        return Framing.NONE, 0
    if codings:
        # Chunked must be the last coding; any other ends at the close.
        return (Framing.CHUNKED if codings[-1] == b"chunked" else Framing.UNTIL_CLOSE), 0
    if lengths:
        if len(set(lengths)) != 1 or not lengths[0].isdigit() or len(lengths[0]) > 18:
            raise MalformedResponse(f"an invalid Content-Length: {b','.join(lengths)[:80]!r}")
        return Framing.LENGTH, int(lengths[0])
    return Framing.UNTIL_CLOSE, 0


# The states of a chunked body.
_SIZE, _DATA, _CRLF, _TRAILER, _DONE = range(5)


class ChunkedBody:
    """
    Follows a chunked body through the reads it arrives in.

    :param raw: hand out the body as received (chunk-size lines, data and
        CRLFs), holding back only the last-chunk and the trailers, so that a
        caller's chunked response can carry it as it is; a size line with
        extensions is handed out plain (``%x`` and CRLF). Else hand out the
        payload only.
    """

    def __init__(self, *, raw: bool) -> None:
        self.raw = raw
        self._state = _SIZE
        self._left = 0  # data bytes left in the current chunk
        self._line = b""  # a size or trailer line that is not complete yet
        self._crlf = b""  # the CRLF after a chunk's data, as far as it came
        self._trailers = 0

    @property
    def done(self) -> bool:
        """Whether the last-chunk and the trailers have arrived."""
        return self._state == _DONE

    def feed(self, data: bytes) -> tuple[bytes, int]:
        """
        Take the next read of the body.

        :return: the bytes to hand on (raw or decoded, maybe empty), and where
            in ``data`` the body ended (-1 while it goes on): what follows is
            not part of it.
        :raises MalformedResponse: on broken framing or an over-long line.
        """
        if self._state == _SIZE and not self._line:
            # The common read, one SSE event: exactly one whole chunk with a
            # plain size line, checked with a few C calls.
            eol = data.find(b"\r\n", 0, 18)
            if eol > 0 and not data[:eol].lstrip(_HEX):
                size = int(data[:eol], 16)
                if size and len(data) == eol + size + 4 and data.endswith(b"\r\n"):
                    return (data if self.raw else data[eol + 2 : -2]), -1
        pos, end = 0, len(data)
        raw = self.raw
        pieces: list[bytes] = []
        # Raw: the run of ``data`` from ``span`` on is handed on as it is
        # (one slice, no copy when it is the whole read), up to a size line
        # that must be written out on its own, a line held back, or the end.
        span = end if self._state >= _TRAILER else 0
        while pos < end:
            state = self._state
            if state == _DATA:
                take = min(self._left, end - pos)
                if not raw:
                    pieces.append(data[pos : pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._state = _CRLF
            elif state == _CRLF:
                got = data[pos : pos + 2 - len(self._crlf)]
                pos += len(got)
                self._crlf += got
                if len(self._crlf) == 2:
                    if self._crlf != b"\r\n":
                        raise MalformedResponse("a chunk's data does not end in CRLF")
                    self._crlf = b""
                    self._state = _SIZE
            elif state == _SIZE:
                start = pos
                eol = data.find(b"\n", pos)
                if eol < 0:  # held back until it is known not to be the last-chunk
                    self._held(data[pos:], MAX_CHUNK_LINE)
                    if raw:
                        pieces.append(data[span:start])
                        span = end
                    break
                held, self._line = self._line, b""
                line = held + data[pos : eol + 1]
                size, plain = _chunk_size(line)
                pos = eol + 1
                if not size:  # the last-chunk: it and what follows are held back
                    self._state = _TRAILER
                    if raw:
                        pieces.append(data[span:start])
                        span = end
                    continue
                self._left = size
                self._state = _DATA
                if raw and (held or not plain):
                    # A line begun in the last read, or with extensions or
                    # spaces (which strict clients refuse): written out alone,
                    # extensions dropped (they mean nothing past this hop).
                    pieces.append(data[span:start])
                    pieces.append(line if plain else b"%x\r\n" % (size,))
                    span = pos
            elif state == _TRAILER:
                eol = data.find(b"\n", pos)
                if eol < 0:
                    self._held(data[pos:], MAX_TRAILERS)
                    break
                line, self._line = self._line + data[pos : eol + 1], b""
                pos = eol + 1
                if line in (b"\r\n", b"\n"):
                    self._state = _DONE
                    break
                self._trailers += len(line)
                if self._trailers > MAX_TRAILERS:
                    raise MalformedResponse("the chunked body's trailers are too large")
            else:
                break
        ended = pos if self._state == _DONE else -1
        if raw and span < pos:
            pieces.append(data[span:pos])
        if len(pieces) == 1:
            return pieces[0], ended
        return b"".join(pieces), ended

    def _held(self, part: bytes, limit: int) -> None:
        self._line += part
        if len(self._line) > limit:
            raise MalformedResponse("a chunked body's line is too long")


def _chunk_size(line: bytes) -> tuple[int, bool]:
    """
    The size a chunk-size line (ending in CRLF) states, and whether the line
    is plain: hex digits and its CRLF, nothing else.
    """
    if not line.endswith(b"\r\n") or len(line) > MAX_CHUNK_LINE:
        raise MalformedResponse(f"a bad chunk-size line: {line[:40]!r}")
    text = line[:-2]
    if text and len(text) <= 16 and not text.lstrip(_HEX):
        return int(text, 16), True
    size = text.split(b";", 1)[0].strip(b" \t")
    if not size or len(size) > 16 or size.lstrip(_HEX) or b"\r" in text or b"\0" in text:
        raise MalformedResponse(f"a bad chunk-size line: {line[:40]!r}")
    return int(size, 16), False
