"""
Call a Vast endpoint through the local proxy, ``vespa-client``, with nothing
but the standard library: the proxy routes, signs, retries and streams, so
this is the same code as for any OpenAI-compatible server.

Start the proxy first (it listens on 127.0.0.1:8010)::

    twistd -n --pidfile= vespa-client --endpoint my-endpoint --api-key-file ~/.my_endpoint_key

then::

    python examples/use_proxy.py

``VESPA_CLIENT_URL`` points elsewhere than ``http://127.0.0.1:8010``. The
openai SDK works the same way: ``OpenAI(base_url="http://127.0.0.1:8010/v1",
api_key="unused")``.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request

BASE = os.environ.get("VESPA_CLIENT_URL", "http://127.0.0.1:8010").rstrip("/")
MESSAGES = [{"role": "user", "content": "Say hello to Vast."}]


def post(path: str, payload: dict[str, object]) -> urllib.request.addinfourl:
    request = urllib.request.Request(
        BASE + path,
        data=json.dumps(payload).encode(),
        headers={
            "Content-Type": "application/json",
            # Optional: how hard the proxy tries for this request.
            "X-Vespa-Request-Preferences": json.dumps({"max_retries": 2, "timeout_s": 120}),
        },
        method="POST",
    )
    return urllib.request.urlopen(request, timeout=300)


def main() -> int:
    with post("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 16}) as response:
        answer = json.load(response)
        print("worker:", response.headers["X-Vespa-Worker"])
        print("attempts:", response.headers["X-Vespa-Attempts"])
        print("answer:", answer["choices"][0]["message"]["content"])

    print("streamed:", end="", flush=True)
    payload = {"messages": MESSAGES, "max_tokens": 16, "stream": True}
    with post("/v1/chat/completions", payload) as response:
        for line in response:
            data = line.decode().strip()
            if not data.startswith("data: ") or data == "data: [DONE]":
                continue
            delta = json.loads(data[len("data: ") :])["choices"][0]["delta"]
            print(delta.get("content") or "", end="", flush=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
