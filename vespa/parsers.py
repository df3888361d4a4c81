# -*- test-case-name: tests.test_config -*-
"""
The parsers of settings: each takes a value's text form and returns the value,
or raises ``ValueError`` saying why it is unusable (:func:`vespa.settings.resolve`
names the option and the source around it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, cast

from twisted.logger import LogLevel

from vespa.log import LEVELS

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(text: str) -> bool:
    """
    Parse ``true/false``, ``yes/no``, ``on/off`` or ``1/0``, in any case.
    """
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def parse_port(text: str) -> int:
    """
    Parse a TCP port number, 1 to 65535.
    """
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (1-65535)")
    return port


def parse_port_or_off(text: str) -> int:
    """
    Parse a TCP port number as :func:`parse_port`, or ``0``/``off`` for none (0).
    """
    if text.strip().lower() in ("0", "off", "none"):
        return 0
    return parse_port(text)


def parse_seconds(text: str) -> float | None:
    """
    Parse a duration in seconds; ``0`` or ``off`` means no limit (``None``).
    """
    word = text.strip().lower()
    if word in ("off", "none", "0"):
        return None
    return _seconds(text) or None


def _seconds(text: str) -> float:
    try:
        seconds = float(text.strip().lower().removesuffix("s"))
    except ValueError:
        raise ValueError(f"not a number of seconds: {text!r}") from None
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"must be a positive number of seconds, got {text!r}")
    return seconds


_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """
    Parse a byte size: ``1048576``, ``512k``, ``64MB``, ``1GiB`` (binary units).
    """
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (examples: 1048576, 512k, 64MB)")
    number, unit = match.groups()
    size = int(number) * _UNITS[(unit or "")[:1].lower()]
    if size <= 0:
        raise ValueError("must be more than 0 bytes")
    return size


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"not a whole number: {text!r}") from None


def parse_positive_float(text: str) -> float:
    """
    Parse a number greater than zero.
    """
    value = _number(text)
    if not 0 < value < float("inf"):
        raise ValueError(f"must be more than 0, got {text!r}")
    return value


def parse_non_negative_float(text: str) -> float:
    """
    Parse a number of 0 or more.
    """
    value = _number(text)
    if not 0 <= value < float("inf"):
        raise ValueError(f"must be 0 or more, got {text!r}")
    return value


def parse_fraction(text: str) -> float:
    """
    Parse a share as a fraction, 0 to 3 (``0.2`` is 20 %).
    """
    value = _number(text)
    if not 0 <= value <= 3:
        raise ValueError(f"must be a fraction between 0 and 3 (0.2 is 20 %), got {text!r}")
    return value


def _whole_at_least(text: str, minimum: int) -> int:
    value = _whole(text)
    if value < minimum:
        raise ValueError(f"must be {minimum} or more, got {value}")
    return value


def parse_positive_int(text: str) -> int:
    """
    Parse a whole number of 1 or more.
    """
    return _whole_at_least(text, 1)


def parse_count(text: str) -> int:
    """
    Parse a whole number of 0 or more.
    """
    return _whole_at_least(text, 0)


def parse_bounded_int(low: int, high: int) -> Callable[[str], int]:
    """
    A parser accepting a whole number from ``low`` to ``high``.
    """

    def parse(text: str) -> int:
        value = parse_positive_int(text) if low >= 1 else parse_count(text)
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def parse_url(text: str) -> str:
    """
    Parse an ``http://`` or ``https://`` URL, without its trailing slash.
    """
    text = text.strip().rstrip("/")
    if not text.startswith(("http://", "https://")) or not text.split("//", 1)[1]:
        raise ValueError(f"expected an http:// or https:// URL, got {text!r}")
    return text


def parse_text(text: str) -> str:
    """
    Take text as it is, without surrounding whitespace.
    """
    return text.strip()


def parse_wait_limit(text: str) -> float | None:
    """
    Parse a wait limit in seconds: ``0`` is a limit (nothing may wait),
    ``off`` or ``none`` is no limit (``None``).
    """
    if text.strip().lower() in ("off", "none"):
        return None
    return _seconds(text)


def parse_workload(text: str) -> str:
    """
    Parse a workload source: ``auto``, ``cost`` or ``module:function``.
    """
    word = text.strip()
    if word.lower() in ("auto", "cost"):
        return word.lower()
    if not _CALCULATOR.match(word):
        raise ValueError(f"expected auto, cost or module:function, got {text!r}")
    return word


_CALCULATOR = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def parse_count_or_off(text: str) -> int | None:
    """
    Parse a whole number of 1 or more, or ``0``/``off`` for none.
    """
    if text.strip().lower() in ("0", "off", "none"):
        return None
    return parse_positive_int(text)


def parse_secret(text: str) -> str:
    """
    Parse a secret given as is, or as ``@/path/to/file`` to read it from a file
    (one line; surrounding whitespace is dropped).
    """
    if text.startswith("@"):
        path = text[1:]
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read the key file {path!r}: {e}") from None
    secret = text.strip()
    if not secret:
        raise ValueError("the key is empty")
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in secret):
        raise ValueError("the key must be printable ASCII without spaces")
    return secret


def parse_choice(*choices: str) -> Callable[[str], str]:
    """
    A parser accepting one of ``choices`` (case-insensitive).
    """

    def parse(text: str) -> str:
        word = text.strip().lower()
        if word not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return word

    return parse


_BENCHMARK = re.compile(r"^([A-Za-z_][\w.]*)(:[A-Za-z_]\w*)?$")


def parse_benchmark(text: str) -> str:
    """
    Check a benchmark reference: a built-in name or ``module:function``.
    """
    if not _BENCHMARK.match(text.strip()):
        raise ValueError(f"expected a built-in name or module:function, got {text!r}")
    return text.strip()


def parse_list(text: str) -> tuple[str, ...]:
    """
    Parse a comma-separated list; blanks are dropped.
    """
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parse_log_level(text: str) -> LogLevel:
    """
    Parse a log level name: debug, info, warning, error or critical.
    """
    try:
        level: LogLevel = LEVELS[text.strip().lower()]
        return level
    except KeyError:
        raise ValueError(f"unknown log level {text!r} (one of {', '.join(LEVELS)})") from None

def parse_listen(text: str) -> str:
    """
    Check a Twisted strports server description, such as ``tcp:3000:interface=127.0.0.1``.
    """
    from twisted.internet.endpoints import serverFromString

    try:
        # Parsing builds an endpoint and never calls its reactor, so any object
        # stands in: MemoryReactor would bring twisted.trial and unittest into
        # every worker's memory (2.3 MiB).
        serverFromString(cast(Any, object()), text)
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise ValueError(f"not a listening description: {text!r} ({e})") from None
    return text


def parse_optional_listen(text: str) -> str | None:
    """
    A listening description as :func:`parse_listen`, or ``none``/``off`` for none.
    """
    if text.strip().lower() in ("none", "off", "0", ""):
        return None
    return parse_listen(text)
