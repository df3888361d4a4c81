"""
Run the official Vast worker (``vastai==1.9.1``, ``vastai.serverless.server``)
in front of a model server on loopback, for the oracle tests.

Usage: ``python tests/official_worker.py BACKEND_PORT LOG_FILE``, with the
Vast variables in the environment (``WORKER_PORT``, ``WORKER_HTTP_PORT``,
``REPORT_ADDR``, ``CONTAINER_ID``, ``MASTER_TOKEN``, ``PUBLIC_IPADDR``,
``VAST_TCP_PORT_<WORKER_PORT>``). One route, ``/echo``, benchmarked with one
request and refusing (429) while anything is in flight (``max_queue_time``
0), and ``/hang``, whose backend never answers. The worker is loaded once
``LOG_FILE`` holds ``READY`` and the backend's ``/health`` answers 200. It
listens on 127.0.0.1 only, and writes its benchmark cache in the working
directory.
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


def main(backend_port: int, log_file: str) -> None:
    """Configure and run the official worker until it is killed."""
    config = WorkerConfig(
        model_server_url="http://127.0.0.1",
        model_server_port=backend_port,
        model_log_file=log_file,
        model_healthcheck_url="/health",
        handlers=[
            HandlerConfig(
                route="/echo",
                allow_parallel_requests=True,
                max_queue_time=0.0,
                benchmark_config=BenchmarkConfig(
                    dataset=[{"x": 1}], runs=1, concurrency=1, do_warmup=False
                ),
            ),
            HandlerConfig(route="/hang", allow_parallel_requests=True),
        ],
        log_action_config=LogActionConfig(on_load=["READY"]),
    )
    Worker(config).run(host="127.0.0.1")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
