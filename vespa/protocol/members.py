# -*- test-case-name: tests.test_envelope -*-
"""
The scanner under :func:`vespa.protocol.envelope.parse_envelope`: a JSON text
validated whole, the values of its few routing members built (and only when
small), and where each top-level member's value is in the text, so the
payload can be sliced out as the caller wrote it.

It raises plain errors (:class:`ValueError` for invalid JSON,
:class:`RecursionError`, :class:`NotAnObject`, :class:`TooLarge`); the
envelope turns them into the refusals the caller sees.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, NoReturn

_WHITESPACE = re.compile(r"[ \t\n\r]*")
# The JSON module's own string scanner (C when available): (text, index after
# the opening quote, strict) -> (the string, the index after its closing quote).
_scanstring: Callable[[str, int, bool], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


class NotAnObject(Exception):
    """The text is valid JSON, but not an object."""


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _discard(_: object) -> None:
    return None


# Both decoders hand every object and number to a Python function: besides
# keeping or discarding the value, that lets a parse running in a thread give
# the interpreter lock back to the reactor thread every few milliseconds.
_KEEP = json.JSONDecoder(
    object_pairs_hook=lambda pairs: dict(pairs),
    parse_int=lambda text: int(text),
    parse_float=lambda text: float(text),
    parse_constant=_refuse_constant,
)
_CHECK = json.JSONDecoder(
    object_pairs_hook=_discard,
    parse_int=_discard,
    parse_float=_discard,
    parse_constant=_refuse_constant,
)
#: The members whose values are built; every other one is only validated.
_BUILT = frozenset({"auth_data", "session_id"})

MAX_BUILT_MEMBER = 64 * 1024
"""The largest ``auth_data`` or ``session_id`` accepted, in characters of JSON text."""


class TooLarge(Exception):
    """A member that is built into Python values is over :data:`MAX_BUILT_MEMBER`."""


def walk(text: str) -> tuple[dict[str, Any], dict[str, tuple[int, int]]]:
    """
    Parse the JSON ``text``: the values of :data:`_BUILT` members, and where
    each top-level member's value starts and ends in ``text``.
    """
    end = len(text)
    i = _after_whitespace(text, 0)
    if i == end or text[i] != "{":
        _, value_end = _CHECK.raw_decode(text, i)
        if _after_whitespace(text, value_end) != end:
            raise ValueError("extra data")
        raise NotAnObject()
    values: dict[str, Any] = {}
    spans: dict[str, tuple[int, int]] = {}
    i = _skip(text, i + 1)
    if text[i] == "}":
        i += 1
    else:
        while True:
            if text[i] != '"':
                raise ValueError("expecting a property name")
            key, i = _scanstring(text, i + 1, True)
            i = _skip(text, i)
            if text[i] != ":":
                raise ValueError("expecting ':'")
            i = _skip(text, i + 1)
            value, value_end = _CHECK.raw_decode(text, i)
            if key in _BUILT:
                if value_end - i > MAX_BUILT_MEMBER:
                    # Built as Python objects, a large value would cost many
                    # times its size in memory; routing data is never large.
                    raise TooLarge(key)
                value = _KEEP.raw_decode(text, i)[0]
            values[key] = value
            spans[key] = (i, value_end)
            i = _skip(text, value_end)
            if text[i] == "}":
                i += 1
                break
            if text[i] != ",":
                raise ValueError("expecting ',' or '}'")
            i = _skip(text, i + 1)
    if _after_whitespace(text, i) != end:
        raise ValueError("extra data")
    return values, spans


def _after_whitespace(text: str, i: int) -> int:
    """The index after the JSON whitespace at ``i``."""
    match = _WHITESPACE.match(text, i)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _skip(text: str, i: int) -> int:
    """The index after the whitespace at ``i``, which must not be the end of ``text``."""
    i = _after_whitespace(text, i)
    if i == len(text):
        raise ValueError("the JSON text ends too early")
    return i


def byte_span(body: bytes, text: str, encoding: str, start: int, end: int) -> tuple[int, int]:
    """
    Where ``text[start:end]`` is in ``body``, as the caller sent it. A body in
    UTF-16 or UTF-32 (JSON allows them) is re-encoded as UTF-8 by
    :func:`~vespa.protocol.envelope.parse_envelope` first, so this is never asked about one.
    """
    if len(text) == len(body):  # ASCII: characters are bytes
        return start, end
    # Count the bytes before and after, not inside: a large payload is not
    # re-encoded, and the caller's bytes are kept whatever their spelling.
    before = len(text[:start].encode("utf-8", "surrogatepass"))
    if encoding == "utf-8-sig":
        before += 3
    after = len(text[end:].encode("utf-8", "surrogatepass"))
    return before, len(body) - after
