# -*- test-case-name: tests.test_client_router -*-
"""
The endpoint key: given, or looked up with the account key at
``https://console.vast.ai/api/v0/endptjobs/``, as the original client did.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from vespa.client.control import (
    INSTANCES,
    AnswerTooLarge,
    excerpt,
    json_answer,
    with_timeout,
)
from vespa.client.errors import AutoscalerError, AutoscalerUnauthorized, EndpointNotFound
from vespa.errors import VespaError
from vespa.log import get_logger

log = get_logger(__name__)

#: Attempts of the console key look-up.
KEY_ATTEMPTS = 4
#: The largest console answer read (it lists every endpoint of the account).
CONSOLE_ANSWER_LIMIT = 16 << 20


class KeySource:
    """
    The endpoint key: given, or looked up once with the account key.

    :param key: the endpoint key, if known.
    :param account_key: the account key to look the endpoint key up with.
    :param endpoint: the endpoint name.
    :param console_url: the console API base, ``https://console.vast.ai``.
    :param instance: the autoscaler instance named in the look-up.
    :param http: a treq ``HTTPClient``.
    :param clock: for timeouts and backoff.
    :param timeout: seconds per look-up attempt.
    """

    def __init__(
        self,
        key: str | None,
        *,
        account_key: str | None = None,
        endpoint: str = "",
        console_url: str = INSTANCES["prod"][1],
        instance: str = "prod",
        http: Any = None,
        clock: IReactorTime | None = None,
        timeout: float = 8.0,
    ) -> None:
        if key is None and (account_key is None or http is None or clock is None):
            raise ValueError("an endpoint key, or an account key with http and clock, is needed")
        self._key = key
        self._account_key = account_key
        self._endpoint = endpoint
        self._console_url = console_url.rstrip("/")
        self._instance = instance
        self._http = http
        self._clock = clock
        self._timeout = timeout
        self._fetching: list[Deferred[str]] = []

    @property
    def known(self) -> bool:
        """Whether the endpoint key is at hand."""
        return self._key is not None

    def get(self) -> Deferred[str]:
        """
        The endpoint key; the first call without one looks it up, later calls
        share that look-up. A failed look-up is not remembered: the next call
        tries again.
        """
        if self._key is not None:
            return _succeed(self._key)
        waiter: Deferred[str] = Deferred()
        self._fetching.append(waiter)
        if len(self._fetching) == 1:
            ensureDeferred(self._fetch()).addBoth(self._fetched)
        return waiter

    def _fetched(self, result: Any) -> None:
        waiters, self._fetching = self._fetching, []
        if isinstance(result, str):
            self._key = result
        for waiter in waiters:
            if isinstance(result, str):
                waiter.callback(result)
            else:
                waiter.errback(result)

    async def _fetch(self) -> str:
        assert self._clock is not None
        url = f"{self._console_url}/api/v0/endptjobs/?autoscaler_instance={self._instance}"
        headers = {"Authorization": [f"Bearer {self._account_key}"], "Accept": ["application/json"]}
        last: VespaError = AutoscalerError("the console API could not be reached")
        for attempt in range(KEY_ATTEMPTS):
            if attempt:
                await deferLater(self._clock, 0.3 * attempt, lambda: None)
            try:
                d = ensureDeferred(
                    json_answer(self._http, "GET", url, headers, None, limit=CONSOLE_ANSWER_LIMIT)
                )
                code, parsed, raw = await with_timeout(d, self._timeout, self._clock)
            except TimeoutError:
                last = AutoscalerError(f"the console API ({url}) did not answer in time")
                continue
            except AnswerTooLarge as e:
                last = AutoscalerError(f"the console API ({url}) {e}")
                continue
            except CancelledError:
                raise
            except Exception as e:  # a connection failure of any kind: try again
                last = AutoscalerError(f"the console API ({url}) could not be reached: {e}")
                continue
            if code in (401, 403):
                raise AutoscalerUnauthorized(
                    "the console API refused the account key "
                    f"({code}: {excerpt(parsed, raw, self._account_key)}); check --account-key"
                )
            if code != 200 or not isinstance(parsed, dict):
                said = excerpt(parsed, raw, self._account_key)
                last = AutoscalerError(f"the console API answered {code}: {said}")
                if code < 500:
                    raise last
                continue
            results = parsed.get("results")
            for item in results if isinstance(results, list) else []:
                if isinstance(item, dict) and item.get("endpoint_name") == self._endpoint:
                    key = item.get("api_key")
                    if isinstance(key, str) and key:
                        log.info(
                            "looked up the key of endpoint {endpoint} (id {id})",
                            endpoint=self._endpoint,
                            id=item.get("id"),
                        )
                        return key
            raise EndpointNotFound(
                f"the account has no endpoint named {self._endpoint!r} on the "
                f"{self._instance} instance"
            )
        raise last


def _succeed(value: str) -> Deferred[str]:
    d: Deferred[str] = Deferred()
    d.callback(value)
    return d
