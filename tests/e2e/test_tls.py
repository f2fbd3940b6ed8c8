"""TLS and mutual TLS by configuration, with certificates the test makes (openssl)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from loyalty.v1 import offer_pb2, offer_pb2_grpc

from loyalty_ledger.clock import TestClock
from loyalty_ledger.settings import Settings
from tests.helpers import TEST_ADMIN_KEY, rpc_error

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all from the CA."""
    d = tmp_path_factory.mktemp("certs")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem", cwd=d,
    )  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem", cwd=d,
        )  # fmt: skip
    return d


async def _scheme_call(channel: grpc.aio.Channel) -> None:
    await offer_pb2_grpc.OfferServiceStub(channel).ListSchemes(
        offer_pb2.ListSchemesRequest(),
        metadata=(("authorization", f"Bearer {TEST_ADMIN_KEY}"),),
        timeout=5,
    )


async def _serve(database_url: str, certs: Path, mutual: bool):  # type: ignore[no-untyped-def]
    from loyalty_ledger.server import App

    settings = Settings(
        host="127.0.0.1",
        port=0,
        database_url=database_url,
        tls_cert_file=str(certs / "server.pem"),
        tls_key_file=str(certs / "server.key"),
        tls_client_ca_file=str(certs / "ca.pem") if mutual else "",
    )
    app = App(settings, clock=TestClock())
    await app.start()
    await asyncio.wait_for(app.serving.wait(), timeout=10)
    return app


def _tls(certs: Path, *, client_cert: bool) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.pem").read_bytes(),
        private_key=(certs / "client.key").read_bytes() if client_cert else None,
        certificate_chain=(certs / "client.pem").read_bytes() if client_cert else None,
    )


async def test_tls_serves_encrypted_calls_only(database_url, certs) -> None:
    app = await _serve(database_url, certs, mutual=False)
    target = f"127.0.0.1:{app.port}"
    try:
        async with grpc.aio.secure_channel(target, _tls(certs, client_cert=False)) as ch:
            await _scheme_call(ch)
        async with grpc.aio.insecure_channel(target) as plain:
            await rpc_error(_scheme_call(plain), grpc.StatusCode.UNAVAILABLE)
    finally:
        await app.stop(0)


async def test_mutual_tls_requires_a_client_certificate_from_the_ca(database_url, certs) -> None:
    app = await _serve(database_url, certs, mutual=True)
    target = f"127.0.0.1:{app.port}"
    try:
        async with grpc.aio.secure_channel(target, _tls(certs, client_cert=True)) as ch:
            await _scheme_call(ch)
        async with grpc.aio.secure_channel(target, _tls(certs, client_cert=False)) as anonymous:
            await rpc_error(_scheme_call(anonymous), grpc.StatusCode.UNAVAILABLE)
    finally:
        await app.stop(0)


def test_tls_settings_are_checked(certs, tmp_path) -> None:
    with pytest.raises(ValueError, match="go together"):
        Settings(tls_cert_file=str(certs / "server.pem"))
    with pytest.raises(ValueError, match="no file"):
        Settings(tls_cert_file=str(tmp_path / "missing.pem"), tls_key_file=str(tmp_path / "k"))
    with pytest.raises(ValueError, match="mutual TLS"):
        Settings(tls_client_ca_file=str(certs / "ca.pem"))
