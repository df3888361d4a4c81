# -*- test-case-name: tests.test_client_tls -*-
"""
TLS to workers: the platform's trust store, plus Vast's own root CA.

Vast workers present certificates issued by Vast's own root CA
(``https://console.vast.ai/static/jvastai_root.cer``), which no platform
trusts; the original client told users to append it to certifi's bundle by
hand. ``--ca-file`` adds the certificates of a PEM file to the platform's
trust store instead.

The root has a known quirk: its basic
constraints set a path length while its key usage lacks ``keyCertSign``,
which OpenSSL's strict mode (``X509_V_FLAG_X509_STRICT``, the default of
Python's ``ssl.create_default_context`` since 3.13) rejects; the Vast SDK
clears that flag by hand. Twisted's contexts are pyOpenSSL's, which never set
strict mode, so such a root verifies as it is: the tests check it with a
private CA that has the same quirk. Never call ``X509Store.set_flags`` with
``X509_STRICT`` here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.ssl import optionsForClientTLS
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from vespa.log import get_logger
from vespa.settings import ConfigError
from vespa.tls import read_file

log = get_logger(__name__)


def load_ca_file(path: str) -> list[x509.Certificate]:
    """
    The certificates of a PEM (or single DER) file.

    :raise ConfigError: the file cannot be read or holds no certificate.
    """
    data = read_file(path, lambda why: ConfigError(f"--ca-file: cannot read {path}: {why}"))
    try:
        if b"-----BEGIN" in data:
            certificates = x509.load_pem_x509_certificates(data)
        else:
            certificates = [x509.load_der_x509_certificate(data)]
    except ValueError as e:
        raise ConfigError(f"--ca-file: {path} holds no usable certificate: {e}") from None
    return certificates


@implementer(IOpenSSLTrustRoot)
class PlatformPlusCAs:
    """
    Trusts the platform's CAs and the given ones.

    :param certificates: the extra CA certificates.
    :param platform: also trust the platform's store.
    """

    def __init__(self, certificates: Sequence[x509.Certificate], *, platform: bool = True):
        self._certificates = [crypto.X509.from_cryptography(c) for c in certificates]
        self._platform = platform

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        if self._platform:
            context.set_default_verify_paths()
        store = context.get_cert_store()
        assert store is not None
        for certificate in self._certificates:
            store.add_cert(certificate)


@implementer(IPolicyForHTTPS)
class WorkerTLSPolicy:
    """
    How ``https`` workers are verified: the platform's trust store plus
    ``certificates``, and the worker's host name (an IP address for Vast
    workers; service_identity checks IP SANs).

    :param certificates: extra CA certificates (Vast's root CA).
    """

    def __init__(self, certificates: Sequence[x509.Certificate] = ()) -> None:
        self._root = PlatformPlusCAs(certificates)

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return optionsForClientTLS(hostname.decode("idna"), trustRoot=self._root)


def worker_tls_policy(ca_file: str | None) -> WorkerTLSPolicy:
    """
    The policy for ``--ca-file`` (``None``: the platform's trust store only).

    :raise ConfigError: an unusable file.
    """
    certificates = load_ca_file(ca_file) if ca_file else []
    if certificates:
        log.info(
            "trusting {n} extra CA certificate(s) from {path} for https workers",
            n=len(certificates),
            path=ca_file,
        )
    return WorkerTLSPolicy(certificates)
