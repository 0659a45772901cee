"""Bearer token and TLS on real servers; the token never reaches the logs."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from edgediff.errors import InvalidArgumentError
from services.gateway.auth import read_token_file
from services.gateway.client import GeneratorClient
from services.gateway.server import GatewayConfig, GatewayServer

TOKEN = "s3cret-Token-4711"


def make_self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        from cryptography import x509  # noqa: F401 - only probing
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl CLI is available to make a certificate")
        cmd = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
               "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return cert, key
    return _cryptography_cert(cert, key)


def _cryptography_cert(cert_path: Path, key_path: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def secure_gateway(tls_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(TOKEN + "\n")
    cert, key = tls_files
    config = GatewayConfig(backend="local", model="tiny", port=0, metrics_port=0, tls_cert=str(cert),
                           tls_key=str(key), token=read_token_file(token_file), shutdown_grace_s=2.0)
    server = GatewayServer(config).start()
    try:
        yield server
    finally:
        server.stop(grace_s=1.0)


@pytest.mark.slow
def test_token_and_tls(secure_gateway: GatewayServer, tls_files: tuple[Path, Path],
                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cert, _ = tls_files
    target = secure_gateway.target
    with GeneratorClient(target, token=TOKEN, tls_ca=cert, timeout_s=60) as client:
        assert client.list_variants().backend == "local"
        response = client.generate(seed=1, steps=2)
        assert response.images[0].startswith(b"\x89PNG")
    for token, expected in ((None, "missing bearer token"), ("wrong", "invalid bearer token"),
                            (TOKEN + "x", "invalid bearer token"), ("", "missing bearer token")):
        with GeneratorClient(target, token=token, tls_ca=cert, timeout_s=30) as client:
            for call in (client.list_variants, lambda c=client: c.generate(steps=1)):
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert expected in info.value.details()
                assert TOKEN not in info.value.details()
            assert client.health() == "SERVING", "health checks need no token (probes)"
    # Raw metadata: a scheme other than Bearer is refused too.
    creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(target, creds) as channel:
        from services.proto.edgediff.v1 import generator_pb2, generator_pb2_grpc

        stub = generator_pb2_grpc.GeneratorStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListVariants(generator_pb2.ListVariantsRequest(), metadata=(("authorization", f"Basic {TOKEN}"),),
                              timeout=30)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A plaintext client cannot talk to the TLS port.
    with GeneratorClient(target, token=TOKEN, timeout_s=10) as client, pytest.raises(grpc.RpcError) as info:
        client.list_variants()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert all(TOKEN not in record.getMessage() for record in caplog.records)
    assert TOKEN not in repr(secure_gateway.config)


def test_token_file_errors_do_not_show_content(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    with pytest.raises(InvalidArgumentError, match=r"--token-file: .* is empty"):
        read_token_file(empty)
    with pytest.raises(InvalidArgumentError, match="--token-file: cannot read"):
        read_token_file(tmp_path / "missing")
    spaced = tmp_path / "spaced"
    spaced.write_text("two words")
    with pytest.raises(InvalidArgumentError) as info:
        read_token_file(spaced)
    assert "two" not in str(info.value).replace(str(spaced), "")


def test_tls_needs_cert_and_key() -> None:
    with pytest.raises(InvalidArgumentError, match="--tls-cert and --tls-key"):
        GatewayServer(GatewayConfig(backend="local", model="tiny", port=0, metrics_port=0, tls_cert="x.pem"))
