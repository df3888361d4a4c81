# -*- test-case-name: tests.test_worker_tap -*-
"""
Send one properly signed request through a worker, the way a Vast client does:
ask the autoscaler for a worker (``POST /route/``), wrap the request in the
routing data it signed, send it to the worker and stream the answer to stdout.

For the demo (``twistd -n vespa --demo``)::

    python -m vespa.testing.signed_request /v1/chat/completions \\
        '{"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 20, "stream": true}'

This is a demonstration and a debugging aid; ``vespa-client`` is the real client.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
import urllib.request
from typing import Any
from urllib.parse import urlencode, urlsplit

from vespa.protocol.envelope import auth_query, wrap_body

AUTH_KEYS = ("cost", "endpoint", "reqnum", "request_idx", "signature", "url")


def route(autoscaler: str, api_key: str, endpoint: str, cost: float, wait: float) -> dict[str, Any]:
    """
    Ask the autoscaler for a worker, polling while none is ready (up to ``wait`` s).
    """
    deadline = time.monotonic() + wait
    body: dict[str, Any] = {"endpoint": endpoint, "cost": cost}
    while True:
        request = urllib.request.Request(
            autoscaler.rstrip("/") + "/route/",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: dict[str, Any] = json.load(response)
        if "url" in answer:
            return answer
        if time.monotonic() > deadline:
            raise SystemExit(f"no worker became ready: {answer.get('status', answer)}")
        body["request_idx"] = answer.get("request_idx")
        time.sleep(0.5)


def send(method: str, path: str, payload: Any, routing: dict[str, Any]) -> int:
    """
    Send the wrapped request to the routed worker; stream the body to stdout.

    :return: the worker's status code.
    """
    auth = {key: routing[key] for key in AUTH_KEYS}
    worker = urlsplit(routing["url"])
    connection = http.client.HTTPConnection(worker.hostname, worker.port, timeout=600)
    if method in ("POST", "PUT", "PATCH"):
        connection.request(
            method,
            path,
            body=wrap_body(auth, payload),
            headers={"Content-Type": "application/json"},
        )
    else:
        separator = "&" if "?" in path else "?"
        connection.request(method, path + separator + urlencode(auth_query(auth)))
    response = connection.getresponse()
    print(f"HTTP {response.status} {response.reason} from {routing['url']}", file=sys.stderr)
    while chunk := response.read1(65536):
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
    return response.status


def main(argv: list[str] | None = None) -> int:
    """
    The command line: ``python -m vespa.testing.signed_request PATH [JSON]``.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="the path on the model server, e.g. /v1/chat/completions")
    parser.add_argument("payload", nargs="?", help="the JSON body (POST), or nothing (GET)")
    parser.add_argument("--method", help="default: POST with a payload, GET without")
    parser.add_argument("--autoscaler", default="http://127.0.0.1:8080")
    parser.add_argument("--api-key", default="demo-key")
    parser.add_argument("--endpoint", default="demo-endpoint")
    parser.add_argument(
        "--cost",
        type=float,
        default=None,
        help="the workload (default: max_tokens of the payload, else 1)",
    )
    parser.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for a ready worker"
    )
    args = parser.parse_args(argv)
    payload = json.loads(args.payload) if args.payload else None
    method = args.method or ("POST" if payload is not None else "GET")
    cost = args.cost
    if cost is None:
        cost = (payload or {}).get("max_tokens", 1) if isinstance(payload, dict) else 1
    routing = route(args.autoscaler, args.api_key, args.endpoint, cost, args.wait)
    status = send(method, args.path, payload, routing)
    return 0 if status < 400 else 1


if __name__ == "__main__":
    sys.exit(main())
