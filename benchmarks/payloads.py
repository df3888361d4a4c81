"""
The fixed bodies the benchmark backends answer with (nginx and sse_backend.py alike).

Besides the small JSON measured, there is a minimal OpenAI-compatible surface
(one model; a 16-token chat completion), so a worker that probes and
benchmarks its model server at startup gets ready at once.
"""

from __future__ import annotations

import json

#: The small JSON answer measured: about the size of a health or status reply.
FIXED_JSON = b'{"ok":true,"model":"bench","object":"health","latency_ms":0}'

#: ``GET /v1/models``.
MODELS_JSON = b'{"object":"list","data":[{"id":"bench","object":"model","owned_by":"bench"}]}'

#: ``POST /v1/chat/completions`` (non-streaming).
COMPLETION_JSON = (
    b'{"id":"cmpl-bench","object":"chat.completion","model":"bench","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"ok"},"finish_reason":"length"}],'
    b'"usage":{"prompt_tokens":16,"completion_tokens":16,"total_tokens":32}}'
)


#: The small model request every POST benchmark sends, in an :func:`envelope`.
POST_PAYLOAD: dict[str, object] = {"model": "bench", "prompt": "hello", "max_tokens": 16}

#: The SSE backend's shortest stream: what a readiness probe asks of it.
ONE_EVENT: dict[str, object] = {"events": 1, "interval": 0}


def probe_request(route: str, body: bytes) -> bytes:
    """What a worker's readiness wait sends: ``body`` POSTed to ``route``."""
    return b"POST " + route.encode() + b" " + body


def envelope(payload: dict[str, object], *, signature: str = "unsigned", url: str = "") -> bytes:
    """
    A request as Vast's autoscaler routes it: ``{"auth_data": ..., "payload": ...}``.

    Every field the official worker requires is present; ``signature`` is
    only checked by a secured worker (then it is the cached url-only
    signature over ``{"url": url}``, the same on every request).
    """
    auth = {
        "cost": "1",
        "endpoint": "bench",
        "reqnum": 1,
        "request_idx": 1,
        "signature": signature,
        "url": url,
    }
    return json.dumps({"auth_data": auth, "payload": payload}, separators=(",", ":")).encode()
