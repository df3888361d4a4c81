"""
The worker URL of a ``/route/`` answer: what is refused, and how it is shown.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI
from twisted.web.http_headers import Headers

from vespa.client.worker_url import UnusableURL, check_worker_url, shown_url
from vespa.client.wrapping import Call, build_worker_request

#: Text that looks like a worker url, with anything in its parts.
_PART = st.text(max_size=12) | st.sampled_from(["", ":", "@", "/", "?", "#", "[::1]", "\r\n"])
_URLS = st.builds(
    lambda scheme, host, port, rest: f"{scheme}://{host}{port}{rest}",
    st.sampled_from(["http", "https", "HTTP", "ftp", "", "h ttp"]),
    _PART | st.sampled_from(["127.0.0.1", "worker.example", "a..b", "-x"]),
    st.sampled_from(["", ":4000", ":0", ":65536", ":x"]) | _PART,
    _PART,
)

#: Route urls that hung the client (issue 10 item 6) or must not be used
#: (item 8), and a word of what the refusal says.
HOSTILE = {
    "http://127.0.0.1:4000\r\nX-Injected: 1": "control",
    "http://127.0.0.1:4000/a\nb": "control",
    "http://127.0.0.1:4000/a b": "spaces",
    "http://127.0.0.1\x00:4000": "control",
    "http://127.0.0.1:4000/\tx": "control",
    "http://wörker.example:4000": "non-ASCII",
    "ftp://127.0.0.1:4000": "not http or https",
    "file:///etc/passwd": "not http or https",
    "127.0.0.1:4000": "not http or https",
    "http://user:secret@127.0.0.1:4000": "credentials",
    "http://127.0.0.1:99999": "host and port",
    "http://127.0.0.1:port": "host and port",
    "http://:4000": "host and port",
    "http://bad_host!:4000": "host and port",
    "http://[::1:4000": "host and port",
    "http://::1]:4000": "host and port",
    "http://127.0.0.1:4000/?x=1": "query",
    "http://]:4000": "host and port",
    "http://" + "a" * 3000: "over 2048",
}


class CheckTests(SynchronousTestCase):
    def test_worker_urls_pass(self) -> None:
        for url in (
            "http://203.0.113.9:4000",
            "https://203.0.113.9:4000",
            "HTTP://worker-1.example.com:8080/prefix",
            "http://[2001:db8::1]:3000",
            "https://worker.example",
        ):
            self.assertEqual(check_worker_url(url), url)

    def test_hostile_urls_are_refused_and_named(self) -> None:
        for url, said in HOSTILE.items():
            with self.assertRaises(UnusableURL, msg=repr(url)) as caught:
                check_worker_url(url)
            message = str(caught.exception)
            self.assertIn(said, message, repr(url))
            self.assertNotIn("secret", message)
            self.assertFalse(any(c in message for c in "\r\n\x00\t"), repr(message))


class ShownTests(SynchronousTestCase):
    def test_credentials_masked_and_controls_escaped(self) -> None:
        self.assertEqual(shown_url("http://u:secret@h:1/p"), "'http://***@h:1/p'")
        self.assertEqual(shown_url("http://h:1\r\n"), "'http://h:1\\r\\n'")

    def test_cut_short(self) -> None:
        shown = shown_url("http://" + "a" * 500, limit=20)
        self.assertEqual(shown, repr("http://" + "a" * 13 + "..."))


class PropertyTests(SynchronousTestCase):
    @settings(database=None, deadline=None, max_examples=400)
    @given(st.one_of(_URLS, st.text(max_size=40)))
    def test_a_url_is_refused_or_can_be_requested(self, url: str) -> None:
        """
        Whatever the autoscaler sends, the check refuses it (and only with
        UnusableURL), or the request for it can be built and Agent parses it.
        """
        try:
            checked = check_worker_url(url)
        except UnusableURL as e:
            self.assertNotIn("\n", str(e))
            return
        call = Call(b"POST", b"/v1/x?y=1", Headers(), {"p": 1}, None, 1)
        request = build_worker_request(call, checked, {"url": checked}, 1)
        uri = URI.fromBytes(request.url)
        self.assertIn(uri.scheme, (b"http", b"https"))
        self.assertTrue(uri.host)
        self.assertTrue(request.url.isascii())
