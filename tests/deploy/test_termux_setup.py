"""docker/android/termux-setup.sh, run outside Termux with stand-ins for `edgediff` and `pkg`.

The stand-in `edgediff` records its arguments and sleeps, so the test sees exactly the command lines the script
starts (checked against the real CLI parser), and that `stop` ends those processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.main import build_parser
from edgediff.constants import DEFAULT_HOST, EXPORTER_PORT, GATEWAY_GRPC_PORT, GATEWAY_METRICS_PORT

from .deployfiles import TERMUX_SCRIPT, require_tool

# One file per start, renamed into place once complete: the script starts the gateway and the exporter at the same
# time, and two processes appending to one log can interleave their writes.
FAKE_EDGEDIFF = """#!/bin/sh
printf '%s\\037' "$@" > "$HOME/argv.$$.tmp"
mv "$HOME/argv.$$.tmp" "$HOME/argv.$$.log"
exec sleep 60
"""


@pytest.fixture
def termux(tmp_path: Path) -> Iterator[dict[str, str]]:
    bash = require_tool("bash")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "edgediff").write_text(FAKE_EDGEDIFF)
    (bin_dir / "pkg").write_text("#!/bin/sh\necho \"pkg $*\" >> \"$HOME/pkg.log\"\n")
    for tool in ("edgediff", "pkg"):
        (bin_dir / tool).chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": str(home), "PREFIX": str(tmp_path),
           "BASH": bash, "PYTHONPATH": str(TERMUX_SCRIPT.parents[2])}
    yield env
    for pid_file in (home / ".edgediff").glob("*.pid"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def _run(env: dict[str, str], *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([env["BASH"], str(TERMUX_SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env={**env, **extra})


def _recorded(env: dict[str, str], count: int) -> list[list[str]]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        logs = sorted(Path(env["HOME"]).glob("argv.*.log"))
        if len(logs) >= count:
            return [log.read_text().split("\x1f")[:-1] for log in logs]
        time.sleep(0.05)
    raise AssertionError(f"expected {count} edgediff starts, recorded: {[p.name for p in logs]}")


def test_start_runs_the_local_gateway_and_the_exporter_then_stop_ends_them(termux: dict[str, str]) -> None:
    started = _run(termux, "start")
    assert started.returncode == 0, started.stderr
    commands = {argv[0]: build_parser(argv[0]).parse_args(argv) for argv in _recorded(termux, 2)}
    assert set(commands) == {"serve", "exporter"}
    serve, exporter = commands["serve"], commands["exporter"]
    assert (serve.backend, serve.model, serve.host) == ("local", "celebahq-256", DEFAULT_HOST)
    assert (serve.port, serve.metrics_port) == (GATEWAY_GRPC_PORT, GATEWAY_METRICS_PORT)
    assert (serve.max_concurrency, serve.max_batch, serve.token_file) == (1, 1, None)
    assert (exporter.host, exporter.port, exporter.idle_seconds) == (DEFAULT_HOST, EXPORTER_PORT, 0.0)

    pids = [int(p.read_text()) for p in sorted((Path(termux["HOME"]) / ".edgediff").glob("*.pid"))]
    assert len(pids) == 2
    again = _run(termux, "start")
    assert again.returncode == 0 and again.stderr.count("already runs") == 2
    stopped = _run(termux, "stop")
    assert stopped.returncode == 0, stopped.stderr
    for pid in pids:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists() and b"Z" not in _state(pid):
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists() or b"Z" in _state(pid), f"pid {pid} still runs after stop"


def _state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().split(b") ", 1)[1][:1]
    except (OSError, IndexError):
        return b"Z"


def test_public_bind_needs_a_token(termux: dict[str, str], tmp_path: Path) -> None:
    warned = _run(termux, "start", EDGEDIFF_BIND_ADDRESS="0.0.0.0", EDGEDIFF_MODEL="tiny")
    assert warned.returncode == 0 and "without EDGEDIFF_TOKEN_FILE" in warned.stderr
    _run(termux, "stop")
    token = tmp_path / "token"
    token.write_text("not-a-real-token\n")
    for log in Path(termux["HOME"]).glob("argv.*.log"):
        log.unlink()
    ok = _run(termux, "start", EDGEDIFF_BIND_ADDRESS="0.0.0.0", EDGEDIFF_TOKEN_FILE=str(token),
              EDGEDIFF_IDLE_SECONDS="30", EDGEDIFF_BATTERY_CURRENT_SIGN="positive")
    assert ok.returncode == 0 and "without EDGEDIFF_TOKEN_FILE" not in ok.stderr
    commands = {argv[0]: build_parser(argv[0]).parse_args(argv) for argv in _recorded(termux, 2)}
    assert commands["serve"].token_file == str(token) and commands["serve"].host == "0.0.0.0"
    assert commands["exporter"].idle_seconds == 30.0
    exporter = commands["exporter"]
    assert (exporter.battery_current_sign, exporter.battery_current_unit) == ("positive", "auto")


def test_status_reports_what_is_not_running(termux: dict[str, str]) -> None:
    status = _run(termux, "status")
    assert status.returncode == 1
    assert "unhealthy" in status.stderr


def test_install_outside_termux_refuses(termux: dict[str, str]) -> None:
    result = _run(termux, "install", PREFIX="")
    assert result.returncode == 2 and "inside Termux" in result.stderr
    assert not Path(termux["HOME"], "pkg.log").exists()


def test_install_uses_no_server_backends() -> None:
    text = TERMUX_SCRIPT.read_text()
    assert '"${repo}[serve,telemetry]"' in text
    for extra in ("triton", "onnx", "openvino", "gpu"):
        assert f",{extra}]" not in text and f"[{extra}" not in text
    assert "python-torch" in text
    assert TERMUX_SCRIPT.stat().st_mode & 0o111, "the script should be executable"


def test_usage() -> None:
    bash = require_tool("bash")
    result = subprocess.run([bash, str(TERMUX_SCRIPT)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "usage" in result.stderr
