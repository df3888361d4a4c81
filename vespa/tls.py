# -*- test-case-name: tests.test_operations,tests.test_client_tls -*-
"""
TLS for the worker: the server context, and self-signed pairs for local use.

On Vast the start script obtains ``/etc/instance.crt`` from Vast's CA; locally
``vespa-certs`` makes a self-signed pair. Certificates are made with
``cryptography`` (pyOpenSSL's generation API is deprecated); pyOpenSSL serves
the connection, TLS 1.2 and up, with HTTP/2 offered by ALPN when the ``h2``
extra is installed (twisted.web's ``Site`` advertises it).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.ssl import CertificateOptions, PrivateCertificate, TLSVersion


class TLSFilesError(ValueError):
    """A certificate or key file is missing, unreadable or not what it should be."""


def read_file(path: str, refusal: Callable[[str], Exception]) -> bytes:
    """
    The bytes of a certificate or key file.

    :param refusal: makes the error to raise from the reason the file could
        not be read (the system's words), so each caller names its option.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise refusal(e.strerror or str(e)) from None


def read_pem(path: str, what: str) -> bytes:
    """
    Read a PEM file, with an error that names the path.

    :param what: ``certificate`` or ``key``, for the message.
    :raise TLSFilesError: when it cannot be read or is not PEM.
    """
    data = read_file(path, lambda why: TLSFilesError(f"cannot read the TLS {what} {path}: {why}"))
    if b"-----BEGIN" not in data:
        raise TLSFilesError(f"the TLS {what} {path} is not a PEM file")
    return data


def server_options(cert_path: str, key_path: str) -> CertificateOptions:
    """
    The server TLS options for a certificate (chain) and its key.

    :raise TLSFilesError: naming the file that is missing, unreadable or wrong.
    """
    cert = read_pem(cert_path, "certificate")
    key = read_pem(key_path, "key")
    try:
        private = PrivateCertificate.loadPEM(key + b"\n" + cert)
        chain = [x509.load_pem_x509_certificate(block) for block in _pem_blocks(cert)[1:]]
        from OpenSSL.crypto import X509

        return CertificateOptions(
            privateKey=private.privateKey.original,
            certificate=private.original,
            extraCertChain=[X509.from_cryptography(c) for c in chain],
            raiseMinimumTo=TLSVersion.TLSv1_2,
        )
    except Exception as e:  # pyOpenSSL's errors are many and opaque: name the files
        raise TLSFilesError(
            f"the TLS certificate {cert_path} and key {key_path} do not load together: {e}"
        ) from None


def _pem_blocks(data: bytes) -> list[bytes]:
    end = b"-----END CERTIFICATE-----"
    return [block + end for block in data.split(end) if b"-----BEGIN CERTIFICATE" in block]


def make_self_signed(
    cert_path: str,
    key_path: str,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    days: int = 365,
) -> None:
    """
    Write a self-signed certificate for ``hosts`` (names or IP addresses) and
    its key (mode 0600).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "vespa")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as f:
        f.write(key_pem)
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def main(argv: list[str] | None = None) -> int:
    """
    ``vespa-certs``: make a self-signed certificate and key for local TLS.
    """
    parser = argparse.ArgumentParser(
        prog="vespa-certs", description="Make a self-signed TLS pair for a local Vespa worker."
    )
    parser.add_argument("--cert", default="vespa.crt", help="certificate path [vespa.crt]")
    parser.add_argument("--key", default="vespa.key", help="key path [vespa.key]")
    parser.add_argument(
        "--host",
        action="append",
        help="a name or IP it is valid for (repeat); default: localhost and 127.0.0.1",
    )
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args(argv)
    make_self_signed(args.cert, args.key, args.host or ("localhost", "127.0.0.1"), args.days)
    print(
        f"wrote {args.cert} and {args.key}; run the worker with "
        f"--use-ssl --tls-cert {args.cert} --tls-key {args.key}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
