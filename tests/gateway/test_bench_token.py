"""``edgediff bench --through gateway``: the token comes from a file or the environment and reaches no report.

Before the fix ``--token T`` put T in ``ps`` and in the report's recorded command line (report.json, report.md).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.main import main
from edgediff.bench.report import build_report
from edgediff.constants import ENV_GATEWAY_TOKEN
from edgediff.secrets import REDACTED, redact_argv, redact_command
from services.gateway.server import GatewayConfig, GatewayServer

TOKEN = "bench-S3cret-0815"


def test_redact_argv_hides_secret_values_only() -> None:
    argv = ["edgediff", "bench", "--token", TOKEN, "--token-file", "/run/t", f"--upstream-token={TOKEN}", "-x"]
    assert redact_argv(argv) == ["edgediff", "bench", "--token", REDACTED, "--token-file", "/run/t",
                                 f"--upstream-token={REDACTED}", "-x"]
    assert TOKEN not in redact_command(f"edgediff bench --token {TOKEN} --runs 2")
    assert TOKEN not in redact_command(f"edgediff bench --token '{TOKEN} --runs 2")  # even when unparsable
    assert redact_command("edgediff bench --runs 2") == "edgediff bench --runs 2"


def test_a_report_never_records_a_token() -> None:
    report = build_report(config={}, model={}, weights=None, environment={}, telemetry={}, entries=[],
                          reference="torch-fp32", command=f"edgediff bench --token={TOKEN}")
    assert TOKEN not in str(report) and "--token=" in report["command"]


def test_a_token_on_the_command_line_is_refused_without_echoing_it(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--model", "tiny", "--through", "gateway", "127.0.0.1:1", "--token", TOKEN,
                 "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "--token-file" in err and ENV_GATEWAY_TOKEN in err and err.count("\n") == 1
    assert TOKEN not in err
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def token_gateway(tmp_path_factory: pytest.TempPathFactory, _isolated_cache: object) -> Iterator[GatewayServer]:
    config = GatewayConfig(backend="local", model="tiny", port=0, metrics_port=0, token=TOKEN, shutdown_grace_s=1.0)
    server = GatewayServer(config).start()
    try:
        yield server
    finally:
        server.stop(grace_s=0.5)


def _bench(gateway: GatewayServer, out: Path, extra: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    argv = ["bench", "--model", "tiny", "--variants", "torch-fp32", "--steps", "1", "--warmup", "0", "--runs", "1",
            "--no-energy", "--no-plots", "--idle-s", "0", "--through", "gateway", gateway.target, "--out", str(out),
            *extra]
    monkeypatch.setattr(sys, "argv", ["edgediff", *argv])
    return main(argv)


@pytest.mark.slow
def test_bench_reads_the_token_from_a_file_and_no_file_holds_it(token_gateway: GatewayServer, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    out = tmp_path / "report"
    assert _bench(token_gateway, out, ["--token-file", str(token_file)], monkeypatch) == 0
    written = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"report.json", "report.md", "report.csv"}
    for path in written:
        assert TOKEN.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_bench_reads_the_token_from_the_environment(token_gateway: GatewayServer, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_GATEWAY_TOKEN, TOKEN)
    assert _bench(token_gateway, tmp_path / "env", [], monkeypatch) == 0
    monkeypatch.setenv(ENV_GATEWAY_TOKEN, "wrong-token")
    assert _bench(token_gateway, tmp_path / "wrong", [], monkeypatch) == 2  # UNAUTHENTICATED: a clear error


@pytest.mark.slow
def test_bench_through_a_tls_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _isolated_cache: object) -> None:
    from tests.gateway.test_security import make_self_signed

    cert, key = make_self_signed(tmp_path)
    config = GatewayConfig(backend="local", model="tiny", port=0, metrics_port=0, token=TOKEN, tls_cert=str(cert),
                           tls_key=str(key), shutdown_grace_s=1.0)
    server = GatewayServer(config).start()
    try:
        monkeypatch.setenv(ENV_GATEWAY_TOKEN, TOKEN)
        assert _bench(server, tmp_path / "tls", ["--tls-ca", str(cert), "--tls-server-name", "localhost"],
                      monkeypatch) == 0
    finally:
        server.stop(grace_s=0.5)
