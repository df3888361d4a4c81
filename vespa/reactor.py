# -*- test-case-name: tests.test_reactor_install -*-
"""
Installing the daemons' reactor, :class:`vespa.epoll_reactor.VespaReactor`.

``twistd`` installs its default reactor when ``twisted.internet.reactor`` is
first imported, or the one named by ``--reactor``. Nothing imports it before a
plugin's ``makeService`` runs, so ``twistd vespa`` and ``twistd vespa-client``
call :func:`install_for_daemon` there, first thing (as does the foreground
``vespa-client`` command before it imports the reactor). ``install`` is also this
module's reactor-plugin entry point: ``twistd --reactor vespa-epoll ...``
(``twisted/plugins/vespa_reactor.py``).

Importable everywhere; the reactor itself is Linux only (epoll).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from vespa.log import get_logger

if TYPE_CHECKING:
    from vespa.epoll_reactor import VespaReactor

log = get_logger(__name__)


def install() -> VespaReactor:
    """
    Install a :class:`~vespa.epoll_reactor.VespaReactor` as
    ``twisted.internet.reactor``.

    :raise twisted.internet.error.ReactorAlreadyInstalledError: if a reactor
        is installed already.
    :raise ImportError: off Linux (no epoll).
    """
    from twisted.internet.main import installReactor

    from vespa.epoll_reactor import VespaReactor

    reactor = VespaReactor()
    installReactor(reactor)
    return reactor


def install_for_daemon() -> None:
    """
    Install the daemons' reactor, unless a reactor is installed already
    (``twistd --reactor ...``, or a program embedding the daemon): then that
    one stays, and one log line says which. Off Linux, the default reactor.
    """
    if not sys.platform.startswith("linux"):
        return
    if "twisted.internet.reactor" not in sys.modules:
        install()
        return
    from twisted.internet import reactor as installed

    from vespa.epoll_reactor import VespaReactor

    if not isinstance(installed, VespaReactor):
        log.info(
            "reactor {name} was installed already; keeping it",
            name=f"{type(installed).__module__}.{type(installed).__qualname__}",
        )
