# -*- test-case-name: tests.test_envelope -*-
"""
The scanner under :func:`vespa.protocol.envelope.parse_envelope`: a JSON text
validated whole, the values of its top-level members built (all of them, in
C, for a small body; only the few routing ones, and only when small,
otherwise), and where each member's value is in the text, so the payload can
be sliced out as the caller wrote it.

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
_WHITESPACE_CHARACTERS = " \t\n\r"
# The JSON module's own string scanner (C when available): (text, index after
# the opening quote, strict) -> (the string, the index after its closing quote).
_scanstring: Callable[[str, int, bool], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


class _NotParsed:
    """The type of :data:`NOT_PARSED`."""

    def __repr__(self) -> str:
        return "NOT_PARSED"


NOT_PARSED: Any = _NotParsed()
"""The value of a member that was validated, not built (``None`` is JSON ``null``)."""


class NotAnObject(Exception):
    """The text is valid JSON, but not an object."""


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _discard(_: object) -> None:
    return None


# For a body parsed on the reactor thread: everything in C (only NaN and
# Infinity call back, to be refused), every member built.
_BUILD = json.JSONDecoder(parse_constant=_refuse_constant)
# For a large body, parsed in a thread: both decoders hand every object and
# number to a Python function. Besides keeping or discarding the value, that
# lets the parse give the interpreter lock back to the reactor thread every
# few milliseconds.
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
#: The members whose values are always built; every other one is only
#: validated, unless the whole text is built.
_BUILT = frozenset({"auth_data", "session_id"})

MAX_BUILT_MEMBER = 64 * 1024
"""The largest ``auth_data`` or ``session_id`` accepted, in characters of JSON text."""


class TooLarge(Exception):
    """A member that is built into Python values is over :data:`MAX_BUILT_MEMBER`."""


def _scanner(decoder: json.JSONDecoder) -> Callable[[str, int], tuple[Any, int]]:
    """
    ``decoder``'s scanner (C when available): (text, index) to (the value at
    index, the index after it), or :class:`StopIteration` if no value starts
    there. ``raw_decode`` without its Python frame and whitespace step.
    """
    scan: Callable[[str, int], tuple[Any, int]] = decoder.scan_once  # type: ignore[attr-defined]
    return scan


def walk(
    text: str, *, build_all: bool = False
) -> tuple[dict[str, Any], dict[str, tuple[int, int]]]:
    """
    Parse the JSON ``text``: the values of its top-level members, and where
    each member's value starts and ends in ``text``.

    :param build_all: build every member's value, in C; else only those of
        :data:`_BUILT` (the others are :data:`NOT_PARSED`), with the Python hooks that
        keep a long parse in a thread from holding the interpreter lock.
    """
    end = len(text)
    i = _after_whitespace(text, 0)
    if i == end or text[i] != "{":
        _, value_end = _CHECK.raw_decode(text, i)
        if _after_whitespace(text, value_end) != end:
            raise ValueError("extra data")
        raise NotAnObject()
    scan = _scanner(_BUILD if build_all else _CHECK)
    values: dict[str, Any] = {}
    spans: dict[str, tuple[int, int]] = {}
    # The whitespace steps are inline (a character test, the regex only when
    # there is whitespace) and the end of the text is an IndexError: this loop
    # runs on every request.
    spaces = _WHITESPACE_CHARACTERS
    after_spaces = _WHITESPACE.match
    try:
        i += 1
        if text[i] in spaces:
            i = after_spaces(text, i).end()  # type: ignore[union-attr]
        if text[i] == "}":
            i += 1
        else:
            while True:
                if text[i] != '"':
                    raise ValueError("expecting a property name")
                key, i = _scanstring(text, i + 1, True)
                if text[i] in spaces:
                    i = after_spaces(text, i).end()  # type: ignore[union-attr]
                if text[i] != ":":
                    raise ValueError("expecting ':'")
                i += 1
                if text[i] in spaces:
                    i = after_spaces(text, i).end()  # type: ignore[union-attr]
                try:
                    value, value_end = scan(text, i)
                except StopIteration:
                    raise ValueError("expecting a value") from None
                if key in _BUILT:
                    if value_end - i > MAX_BUILT_MEMBER:
                        # Built as Python objects, a large value would cost many
                        # times its size in memory; routing data is never large.
                        raise TooLarge(key)
                    if not build_all:
                        value = _KEEP.raw_decode(text, i)[0]
                elif not build_all:
                    value = NOT_PARSED
                values[key] = value
                spans[key] = (i, value_end)
                i = value_end
                if text[i] in spaces:
                    i = after_spaces(text, i).end()  # type: ignore[union-attr]
                if text[i] == "}":
                    i += 1
                    break
                if text[i] != ",":
                    raise ValueError("expecting ',' or '}'")
                i += 1
                if text[i] in spaces:
                    i = after_spaces(text, i).end()  # type: ignore[union-attr]
    except IndexError:
        raise ValueError("the JSON text ends too early") from None
    if _after_whitespace(text, i) != end:
        raise ValueError("extra data")
    return values, spans


def _after_whitespace(text: str, i: int) -> int:
    """The index after the JSON whitespace at ``i``."""
    # Most bodies are compact: one test of a character, not a regex match.
    if i < len(text) and text[i] in _WHITESPACE_CHARACTERS:
        match = _WHITESPACE.match(text, i)
        assert match is not None  # the pattern matches the empty string
        return match.end()
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
