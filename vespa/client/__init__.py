"""
The client side of Vespa: the local routing proxy (``twistd vespa-client``,
or the ``vespa-client`` console script) and the Python API
(:class:`vespa.client.api.VespaClient`).

Both route each request at the Vast autoscaler, wrap it in the signed routing
data, send it to a worker and stream the answer back, with safe retries,
optional hedging and batching. The parts, in the order a request meets them:

=============  ==============================================================
``config``     settings: command line, environment, defaults
``resource``   the local proxy's ``twisted.web`` resource (``api``: the API)
``core``       a caller's request to a :class:`~vespa.client.wrapping.Call`,
               then to a reply; builds the parts from a config
``wrapping``   the cost, and the body or query carrying the routing data
``policy``     preferences, budgets, backoff, the in-flight limit, and the
               dispatcher: retries and hedges
``router``     ``/route/`` calls, waiting for a worker, keys, instances
``worker_url`` checking a route answer's worker URL before it is used
``upstream``   one attempt at one worker, up to its first byte
``batch``      splitting list inputs and merging the parts
``tls``        trusting Vast's root CA for https workers
``errors``     the errors, each with its origin
``tap``/``cli``  ``twistd vespa-client`` and the console script (wiring)
=============  ==============================================================
"""
