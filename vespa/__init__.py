"""Vespa: a serverless worker proxy for GPU model servers, built on Twisted.

The worker daemon (``twistd vespa``) fronts a model server; the client daemon
(``twistd vespa-client``) routes a caller's requests to workers.
"""

__version__ = "0.1.0"
