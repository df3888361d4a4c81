"""
The official Vast worker (``vastai==1.9.1``, ``vastai.serverless.server``,
aiohttp) as the benchmark's peer: the same backends, the same requests.

Usage: ``python benchmarks/official_peer.py BACKEND_PORT LOG_FILE ROUTE``, with
the Vast variables in the environment (``WORKER_PORT``, ``WORKER_HTTP_PORT``,
``REPORT_ADDR``, ``UNSECURED``, ``VAST_TCP_PORT_<WORKER_PORT>``, ...).
``ROUTE`` is relayed to the same path on the backend (``POST``, the payload
of the Vast envelope as the JSON body), in parallel and never refused for
queue time, as a model route is configured for throughput. Its startup
benchmark is one request with a one-event payload. The worker is loaded once
``LOG_FILE`` holds ``READY`` (the orchestrator writes it before starting it).
It runs as the official worker runs, its own DEBUG logging included.
"""

from __future__ import annotations

import sys

from vastai.serverless.server.worker import (
    BenchmarkConfig,
    HandlerConfig,
    LogActionConfig,
    Worker,
    WorkerConfig,
)


def main(backend_port: int, log_file: str, route: str) -> None:
    """Configure and run the official worker until it is killed."""
    config = WorkerConfig(
        model_server_url="http://127.0.0.1",
        model_server_port=backend_port,
        model_log_file=log_file,
        model_healthcheck_url="/health",
        handlers=[
            HandlerConfig(
                route=route,
                allow_parallel_requests=True,
                max_queue_time=None,
                benchmark_config=BenchmarkConfig(
                    dataset=[{"events": 1, "interval": 0}], runs=1, concurrency=1,
                    do_warmup=False,
                ),
            ),
        ],
        log_action_config=LogActionConfig(on_load=["READY"]),
    )
    Worker(config).run(host="127.0.0.1")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
