"""
TLS to workers, with a private CA that has the Vast root's quirk: a path
length in its basic constraints and no key usage (with ``keyCertSign``), which
OpenSSL's strict mode refuses.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from dataclasses import fields
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL.crypto import X509StoreFlags
from twisted.internet import reactor, ssl
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.client import Agent, ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.support_client import start_chain, vespa_headers
from vespa.client.policy import Preferences
from vespa.client.tls import PlatformPlusCAs, WorkerTLSPolicy, load_ca_file, worker_tls_policy
from vespa.config import ConfigError, WorkerConfig


def make_pki(directory: str) -> dict[str, Any]:
    """A quirky root CA and a worker certificate for 127.0.0.1, written as PEM files."""
    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Vast-like Root")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        # The quirk: a path length, and no key usage extension at all.
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "worker")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {name: os.path.join(directory, f"{name}.pem") for name in ("ca", "cert", "key")}
    with open(paths["ca"], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths["cert"], "wb") as f:
        f.write(leaf.public_bytes(serialization.Encoding.PEM))
    with open(paths["key"], "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return {"ca": ca, "paths": paths}


class _Ok(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"ok"


class _StrictRoot(PlatformPlusCAs):
    """Our trust root with OpenSSL's strict mode on, as Python 3.13's ssl module has it."""

    def _addCACertsToContext(self, context: Any) -> None:
        super()._addCACertsToContext(context)
        context.get_cert_store().set_flags(X509StoreFlags.X509_STRICT)


class _StrictPolicy(WorkerTLSPolicy):
    def __init__(self, certificates: Any) -> None:
        super().__init__(certificates)
        self._root = _StrictRoot(certificates)


class TrustTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.pki = make_pki(self.mktemp())
        paths = self.pki["paths"]
        with open(paths["key"], "rb") as k, open(paths["cert"], "rb") as c:
            options = ssl.PrivateCertificate.loadPEM(k.read() + c.read()).options()
        port = reactor.listenSSL(0, Site(_Ok()), options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = b"https://127.0.0.1:%d/" % (port.getHost().port,)

    async def get(self, policy: Any) -> int:
        agent = Agent(reactor, contextFactory=policy)
        response = await agent.request(b"GET", self.url)
        return int(response.code)

    async def test_ca_file_makes_the_quirky_root_trusted(self) -> None:
        """With the CA added, the worker's certificate verifies, quirk and all."""
        policy = worker_tls_policy(self.pki["paths"]["ca"])
        self.assertEqual(await self.get(policy), 200)

    async def test_strict_mode_would_refuse_it(self) -> None:
        """The CA really has the quirk: OpenSSL's strict mode refuses the same chain."""
        with self.assertRaises(ResponseNeverReceived):
            await self.get(_StrictPolicy([self.pki["ca"]]))

    async def test_without_the_ca_the_worker_is_refused(self) -> None:
        """The platform's store alone does not trust a private CA."""
        with self.assertRaises(ResponseNeverReceived):
            await self.get(worker_tls_policy(None))


class CAFileTests(SynchronousTestCase):
    def test_bad_files(self) -> None:
        missing = os.path.join(self.mktemp(), "nope.pem")
        with self.assertRaises(ConfigError) as caught:
            load_ca_file(missing)
        self.assertIn("cannot read", str(caught.exception))
        junk = self.mktemp()
        with open(junk, "wb") as f:
            f.write(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        with self.assertRaises(ConfigError):
            load_ca_file(junk)

    def test_a_bundle_and_der(self) -> None:
        a, b = make_pki(self.mktemp())["ca"], make_pki(self.mktemp())["ca"]
        bundle = self.mktemp()
        with open(bundle, "wb") as f:
            f.write(
                a.public_bytes(serialization.Encoding.PEM)
                + b.public_bytes(serialization.Encoding.PEM)
            )
        self.assertEqual(len(load_ca_file(bundle)), 2)
        der = self.mktemp()
        with open(der, "wb") as f:
            f.write(a.public_bytes(serialization.Encoding.DER))
        self.assertEqual(load_ca_file(der), [a])


class HTTPSWorkerTests(TestCase):
    """The whole chain with an https worker (the worker's own --use-ssl)."""

    timeout = 30

    def setUp(self) -> None:
        if "use_ssl" not in {f.name for f in fields(WorkerConfig)}:
            raise SkipTest("this worker cannot serve TLS")
        self.pki = make_pki(self.mktemp())
        paths = self.pki["paths"]
        self.tls = {"use_ssl": True, "tls_cert": paths["cert"], "tls_key": paths["key"]}

    async def chain(self, **client: Any) -> Any:
        env = await start_chain(self, workers=1, ready=False, worker_overrides=[self.tls], **client)
        https = env.a.url.replace("http://", "https://")
        env.autoscaler.remove_worker(env.a.url)
        env.autoscaler.register_worker(https)
        env.https = https
        return env

    async def test_routed_to_an_https_worker(self) -> None:
        env = await self.chain(ca_file=self.pki["paths"]["ca"])
        response, body = await env.http.request(
            b"POST",
            b"/v1/chat/completions",
            body=json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(),
        )
        self.assertEqual(response.code, 200, body)
        self.assertEqual(vespa_headers(response)["x-vespa-worker"], env.https)

    async def test_untrusted_worker_is_a_502_from_the_worker(self) -> None:
        env = await self.chain(defaults=Preferences(max_retries=0))
        response, body = await env.http.request(
            b"POST", b"/v1/chat/completions", body=b'{"max_tokens": 2}'
        )
        self.assertEqual(response.code, 502)
        error = json.loads(body)
        self.assertEqual(error["origin"], "worker")
        self.assertIn("certificate verify failed", error["error"])
