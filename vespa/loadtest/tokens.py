# -*- test-case-name: tests.test_loadtest_runner,tests.test_loadtest_e2e -*-
"""
Telling tokens in a streamed answer as its chunks arrive, for time to first
token and the gaps between tokens.

A token is an event that carries generated text: a server-sent event
(OpenAI-compatible servers, TGI) whose JSON holds text in
``choices[].delta.content`` (or ``reasoning_content``), ``choices[].text``
or ``token.text``; or a JSON line (Ollama) with a non-empty ``response`` or
``message.content``. Events without text (the chat role event, the final
usage event, ``[DONE]``) are not tokens, so the first token is the first
text, not the first byte.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["TokenCounter", "has_text"]


def _text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def has_text(event: Any) -> bool:
    """Whether a decoded stream event carries generated text."""
    if not isinstance(event, dict):
        return False
    for choice in event.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict) and any(
            _text(delta.get(k)) for k in ("content", "reasoning_content", "reasoning")
        ):
            return True
        if _text(choice.get("text")):
            return True
    token = event.get("token")
    if isinstance(token, dict) and _text(token.get("text")):
        return True
    message = event.get("message")
    return _text(event.get("response")) or (
        isinstance(message, dict) and _text(message.get("content"))
    )


class TokenCounter:
    """
    Counts the tokens of a stream fed chunk by chunk (lines may be split
    across chunks).
    """

    def __init__(self) -> None:
        self._buffer = b""
        self.tokens = 0

    def feed(self, data: bytes) -> int:
        """Take the next chunk; return the tokens it completed."""
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        return self._count(lines)

    def finish(self) -> int:
        """The stream ended: count an unterminated last line."""
        line, self._buffer = self._buffer, b""
        return self._count([line])

    def _count(self, lines: list[bytes]) -> int:
        found = 0
        for line in lines:
            line = line.strip()
            if line.startswith(b"data:"):
                line = line[5:].strip()
            if not line or line == b"[DONE]" or line[:1] not in (b"{", b"["):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if has_text(event):
                found += 1
        self.tokens += found
        return found
