# -*- test-case-name: tests.test_operations -*-
"""
The ids the worker gives requests that come without one: random UUID4s, in
their canonical text form.

The randomness is the kernel's (``os.urandom``), read for many ids at once:
a ``getrandom`` call per id was one in five of the worker's system calls per
relayed POST (``strace -c`` under wrk: a ``recv`` and a ``send`` on each
side, and that one).
"""

from __future__ import annotations

import os

__all__ = ["new_request_id"]

#: Ids' worth of random bytes read from the kernel at a time.
BATCH = 256

# A UUID4's fixed bits: version 4 in bits 76-79, the RFC 4122 variant (10) in bits 62-63.
_UUID4_RANDOM = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID4_FIXED = (4 << 76) | (2 << 62)


class _Entropy:
    """Random bytes from ``os.urandom``, read :data:`BATCH` ids' worth at a time."""

    def __init__(self) -> None:
        self._bytes = b""
        self._at = 0

    def take(self, count: int) -> bytes:
        """The next ``count`` random bytes; each is handed out once."""
        at = self._at
        if at + count > len(self._bytes):
            self._bytes, at = os.urandom(count * BATCH), 0
        self._at = at + count
        return self._bytes[at : at + count]

    def forget(self) -> None:
        """Drop the bytes not handed out yet (a forked child must not reuse its parent's)."""
        self._bytes, self._at = b"", 0


_entropy = _Entropy()
os.register_at_fork(after_in_child=_entropy.forget)


def new_request_id() -> bytes:
    """
    A new random UUID4 in its canonical text form, as ``str(uuid.uuid4())``
    spells it, in half the time (no :class:`uuid.UUID` built).
    """
    value = int.from_bytes(_entropy.take(16), "big") & _UUID4_RANDOM | _UUID4_FIXED
    digits = b"%032x" % value
    return b"-".join((digits[:8], digits[8:12], digits[12:16], digits[16:20], digits[20:]))
