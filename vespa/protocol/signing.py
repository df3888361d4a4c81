# -*- test-case-name: tests.test_signing -*-
"""
Request signatures: the signed message, RSA verification, replay and URL checks.

The autoscaler signs routing data with RSA PKCS#1 v1.5 over the SHA-256 of
``json.dumps(message, indent=4, sort_keys=True)``, where ``message`` holds the
values exactly as received. Which fields are signed has changed over time at
Vast, so there are two forms (:data:`FORMS`):

- ``"url"``: ``url`` alone. Today's autoscaler signs a worker's url once and
  hands the same signature out with every request routed there (vastai 1.9.1).
- ``"full"``: ``cost``, ``endpoint``, ``reqnum``, ``request_idx`` and ``url``
  (the 2024-2025 form).

The verifier's mode (:data:`MODES`) is one form, or ``"auto"`` (the default),
which admits a request whose signature verifies under either form.

Beyond the original, :class:`SignatureVerifier` refuses replays of five-field
signatures and signatures made for another worker's URL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15

from vespa.errors import VespaError
from vespa.log import get_logger
from vespa.protocol.envelope import AuthData

log = get_logger(__name__)

FORMS = ("url", "full")
"""The signed-message forms: the url alone (today's), or all five signed fields."""

MODES = ("auto", *FORMS)
"""The verifier's modes: either form (``auto``), or one form only."""

_SIGNED_FIELDS = {
    "full": ("cost", "endpoint", "reqnum", "request_idx", "url"),
    "url": ("url",),
}

#: Verification results kept, per distinct (signature, message). The cached url
#: signature is one entry; the rest is room for five-field and forged ones.
VERIFIED_CACHE_SIZE = 1024


class SignatureRejected(VespaError, status=401):
    """
    A request's routing data failed verification (401). The message says why:
    ``"invalid signature"``, ``"replayed signature"``, ``"reqnum N is too far
    behind the newest M"``, ``"signed for another worker (url ...)"`` or ``"no
    public key yet"``.
    """


def _message(fields: Mapping[str, Any], form: str) -> bytes:
    if form not in FORMS:
        raise ValueError(f"unknown signed form {form!r}; use one of {', '.join(FORMS)}")
    message = {name: fields[name] for name in _SIGNED_FIELDS[form]}
    # This exact call is the contract: indent=4, sorted keys, ASCII escapes and
    # Python's float repr. Building the text any other way breaks verification.
    return json.dumps(message, indent=4, sort_keys=True).encode("utf-8")


def signed_message(auth: AuthData, form: str = "full") -> bytes:
    """
    The bytes the autoscaler signs for ``auth``.

    :param auth: the routing data, with its values as received.
    :param form: ``"full"`` or ``"url"`` (see :data:`FORMS`).
    :return: the UTF-8 JSON text, indented by 4 with sorted keys.
    :raise ValueError: for an unknown form.
    """
    return _message(
        {
            "cost": auth.cost,
            "endpoint": auth.endpoint,
            "reqnum": auth.reqnum,
            "request_idx": auth.request_idx,
            "url": auth.url,
        },
        form,
    )


def sign(private_key_pem: bytes, auth: Mapping[str, Any], form: str = "full") -> str:
    """
    Sign routing data as the autoscaler does (for the autoscaler stand-in and tests).

    :param private_key_pem: an RSA private key in PEM form.
    :param auth: the routing fields; those signed in ``form`` must be present,
        with the JSON types the worker will receive them with.
    :param form: ``"full"`` or ``"url"`` (see :data:`FORMS`).
    :return: the standard base64 signature.
    :raise ValueError: for an unknown form or a key that cannot sign.
    :raise KeyError: for a signed field missing from ``auth``.
    """
    message = _message(auth, form)
    key = RSA.import_key(private_key_pem)
    if not key.has_private():
        raise ValueError("signing needs an RSA private key, got a public key")
    signature = pkcs1_15.new(key).sign(SHA256.new(message))
    return base64.b64encode(signature).decode("ascii")


class SignatureVerifier:
    """
    Verifies the signatures on routing data, and refuses replays and
    signatures meant for another worker.

    Checks run in this order: a key is present, the URL is this worker's, the
    signature is valid under a form the mode allows, and, for the five-field
    form, it is not a replay. Only a request that passes them all changes the
    replay state, so forged or misrouted requests cannot fill it.

    A url signature is the same on every request to this worker, so a repeat
    is the normal case, not a replay, and ``reqnum`` is not signed: replay
    checks apply to five-field signatures only. There they refuse a
    ``reqnum`` more than ``replay_window`` behind the newest accepted one, and
    a signature already accepted within that window. The memory of accepted
    signatures is the window itself: a signature is forgotten only once its
    ``reqnum`` is out of the window, so whatever is forgotten is refused as too
    old. Should more than ``remembered_signatures`` fall within the window, the
    oldest are forgotten and the window's floor rises past them.

    Each RSA verification result is cached per distinct (signature, message),
    at most :data:`VERIFIED_CACHE_SIZE` of them: a cached url signature costs
    one verification, not one per request, and a repeat of it costs a lookup
    keyed on the signature and url strings as received (no decoding, no
    message built). In ``auto`` mode the form that
    verified last is tried first, and the worker logs which form the
    autoscaler uses when it first sees it and whenever it changes.

    :param public_key_pem: the autoscaler's RSA public key in PEM form, or
        ``None`` to set it later with :meth:`set_public_key` (until then every
        request is refused).
    :param mode: ``"auto"``, ``"url"`` or ``"full"`` (see :data:`MODES`).
    :param replay_window: how far behind the newest ``reqnum`` a five-field
        request may be; ``None`` turns all replay checks off.
    :param own_url: this worker's URL as the autoscaler knows it.
    :param bind_url: whether to refuse routing data whose ``url`` is not
        ``own_url`` (only when ``own_url`` is set). A trailing ``/`` is ignored.
    :param remembered_signatures: the most accepted signatures remembered;
        ``None`` for ``replay_window + 1``, one per reqnum of the window.
    :raise ValueError: for an unknown mode, a negative window or count, or a
        key that is not an RSA public key PEM.
    """

    def __init__(
        self,
        public_key_pem: bytes | None = None,
        *,
        mode: str = "auto",
        replay_window: int | None = 10000,
        own_url: str | None = None,
        bind_url: bool = True,
        remembered_signatures: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown signature mode {mode!r}; use one of {', '.join(MODES)}")
        if replay_window is not None and replay_window < 0:
            raise ValueError(f"replay_window must be >= 0 or None, got {replay_window}")
        if remembered_signatures is not None and remembered_signatures < 0:
            raise ValueError(f"remembered_signatures must be >= 0, got {remembered_signatures}")
        self.mode = mode
        self.replay_window = replay_window
        self.own_url = own_url
        self.bind_url = bind_url
        if remembered_signatures is None:
            remembered_signatures = 0 if replay_window is None else replay_window + 1
        self.remembered_signatures = remembered_signatures
        self.form_seen: str | None = None
        self._verifier: Any = None
        self._verified: OrderedDict[tuple[str, str, str | bytes], bool] = OrderedDict()
        self._newest_reqnum: int | None = None
        # Accepted five-field signatures: (reqnum, SHA-256 digest) in a heap, so the
        # oldest reqnum is forgotten first, and the same as a set for lookups.
        self._heap: list[tuple[int, bytes]] = []
        self._seen: set[bytes] = set()
        # Every reqnum at or below this one is refused: its signature may be forgotten.
        self._floor: int | None = None
        if public_key_pem is not None:
            self.set_public_key(public_key_pem)

    @property
    def has_key(self) -> bool:
        """Whether a public key is set (without one, every request is refused)."""
        return self._verifier is not None

    @property
    def newest_reqnum(self) -> int | None:
        """The highest ``reqnum`` accepted so far under the five-field form, if any."""
        return self._newest_reqnum

    def set_public_key(self, pem: bytes) -> None:
        """
        Set (or replace) the autoscaler's public key. The replay state is kept.

        :param pem: an RSA public key in PEM form, as served by ``/pubkey/``.
        :raise ValueError: if ``pem`` is not an RSA public key PEM; the current
            key, if any, is kept.
        """
        pem = pem.strip()
        if not pem.startswith(b"-----BEGIN "):
            raise ValueError(f"not a PEM key: starts with {pem[:40]!r}")
        try:
            key = RSA.import_key(pem)
        except (ValueError, IndexError, TypeError) as error:
            raise ValueError(f"not an RSA public key PEM: {error}") from None
        if key.has_private():
            # Accepting it would work, but a private key has no business on a worker.
            raise ValueError("got an RSA private key; give the autoscaler's public key")
        self._verifier = pkcs1_15.new(key)
        self._verified.clear()

    def verify(self, auth: AuthData) -> str:
        """
        Check the routing data of one request, and remember it if it passes.

        :param auth: the routing data as received.
        :return: the form its signature verified under, ``"url"`` or ``"full"``.
        :raise SignatureRejected: with the reason, if the request is refused.
        """
        if self._verifier is None:
            raise SignatureRejected("no public key yet")
        if self.bind_url and self.own_url is not None:
            if auth.url.rstrip("/") != self.own_url.rstrip("/"):
                raise SignatureRejected(f"signed for another worker (url {auth.url[:200]!r})")
        form = next((f for f in self._forms() if self._valid(auth, f)), None)
        if form is None:
            raise SignatureRejected("invalid signature")
        if form == "full" and self.replay_window is not None:
            signature = _decoded(auth.signature)
            assert signature is not None  # it verified
            self._check_replay(auth.reqnum, signature)
        if form != self.form_seen:
            before = self.form_seen
            log.info(
                "the autoscaler signs {what}{was}",
                what="the url alone (cached signatures)" if form == "url" else "five fields",
                was="" if before is None else f" (it signed the {before} form before)",
            )
            self.form_seen = form
        return form

    def _forms(self) -> tuple[str, ...]:
        if self.mode != "auto":
            return (self.mode,)
        # The form seen last first: in steady state one form, one verification.
        return ("full", "url") if self.form_seen == "full" else FORMS

    def _valid(self, auth: AuthData, form: str) -> bool:
        # Keyed on the strings as received: on a hit (the cached url signature,
        # every request), no base64 decode and no json.dumps. The url form's
        # message is a function of the url string alone, so (signature, url)
        # decides it exactly. The five-field message depends on the JSON text
        # of the cost (100, 100.0 and -0.0 hash alike), so it is keyed on the
        # message itself.
        key: tuple[str, str, str | bytes]
        message = None
        if form == "url":
            key = ("url", auth.signature, auth.url)
        else:
            message = signed_message(auth, form)
            key = (form, auth.signature, message)
        verified = self._verified
        cached = verified.get(key)
        if cached is not None:
            verified.move_to_end(key)
            return cached
        valid = self._rsa_valid(auth.signature, message or signed_message(auth, form))
        verified[key] = valid
        if len(verified) > VERIFIED_CACHE_SIZE:
            verified.popitem(last=False)
        return valid

    def _rsa_valid(self, signature: str, message: bytes) -> bool:
        decoded = _decoded(signature)
        if decoded is None:
            return False
        try:
            self._verifier.verify(SHA256.new(message), decoded)
        except (ValueError, TypeError):
            return False
        return True

    def _check_replay(self, reqnum: int, signature: bytes) -> None:
        assert self.replay_window is not None
        newest = self._newest_reqnum
        if newest is not None and reqnum < newest - self.replay_window:
            raise SignatureRejected(f"reqnum {reqnum} is too far behind the newest {newest}")
        if self._floor is not None and reqnum <= self._floor:
            raise SignatureRejected(f"reqnum {reqnum} is too far behind the oldest remembered")
        # Keyed on the decoded bytes: base64 text has several spellings of the same
        # bytes (unused padding bits), but a valid PKCS#1 v1.5 signature has one.
        digest = hashlib.sha256(signature).digest()
        if digest in self._seen:
            raise SignatureRejected("replayed signature")
        newest = reqnum if newest is None else max(newest, reqnum)
        self._newest_reqnum = newest
        self._remember(reqnum, digest, newest - self.replay_window)

    def _remember(self, reqnum: int, digest: bytes, oldest_in_window: int) -> None:
        heapq.heappush(self._heap, (reqnum, digest))
        self._seen.add(digest)
        heap = self._heap
        while heap and (heap[0][0] < oldest_in_window or len(heap) > self.remembered_signatures):
            old_reqnum, old = heapq.heappop(heap)
            self._seen.discard(old)
            if old_reqnum >= oldest_in_window:
                # Still inside the window: from now on the window starts above it.
                self._floor = old_reqnum if self._floor is None else max(self._floor, old_reqnum)


def _decoded(signature: str) -> bytes | None:
    """The signature's bytes, or ``None`` if it is not standard base64."""
    try:
        return base64.b64decode(signature, validate=True)
    except (ValueError, TypeError, binascii.Error):
        return None
