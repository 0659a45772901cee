"""``python -m services.healthcheck``: real HTTP, TCP and gRPC health servers on free loopback ports."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.healthcheck import main, split_host_port


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/ready" else 503)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(grace=None).wait(5)


def test_http(http_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["http", f"http://127.0.0.1:{http_port}/ready"]) == 0
    assert main(["http", f"http://127.0.0.1:{http_port}/v2/health/ready"]) == 1
    assert "HTTP 503" in capsys.readouterr().err
    assert main(["--timeout", "1", "http", f"http://127.0.0.1:{_closed_port()}/"]) == 1
    assert "unreachable" in capsys.readouterr().err


def test_tcp(http_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tcp", f"127.0.0.1:{http_port}"]) == 0
    assert main(["--timeout", "1", "tcp", f"127.0.0.1:{_closed_port()}"]) == 1
    assert "unreachable" in capsys.readouterr().err


def test_grpc(health_server: tuple[int, health.HealthServicer], capsys: pytest.CaptureFixture[str]) -> None:
    port, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert main(["grpc", f"127.0.0.1:{port}"]) == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert main(["grpc", f"127.0.0.1:{port}"]) == 1
    assert "NOT_SERVING" in capsys.readouterr().err
    assert main(["grpc", "--service", "edgediff.v1.Generator", f"127.0.0.1:{port}"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["--timeout", "1", "grpc", f"127.0.0.1:{_closed_port()}"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["no-port", ":50051", "host:http", "host:70000"])
def test_malformed_targets_exit_2(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=r"target|port"):
        split_host_port(target)
    assert main(["tcp", target]) == 2
    assert target in capsys.readouterr().err


def test_bad_timeout_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--timeout", "0", "tcp", "127.0.0.1:1"]) == 2
    assert "--timeout" in capsys.readouterr().err


def test_module_entry_point(http_port: int) -> None:
    ok = subprocess.run([sys.executable, "-m", "services.healthcheck", "http", f"http://127.0.0.1:{http_port}/ready"],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "services.healthcheck", "http", f"http://127.0.0.1:{http_port}/x"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and "unhealthy" in bad.stderr


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    from tests.gateway.test_security import make_self_signed

    cert, key = make_self_signed(tmp_path_factory.mktemp("tls"))
    return str(cert), str(key)


def _tls_health_server(cert: str, key: str, *, client_auth: bool) -> tuple[grpc.Server, int]:
    with open(cert, "rb") as c, open(key, "rb") as k:
        cert_pem, key_pem = c.read(), k.read()
    creds = grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=cert_pem if client_auth else None,
                                        require_client_auth=client_auth)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    return server, port


def test_grpc_over_tls(tls_pair: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    cert, key = tls_pair
    server, port = _tls_health_server(cert, key, client_auth=False)
    try:
        target = f"127.0.0.1:{port}"
        assert main(["--timeout", "2", "grpc", target]) == 1  # plaintext against a TLS server
        assert main(["grpc", target, "--tls-ca", cert]) == 0
        assert main(["grpc", target, "--tls-ca", cert, "--tls-server-name", "localhost"]) == 0
        assert main(["--timeout", "2", "grpc", target, "--tls-ca", cert, "--tls-server-name", "other.example"]) == 1
        capsys.readouterr()
        assert main(["grpc", target, "--tls-ca", "/no/such/ca.pem"]) == 2
        assert "--tls-ca" in capsys.readouterr().err
    finally:
        server.stop(grace=None).wait(5)


def test_grpc_over_mutual_tls_and_from_the_environment(tls_pair: tuple[str, str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = tls_pair
    server, port = _tls_health_server(cert, key, client_auth=True)
    try:
        target = f"127.0.0.1:{port}"
        assert main(["--timeout", "2", "grpc", target, "--tls-ca", cert]) == 1  # no client certificate
        assert main(["grpc", target, "--tls-ca", cert, "--tls-cert", cert, "--tls-key", key]) == 0
        monkeypatch.setenv("EDGEDIFF_HEALTHCHECK_TLS_CA", cert)  # what a container sets once for every probe
        monkeypatch.setenv("EDGEDIFF_HEALTHCHECK_TLS_CERT", cert)
        monkeypatch.setenv("EDGEDIFF_HEALTHCHECK_TLS_KEY", key)
        assert main(["grpc", target]) == 0
    finally:
        server.stop(grace=None).wait(5)


def test_liveness_wants_an_answer_not_serving(health_server: tuple[int, health.HealthServicer]) -> None:
    port, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)  # the backend is down: a restart would not help
    assert main(["grpc", f"127.0.0.1:{port}"]) == 1
    assert main(["grpc", "--liveness", f"127.0.0.1:{port}"]) == 0
    assert main(["--timeout", "1", "grpc", "--liveness", f"127.0.0.1:{_closed_port()}"]) == 1
