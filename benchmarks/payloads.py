"""
The fixed bodies the benchmark backends answer with (nginx and sse_backend.py alike).

Besides the small JSON measured, there is a minimal OpenAI-compatible surface
(one model; a 16-token chat completion), so a worker that probes and
benchmarks its model server at startup gets ready at once.
"""

from __future__ import annotations

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
