"""
Call a Vast endpoint from Python code, no proxy: ``VespaClient`` routes,
signs, retries, hedges and streams in-process.

This example runs on asyncio (Twisted's asyncio reactor, installed first);
in Twisted code the same calls are awaited in ``ensureDeferred`` coroutines,
or under ``twisted.internet.task.react``.

::

    export VAST_ENDPOINT=my-endpoint VAST_API_KEY=...   # or pass them below
    python examples/use_module.py

``VESPA_AUTOSCALER_URL`` points the client at another autoscaler (the
stand-in of the README demo: ``http://127.0.0.1:8080``).
"""

from __future__ import annotations

import asyncio
import json
import sys

from twisted.internet import asyncioreactor

MESSAGES = [{"role": "user", "content": "Say hello to Vast."}]


async def main() -> int:
    from vespa.client.api import VespaClient

    # Endpoint and key from VAST_ENDPOINT and VAST_API_KEY; any request
    # preference can be a default here (hedge_delay=2.0, max_retries=2, ...).
    client = VespaClient(timeout_s=120)
    try:
        response = await client.post(
            "/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 16}
        )
        await response.raise_for_status()
        answer = await response.json()
        print("worker:", response.worker)
        print("attempts:", response.attempts)
        print("answer:", answer["choices"][0]["message"]["content"])

        response = await client.post(
            "/v1/chat/completions",
            json={"messages": MESSAGES, "max_tokens": 16, "stream": True},
        )
        await response.raise_for_status()
        print("streamed:", end="", flush=True)
        buffer = b""
        async for chunk in response.iter_chunks():  # server-sent events, as they come
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.startswith(b"data: {"):
                    delta = json.loads(line[len(b"data: ") :])["choices"][0]["delta"]
                    print(delta.get("content") or "", end="", flush=True)
        print()
    finally:
        await client.close()
    return 0


def run() -> int:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
    from twisted.internet import reactor

    outcome: list[int] = []

    async def wrapped() -> None:
        try:
            outcome.append(await main())
        except Exception:
            import traceback

            traceback.print_exc()
        finally:
            reactor.stop()  # type: ignore[attr-defined]

    reactor.callWhenRunning(lambda: loop.create_task(wrapped()))  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return outcome[0] if outcome else 1


if __name__ == "__main__":
    sys.exit(run())
