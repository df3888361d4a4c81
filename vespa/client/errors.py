# -*- test-case-name: tests.test_client_policy,tests.test_client_router -*-
"""
The errors the client side answers with, each naming its origin.

``origin`` says who caused the failure, so a caller can tell a bad key from a
dead worker: ``vespa`` (this client: bad request, queue full, deadline),
``autoscaler`` (``/route/`` and the console API) or ``worker`` (the routed
worker could not be reached or failed before answering). They are
:class:`vespa.errors.VespaError` subclasses, answered by
:func:`vespa.errors.write_error` as ``{"error": ..., "origin": ...}``.
"""

from __future__ import annotations

from vespa.errors import VespaError


class UnsupportedBody(VespaError, status=415):
    """A body method carried a body that is not JSON (415): workers take JSON only."""


class TooManyRequests(VespaError, status=429):
    """This client's in-flight limit and its queue are both full (429)."""


class DeadlineExceeded(VespaError, status=504):
    """The request's ``timeout_s`` passed before a worker answered (504)."""


class AutoscalerError(VespaError, status=502, origin="autoscaler"):
    """The autoscaler answered something unusable, or not at all (502)."""


class AutoscalerUnauthorized(AutoscalerError, status=401):
    """The autoscaler (or the console API) refused the key (401)."""


class EndpointNotFound(AutoscalerError, status=404):
    """The autoscaler or the console does not know the endpoint (404)."""


class NoWorkerReady(AutoscalerError, status=503):
    """No worker became ready before the routing deadline (503)."""


class WorkerUnavailable(VespaError, status=502, origin="worker"):
    """
    The worker could not be reached, or failed before its first byte (502).

    :param maybe_delivered: whether the request may have reached the worker
        (and so its model server): ``False`` only when nothing of it was
        sent (the connection was refused, timed out or never made), which is
        what makes a retry safe for a request that is not idempotent.
    """

    def __init__(
        self,
        message: str,
        *,
        maybe_delivered: bool = True,
        headers: dict[str, str] | None = None,
        details: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message, headers=headers, details=details)
        self.maybe_delivered = maybe_delivered


class WorkerTimeout(WorkerUnavailable, status=504):
    """The worker did not connect, or sent no first byte, in time (504)."""


class BatchPartFailed(VespaError, status=502, origin="worker"):
    """
    One part of a split batch failed, so the whole request did (the part's
    own status for a 4xx, else 502); the body names the part.
    """

    def __init__(
        self, message: str, *, status: int = 502, details: dict[str, object] | None = None
    ) -> None:
        super().__init__(message, details=details)
        # The class's status is the default; a part refused with a 4xx keeps
        # its own (an input too long is the caller's error, not a bad gateway).
        setattr(self, "status", status)  # noqa: B010
