"""The gRPC carrier with TLS: mTLS gives handlers the client's SPIFFE ID, interop with grpcio.

Real sockets, real certificates made for the test run (a CA and SVIDs with URI SANs), the real
clock; every wait bounded with ``fail_after``.
"""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import attrs
import grpc
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.transport.test_grpc import HANG, REQUEST, Service, request, start
from trionsm.api.connection import Connection, MonitorScopeSelector
from trionsm.errors import Unauthenticated, Unavailable
from trionsm.transport import open_client

# -------------------------------------------------------------------------------------- mTLS

TRUST_DOMAIN = "spiffe://example.org"
NSC_ID = f"{TRUST_DOMAIN}/ns/default/sa/nsc"
NSMGR_ID = f"{TRUST_DOMAIN}/ns/default/sa/nsmgr"


@attrs.frozen
class Svid:
    cert: Path
    key: Path


@attrs.frozen
class Pki:
    ca: bytes  # PEM
    server: Svid
    client: Svid
    stranger_ca: bytes  # PEM of a CA that signed none of these


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(TRUST_DOMAIN)]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _svid(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, spiffe_id: str, out: Path
) -> Svid:
    """An X.509-SVID: one URI SAN, plus the DNS SAN ``localhost`` that grpcio insists on."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(spiffe_id.rsplit("/", 1)[-1]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                data_encipherment=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(spiffe_id), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    name = spiffe_id.rsplit("/", 1)[-1]
    svid = Svid(out / f"{name}.pem", out / f"{name}.key")
    svid.cert.write_bytes(_pem(cert))
    svid.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return svid


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    out = tmp_path_factory.mktemp("pki")
    ca, ca_key = _ca("trionsm test CA")
    stranger, _ = _ca("some other CA")
    return Pki(
        ca=_pem(ca),
        server=_svid(ca, ca_key, NSMGR_ID, out),
        client=_svid(ca, ca_key, NSC_ID, out),
        stranger_ca=_pem(stranger),
    )


def server_context(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=pki.ca.decode())
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(pki.server.cert, pki.server.key)
    return ctx


def client_context(pki: Pki, *, trust: bytes | None = None, svid: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=(trust or pki.ca).decode())
    ctx.check_hostname = False  # an SVID names a SPIFFE ID, checked by the application
    if svid:
        ctx.load_cert_chain(pki.client.cert, pki.client.key)
    return ctx


@pytest.mark.parametrize("scheme", ["tcp", "unix"])
async def test_mtls_gives_the_handler_the_clients_spiffe_id(
    nursery: trio.Nursery, pki: Pki, tmp_path: Path, scheme: str
) -> None:
    service = Service()
    url = "tcp://127.0.0.1:0" if scheme == "tcp" else f"unix://{tmp_path}/tls.sock"
    server = await start(nursery, service, url, ssl_context=server_context(pki))
    with trio.fail_after(HANG):
        async with open_client(server.url, ssl_context=client_context(pki)) as client:
            assert (await client.network_service.request(request())).labels["served"] == "yes"
            selector = MonitorScopeSelector(network_services=["icmp"])
            async with client.monitor_connection.monitor_connections(selector) as events:
                await events.__anext__()
    (ctx,) = service.seen
    assert ctx.peer is not None
    assert ctx.peer.identity == NSC_ID
    assert ctx.peer.authenticated


async def test_a_grpcio_client_over_mtls_is_identified(nursery: trio.Nursery, pki: Pki) -> None:
    """grpcio checks the server's DNS SAN and needs ALPN h2; our server sees its SPIFFE ID."""
    service = Service()
    server = await start(nursery, service, ssl_context=server_context(pki))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca,
        private_key=pki.client.key.read_bytes(),
        certificate_chain=pki.client.cert.read_bytes(),
    )
    target = f"localhost:{server.address.port}"
    channel = grpc.secure_channel(target, credentials, options=[("grpc.enable_http_proxy", 0)])
    try:
        call = channel.unary_unary(REQUEST)  # raw bytes both ways
        with trio.fail_after(HANG):
            data = await trio.to_thread.run_sync(lambda: call(bytes(request()), timeout=10))
    finally:
        channel.close()
    assert Connection.parse(data).labels == {"served": "yes"}
    (ctx,) = service.seen
    assert ctx.peer is not None
    assert ctx.peer.identity == NSC_ID


async def test_mtls_refuses_a_client_without_a_certificate(nursery: trio.Nursery, pki: Pki) -> None:
    service = Service()
    server = await start(nursery, service, ssl_context=server_context(pki))
    with trio.fail_after(HANG):
        async with open_client(server.url, ssl_context=client_context(pki, svid=False)) as client:
            with pytest.raises(Unavailable):
                await client.network_service.request(request())
    assert service.seen == []


async def test_a_server_the_client_does_not_trust_is_unauthenticated(
    nursery: trio.Nursery, pki: Pki
) -> None:
    server = await start(nursery, Service(), ssl_context=server_context(pki))
    context = client_context(pki, trust=pki.stranger_ca)
    with trio.fail_after(HANG):
        async with open_client(server.url, ssl_context=context) as client:
            with pytest.raises(Unauthenticated, match="TLS"):
                await client.network_service.request(request())
