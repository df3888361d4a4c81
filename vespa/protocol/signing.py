# -*- test-case-name: tests.test_signing -*-
"""
Request signatures: the signed message, RSA verification, replay and URL checks.

The autoscaler signs routing data with RSA PKCS#1 v1.5 over the SHA-256 of
``json.dumps(message, indent=4, sort_keys=True)``, where ``message`` holds the
values exactly as received. Which fields are signed has changed over time at
Vast, so it is a mode:

- ``"full"`` (the default): ``cost``, ``endpoint``, ``reqnum``, ``request_idx``
  and ``url`` (the PR #50 / NEW form).
- ``"url"``: ``url`` alone (the SDK form since 2026).

Beyond the original, :class:`SignatureVerifier` refuses replays (in mode
``"full"``) and signatures made for another worker's URL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections import deque
from collections.abc import Mapping
from typing import Any

from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15

from vespa.errors import VespaError
from vespa.protocol.envelope import AuthData

MODES = ("full", "url")
"""The signed-message modes: all five signed fields, or the url alone."""

_SIGNED_FIELDS = {
    "full": ("cost", "endpoint", "reqnum", "request_idx", "url"),
    "url": ("url",),
}


class SignatureRejected(VespaError):
    """
    A request's routing data failed verification (401). The message says why:
    ``"invalid signature"``, ``"replayed signature"``, ``"reqnum N is too far
    behind the newest M"``, ``"signed for another worker (url ...)"`` or ``"no
    public key yet"``.
    """

    status = 401


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown signature mode {mode!r}; use one of {', '.join(MODES)}")


def _message(fields: Mapping[str, Any], mode: str) -> bytes:
    _check_mode(mode)
    message = {name: fields[name] for name in _SIGNED_FIELDS[mode]}
    # This exact call is the contract: indent=4, sorted keys, ASCII escapes and
    # Python's float repr. Building the text any other way breaks verification.
    return json.dumps(message, indent=4, sort_keys=True).encode("utf-8")


def signed_message(auth: AuthData, mode: str = "full") -> bytes:
    """
    The bytes the autoscaler signs for ``auth``.

    :param auth: the routing data, with its values as received.
    :param mode: ``"full"`` or ``"url"`` (see :data:`MODES`).
    :return: the UTF-8 JSON text, indented by 4 with sorted keys.
    :raise ValueError: for an unknown mode.
    """
    return _message(
        {
            "cost": auth.cost,
            "endpoint": auth.endpoint,
            "reqnum": auth.reqnum,
            "request_idx": auth.request_idx,
            "url": auth.url,
        },
        mode,
    )


def sign(private_key_pem: bytes, auth: Mapping[str, Any], mode: str = "full") -> str:
    """
    Sign routing data as the autoscaler does (for the autoscaler stand-in and tests).

    :param private_key_pem: an RSA private key in PEM form.
    :param auth: the routing fields; those signed in ``mode`` must be present,
        with the JSON types the worker will receive them with.
    :param mode: ``"full"`` or ``"url"`` (see :data:`MODES`).
    :return: the standard base64 signature.
    :raise ValueError: for an unknown mode or a key that cannot sign.
    :raise KeyError: for a signed field missing from ``auth``.
    """
    message = _message(auth, mode)
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
    signature is valid, it is not a replay. Only a request that passes them all
    changes the replay state, so forged or misrouted requests cannot fill it.

    Replay checks (mode ``"full"`` only) refuse a signature already accepted
    among the last ``remembered_signatures``, and a ``reqnum`` more than
    ``replay_window`` behind the newest accepted one. In mode ``"url"`` the
    signed message is the same for every request to this worker, so its
    signature is too: refusing a repeated signature would refuse every request
    after the first, and ``reqnum`` is not signed, so it cannot be trusted.
    Replay checks are therefore skipped in that mode.

    All state is bounded: one integer and at most ``remembered_signatures``
    32-byte digests.

    :param public_key_pem: the autoscaler's RSA public key in PEM form, or
        ``None`` to set it later with :meth:`set_public_key` (until then every
        request is refused).
    :param mode: ``"full"`` or ``"url"`` (see :data:`MODES`).
    :param replay_window: how far behind the newest ``reqnum`` a request may
        be; ``None`` turns all replay checks off.
    :param own_url: this worker's URL as the autoscaler knows it.
    :param bind_url: whether to refuse routing data whose ``url`` is not
        ``own_url`` (only when ``own_url`` is set). A trailing ``/`` is ignored.
    :param remembered_signatures: how many accepted signatures to remember.
    :raise ValueError: for an unknown mode, a negative window or count, or a
        key that is not an RSA public key PEM.
    """

    def __init__(
        self,
        public_key_pem: bytes | None = None,
        *,
        mode: str = "full",
        replay_window: int | None = 10000,
        own_url: str | None = None,
        bind_url: bool = True,
        remembered_signatures: int = 10000,
    ) -> None:
        _check_mode(mode)
        if replay_window is not None and replay_window < 0:
            raise ValueError(f"replay_window must be >= 0 or None, got {replay_window}")
        if remembered_signatures < 0:
            raise ValueError(f"remembered_signatures must be >= 0, got {remembered_signatures}")
        self.mode = mode
        self.replay_window = replay_window
        self.own_url = own_url
        self.bind_url = bind_url
        self.remembered_signatures = remembered_signatures
        self._verifier: Any = None
        self._newest_reqnum: int | None = None
        self._order: deque[bytes] = deque()
        self._seen: set[bytes] = set()
        if public_key_pem is not None:
            self.set_public_key(public_key_pem)

    @property
    def has_key(self) -> bool:
        """Whether a public key is set (without one, every request is refused)."""
        return self._verifier is not None

    @property
    def newest_reqnum(self) -> int | None:
        """The highest ``reqnum`` accepted so far in mode ``"full"``, if any."""
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

    def verify(self, auth: AuthData) -> None:
        """
        Check the routing data of one request, and remember it if it passes.

        :param auth: the routing data as received.
        :raise SignatureRejected: with the reason, if the request is refused.
        """
        if self._verifier is None:
            raise SignatureRejected("no public key yet")
        if self.bind_url and self.own_url is not None:
            if auth.url.rstrip("/") != self.own_url.rstrip("/"):
                raise SignatureRejected(f"signed for another worker (url {auth.url[:200]!r})")
        try:
            signature = base64.b64decode(auth.signature, validate=True)
            self._verifier.verify(SHA256.new(signed_message(auth, self.mode)), signature)
        except (ValueError, TypeError, binascii.Error):
            raise SignatureRejected("invalid signature") from None
        if self.mode != "full" or self.replay_window is None:
            return
        # Keyed on the decoded bytes: base64 text has several spellings of the same
        # bytes (unused padding bits), but a valid PKCS#1 v1.5 signature has one.
        digest = hashlib.sha256(signature).digest()
        newest = self._newest_reqnum
        if newest is not None and auth.reqnum < newest - self.replay_window:
            raise SignatureRejected(f"reqnum {auth.reqnum} is too far behind the newest {newest}")
        if digest in self._seen:
            raise SignatureRejected("replayed signature")
        self._newest_reqnum = auth.reqnum if newest is None else max(newest, auth.reqnum)
        self._remember(digest)

    def _remember(self, digest: bytes) -> None:
        if self.remembered_signatures == 0:
            return
        if len(self._order) >= self.remembered_signatures:
            self._seen.discard(self._order.popleft())
        self._order.append(digest)
        self._seen.add(digest)
