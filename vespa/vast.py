# -*- test-case-name: tests.test_config -*-
"""
What the Vast platform tells an instance through its environment
(``REPORT_ADDR``, ``MASTER_TOKEN``, ``CONTAINER_ID``, the public address).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from vespa.parsers import parse_list, parse_port
from vespa.settings import ConfigError


@dataclass(frozen=True)
class VastEnvironment:
    """
    What the Vast platform tells an instance through its environment.

    Nothing here is required: without ``REPORT_ADDR`` the worker does not
    report, and without the public address it does not bind signatures to its
    url. That is local use.

    :ivar report_addresses: autoscaler base URLs from ``REPORT_ADDR`` (comma list).
    :ivar master_token: ``MASTER_TOKEN``, the credential of every report.
    :ivar container_id: ``CONTAINER_ID``, the worker id in reports.
    :ivar public_url: ``http://PUBLIC_IPADDR:VAST_TCP_PORT_<port>``, when both are set.
    """

    report_addresses: tuple[str, ...] = ()
    master_token: str = ""
    container_id: int = 0
    public_url: str | None = None

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str], port: int | None, *, https: bool = False
    ) -> VastEnvironment:
        """
        Read the Vast variables.

        :param environ: the process environment.
        :param port: the worker's internal port (``VAST_TCP_PORT_<port>`` maps it).
        :param https: the worker serves TLS, so its public url is ``https``.
        :raise ConfigError: for a malformed value, naming the variable.
        """
        addresses = tuple(a.rstrip("/") for a in parse_list(environ.get("REPORT_ADDR", "")))
        for address in addresses:
            if urlsplit(address).scheme not in ("http", "https"):
                raise ConfigError(f"REPORT_ADDR: not an http(s) URL: {address!r}")
        container = environ.get("CONTAINER_ID", "").strip() or "0"
        try:
            container_id = int(container)
        except ValueError:
            raise ConfigError(f"CONTAINER_ID: not a number: {container!r}") from None
        public_ip = environ.get("PUBLIC_IPADDR", "").strip()
        external = environ.get(f"VAST_TCP_PORT_{port}", "").strip() if port else ""
        public_url = None
        if public_ip and external:
            try:
                parse_port(external)
            except ValueError as e:
                raise ConfigError(f"VAST_TCP_PORT_{port}: {e}") from None
            host = f"[{public_ip}]" if ":" in public_ip else public_ip
            public_url = f"{'https' if https else 'http'}://{host}:{external}"
        return cls(addresses, environ.get("MASTER_TOKEN", ""), container_id, public_url)
