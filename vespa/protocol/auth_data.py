# -*- test-case-name: tests.test_envelope -*-
"""
:class:`AuthData`, the routing data the Vast autoscaler attaches to a
request: what :mod:`vespa.protocol.envelope` reads, and
:mod:`vespa.protocol.signing` verifies.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AuthData"]


@dataclass(frozen=True, init=False)
class AuthData:
    """
    The routing data the autoscaler attached to a request (one per request:
    built in half the time of a frozen dataclass's own ``__init__``).

    :param cost: the workload, exactly as received: an ``int``, a ``float``, or a
        numeric string, never converted, because the signature covers its JSON text.
    :param endpoint: the Vast endpoint name (not the HTTP path).
    :param reqnum: the autoscaler's request number.
    :param request_idx: the autoscaler's id for the request over its whole life.
    :param signature: the standard base64 RSA signature.
    :param url: the worker URL the autoscaler routed to.
    """

    cost: int | float | str
    endpoint: str
    reqnum: int
    request_idx: int
    signature: str
    url: str

    def __init__(
        self,
        cost: int | float | str,
        endpoint: str,
        reqnum: int,
        request_idx: int,
        signature: str,
        url: str,
    ) -> None:
        fields = self.__dict__  # frozen: no setattr, as dataclass's own __init__ does
        fields["cost"], fields["endpoint"], fields["reqnum"] = cost, endpoint, reqnum
        fields["request_idx"], fields["signature"], fields["url"] = request_idx, signature, url

    @property
    def workload(self) -> float:
        """
        The workload this request adds: ``cost`` as a float. The envelope parser
        only builds instances whose cost is a finite, non-negative number.
        """
        return float(self.cost)
