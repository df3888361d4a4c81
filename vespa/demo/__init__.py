"""
``twistd vespa --demo``: the whole chain on one machine, with nothing to
install. In front of the worker, a fake model server; beside it, the
autoscaler stand-in the worker reports to; in front of that, a client.

This is the one package that may import both the worker and the client (and
the fakes of :mod:`vespa.testing`); ``vespa.worker.tap`` imports it only when
``--demo`` asks for it, so no production path depends on it.
"""

from vespa.demo.chain import (
    AUTOSCALER_PORT,
    CLIENT_LISTEN,
    MODEL,
    TOKENS_PER_SECOND,
    demo_client,
    demo_services,
    demo_site,
)

__all__ = [
    "AUTOSCALER_PORT",
    "CLIENT_LISTEN",
    "MODEL",
    "TOKENS_PER_SECOND",
    "demo_client",
    "demo_services",
    "demo_site",
]
