"""
The worker's CPU per POST outside the relay: ``WorkerResource.render`` for the
envelope ``run_hotpath.py`` POSTs, in-process, with a relay that ends each
exchange at once. What is left is the per-request work of the worker itself:
request id, envelope, signature (secured), workload, admission, ledger.

No sockets, no reactor, no HTTP parsing: the figure is steadier than a wrk
run on a shared machine, and A/B comparable across trees::

    PYTHONPATH=/work/main .venv/bin/python benchmarks/render_cost.py
    PYTHONPATH=$PWD       .venv/bin/python benchmarks/render_cost.py

Run both alternately a few times and compare the minima.
"""

from __future__ import annotations

import argparse
import io
import timeit
from collections.abc import Callable, Sequence
from typing import Any

from Crypto.PublicKey import RSA
from payloads import POST_PAYLOAD, envelope
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers

from vespa.http.relay import RelayOutcome, RelayResult
from vespa.protocol.signing import SignatureVerifier, sign
from vespa.worker.admission import Admission
from vespa.worker.ledger import Ledger
from vespa.worker.resource import WorkerResource
from vespa.worker.state import WorkerState
from vespa.worker.workload import Workload

URL = "http://127.0.0.1:8000"


class InstantRelay:
    """A relay whose every exchange ends at once, served."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def forward(self, request: Any, target: bytes, body: bytes | None = None) -> Deferred[Any]:
        return succeed(RelayResult(RelayOutcome.SERVED, status=200, duration=0.001))


class PostRequest:
    """The parts of a twisted.web request the worker reads, for one POST."""

    method = b"POST"
    uri = path = b"/bench"

    def __init__(self, body: bytes) -> None:
        self.content = io.BytesIO(body)
        self.requestHeaders = Headers({b"content-type": [b"application/json"]})
        self.responseHeaders = Headers()


def render_one(secured: bool) -> Callable[[], object]:
    """A function that renders one POST through a fresh worker resource."""
    clock = Clock()
    state = WorkerState(clock)
    state.loaded(100.0)
    verifier = None
    body = envelope(POST_PAYLOAD)
    if secured:
        key = RSA.generate(2048)
        verifier = SignatureVerifier(key.public_key().export_key(), own_url=URL)
        signature = sign(key.export_key(), {"url": URL}, "url")
        body = envelope(POST_PAYLOAD, signature=signature, url=URL)
    resource = WorkerResource(
        InstantRelay(clock),  # type: ignore[arg-type]
        state=state,
        ledger=Ledger(now=clock.seconds),
        admission=Admission(),
        verifier=verifier,
        workload=Workload("auto", "openai_chat"),
    )
    return lambda: resource.render(PostRequest(body))  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=20000, help="renders per timing")
    parser.add_argument("--repeat", type=int, default=7, help="timings; the best is shown")
    args = parser.parse_args(argv)
    for mode in ("unsecured", "secured"):
        render = render_one(mode == "secured")
        render()
        best = min(timeit.repeat(render, number=args.number, repeat=args.repeat))
        print(f"{mode:10s} {best / args.number * 1e6:6.1f} us per POST outside the relay")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
