# -*- test-case-name: tests.test_envelope -*-
"""
Tests for :mod:`vespa.protocol.envelope`.
"""

from __future__ import annotations

import json
import math
import operator
import re
from typing import Any
from urllib.parse import quote, unquote_to_bytes, urlencode

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from vespa.errors import BadRequest, VespaError
from vespa.protocol import envelope as envelope_module
from vespa.protocol.envelope import (
    AUTH_FIELDS,
    NOT_PARSED,
    AuthData,
    Envelope,
    EnvelopeInvalid,
    NestedTooDeep,
    auth_query,
    parse_envelope,
    wrap_body,
)

AUTH: dict[str, Any] = {
    "cost": 100,
    "endpoint": "my-endpoint",
    "reqnum": 7,
    "request_idx": 9,
    "signature": "c2lnbmF0dXJl+/==",
    "url": "https://1.2.3.4:5",
}

FULL_QUERY = (
    b"serverless_cost=100&serverless_endpoint=my-endpoint&serverless_reqnum=7"
    b"&serverless_request_idx=9&serverless_signature=c2lnbmF0dXJl%2B%2F%3D%3D"
    b"&serverless_url=https%3A%2F%2F1.2.3.4%3A5"
)

#: A cost sent as a string must spell a JSON number (a sign, digits, a
#: fraction, an exponent): the rule as written here, not read from the code.
NUMERIC_COST = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


#: Property tests: bounded to keep the suite fast, no example database in the checkout.
PROPERTY = settings(max_examples=300, deadline=None, database=None)


def post(body: Any, target: bytes = b"/v1/x", *, unsecured: bool = False) -> Envelope:
    """Parse a POST whose body is ``body`` (bytes as is, anything else as JSON)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_envelope(b"POST", target, raw, unsecured=unsecured)


def get(target: bytes, *, unsecured: bool = False, method: bytes = b"GET") -> Envelope:
    """Parse a bodiless request for ``target``."""
    return parse_envelope(method, target, b"", unsecured=unsecured)


def with_auth(**changes: Any) -> dict[str, Any]:
    """A copy of :data:`AUTH` with ``changes`` applied (``None`` removes a key)."""
    auth = {**AUTH, **changes}
    return {key: value for key, value in auth.items() if value is not None}


class BodyEnvelopeTests(SynchronousTestCase):
    """POST, PUT and PATCH carry ``{"auth_data": ..., "payload": ...}``."""

    def test_valid_envelope(self) -> None:
        """The six fields become AuthData and the payload alone is forwarded."""
        payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        envelope = post({"auth_data": AUTH, "payload": payload})
        self.assertEqual(envelope.auth, AuthData(**AUTH))
        self.assertIsNotNone(envelope.body)
        assert envelope.body is not None
        self.assertEqual(json.loads(envelope.body), payload)
        self.assertEqual(envelope.target, b"/v1/x")

    def test_put_and_patch_are_body_methods(self) -> None:
        """PUT and PATCH read the body envelope as POST does."""
        body = wrap_body(AUTH, [1, 2])
        for method in (b"PUT", b"PATCH"):
            envelope = parse_envelope(method, b"/x", body, unsecured=False)
            self.assertEqual(envelope.auth, AuthData(**AUTH))
            self.assertEqual(envelope.body, b"[1, 2]")

    def test_methods_are_case_sensitive(self) -> None:
        """A lowercase ``post`` is not POST (methods are case-sensitive): it needs query auth."""
        self.assertRaises(
            BadRequest, parse_envelope, b"post", b"/x", wrap_body(AUTH, 1), unsecured=False
        )

    def test_payload_of_any_json_type(self) -> None:
        """Any JSON value is a payload, null included, forwarded as it was written."""
        cases: list[tuple[Any, bytes]] = [
            (None, b"null"),
            ("text", b'"text"'),
            (3.5, b"3.5"),
            ([], b"[]"),
            ({"a": {"b": [1, True]}}, b'{"a": {"b": [1, true]}}'),
            ("caf\u00e9 \U0001f600", b'"caf\\u00e9 \\ud83d\\ude00"'),
        ]
        for payload, encoded in cases:
            envelope = post({"auth_data": AUTH, "payload": payload})
            self.assertEqual(envelope.body, encoded)
            assert envelope.body is not None
            self.assertEqual(json.loads(envelope.body), payload)

    def test_cost_keeps_its_json_type(self) -> None:
        """An int cost stays an int, a float a float, a numeric string a string."""
        for cost, kind, workload in [
            (100, int, 100.0),
            (100.0, float, 100.0),
            (0, int, 0.0),
            (0.25, float, 0.25),
            ("100", str, 100.0),
            ("2.5", str, 2.5),
            ("1e3", str, 1000.0),
        ]:
            envelope = post({"auth_data": with_auth(cost=cost), "payload": {}})
            assert envelope.auth is not None
            self.assertIs(type(envelope.auth.cost), kind)
            self.assertEqual(envelope.auth.cost, cost)
            self.assertEqual(envelope.auth.workload, workload)
            self.assertIs(type(envelope.auth.workload), float)

    def test_cost_type_kept_in_raw_json(self) -> None:
        """``100`` and ``100.0`` in the raw body text arrive as int and float."""
        template = (
            b'{"auth_data": {"cost": %s, "endpoint": "e", "reqnum": 1, "request_idx": 2,'
            b' "signature": "", "url": "u"}, "payload": 0}'
        )
        as_int = post(template % b"100").auth
        as_float = post(template % b"100.0").auth
        assert as_int is not None and as_float is not None
        self.assertIs(type(as_int.cost), int)
        self.assertIs(type(as_float.cost), float)

    def test_extra_auth_keys_are_ignored(self) -> None:
        """Keys beyond the six (the route answer's ``__request_id``) are dropped."""
        envelope = post({"auth_data": with_auth(__request_id="abc", other=1), "payload": 1})
        self.assertEqual(envelope.auth, AuthData(**AUTH))

    def test_extra_wrapper_keys_are_ignored(self) -> None:
        """Keys beside auth_data and payload (the SDK's ``session_id``) are not forwarded."""
        envelope = post({"auth_data": AUTH, "payload": {"p": 1}, "session_id": "s"})
        self.assertEqual(envelope.body, b'{"p": 1}')
        self.assertEqual(envelope.session_id, "s")

    def test_invalid_json(self) -> None:
        """A body that is not JSON is a 422 ``invalid JSON``."""
        for body in [b"", b"{", b"not json", b"\xff\xfe{", b"[" * 100000, b'{"a": 1}}']:
            error = self.assertRaises(EnvelopeInvalid, post, body)
            self.assertEqual(error.status, 422)
            self.assertEqual(error.body()["origin"], "vespa")
            self.assertTrue(error.message.startswith("invalid JSON"), error.message)

    def test_body_not_an_object(self) -> None:
        """A JSON body that is not an object misses both wrapper fields (422)."""
        for body in [[AUTH], "auth_data", 3, None]:
            error = self.assertRaises(EnvelopeInvalid, post, body)
            self.assertEqual(error.status, 422)
            self.assertEqual(
                error.body(),
                {
                    "error": "the body must be a JSON object with auth_data and payload",
                    "origin": "vespa",
                    "auth_data": "field missing",
                    "payload": "field missing",
                },
            )

    def test_missing_wrapper_keys(self) -> None:
        """Each missing wrapper key is named ``field missing`` (422)."""
        cases: list[tuple[dict[str, Any], dict[str, str]]] = [
            ({}, {"auth_data": "field missing", "payload": "field missing"}),
            ({"payload": 1}, {"auth_data": "field missing"}),
            ({"auth_data": AUTH}, {"payload": "field missing"}),
        ]
        for body, details in cases:
            error = self.assertRaises(EnvelopeInvalid, post, body)
            self.assertEqual(error.status, 422)
            self.assertEqual(error.details, details)
            self.assertEqual(error.body()["origin"], "vespa")
            for key in details:
                self.assertIn(key, error.message)

    def test_auth_data_not_an_object(self) -> None:
        """auth_data must be a JSON object (422)."""
        for auth in [None, "token", [AUTH], 5]:
            error = self.assertRaises(EnvelopeInvalid, post, {"auth_data": auth, "payload": 1})
            self.assertEqual(error.status, 422)
            self.assertEqual(error.details, {"auth_data": "must be an object"})

    def test_missing_auth_fields(self) -> None:
        """Every missing auth field is listed as ``missing parameter`` (422)."""
        error = self.assertRaises(
            EnvelopeInvalid, post, {"auth_data": with_auth(cost=None, url=None), "payload": 1}
        )
        self.assertEqual(error.status, 422)
        self.assertEqual(
            error.body(),
            {
                "error": "invalid auth_data (cost: missing parameter; url: missing parameter)",
                "origin": "vespa",
                "auth_data": {"cost": "missing parameter", "url": "missing parameter"},
            },
        )
        error = self.assertRaises(EnvelopeInvalid, post, {"auth_data": {}, "payload": 1})
        self.assertEqual(
            error.details, {"auth_data": dict.fromkeys(AUTH_FIELDS, "missing parameter")}
        )

    def test_integer_fields(self) -> None:
        """reqnum and request_idx must be JSON integers; a bool, string or float is a 422."""
        for field in ("reqnum", "request_idx"):
            for value in [True, False, "7", 7.0, [7], {}]:
                error = self.assertRaises(
                    EnvelopeInvalid, post, {"auth_data": with_auth(**{field: value}), "payload": 1}
                )
                self.assertEqual(error.status, 422)
                self.assertEqual(error.details, {"auth_data": {field: "must be an integer"}})
                self.assertIn(field, error.message)
            envelope = post({"auth_data": with_auth(**{field: -3}), "payload": 1})
            assert envelope.auth is not None
            self.assertEqual(getattr(envelope.auth, field), -3)

    def test_string_fields(self) -> None:
        """endpoint, signature and url must be JSON strings (422)."""
        for field in ("endpoint", "signature", "url"):
            for value in [5, True, [], {"a": "b"}, 1.5]:
                error = self.assertRaises(
                    EnvelopeInvalid, post, {"auth_data": with_auth(**{field: value}), "payload": 1}
                )
                self.assertEqual(error.status, 422)
                self.assertEqual(error.details, {"auth_data": {field: "must be a string"}})

    def test_null_auth_field_is_a_type_error(self) -> None:
        """A field that is present but ``null`` is mistyped, not missing."""
        body = json.dumps({"auth_data": {**AUTH, "url": None}, "payload": 1}).encode()
        error = self.assertRaises(EnvelopeInvalid, post, body)
        self.assertEqual(error.details, {"auth_data": {"url": "must be a string"}})

    def test_bad_costs(self) -> None:
        """A cost that is not a finite, non-negative number (or numeric string) is a 422."""
        for cost, reason in [
            (True, "must be a number"),
            ([1], "must be a number"),
            ({}, "must be a number"),
            ("abc", "must be a number"),
            (" 5", "must be a number"),
            ("0x10", "must be a number"),
            ("1_000", "must be a number"),
            ("NaN", "must be a number"),
            ("", "must be a number"),
            ("1e999", "must be a finite number"),
            (-1, "must not be negative"),
            (-0.5, "must not be negative"),
            ("-2", "must not be negative"),
            (10**400, "must be a finite number"),
        ]:
            error = self.assertRaises(
                EnvelopeInvalid, post, {"auth_data": with_auth(cost=cost), "payload": 1}
            )
            self.assertEqual(error.status, 422)
            self.assertEqual(error.details, {"auth_data": {"cost": reason}}, cost)

    def test_non_finite_json_cost(self) -> None:
        """
        ``NaN`` and ``Infinity`` (which Python's JSON parser accepts) are not
        JSON: 422. ``1e400`` is JSON, but no finite cost.
        """
        template = (
            b'{"auth_data": {"cost": %s, "endpoint": "e", "reqnum": 1, "request_idx": 2,'
            b' "signature": "", "url": "u"}, "payload": 0}'
        )
        for literal in (b"NaN", b"Infinity", b"-Infinity"):
            error = self.assertRaises(EnvelopeInvalid, post, template % literal)
            self.assertEqual(error.status, 422)
            self.assertEqual(error.message, "invalid JSON")
        error = self.assertRaises(EnvelopeInvalid, post, template % b"1e400")
        self.assertEqual(error.details, {"auth_data": {"cost": "must be a finite number"}})

    @settings(max_examples=300, deadline=None, database=None)
    @given(
        st.fixed_dictionaries(
            {},
            optional=dict.fromkeys(
                AUTH_FIELDS,
                st.one_of(
                    st.integers(-5, 5), st.booleans(), st.none(), st.floats(-2, 1e300),
                    st.text(max_size=4), st.sampled_from(["1", "2.5", "-1", "1e3"]),
                ),
            ),
        )
    )  # fmt: skip
    def test_any_auth_data_is_read_alike(self, auth: dict[str, Any]) -> None:
        """
        Whatever the six fields hold, the routing data is accepted with
        every value and its type as sent exactly when each field is sound,
        and otherwise refused naming exactly the fields that are not.
        """
        bad: dict[str, str] = {}
        for name in AUTH_FIELDS:
            value = auth.get(name, ...)
            if value is ...:
                bad[name] = "missing parameter"
            elif name in ("reqnum", "request_idx"):
                if type(value) is not int:
                    bad[name] = "must be an integer"
            elif name != "cost":
                if type(value) is not str:
                    bad[name] = "must be a string"
            elif isinstance(value, bool) or value is None:
                bad[name] = "must be a number"
            elif isinstance(value, str) and not NUMERIC_COST.fullmatch(value):
                bad[name] = "must be a number"
            elif float(value) < 0:
                bad[name] = "must not be negative"
        body = {"auth_data": auth, "payload": 1}
        if bad:
            error = self.assertRaises(EnvelopeInvalid, post, body)
            self.assertEqual(error.details, {"auth_data": bad})
            return
        envelope = post(body)
        assert envelope.auth is not None
        sent = [getattr(envelope.auth, name) for name in AUTH_FIELDS]
        self.assertEqual(sent, [auth[name] for name in AUTH_FIELDS])
        self.assertEqual([type(v) for v in sent], [type(auth[name]) for name in AUTH_FIELDS])

    def test_all_field_problems_reported_at_once(self) -> None:
        """Missing and mistyped fields are named together."""
        auth = with_auth(cost=None, reqnum="1", url=3)
        error = self.assertRaises(EnvelopeInvalid, post, {"auth_data": auth, "payload": 1})
        self.assertEqual(
            error.details,
            {
                "auth_data": {
                    "cost": "missing parameter",
                    "reqnum": "must be an integer",
                    "url": "must be a string",
                }
            },
        )

    def test_query_routing_params_are_stripped(self) -> None:
        """A body method's target loses ``serverless_*`` parameters too."""
        envelope = post({"auth_data": AUTH, "payload": 1}, b"/x?a=1&serverless_cost=5&b=2")
        self.assertEqual(envelope.target, b"/x?a=1&b=2")
        self.assertEqual(envelope.auth, AuthData(**AUTH))

    def test_errors_are_vespa_errors(self) -> None:
        """EnvelopeInvalid is a VespaError answered 422 from Vespa."""
        self.assertTrue(issubclass(EnvelopeInvalid, VespaError))
        self.assertEqual(EnvelopeInvalid.status, 422)
        self.assertEqual(EnvelopeInvalid.origin, "vespa")


class UnsecuredBodyTests(SynchronousTestCase):
    """In unsecured mode, a body without ``auth_data`` passes through untouched."""

    def test_passthrough(self) -> None:
        """Empty, non-JSON, non-object and auth_data-less bodies are forwarded as they are."""
        for body in [b"", b"not json", b"[1, 2]", b'"s"', b'{"prompt": "hi"}', b'{"payload": 1}']:
            envelope = post(body, b"/gen?x=1", unsecured=True)
            self.assertEqual(envelope, Envelope(auth=None, body=None, target=b"/gen?x=1"))

    def test_passthrough_strips_routing_params(self) -> None:
        """Even a passthrough never hands ``serverless_*`` parameters to the backend."""
        envelope = post(b"{}", b"/gen?serverless_cost=2&x=1", unsecured=True)
        self.assertEqual(envelope, Envelope(auth=None, body=None, target=b"/gen?x=1"))

    def test_envelope_still_read(self) -> None:
        """A body with auth_data is read as an envelope in unsecured mode too."""
        envelope = post({"auth_data": AUTH, "payload": {"a": 1}}, unsecured=True)
        self.assertEqual(envelope.auth, AuthData(**AUTH))
        self.assertEqual(envelope.body, b'{"a": 1}')

    def test_any_auth_data_unwraps(self) -> None:
        """
        Unsecured, whatever auth_data holds, its payload is relayed: the
        official client's ``VAST_DEBUG_WORKER_URL`` sends only a url and an index.
        """
        for auth_data in [
            {"request_idx": 1, "url": "http://127.0.0.1:3000"},
            {},
            5,
            None,
            "x",
        ]:
            body = {"auth_data": auth_data, "session_id": None, "payload": {"prompt": "hi"}}
            envelope = post(body, unsecured=True)
            self.assertEqual(envelope.body, b'{"prompt": "hi"}')
            self.assertIsNone(envelope.auth)
        # Secured, the same bodies are refused.
        error = self.assertRaises(EnvelopeInvalid, post, {"auth_data": {"url": "u"}, "payload": 1})
        self.assertEqual(error.status, 422)

    def test_missing_payload_still_refused(self) -> None:
        """A body with auth_data but no payload is a 422 in unsecured mode too."""
        error = self.assertRaises(EnvelopeInvalid, post, {"auth_data": AUTH}, unsecured=True)
        self.assertEqual(error.status, 422)


class QueryEnvelopeTests(SynchronousTestCase):
    """GET, DELETE, HEAD and OPTIONS carry routing data in ``serverless_*`` parameters."""

    def test_all_params(self) -> None:
        """All six parameters are decoded; the body is forwarded untouched."""
        envelope = parse_envelope(b"GET", b"/v1/models?" + FULL_QUERY, b"{junk", unsecured=False)
        self.assertEqual(envelope, Envelope(auth=AuthData(**AUTH), body=None, target=b"/v1/models"))

    def test_every_other_method(self) -> None:
        """DELETE, HEAD, OPTIONS (and any non-body method) read the query."""
        for method in (b"DELETE", b"HEAD", b"OPTIONS", b"PROPFIND"):
            envelope = get(b"/x?" + FULL_QUERY + b"&keep=1", method=method)
            self.assertEqual(envelope.auth, AuthData(**AUTH))
            self.assertEqual(envelope.target, b"/x?keep=1")

    def test_cost_typing(self) -> None:
        """An integer literal is an int, a fraction or exponent makes a float."""
        for text, cost in [
            ("100", 100),
            ("0", 0),
            ("007", 7),
            ("100.0", 100.0),
            ("1.0", 1.0),
            ("0.5", 0.5),
            ("1e3", 1000.0),
            ("1E-05", 1e-05),
            ("2.5e%2B3", 2500.0),
            ("-0", 0),
        ]:
            envelope = get(f"/x?serverless_cost={text}".encode())
            assert envelope.auth is not None
            self.assertEqual(envelope.auth.cost, cost)
            self.assertIs(type(envelope.auth.cost), type(cost), text)

    def test_bad_cost(self) -> None:
        """A cost that is not a finite, non-negative number is a 400."""
        for text in [
            "",
            "abc",
            "1.",
            ".5",
            "0x10",
            "1_000",
            "%201",
            "inf",
            "nan",
            "1e999",
            "-1",
            "-0.5",
            "9" * 5000,
        ]:
            error = self.assertRaises(BadRequest, get, f"/x?serverless_cost={text}".encode())
            self.assertEqual(error.status, 400)
            self.assertTrue(
                error.message.startswith("Invalid auth_data in query params: serverless_cost"),
                error.message,
            )
            self.assertEqual(set(error.body()), {"error", "origin"})
            self.assertEqual(error.body()["origin"], "vespa")

    def test_bad_integers(self) -> None:
        """reqnum and request_idx must be integer literals (400)."""
        for field in ("reqnum", "request_idx"):
            for text in ["", "x", "1.5", "1e3", "%201", "+1", "1" * 5000]:
                error = self.assertRaises(BadRequest, get, f"/x?serverless_{field}={text}".encode())
                self.assertEqual(error.status, 400)
                self.assertTrue(
                    error.message.startswith(
                        f"Invalid auth_data in query params: serverless_{field} must be an integer"
                    ),
                    error.message,
                )

    def test_defaults(self) -> None:
        """Absent fields default: cost 1.0 (a float), endpoint the path, 0 and ""."""
        envelope = get(b"/v1/a%20b/c?serverless_reqnum=4&x=y")
        self.assertEqual(
            envelope,
            Envelope(
                auth=AuthData(
                    cost=1.0, endpoint="/v1/a b/c", reqnum=4, request_idx=0, signature="", url=""
                ),
                body=None,
                target=b"/v1/a%20b/c?x=y",
            ),
        )
        assert envelope.auth is not None
        self.assertIs(type(envelope.auth.cost), float)

    def test_form_decoding(self) -> None:
        """Values are percent-decoded with ``+`` as a space; encoded names are recognised."""
        envelope = get(
            b"/x?serverless_endpoint=my+end%2Bpoint&serverless%5Furl=https%3A%2F%2Fh%3A1%2F"
            b"&serverless_signature=ab%2Bc%2F%3D&serverless+cost=9&k=v"
        )
        assert envelope.auth is not None
        self.assertEqual(envelope.auth.endpoint, "my end+point")
        self.assertEqual(envelope.auth.url, "https://h:1/")
        self.assertEqual(envelope.auth.signature, "ab+c/=")
        self.assertEqual(envelope.auth.cost, 1.0)  # "serverless cost" is not a routing name
        self.assertEqual(envelope.target, b"/x?serverless+cost=9&k=v")

    def test_utf8_values(self) -> None:
        """Values are UTF-8; anything else is a 400."""
        envelope = get(b"/x?serverless_endpoint=caf%C3%A9")
        assert envelope.auth is not None
        self.assertEqual(envelope.auth.endpoint, "caf\u00e9")
        error = self.assertRaises(BadRequest, get, b"/x?serverless_url=%FF")
        self.assertEqual(
            error.message, "Invalid auth_data in query params: serverless_url is not UTF-8"
        )

    def test_repeated_keys(self) -> None:
        """The first of repeated routing parameters is used, and all are removed."""
        envelope = get(b"/x?serverless_reqnum=1&a=1&serverless_reqnum=oops&serverless_reqnum=3")
        assert envelope.auth is not None
        self.assertEqual(envelope.auth.reqnum, 1)
        self.assertEqual(envelope.target, b"/x?a=1")

    def test_parameter_without_value(self) -> None:
        """``serverless_url`` without ``=`` is an empty value."""
        envelope = get(b"/x?serverless_url&serverless_cost=2")
        assert envelope.auth is not None
        self.assertEqual(envelope.auth.url, "")
        self.assertEqual(envelope.target, b"/x")

    def test_missing_auth(self) -> None:
        """Without any routing parameter, a secured worker answers 400 naming them."""
        names = (
            "serverless_cost, serverless_endpoint, serverless_reqnum,"
            " serverless_request_idx, serverless_signature, serverless_url"
        )
        for method in (b"GET", b"DELETE", b"HEAD", b"OPTIONS"):
            for target in (b"/x", b"/x?a=1", b"/x?serverless_other=1"):
                error = self.assertRaises(BadRequest, get, target, method=method)
                self.assertEqual(error.status, 400)
                self.assertEqual(
                    error.body(),
                    {
                        "error": f"{method.decode()} requests require auth_data"
                        f" in query params ({names})",
                        "origin": "vespa",
                    },
                )

    def test_unsecured_passthrough(self) -> None:
        """Without routing parameters, an unsecured worker forwards the request as it is."""
        for target in (b"/x", b"/x?", b"/x?a=1&&b", b"/x?a=%20+b"):
            envelope = get(target, unsecured=True)
            self.assertEqual(envelope, Envelope(auth=None, body=None, target=target))

    def test_unsecured_passthrough_strips_unknown_routing_params(self) -> None:
        """An unknown ``serverless_*`` parameter alone is a passthrough, still stripped."""
        envelope = get(b"/x?serverless_other=1&a=2", unsecured=True)
        self.assertEqual(envelope, Envelope(auth=None, body=None, target=b"/x?a=2"))

    def test_unsecured_with_params(self) -> None:
        """Routing parameters are read in unsecured mode too, and refused if malformed."""
        envelope = get(b"/x?serverless_request_idx=12", unsecured=True)
        assert envelope.auth is not None
        self.assertEqual(envelope.auth.request_idx, 12)
        self.assertRaises(BadRequest, get, b"/x?serverless_reqnum=a", unsecured=True)


class StripTests(SynchronousTestCase):
    """The forwarded target keeps every other parameter byte for byte."""

    def test_example(self) -> None:
        """Repeated and encoded parameters keep their bytes and order."""
        envelope = get(b"/v1/x?a=1&serverless_cost=3&a=2&b=%20")
        self.assertEqual(envelope.target, b"/v1/x?a=1&a=2&b=%20")

    def test_nothing_left(self) -> None:
        """With only routing parameters, no ``?`` is left."""
        self.assertEqual(get(b"/v1/x?" + FULL_QUERY).target, b"/v1/x")
        self.assertEqual(get(b"/?serverless_cost=1&&").target, b"/")

    def test_empty_pieces_dropped_when_rebuilt(self) -> None:
        """Empty pieces carry no parameter and are dropped once something is removed."""
        self.assertEqual(get(b"/x?&a=1&&serverless_cost=1&b=&").target, b"/x?a=1&b=")

    def test_untouched_without_routing_params(self) -> None:
        """A target without routing parameters is forwarded exactly as received."""
        for target in [
            b"/x?",
            b"/x?a=1&&b",
            b"/x?%zz=%&a",
            b"/x?serverless=1",
            b"/x?Serverless_cost=1",
        ]:
            envelope = parse_envelope(b"POST", target, b"", unsecured=True)
            self.assertEqual(envelope.target, target)

    def test_prefix_only_in_name(self) -> None:
        """``serverless_`` in a value, or a name merely containing it, is kept."""
        envelope = get(b"/x?q=serverless_cost%3D1&my_serverless_x=2&serverless_cost=1")
        self.assertEqual(envelope.target, b"/x?q=serverless_cost%3D1&my_serverless_x=2")

    @given(
        st.lists(
            st.one_of(
                st.tuples(
                    st.just(True),
                    st.from_regex(
                        r"serverless(_|%5[Ff])[a-z_%0-9]{0,10}(=[^&#]*)?", fullmatch=True
                    ),
                ),
                st.tuples(st.just(False), st.from_regex(r"[^&#]{0,12}", fullmatch=True)),
            ),
            max_size=8,
        )
    )
    def test_stripping_keeps_other_params(self, pieces: list[tuple[bool, str]]) -> None:
        """Removing routing parameters keeps the other parameters' raw bytes and order."""
        raw = [(routing, text.encode("utf-8")) for routing, text in pieces]
        # Some generated "other" pieces may decode to a routing name; they count as routing.
        raw = [
            (routing or _decoded_name(piece).startswith("serverless_"), piece)
            for routing, piece in raw
        ]
        target = b"/p/a%20th?" + b"&".join(piece for _, piece in raw)
        forwarded = parse_envelope(b"GET", target, b"", unsecured=True).target
        if not any(routing for routing, _ in raw):
            self.assertEqual(forwarded, target)
            return
        kept = [piece for routing, piece in raw if not routing and piece]
        self.assertEqual(forwarded, b"/p/a%20th" + (b"?" + b"&".join(kept) if kept else b""))


def _decoded_name(piece: bytes) -> str:
    """The form-decoded name of one raw query piece."""
    return unquote_to_bytes(piece.partition(b"=")[0].replace(b"+", b" ")).decode("utf-8", "replace")


_finite_costs = st.one_of(
    st.integers(min_value=0, max_value=10**30),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False),
)
_auth_dicts = st.fixed_dictionaries(
    {
        "cost": _finite_costs,
        "endpoint": st.text(),
        "reqnum": st.integers(min_value=-(10**20), max_value=10**20),
        "request_idx": st.integers(min_value=-(10**20), max_value=10**20),
        "signature": st.text(),
        "url": st.text(),
    }
)


class RoundTripTests(SynchronousTestCase):
    """What :func:`wrap_body` and :func:`auth_query` build, :func:`parse_envelope` reads back."""

    def test_wrap_body(self) -> None:
        """The body form keeps every type, string costs included."""
        for cost in (100, 100.0, 0.1, "100", "2.50", 1e-05):
            auth = with_auth(cost=cost)
            payload = {"input": {"prompt": "caf\u00e9"}, "n": [1, 2.0, None]}
            envelope = post(wrap_body(auth, payload))
            assert envelope.auth is not None and envelope.body is not None
            self.assertEqual(envelope.auth, AuthData(**auth))
            self.assertIs(type(envelope.auth.cost), type(cost))
            self.assertEqual(json.loads(envelope.body), payload)

    def test_wrap_body_shape(self) -> None:
        """The body is exactly ``{"auth_data": auth, "payload": payload}``, extras included."""
        body = wrap_body({**AUTH, "__request_id": "r"}, {"a": 1})
        self.assertEqual(
            json.loads(body), {"auth_data": {**AUTH, "__request_id": "r"}, "payload": {"a": 1}}
        )

    def test_auth_query(self) -> None:
        """The query form writes numbers as their JSON text, in field order."""
        self.assertEqual(
            auth_query({**AUTH, "cost": 1.0, "__request_id": "r"}),
            [
                ("serverless_cost", "1.0"),
                ("serverless_endpoint", "my-endpoint"),
                ("serverless_reqnum", "7"),
                ("serverless_request_idx", "9"),
                ("serverless_signature", "c2lnbmF0dXJl+/=="),
                ("serverless_url", "https://1.2.3.4:5"),
            ],
        )
        self.assertEqual(auth_query({"cost": 100}), [("serverless_cost", "100")])

    def test_auth_query_refuses_other_types(self) -> None:
        """A bool, None or container cannot be written as a query value."""
        for value in (True, None, [1], {"a": 1}):
            self.assertRaises(TypeError, auth_query, {"reqnum": value})

    def test_auth_query_round_trip(self) -> None:
        """Through urlencode and back, int and float costs keep their type."""
        for cost in (100, 100.0, 1.0, 0, 0.1, 1e-05, 1e16, 123456789.125):
            auth = with_auth(cost=cost, url="https://h:1/p?q=1&r=2", signature="a+b/c==")
            target = b"/v1/x?keep=1&" + urlencode(auth_query(auth)).encode("ascii")
            envelope = get(target)
            self.assertEqual(
                envelope, Envelope(auth=AuthData(**auth), body=None, target=b"/v1/x?keep=1")
            )
            assert envelope.auth is not None
            self.assertIs(type(envelope.auth.cost), type(cost))

    def test_auth_query_percent_encoded(self) -> None:
        """``quote`` (%20 for spaces) reads back as well as ``quote_plus``."""
        auth = with_auth(endpoint="a b+c", cost=2.0)
        query = "&".join(f"{name}={quote(value, safe='')}" for name, value in auth_query(auth))
        envelope = get(b"/x?" + query.encode("ascii"))
        self.assertEqual(envelope.auth, AuthData(**auth))

    @given(_auth_dicts)
    def test_query_round_trip_property(self, auth: dict[str, Any]) -> None:
        """Any valid routing data survives auth_query → urlencode → parse_envelope, types kept."""
        target = ("/x?" + urlencode(auth_query(auth))).encode("ascii")
        parsed = get(target).auth
        self.assertEqual(parsed, AuthData(**auth))
        assert parsed is not None
        self.assertIs(type(parsed.cost), type(auth["cost"]))
        self.assertEqual(json.dumps(parsed.cost), json.dumps(auth["cost"]))

    @given(
        _auth_dicts,
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(),
            lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        ),
    )
    def test_body_round_trip_property(self, auth: dict[str, Any], payload: Any) -> None:
        """Any valid routing data and JSON payload survive wrap_body → parse_envelope."""
        envelope = post(wrap_body(auth, payload))
        assert envelope.auth is not None and envelope.body is not None
        self.assertEqual(envelope.auth, AuthData(**auth))
        self.assertIs(type(envelope.auth.cost), type(auth["cost"]))
        self.assertEqual(json.loads(envelope.body), payload)
        self.assertFalse(math.isnan(envelope.auth.workload))


def _wrapped(payload: bytes, auth: dict[str, Any] = AUTH, *, before: bytes = b"") -> bytes:
    """An envelope whose payload is the raw JSON text ``payload``."""
    return b'{"auth_data": %s, %s"payload": %s}' % (json.dumps(auth).encode(), before, payload)


class PayloadBytesTests(SynchronousTestCase):
    """The payload reaches the backend byte for byte as the caller wrote it."""

    def test_spelling_kept(self) -> None:
        """Whitespace, number spellings, escapes and key order are not touched."""
        for payload in [
            b'{ "b" :1,\n\t"a": [1.0, 1E2, -0, 2e-3 ] }',
            b'"\\u00e9\\/\\n"',
            b"12345678901234567890123456789",
            b"1e400",
            b'{"x": 1e400, "y": -1e400}',
        ]:
            self.assertEqual(post(_wrapped(payload)).body, payload)

    def test_duplicate_keys_not_collapsed(self) -> None:
        """A payload with a repeated key reaches the backend with both."""
        payload = b'{"a": 1, "a": 2}'
        self.assertEqual(post(_wrapped(payload)).body, payload)

    def test_non_ascii_utf8_kept(self) -> None:
        """Raw UTF-8 text, before and inside the payload, is sliced at the right bytes."""
        auth = with_auth(endpoint="caf\u00e9 \U0001f600")
        payload = '{"p": "\u00e9\u4e2d\U0001f600"}'.encode()
        body = b'{"auth_data": %s, "payload": %s}' % (
            json.dumps(auth, ensure_ascii=False).encode(),
            payload,
        )
        envelope = post(body)
        self.assertEqual(envelope.body, payload)
        self.assertEqual(envelope.auth, AuthData(**auth))
        bom = post(b"\xef\xbb\xbf" + body)
        self.assertEqual(bom.body, payload)

    def test_read_span(self) -> None:
        """With ``read_span`` the payload's bytes are read, at the right offsets, not sliced."""
        auth = with_auth(endpoint="caf\u00e9")
        payload = '{"p": "\u4e2d"}'.encode()
        body = b'{"auth_data": %s, "payload": %s}' % (
            json.dumps(auth, ensure_ascii=False).encode(),
            payload,
        )
        spans: list[tuple[int, int]] = []

        def read(start: int, end: int) -> bytes:
            spans.append((start, end))
            return body[start:end]

        envelope = parse_envelope(b"POST", b"/x", body, unsecured=False, read_span=read)
        self.assertEqual(envelope.body, payload)
        self.assertEqual(len(spans), 1)

    def test_utf16_body_gives_utf8_payload(self) -> None:
        """A UTF-16 body (JSON allows it) is relayed as the same JSON text in UTF-8."""
        text = '{"auth_data": %s, "payload": {"p": "\u00e9"}}' % json.dumps(AUTH)
        envelope = post(text.encode("utf-16"))
        self.assertEqual(envelope.body, '{"p": "\u00e9"}'.encode())

    def test_nan_and_infinity_refused(self) -> None:
        """``NaN`` and ``Infinity`` in a payload are not JSON: 422, never relayed or invented."""
        for literal in (b"NaN", b"Infinity", b"-Infinity", b'{"t": [NaN]}'):
            error = self.assertRaises(EnvelopeInvalid, post, _wrapped(literal))
            self.assertEqual(error.message, "invalid JSON")

    def test_invalid_payload_refused(self) -> None:
        """A payload that is not JSON makes the body invalid JSON."""
        for payload in (b"{", b"[1,]", b"01", b'"\x01"', b"tru", b"{'a': 1}"):
            error = self.assertRaises(EnvelopeInvalid, post, _wrapped(payload))
            self.assertTrue(error.message.startswith("invalid JSON"), payload)

    def test_last_duplicate_member_wins(self) -> None:
        """Two top-level payloads: the last one, as json.loads would say."""
        body = b'{"payload": 1, "auth_data": %s, "payload": [2]}' % json.dumps(AUTH).encode()
        self.assertEqual(post(body).body, b"[2]")

    def test_other_members_validated_not_forwarded(self) -> None:
        """A member beside the three is checked as JSON, never forwarded."""
        self.assertEqual(post(_wrapped(b"1", before=b'"x": [1, {"y": 2}], ')).body, b"1")
        self.assertRaises(EnvelopeInvalid, post, _wrapped(b"1", before=b'"x": NaN, '))

    def test_deep_nesting_that_json_accepts(self) -> None:
        """A payload nested hundreds deep is relayed as written; a hopeless one is refused."""
        payload = b"[" * 400 + b"1" + b"]" * 400
        self.assertEqual(post(_wrapped(payload)).body, payload)
        error = self.assertRaises(NestedTooDeep, post, _wrapped(b"[" * 100000 + b"]" * 100000))
        self.assertEqual(error.status, 422)

    def test_large_routing_data_refused(self) -> None:
        """
        An auth_data (or session_id) of megabytes is refused before it is built
        into Python objects, which would take many times its size in memory.
        """
        huge = {**AUTH, "padding": list(range(100000))}
        error = self.assertRaises(EnvelopeInvalid, post, {"auth_data": huge, "payload": 1})
        self.assertEqual((error.status, error.message), (422, "auth_data is too large"))
        error = self.assertRaises(
            EnvelopeInvalid, post, {"auth_data": AUTH, "session_id": "s" * 70000, "payload": 1}
        )
        self.assertEqual(error.details, {"session_id": "too large"})

    def test_session_id(self) -> None:
        """A string ``session_id`` is kept, null is no session; any other type is a 422."""
        for sent, kept in (("abc", "abc"), (None, None)):
            body = {"auth_data": AUTH, "session_id": sent, "payload": 1}
            self.assertEqual(post(body).session_id, kept)
        for sent in (5, {"a": 1}, ["abc"]):
            body = {"auth_data": AUTH, "session_id": sent, "payload": 1}
            with self.assertRaises(EnvelopeInvalid) as caught:
                post(body)
            self.assertEqual(caught.exception.status, 422)


class DroppedParamsTests(SynchronousTestCase):
    """Query parameters asked for (the endpoint's ``api_key``) never reach the backend."""

    def test_api_key_dropped(self) -> None:
        """Every ``api_key`` goes, other parameters stay byte for byte, in order."""
        envelope = parse_envelope(
            b"POST",
            b"/v1/x?a=1&api_key=secret&b=%20&api%5Fkey=x&api_key",
            wrap_body(AUTH, 1),
            unsecured=False,
            drop_params=frozenset({"api_key"}),
        )
        self.assertEqual(envelope.target, b"/v1/x?a=1&b=%20")
        only = parse_envelope(
            b"GET",
            b"/m?api_key=s&" + FULL_QUERY,
            b"",
            unsecured=False,
            drop_params=frozenset({"api_key"}),
        )
        self.assertEqual(only.target, b"/m")
        self.assertEqual(only.auth, AuthData(**AUTH))

    def test_kept_unless_asked(self) -> None:
        """Without ``drop_params`` an ``api_key`` is the caller's business."""
        envelope = post(wrap_body(AUTH, 1), b"/x?api_key=k")
        self.assertEqual(envelope.target, b"/x?api_key=k")


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)


def _mutations(data: bytes, cuts: list[tuple[int, bytes]]) -> bytes:
    out = bytearray(data)
    for position, insert in cuts:
        at = position % (len(out) + 1)
        out[at:at] = insert
    return bytes(out)


#: How bodies start that may or may not be JSON: the large-body parser judges
#: a body by its start before it decodes the whole (forms, uploads, literals).
_STARTS = [
    b"true",
    b"tru",
    b"falsey",
    b"null",
    b"nul",
    b"-1",
    b"-x",
    b"--boundary\r\n",
    b"field0000001=vvv&",
    b' \r\n\t"text"',
    b"\xef\xbb\xbf{",
    b"\xef\xbb\xbfform=1",
    b"[1, 2]",
    b"0",
    b"",
]

#: Bodies as a hostile caller sends them: random bytes, a start from
#: :data:`_STARTS` with anything after it, any JSON value between whitespace,
#: or envelopes with JSON's structural characters, NaN, bad bytes and extra
#: members inserted.
_hostile_bodies = st.one_of(
    st.binary(max_size=200),
    st.builds(
        operator.add,
        st.sampled_from(_STARTS),
        st.one_of(st.binary(max_size=20), st.sampled_from([b"", b" ", b"}", b"]"])),
    ),
    st.builds(
        lambda before, value, after: before + json.dumps(value).encode("utf-8") + after,
        st.sampled_from([b"", b" ", b"\r\n\t ", b"\xef\xbb\xbf"]),
        _json_values,
        st.sampled_from([b"", b" ", b"x"]),
    ),
    st.builds(
        _mutations,
        st.builds(
            lambda auth, payload: wrap_body(auth, payload),
            st.one_of(st.just(AUTH), st.dictionaries(st.text(max_size=5), _json_values)),
            _json_values,
        ),
        st.lists(
            st.tuples(
                st.integers(min_value=0),
                st.sampled_from(
                    [
                        b"{",
                        b"}",
                        b"[",
                        b"]",
                        b",",
                        b":",
                        b'"',
                        b"\\",
                        b"NaN",
                        b"\xff",
                        b"1e400",
                        b"\x00",
                        b" ",
                        b'"payload": 1,',
                        b'"auth_data": {},',
                    ]
                ),
            ),
            max_size=3,
        ),
    ),
)


class ParserPropertyTests(SynchronousTestCase):
    """Whatever arrives, the parser answers an Envelope or a 4xx VespaError, nothing else."""

    @PROPERTY
    @given(
        _hostile_bodies,
        st.booleans(),
        st.sampled_from([b"POST", b"GET", b"PUT"]),
    )
    def test_envelope_or_4xx(self, body: bytes, unsecured: bool, method: bytes) -> None:
        """No body yields a 5xx or any other exception; a forwarded payload is valid JSON."""
        try:
            envelope = parse_envelope(method, b"/x?serverless_cost=1", body, unsecured=unsecured)
        except VespaError as error:
            self.assertTrue(400 <= error.status < 500, error)
            return
        self.assertIsInstance(envelope, Envelope)
        if envelope.body is not None:
            forwarded = json.loads(envelope.body, parse_constant=_not_json)
            if envelope.payload is not NOT_PARSED:
                self.assertEqual(envelope.payload, forwarded)
        elif envelope.payload is not NOT_PARSED:
            self.assertEqual(envelope.payload, json.loads(body))

    @PROPERTY
    @given(_hostile_bodies, st.booleans())
    def test_small_and_large_parsers_agree(self, body: bytes, unsecured: bool) -> None:
        """
        The small-body parser (every member built in C) and the large-body one
        (Python hooks, routing members only) give the same envelope or the same
        refusal for any body.
        """

        def parse(small_body: int) -> Envelope | tuple[type, str]:
            real = envelope_module.SMALL_BODY
            envelope_module.SMALL_BODY = small_body
            try:
                return parse_envelope(b"POST", b"/x", body, unsecured=unsecured)
            except VespaError as error:
                return type(error), error.message
            finally:
                envelope_module.SMALL_BODY = real

        small, large = parse(len(body)), parse(-1)
        if isinstance(large, Envelope):
            self.assertIs(large.payload, NOT_PARSED)
        self.assertEqual(small, large)


def _not_json(name: str) -> None:
    raise AssertionError(f"{name} was forwarded")
