# -*- test-case-name: tests.test_signing -*-
"""
Tests for :mod:`vespa.protocol.signing`.
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import asdict, replace
from functools import cache
from typing import Any
from urllib.parse import urlencode

from Crypto.PublicKey import ECC, RSA
from twisted.trial.unittest import SynchronousTestCase

from vespa.errors import VespaError
from vespa.protocol.envelope import AuthData, auth_query, parse_envelope, wrap_body
from vespa.protocol.signing import (
    MODES,
    SignatureRejected,
    SignatureVerifier,
    sign,
    signed_message,
)

# Generating a key is slow: one per test module.
_KEY = RSA.generate(2048)
PRIVATE = _KEY.export_key()
PUBLIC = _KEY.public_key().export_key()

URL = "https://1.2.3.4:5"
FIELDS: dict[str, Any] = {
    "cost": 100,
    "endpoint": "ep",
    "reqnum": 7,
    "request_idx": 9,
    "url": URL,
}


@cache
def other_public_key() -> bytes:
    """The public half of a second key, made only by the test that needs it."""
    return RSA.generate(2048).public_key().export_key()


def signed(mode: str = "full", **changes: Any) -> AuthData:
    """:data:`FIELDS` with ``changes``, signed with the test key in ``mode``."""
    fields = {**FIELDS, **changes}
    return AuthData(signature=sign(PRIVATE, fields, mode), **fields)


def verifier(**options: Any) -> SignatureVerifier:
    """A verifier holding the test public key."""
    return SignatureVerifier(PUBLIC, **options)


class SignedMessageTests(SynchronousTestCase):
    """The exact bytes that are signed."""

    def test_full_form(self) -> None:
        """Five sorted keys, indented by 4, as in the spec's example."""
        auth = AuthData(signature="ignored", **FIELDS)
        self.assertEqual(
            signed_message(auth),
            b'{\n    "cost": 100,\n    "endpoint": "ep",\n    "reqnum": 7,\n'
            b'    "request_idx": 9,\n    "url": "https://1.2.3.4:5"\n}',
        )
        self.assertEqual(signed_message(auth, "full"), signed_message(auth))

    def test_matches_pr50_form(self) -> None:
        """The message is every AuthData field but the signature, dumped with sort_keys."""
        auth = AuthData(signature="s", **{**FIELDS, "cost": 2.5, "endpoint": "caf\u00e9"})
        fields = {k: v for k, v in asdict(auth).items() if k != "signature"}
        self.assertEqual(
            signed_message(auth), json.dumps(fields, indent=4, sort_keys=True).encode()
        )

    def test_cost_json_type_kept(self) -> None:
        """An int, a float and a string cost each keep their own JSON text."""
        for cost, text in [(100, b"100"), (100.0, b"100.0"), ("100", b'"100"'), (1e-05, b"1e-05")]:
            message = signed_message(AuthData(signature="", **{**FIELDS, "cost": cost}))
            self.assertIn(b'\n    "cost": ' + text + b",\n", message)

    def test_ascii_escapes(self) -> None:
        """Non-ASCII text is escaped, as ``json.dumps`` does by default."""
        message = signed_message(AuthData(signature="", **{**FIELDS, "endpoint": "caf\u00e9"}))
        self.assertIn(b'"endpoint": "caf\\u00e9"', message)

    def test_url_form(self) -> None:
        """Mode ``url`` signs the url alone."""
        auth = AuthData(signature="", **FIELDS)
        self.assertEqual(signed_message(auth, "url"), b'{\n    "url": "https://1.2.3.4:5"\n}')

    def test_unknown_mode(self) -> None:
        """An unknown mode is a ValueError everywhere."""
        auth = AuthData(signature="", **FIELDS)
        self.assertEqual(MODES, ("auto", "url", "full"))
        self.assertRaises(ValueError, signed_message, auth, "off")
        self.assertRaises(ValueError, sign, PRIVATE, FIELDS, "url_only")
        self.assertRaises(ValueError, SignatureVerifier, PUBLIC, mode="full5")


class SignTests(SynchronousTestCase):
    """:func:`sign`, the autoscaler's side."""

    def test_standard_base64_of_a_2048_bit_signature(self) -> None:
        """The signature is standard base64 of 256 bytes, deterministic."""
        signature = sign(PRIVATE, FIELDS)
        self.assertEqual(len(base64.b64decode(signature, validate=True)), 256)
        self.assertEqual(signature, sign(PRIVATE, FIELDS))

    def test_extra_fields_ignored(self) -> None:
        """Extra keys (the signature itself, ``__request_id``) do not change the signature."""
        self.assertEqual(
            sign(PRIVATE, {**FIELDS, "signature": "x", "__request_id": 1}), sign(PRIVATE, FIELDS)
        )

    def test_missing_field(self) -> None:
        """A signed field missing from the mapping is a KeyError."""
        self.assertRaises(KeyError, sign, PRIVATE, {"url": URL})
        sign(PRIVATE, {"url": URL}, "url")

    def test_public_key_cannot_sign(self) -> None:
        """Signing with a public key is a ValueError."""
        self.assertRaises(ValueError, sign, PUBLIC, FIELDS)


class VerifyTests(SynchronousTestCase):
    """Signature verification."""

    def test_valid(self) -> None:
        """A signature made over the fields as received verifies."""
        verifier().verify(signed())

    def test_int_and_float_cost_differ(self) -> None:
        """A signature over cost 100 does not verify for 100.0, nor the reverse."""
        as_int, as_float = signed(cost=100), signed(cost=100.0)
        self.assertNotEqual(as_int.signature, as_float.signature)
        check = verifier()
        check.verify(as_int)
        check.verify(as_float)
        for good, other_cost in [(as_int, 100.0), (as_float, 100)]:
            error = self.assertRaises(
                SignatureRejected, verifier().verify, replace(good, cost=other_cost)
            )
            self.assertEqual(error.message, "invalid signature")
        self.assertRaises(SignatureRejected, verifier().verify, replace(as_int, cost="100"))

    def test_through_the_body(self) -> None:
        """Int and float costs verify after travelling in a JSON body."""
        check = verifier()
        for reqnum, cost in enumerate([100, 100.0, 1.0, 0, 0.1, "100"]):
            fields = {**FIELDS, "cost": cost, "reqnum": reqnum}
            body = wrap_body({**fields, "signature": sign(PRIVATE, fields)}, {"x": 1})
            auth = parse_envelope(b"POST", b"/x", body, unsecured=False).auth
            assert auth is not None
            self.assertIs(type(auth.cost), type(cost))
            check.verify(auth)

    def test_through_the_query(self) -> None:
        """Int and float costs verify after travelling as ``serverless_*`` parameters."""
        check = verifier()
        for reqnum, cost in enumerate([100, 100.0, 1.0, 0, 0.1, 1e-05, 1e16]):
            fields = {**FIELDS, "cost": cost, "reqnum": reqnum, "url": "https://h:1/a?b=c&d"}
            query = urlencode(auth_query({**fields, "signature": sign(PRIVATE, fields)}))
            auth = parse_envelope(b"GET", b"/x?" + query.encode(), b"", unsecured=False).auth
            assert auth is not None
            self.assertIs(type(auth.cost), type(cost))
            check.verify(auth)

    def test_tampered_fields(self) -> None:
        """Changing any signed field invalidates the signature (401)."""
        good = signed()
        changes: list[dict[str, Any]] = [
            {"cost": 101},
            {"endpoint": "ep2"},
            {"reqnum": 8},
            {"request_idx": 10},
            {"url": URL + "6"},
        ]
        for change in changes:
            error = self.assertRaises(SignatureRejected, verifier().verify, replace(good, **change))
            self.assertEqual(error.status, 401)
            self.assertEqual(error.body(), {"error": "invalid signature", "origin": "vespa"})

    def test_bad_signatures(self) -> None:
        """Malformed base64, the wrong length or a non-ASCII signature is a 401."""
        good = signed()
        for signature in [
            "",
            "not base64!!",
            "QUJD",
            good.signature[:-4],
            good.signature + "AAAA",
            good.signature.replace("=", ""),
            "\u00e9" + good.signature[1:],
            good.signature[:100] + "\n" + good.signature[100:],
        ]:
            error = self.assertRaises(
                SignatureRejected, verifier().verify, replace(good, signature=signature)
            )
            self.assertEqual(error.message, "invalid signature")

    def test_wrong_key(self) -> None:
        """A signature from another key is a 401."""
        error = self.assertRaises(
            SignatureRejected, SignatureVerifier(other_public_key()).verify, signed()
        )
        self.assertEqual(error.message, "invalid signature")

    def test_signature_field_not_signed(self) -> None:
        """The signature of one request does not verify another's fields."""
        first, second = signed(reqnum=1), signed(reqnum=2)
        self.assertRaises(
            SignatureRejected, verifier().verify, replace(second, signature=first.signature)
        )

    def test_url_mode(self) -> None:
        """Mode ``url`` checks the url only; a full-mode signature does not verify there."""
        check = verifier(mode="url")
        auth = signed("url")
        check.verify(auth)
        check.verify(replace(auth, cost=5.0, reqnum=1, request_idx=2, endpoint="other"))
        self.assertRaises(SignatureRejected, check.verify, replace(auth, url=URL + "/x"))
        self.assertRaises(SignatureRejected, check.verify, signed("full"))
        self.assertRaises(SignatureRejected, verifier(mode="full").verify, auth)

    def test_no_key(self) -> None:
        """Without a public key every request is refused; setting one lets them in."""
        check = SignatureVerifier()
        self.assertFalse(check.has_key)
        error = self.assertRaises(SignatureRejected, check.verify, signed())
        self.assertEqual(error.message, "no public key yet")
        self.assertEqual(error.status, 401)
        check.set_public_key(PUBLIC)
        self.assertTrue(check.has_key)
        check.verify(signed())

    def test_key_checked_first(self) -> None:
        """Without a key, even a request for another URL reads ``no public key yet``."""
        check = SignatureVerifier(own_url="https://other:1")
        error = self.assertRaises(SignatureRejected, check.verify, signed())
        self.assertEqual(error.message, "no public key yet")

    def test_rejection_is_a_vespa_error(self) -> None:
        """SignatureRejected is a VespaError answered 401 from Vespa."""
        self.assertTrue(issubclass(SignatureRejected, VespaError))
        self.assertEqual(SignatureRejected.status, 401)
        self.assertEqual(SignatureRejected.origin, "vespa")


class PublicKeyTests(SynchronousTestCase):
    """Only an RSA public key PEM is accepted."""

    def test_garbage(self) -> None:
        """Text that is no PEM key at all is a ValueError."""
        for pem in [
            b"",
            b"garbage",
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            b"-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n",
            b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            _KEY.public_key().export_key("DER"),
            _KEY.public_key().export_key("OpenSSH"),
        ]:
            self.assertRaises(ValueError, SignatureVerifier, pem)

    def test_not_rsa(self) -> None:
        """An elliptic-curve public key PEM is a ValueError."""
        pem = ECC.generate(curve="P-256").public_key().export_key(format="PEM").encode()
        error = self.assertRaises(ValueError, SignatureVerifier().set_public_key, pem)
        self.assertIn("RSA", str(error))

    def test_private_key_refused(self) -> None:
        """A private key is refused: the worker needs only the public half."""
        error = self.assertRaises(ValueError, SignatureVerifier, PRIVATE)
        self.assertIn("private", str(error))

    def test_failed_set_keeps_old_key(self) -> None:
        """A rejected key leaves the previous one in place."""
        check = verifier()
        self.assertRaises(ValueError, check.set_public_key, b"garbage")
        self.assertTrue(check.has_key)
        check.verify(signed())

    def test_replace_key(self) -> None:
        """A new key replaces the old one."""
        check = verifier()
        check.set_public_key(other_public_key())
        self.assertRaises(SignatureRejected, check.verify, signed())

    def test_surrounding_whitespace(self) -> None:
        """Leading and trailing whitespace around the PEM (as served over HTTP) is fine."""
        SignatureVerifier(b"\n  " + PUBLIC + b"\n\n").verify(signed())

    def test_bad_options(self) -> None:
        """Negative windows or counts are ValueErrors."""
        self.assertRaises(ValueError, SignatureVerifier, replay_window=-1)
        self.assertRaises(ValueError, SignatureVerifier, remembered_signatures=-1)


class ReplayTests(SynchronousTestCase):
    """Replayed and stale requests are refused in mode ``full``."""

    def test_same_signature_twice(self) -> None:
        """A signature accepted once is refused the second time."""
        check = verifier()
        auth = signed()
        check.verify(auth)
        error = self.assertRaises(SignatureRejected, check.verify, auth)
        self.assertEqual(error.message, "replayed signature")
        self.assertEqual(error.status, 401)

    def test_other_base64_spelling(self) -> None:
        """Flipping base64's unused padding bits does not get a replay through."""
        check = verifier()
        auth = signed()
        check.verify(auth)
        # 256 bytes end in one byte: two characters, the second with 4 unused bits.
        self.assertTrue(auth.signature.endswith("=="))
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        last = alphabet.index(auth.signature[-3])
        respelled = auth.signature[:-3] + alphabet[last ^ 0b1111] + "=="
        self.assertNotEqual(respelled, auth.signature)
        self.assertEqual(base64.b64decode(respelled), base64.b64decode(auth.signature))
        error = self.assertRaises(
            SignatureRejected, check.verify, replace(auth, signature=respelled)
        )
        self.assertEqual(error.message, "replayed signature")

    def test_reqnum_too_old(self) -> None:
        """A reqnum more than the window behind the newest accepted one is refused."""
        check = verifier(replay_window=10)
        check.verify(signed(reqnum=100))
        check.verify(signed(reqnum=90))  # exactly at the edge of the window
        check.verify(signed(reqnum=95))
        error = self.assertRaises(SignatureRejected, check.verify, signed(reqnum=89))
        self.assertEqual(error.message, "reqnum 89 is too far behind the newest 100")
        self.assertEqual(check.newest_reqnum, 100)
        check.verify(signed(reqnum=150))
        self.assertEqual(check.newest_reqnum, 150)
        self.assertRaises(SignatureRejected, check.verify, signed(reqnum=139))

    def test_out_of_order_within_window(self) -> None:
        """Requests arriving slightly out of order are all accepted."""
        check = verifier()
        for reqnum in (5, 3, 9, 4, 8):
            check.verify(signed(reqnum=reqnum))

    def test_replay_off(self) -> None:
        """``replay_window=None`` accepts repeats and old reqnums."""
        check = verifier(replay_window=None)
        auth = signed(reqnum=50000)
        check.verify(auth)
        check.verify(auth)
        check.verify(signed(reqnum=1))
        self.assertIsNone(check.newest_reqnum)

    def test_url_mode_skips_replay(self) -> None:
        """In mode ``url`` every request carries the same signature, so repeats pass."""
        check = verifier(mode="url", replay_window=0)
        auth = signed("url")
        for reqnum in (10, 10, 1):
            check.verify(replace(auth, reqnum=reqnum))
        self.assertIsNone(check.newest_reqnum)

    def test_only_success_updates_state(self) -> None:
        """A refused request (bad signature, wrong url, replay) changes nothing."""
        check = verifier(replay_window=10, own_url=URL)
        forged = replace(signed(reqnum=5), reqnum=10**9)
        self.assertRaises(SignatureRejected, check.verify, forged)
        misrouted = signed(reqnum=10**9, url="https://elsewhere:1")
        self.assertRaises(SignatureRejected, check.verify, misrouted)
        self.assertIsNone(check.newest_reqnum)
        first = signed(reqnum=5)
        check.verify(first)
        self.assertRaises(SignatureRejected, check.verify, first)
        self.assertEqual(check.newest_reqnum, 5)
        check.verify(signed(reqnum=6))

    def test_memory_is_bounded(self) -> None:
        """
        At most ``remembered_signatures`` are remembered; a forgotten one is
        still refused, because the window's floor rises past it.
        """
        check = verifier(remembered_signatures=2)
        first, second, third = (signed(reqnum=n) for n in (1, 2, 3))
        for auth in (first, second, third):
            check.verify(auth)
        self.assertEqual(len(check._seen), 2)
        self.assertRaises(SignatureRejected, check.verify, second)
        self.assertRaises(SignatureRejected, check.verify, third)
        error = self.assertRaises(SignatureRejected, check.verify, first)
        self.assertEqual(error.message, "reqnum 1 is too far behind the oldest remembered")
        check.verify(signed(reqnum=4))

    def test_memory_follows_the_window(self) -> None:
        """Signatures whose reqnum left the window are forgotten: memory is the window."""
        check = verifier(replay_window=3)
        for reqnum in range(1, 21):
            check.verify(signed(reqnum=reqnum))
        self.assertEqual(len(check._seen), 4)
        self.assertEqual(len(check._heap), 4)

    def test_window_and_memory_agree(self) -> None:
        """
        For every window, no accepted signature is ever admitted again: after
        ``window + 1`` consecutive reqnums (the edge that let one replay
        through at 10,001) and after any arrival order.
        """
        rng = random.Random(7)
        for window in (0, 1, 2, 5):
            check = verifier(replay_window=window)
            accepted: list[AuthData] = []
            reqnums = list(range(1, window + 3))
            for reqnum in reqnums:
                auth = signed(reqnum=reqnum)
                check.verify(auth)
                accepted.append(auth)
            for auth in accepted:
                self.assertRaises(SignatureRejected, check.verify, auth)
            # Out of order, with gaps, inside and across the window.
            check = verifier(replay_window=window)
            accepted = []
            for reqnum in rng.sample(range(100, 100 + 4 * (window + 1)), 3 * (window + 1)):
                auth = signed(reqnum=reqnum)
                try:
                    check.verify(auth)
                except SignatureRejected:
                    continue
                accepted.append(auth)
                for old in accepted:
                    self.assertRaises(SignatureRejected, check.verify, old)


class UrlBindingTests(SynchronousTestCase):
    """Routing data signed for another worker is refused."""

    def test_own_url_accepted(self) -> None:
        """The worker's own url passes, a trailing slash on either side aside."""
        verifier(own_url=URL).verify(signed())
        verifier(own_url=URL + "/").verify(signed())
        verifier(own_url=URL).verify(signed(url=URL + "/"))

    def test_other_url_refused(self) -> None:
        """Another worker's url is a 401 naming it, checked before the signature."""
        check = verifier(own_url="https://9.9.9.9:1")
        error = self.assertRaises(SignatureRejected, check.verify, signed())
        self.assertEqual(error.message, "signed for another worker (url 'https://1.2.3.4:5')")
        error = self.assertRaises(SignatureRejected, check.verify, replace(signed(), signature="x"))
        self.assertIn("another worker", error.message)

    def test_binding_off(self) -> None:
        """``bind_url=False`` or no ``own_url`` accepts any url that was signed."""
        verifier(own_url="https://9.9.9.9:1", bind_url=False).verify(signed())
        verifier().verify(signed(url="https://anything:1"))

    def test_url_mode_binding(self) -> None:
        """Binding applies in mode ``url`` too."""
        self.assertRaises(
            SignatureRejected,
            verifier(mode="url", own_url="https://9.9.9.9:1").verify,
            signed("url"),
        )
        verifier(mode="url", own_url=URL).verify(signed("url"))


class AutoModeTests(SynchronousTestCase):
    """The default mode admits either form, verifies a cached url signature once, and says which."""

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def form_logs(self) -> list[str]:
        from twisted.logger import formatEvent

        return [
            formatEvent(e)
            for e in self.events
            if e.get("log_namespace") == "vespa.protocol.signing"
        ]

    def test_auto_is_the_default(self) -> None:
        """A verifier built without a mode accepts both forms."""
        self.assertEqual(SignatureVerifier().mode, "auto")
        check = verifier()
        self.assertEqual(check.verify(signed("url")), "url")
        self.assertEqual(check.verify(signed("full", reqnum=8)), "full")

    def test_cached_url_signature_admitted_every_time(self) -> None:
        """The same url signature on many requests: all admitted, whatever their unsigned fields."""
        check = verifier(own_url=URL)
        auth = signed("url")
        for reqnum in (5, 5, 1, 10**6, 5):
            self.assertEqual(check.verify(replace(auth, reqnum=reqnum, cost=reqnum)), "url")
        self.assertIsNone(check.newest_reqnum)

    def test_url_binding_still_enforced(self) -> None:
        """A url signature for another worker is refused, in auto mode too."""
        check = verifier(own_url="https://9.9.9.9:1")
        error = self.assertRaises(SignatureRejected, check.verify, signed("url"))
        self.assertIn("another worker", error.message)

    def test_full_form_keeps_its_replay_window(self) -> None:
        """A five-field signature is still refused the second time in auto mode."""
        check = verifier()
        auth = signed("full", reqnum=3)
        check.verify(auth)
        error = self.assertRaises(SignatureRejected, check.verify, auth)
        self.assertEqual(error.message, "replayed signature")

    def test_forced_forms(self) -> None:
        """``url`` and ``full`` admit their own form only."""
        self.assertRaises(SignatureRejected, verifier(mode="url").verify, signed("full"))
        self.assertRaises(SignatureRejected, verifier(mode="full").verify, signed("url"))
        self.assertEqual(verifier(mode="url").verify(signed("url")), "url")
        self.assertEqual(verifier(mode="full").verify(signed("full")), "full")

    def test_one_rsa_verification_for_a_cached_signature(self) -> None:
        """A url signature seen before costs no RSA work: the result is cached."""
        check = verifier()
        calls = []
        real = check._verifier.verify

        def counting(*args: Any) -> Any:
            calls.append(1)
            return real(*args)

        check._verifier.verify = counting
        auth = signed("url")
        for reqnum in range(50):
            check.verify(replace(auth, reqnum=reqnum))
        self.assertEqual(len(calls), 1)
        # A forged signature repeated is also decided once.
        forged = replace(auth, signature=signed("url", url=URL + "/other").signature)
        for _ in range(5):
            self.assertRaises(SignatureRejected, check.verify, forged)
        self.assertEqual(len(calls), 1 + 2)  # both forms tried once

    def test_cache_is_bounded(self) -> None:
        """Many distinct forged signatures never grow the cache past its size."""
        from vespa.protocol import signing

        self.patch(signing, "VERIFIED_CACHE_SIZE", 4)
        check = verifier()
        for n in range(10):
            bogus = base64.b64encode(n.to_bytes(256, "big")).decode()
            self.assertRaises(SignatureRejected, check.verify, replace(signed(), signature=bogus))
        self.assertLessEqual(len(check._verified), 4)
        check.verify(signed("url"))

    def test_form_logged_once_and_on_change(self) -> None:
        """The form is logged when first seen, not per request, and again when it changes."""
        check = verifier()
        auth = signed("url")
        for _ in range(3):
            check.verify(auth)
        self.assertEqual(len(self.form_logs()), 1)
        self.assertIn("url alone", self.form_logs()[0])
        check.verify(signed("full", reqnum=1))
        check.verify(signed("full", reqnum=2))
        self.assertEqual(len(self.form_logs()), 2)
        self.assertIn("five fields", self.form_logs()[1])
        self.assertEqual(check.form_seen, "full")


class CachedEntryTests(SynchronousTestCase):
    """
    A cached verification never admits what a full check would refuse: the
    cache is keyed on the strings as received, and a changed url or signed
    field is a different key, decided by RSA again.
    """

    def test_cached_url_signature_binds_its_url(self) -> None:
        """Once a url signature is cached, the same signature with another url is refused."""
        check = verifier(bind_url=False)
        auth = signed("url")
        self.assertEqual(check.verify(auth), "url")
        for url in (URL + "/", URL + "0", URL.upper(), " " + URL, URL[:-1], ""):
            error = self.assertRaises(SignatureRejected, check.verify, replace(auth, url=url))
            self.assertEqual(error.message, "invalid signature", url)
        self.assertEqual(check.verify(auth), "url")

    def test_cached_url_signature_with_a_trailing_slash(self) -> None:
        """Binding ignores a trailing ``/``; the signature does not."""
        check = verifier(mode="url", own_url=URL)
        auth = signed("url")
        check.verify(auth)
        error = self.assertRaises(SignatureRejected, check.verify, replace(auth, url=URL + "/"))
        self.assertEqual(error.message, "invalid signature")

    def test_other_spelling_of_a_cached_signature(self) -> None:
        """Another base64 spelling of a cached signature is decided on its own."""
        check = verifier(mode="url")
        auth = signed("url")
        check.verify(auth)
        for spelling in (auth.signature + "\n", auth.signature.rstrip("="), "*" + auth.signature):
            error = self.assertRaises(
                SignatureRejected, check.verify, replace(auth, signature=spelling)
            )
            self.assertEqual(error.message, "invalid signature")

    def test_cached_full_signature_binds_every_field(self) -> None:
        """
        A five-field signature seen before admits no change to a signed field,
        even one Python thinks equal (``100 == 100.0``, ``0.0 == -0.0``).
        """
        for cost, other in ((100, 100.0), (0.0, -0.0), (100, "100")):
            check = verifier(mode="full", replay_window=None)
            auth = signed("full", cost=cost)
            check.verify(auth)
            changes: list[dict[str, Any]] = [
                {"cost": other},
                {"endpoint": "ep2"},
                {"reqnum": 8},
                {"request_idx": 10},
                {"url": URL + "/"},
            ]
            for change in changes:
                error = self.assertRaises(
                    SignatureRejected, check.verify, replace(auth, **change)
                )
                self.assertEqual(error.message, "invalid signature", change)
            check.verify(auth)

    def test_cached_full_signature_still_replay_checked(self) -> None:
        """A cache hit on a five-field signature is still a replay, refused."""
        check = verifier(mode="full")
        auth = signed("full", reqnum=4)
        check.verify(auth)
        error = self.assertRaises(SignatureRejected, check.verify, auth)
        self.assertEqual(error.message, "replayed signature")

    def test_new_key_forgets_cached_results(self) -> None:
        """After a key change, a signature cached under the old key is refused."""
        check = verifier(mode="url")
        auth = signed("url")
        check.verify(auth)
        check.set_public_key(other_public_key())
        error = self.assertRaises(SignatureRejected, check.verify, auth)
        self.assertEqual(error.message, "invalid signature")
