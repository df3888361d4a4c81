# -*- test-case-name: tests.test_client_worker_url -*-
"""
The worker URL of a ``/route/`` answer: checked before anything uses it.

The autoscaler's answer is input like any other. A URL that cannot be
requested as it is (control characters, spaces, a non-ASCII host, a port
that is not one) would fail deep inside Twisted; one with another scheme
(``ftp://``) must not be contacted over HTTP; one carrying credentials
(``user:secret@``) must not be sent on or shown. :func:`check_worker_url`
refuses all of them with a message that shows the URL only through
:func:`shown_url`: credentials masked, control characters escaped, cut short.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

#: The longest worker URL taken.
MAX_URL_LENGTH = 2048
#: A host name (RFC 1123 labels), an IPv4 address, or an IPv6 one in brackets.
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?"
    r"|\[[0-9A-Fa-f:.]+\]"
)
#: What a URL may hold: visible ASCII, no space.
_VISIBLE = re.compile(r"[\x21-\x7e]*")
_USERINFO = re.compile(r"(?<=://)[^/?#]*@")


class UnusableURL(ValueError):
    """A worker URL that must not be used; the message is safe to show."""


def shown_url(url: str, limit: int = 120) -> str:
    """
    ``url`` as it may appear in a log line or an error body: any
    ``user:password@`` masked, non-printable characters escaped (``repr``),
    at most ``limit`` characters of it.
    """
    masked = _USERINFO.sub("***@", url, count=1)
    cut = masked[:limit] + ("..." if len(masked) > limit else "")
    return repr(cut)


def check_worker_url(url: str) -> str:
    """
    ``url`` if it is an ``http``/``https`` URL of a worker that can be
    requested as it is: visible ASCII only, a valid host and port, no
    credentials, no query or fragment (the caller's own are appended).

    :raise UnusableURL: naming what is wrong, showing the URL as :func:`shown_url`.
    """
    if len(url) > MAX_URL_LENGTH:
        raise UnusableURL(f"the worker url is over {MAX_URL_LENGTH} characters")
    if not _VISIBLE.fullmatch(url):
        raise UnusableURL(
            f"the worker url {shown_url(url)} holds spaces, control or non-ASCII characters"
        )
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced "[" or "]" around the host
        raise UnusableURL(f"the worker url {shown_url(url)} has no valid host and port") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise UnusableURL(f"the worker url {shown_url(url)} is not http or https")
    if "@" in parts.netloc:
        raise UnusableURL(f"the worker url {shown_url(url)} holds credentials")
    host = parts.netloc.rsplit(":", 1)[0] if not parts.netloc.endswith("]") else parts.netloc
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or not host or not _HOST.fullmatch(host):
        raise UnusableURL(f"the worker url {shown_url(url)} has no valid host and port")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise UnusableURL(f"the worker url {shown_url(url)} has a query or fragment")
    return url
