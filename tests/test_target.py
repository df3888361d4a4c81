"""
Tests for :mod:`vespa.http.target`: the forwarded request target and the path
blocklist.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from vespa.errors import BadRequest
from vespa.http.target import PathBlocklist, normalized_path, origin_form

#: Property tests run in memory only: no example database left in the checkout.
PROPERTY = settings(database=None, deadline=None)

UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"

#: A scheme and authority at the start of an absolute-form target (RFC 3986 syntax).
SCHEME_AUTHORITY = re.compile(rb"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")

#: Path segments likely to hit the patterns of BLOCKLIST, and some that are not.
SEGMENTS = st.one_of(
    st.sampled_from(["admin", "debug", "v1", "v10", "secret", "a.php", "x", "metrics", "~u"]),
    st.text(UNRESERVED, min_size=1, max_size=6).filter(lambda s: s not in (".", "..")),
)

BLOCKLIST = PathBlocklist(["/admin/*", "/debug", "/v?/secret", "*.php", "metrics"])


@st.composite
def paths(draw: st.DrawFn) -> str:
    """An origin-form path of unreserved segments, with or without a trailing slash."""
    segments = draw(st.lists(SEGMENTS, max_size=5))
    trailing = draw(st.booleans()) and bool(segments)
    return "/" + "/".join(segments) + ("/" if trailing else "")


def bad_request(uri: bytes) -> BadRequest:
    """Return the BadRequest that ``origin_form(uri)`` raises."""
    try:
        origin_form(uri)
    except BadRequest as e:
        return e
    raise AssertionError(f"origin_form({uri!r}) did not raise BadRequest")


class OriginFormTests(SynchronousTestCase):
    """
    Tests for :func:`origin_form`.
    """

    def test_origin_form_kept(self) -> None:
        """
        An origin-form target is forwarded byte for byte: repeated slashes,
        encoded slashes, dot segments and queries untouched.
        """
        for uri in (
            b"/",
            b"/v1/chat/completions",
            b"//a//b",
            b"//evil.example/x",
            b"/a%2Fb",
            b"/a/../b/./c",
            b"/p?q=1&r=%20&s=http://x/",
            b"/?",
            b"/%ff%00",
        ):
            self.assertEqual(origin_form(uri), uri)

    def test_absolute_form(self) -> None:
        """
        An absolute-form target keeps only its path and query: the host named in
        it is never contacted.
        """
        cases = {
            b"http://169.254.169.254/latest/meta-data/": b"/latest/meta-data/",
            b"http://backend:8080/v1/models?limit=1": b"/v1/models?limit=1",
            b"https://user:pw@example.com/x": b"/x",
            b"http://[::1]:8000/a//b": b"/a//b",
            b"HTTP://EXAMPLE.COM/Path": b"/Path",
            b"Https://example.com/": b"/",
        }
        for uri, expected in cases.items():
            self.assertEqual(origin_form(uri), expected, uri)

    def test_absolute_form_without_path(self) -> None:
        """
        An absolute-form target without a path is ``/``, its query kept.
        """
        self.assertEqual(origin_form(b"http://host"), b"/")
        self.assertEqual(origin_form(b"http://host:80"), b"/")
        self.assertEqual(origin_form(b"http://host?q=1"), b"/?q=1")

    def test_fragment_dropped(self) -> None:
        """
        A fragment is not forwarded; the path and query before it are.
        """
        self.assertEqual(origin_form(b"/a#frag"), b"/a")
        self.assertEqual(origin_form(b"/a?q=1#frag"), b"/a?q=1")
        self.assertEqual(origin_form(b"/#"), b"/")
        self.assertEqual(origin_form(b"http://host/a?q#f"), b"/a?q")
        self.assertEqual(origin_form(b"http://host?q#f"), b"/?q")

    def test_fragment_without_path(self) -> None:
        """
        An absolute-form target with a fragment and no path is ``/``, as it is
        without the fragment.
        """
        self.assertEqual(origin_form(b"http://host#f"), b"/")


    def test_not_a_path(self) -> None:
        """
        A target that is not a path (``*``, a bare word, a relative path, an
        empty target) is a 400 naming the target.
        """
        for uri in (b"*", b"", b"index.html", b"a/b", b"?q", b"http:/x", b"host:80"):
            error = bad_request(uri)
            self.assertEqual(error.status, 400)
            self.assertEqual(error.message, f"the request target must be a path, got {uri!r}")

    def test_long_target_cut(self) -> None:
        """
        The error for a long bad target quotes only its start.
        """
        error = bad_request(b"x" * 1000)
        self.assertEqual(error.message, f"the request target must be a path, got {b'x' * 80!r}")

    @PROPERTY
    @given(st.binary(max_size=40))
    def test_always_a_path(self, uri: bytes) -> None:
        """
        Whatever the target, the result is refused, or is a path: it starts with
        ``/``, has no fragment, and is what followed the scheme and authority,
        if any, so nothing of the authority is left.
        """
        try:
            target = origin_form(uri)
        except BadRequest:
            return
        self.assertTrue(target.startswith(b"/"), target)
        self.assertNotIn(b"#", target)
        head = uri.split(b"#", 1)[0]
        absolute = SCHEME_AUTHORITY.match(head)
        rest = head[absolute.end():] if absolute else head
        self.assertIn(target, (rest, b"/" + rest))

    @PROPERTY
    @given(
        st.sampled_from([b"http", b"https", b"HTTP", b"Http", b"ws"]),
        st.binary(max_size=20).filter(lambda b: not set(b) & set(b"/?#")),
        st.binary(max_size=30).filter(lambda b: b"#" not in b),
    )
    def test_absolute_keeps_path(self, scheme: bytes, authority: bytes, rest: bytes) -> None:
        """
        For any scheme and authority, an absolute-form target forwards exactly
        the path and query an origin-form target would.
        """
        path = b"/" + rest
        self.assertEqual(origin_form(scheme + b"://" + authority + path), path)
        self.assertEqual(origin_form(path), path)


class NormalizedPathTests(SynchronousTestCase):
    """
    Tests for :func:`normalized_path`.
    """

    def test_normalized(self) -> None:
        """
        Percent-encoding is decoded, dot segments resolved and repeated slashes
        collapsed; the query is ignored.
        """
        cases = {
            b"/": "/",
            b"/v1/models": "/v1/models",
            b"/a/../admin": "/admin",
            b"//%61dmin": "/admin",
            b"/a/./b": "/a/b",
            b"/%2e%2E/admin": "/admin",
            b"/a%2Fb": "/a/b",
            b"/../../x": "/x",
            b"/a//b///c": "/a/b/c",
            b"/a?x=/../b": "/a",
            b"/search?q=%2Fadmin": "/search",
        }
        for target, expected in cases.items():
            self.assertEqual(normalized_path(target), expected, target)

    def test_trailing_slash(self) -> None:
        """
        A trailing slash is kept (collapsed to one), as patterns like
        ``/admin/*`` rely on it.
        """
        self.assertEqual(normalized_path(b"/admin/"), "/admin/")
        self.assertEqual(normalized_path(b"/admin//"), "/admin/")
        self.assertEqual(normalized_path(b"/admin/./"), "/admin/")
        self.assertEqual(normalized_path(b"/admin/x/../"), "/admin/")
        self.assertEqual(normalized_path(b"//"), "/")

    def test_trailing_dot_segment(self) -> None:
        """
        A path ending in a dot segment ends in a slash, as RFC 3986 resolves it:
        ``/admin/.`` is ``/admin/`` and ``/admin/x/..`` is ``/admin/``.
        """
        self.assertEqual(normalized_path(b"/admin/."), "/admin/")
        self.assertEqual(normalized_path(b"/admin/%2e"), "/admin/")
        self.assertEqual(normalized_path(b"/admin/x/.."), "/admin/")


    def test_not_utf8(self) -> None:
        """
        Bytes that are not UTF-8 do not make it fail.
        """
        self.assertEqual(normalized_path(b"/%ff/a"), "/\udcff/a")
        self.assertEqual(normalized_path(b"/\xc3/a"), "/\udcc3/a")

    @PROPERTY
    @given(paths())
    def test_idempotent(self, path: str) -> None:
        """
        Normalizing a normalized path changes nothing.
        """
        once = normalized_path(path.encode())
        self.assertEqual(normalized_path(once.encode()), once)


class PathBlocklistTests(SynchronousTestCase):
    """
    Tests for :class:`PathBlocklist`.
    """

    def assertBlocked(self, blocklist: PathBlocklist, *targets: bytes) -> None:
        """Assert that every target is blocked."""
        for target in targets:
            self.assertTrue(blocklist.blocks(target), f"{target!r} is not blocked")

    def assertAllowed(self, blocklist: PathBlocklist, *targets: bytes) -> None:
        """Assert that no target is blocked."""
        for target in targets:
            self.assertFalse(blocklist.blocks(target), f"{target!r} is blocked")

    def test_exact(self) -> None:
        """
        A pattern without wildcards blocks that path, with or without a query,
        and only that path.
        """
        blocklist = PathBlocklist(["/debug"])
        self.assertBlocked(blocklist, b"/debug", b"/debug?verbose=1")
        self.assertAllowed(blocklist, b"/", b"/debugger", b"/debug/x", b"/v1/debug", b"/Debug")

    def test_trailing_slash(self) -> None:
        """
        A pattern also blocks its path with a trailing slash, or several.
        """
        blocklist = PathBlocklist(["/debug"])
        self.assertBlocked(blocklist, b"/debug/", b"/debug//", b"/debug/?x")

    def test_star(self) -> None:
        """
        ``*`` matches any characters, ``/`` included: ``/admin/*`` blocks
        everything below ``/admin/``.
        """
        blocklist = PathBlocklist(["/admin/*"])
        self.assertBlocked(blocklist, b"/admin/", b"/admin/users", b"/admin/users/1/delete")
        self.assertAllowed(blocklist, b"/administrator", b"/v1/admin/x", b"/adminx/y")

    def test_star_in_the_middle(self) -> None:
        """
        ``*`` in the middle of a pattern crosses any number of segments.
        """
        blocklist = PathBlocklist(["/v1/*/delete"])
        self.assertBlocked(blocklist, b"/v1/a/delete", b"/v1/a/b/c/delete")
        self.assertAllowed(blocklist, b"/v1/delete", b"/v1/a/delete/x")

    def test_question_mark(self) -> None:
        """
        ``?`` matches exactly one character.
        """
        blocklist = PathBlocklist(["/v?/secret"])
        self.assertBlocked(blocklist, b"/v1/secret", b"/v2/secret")
        self.assertAllowed(blocklist, b"/v/secret", b"/v10/secret")

    def test_no_leading_slash(self) -> None:
        """
        A pattern without a leading slash is taken from the root.
        """
        self.assertBlocked(PathBlocklist(["debug"]), b"/debug")
        self.assertAllowed(PathBlocklist(["debug"]), b"/v1/debug")
        self.assertBlocked(PathBlocklist(["admin/*"]), b"/admin/x")
        self.assertEqual(PathBlocklist(["debug", "/x"]).patterns, ("/debug", "/x"))

    def test_leading_star(self) -> None:
        """
        A pattern starting with ``*`` matches anywhere: ``*.php`` blocks every
        ``.php`` path.
        """
        blocklist = PathBlocklist(["*.php"])
        self.assertBlocked(blocklist, b"/index.php", b"/a/b/wp-login.php?x=1")
        self.assertAllowed(blocklist, b"/index.php5", b"/php")

    def test_several_patterns(self) -> None:
        """
        A path is blocked when any pattern matches it.
        """
        blocklist = PathBlocklist(iter(["/admin/*", "/debug"]))
        self.assertBlocked(blocklist, b"/admin/x", b"/debug")
        self.assertAllowed(blocklist, b"/v1/models")

    def test_query_not_matched(self) -> None:
        """
        Only the path is matched: a blocked path in the query is not blocked.
        """
        blocklist = PathBlocklist(["/admin/*", "/debug"])
        self.assertAllowed(blocklist, b"/search?q=/debug", b"/login?next=/admin/users")

    def test_percent_encoding(self) -> None:
        """
        Percent-encoding a blocked path does not get around the block.
        """
        blocklist = PathBlocklist(["/admin/*", "/debug"])
        self.assertBlocked(
            blocklist,
            b"/%61dmin/users",
            b"/%61%64%6D%69%6E/users",
            b"/admin%2Fusers",
            b"/%64ebug",
            b"/debu%67",
            b"/debug%2F",
        )

    def test_dot_segments(self) -> None:
        """
        Dot segments and repeated slashes do not get around the block.
        """
        blocklist = PathBlocklist(["/admin/*", "/debug"])
        self.assertBlocked(
            blocklist,
            b"//admin/users",
            b"/./admin/users",
            b"/v1/../admin/users",
            b"/%2e%2e/admin/users",
            b"/x/%2E%2E/debug",
            b"/debug/.",
            b"///debug",
        )

    def test_trailing_dot_segment(self) -> None:
        """
        A path ending in a dot segment inside a blocked directory is blocked,
        as ``/admin/`` is.
        """
        blocklist = PathBlocklist(["/admin/*"])
        self.assertBlocked(blocklist, b"/admin/", b"/admin/.", b"/admin/%2e", b"/admin/x/..")


    def test_empty(self) -> None:
        """
        An empty blocklist is false and blocks nothing.
        """
        for blocklist in (PathBlocklist([]), PathBlocklist(()), PathBlocklist(iter([]))):
            self.assertFalse(blocklist)
            self.assertAllowed(blocklist, b"/", b"/admin/x", b"/debug", b"//%2e%2e")

    def test_not_empty(self) -> None:
        """
        A blocklist with a pattern is true.
        """
        self.assertTrue(PathBlocklist(["/debug"]))

    def test_star_blocks_all(self) -> None:
        """
        The pattern ``*`` blocks every path.
        """
        self.assertBlocked(PathBlocklist(["*"]), b"/", b"/v1/models", b"/a/b?c")

    @PROPERTY
    @given(paths(), st.data())
    def test_percent_encoding_invariant(self, path: str, data: st.DataObject) -> None:
        """
        Percent-encoding any unreserved characters of a path, in upper or lower
        case hex, does not change whether it is blocked.
        """
        encoded = "".join(
            data.draw(st.sampled_from([c, f"%{ord(c):02X}", f"%{ord(c):02x}"]))
            if c in UNRESERVED
            else c
            for c in path
        )
        self.assertEqual(BLOCKLIST.blocks(encoded.encode()), BLOCKLIST.blocks(path.encode()))

    @PROPERTY
    @given(paths(), st.data())
    def test_dot_slash_invariant(self, path: str, data: st.DataObject) -> None:
        """
        Inserting ``./`` segments after slashes does not change whether a path
        is blocked.
        """
        slashes = [i for i, c in enumerate(path) if c == "/"]
        chosen = data.draw(st.lists(st.sampled_from(slashes), min_size=1, unique=True))
        changed = "".join(c + ("./" if i in chosen else "") for i, c in enumerate(path))
        self.assertEqual(BLOCKLIST.blocks(changed.encode()), BLOCKLIST.blocks(path.encode()))

    @PROPERTY
    @given(paths(), st.data())
    def test_double_slash_invariant(self, path: str, data: st.DataObject) -> None:
        """
        Doubling slashes does not change whether a path is blocked.
        """
        slashes = [i for i, c in enumerate(path) if c == "/"]
        chosen = data.draw(st.lists(st.sampled_from(slashes), min_size=1, unique=True))
        changed = "".join(c * (2 if i in chosen else 1) for i, c in enumerate(path))
        self.assertEqual(BLOCKLIST.blocks(changed.encode()), BLOCKLIST.blocks(path.encode()))

    @PROPERTY
    @given(paths(), SEGMENTS)
    def test_up_and_back_invariant(self, path: str, detour: str) -> None:
        """
        Going into a directory and back up (``x/../``) before a path does not
        change whether it is blocked.
        """
        changed = f"/{detour}/..{path}"
        self.assertEqual(BLOCKLIST.blocks(changed.encode()), BLOCKLIST.blocks(path.encode()))

    @PROPERTY
    @given(paths(), st.text(UNRESERVED + "/=&?%", max_size=10))
    def test_query_invariant(self, path: str, query: str) -> None:
        """
        Adding a query does not change whether a path is blocked.
        """
        changed = f"{path}?{query}"
        self.assertEqual(BLOCKLIST.blocks(changed.encode()), BLOCKLIST.blocks(path.encode()))

    @PROPERTY
    @given(st.lists(SEGMENTS, min_size=1, max_size=4))
    def test_below_admin_blocked(self, segments: list[str]) -> None:
        """
        Every path below ``/admin/`` is blocked by ``/admin/*``.
        """
        path = "/admin/" + "/".join(segments)
        self.assertTrue(BLOCKLIST.blocks(path.encode()), path)
