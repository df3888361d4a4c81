"""twistd reactor plugin: ``twistd --reactor vespa-epoll ...`` (Linux)."""

from twisted.application.reactors import Reactor

vespa_epoll = Reactor(
    "vespa-epoll",
    "vespa.reactor",
    "epoll without the legacy log context per I/O event (Vespa's daemons' reactor)",
)
