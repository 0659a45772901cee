"""A port held by a process edgediff did not start (the distribution's Prometheus on :9090) is never taken over:
``edgediff up --runtime local`` moves its own Prometheus to a free port and leaves the other process alone."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from cli.up import parse_ports
from services.stack.local_runtime import LocalStackConfig, build_specs, port_taken


def test_prometheus_moves_off_a_taken_port(tmp_path: Path) -> None:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (scripts/install-system-deps.sh)")
    pytest.importorskip("services.triton.launcher")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:  # someone else's server
        other.bind(("127.0.0.1", 0))
        other.listen(16)
        taken = other.getsockname()[1]
        assert port_taken(taken)
        config = LocalStackConfig(profile="cpu", model="tiny", variants=["onnx-fp32"], repo=tmp_path / "repo",
                                  state_dir=tmp_path, ports=parse_ports(f"prometheus={taken}"))
        try:
            specs = {spec.name: spec for spec in build_specs(config)}
        except Exception as exc:  # no tritonserver here: the Triton spec cannot be built
            pytest.skip(f"cannot build the stack's specs here: {exc}")
        prometheus = specs["prometheus"]
        assert prometheus.port != taken and config.ports["prometheus"] == prometheus.port
        assert f"--web.listen-address=127.0.0.1:{prometheus.port}" in prometheus.argv
        assert str(prometheus.port) in (tmp_path / "prometheus.yml").read_text()
        assert port_taken(taken)  # the other server still listens: nothing was stopped
        conn = socket.create_connection(("127.0.0.1", taken), timeout=2)
        conn.close()


def test_free_port_is_kept(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert not port_taken(port)


def test_install_script_never_stops_or_kills_anything() -> None:
    script = (Path(__file__).resolve().parents[2] / "scripts" / "install-system-deps.sh").read_text()
    code = "\n".join(line.split("#", 1)[0] for line in script.splitlines())
    for forbidden in ("pkill", "killall", "kill ", "systemctl stop", "systemctl disable", "service prometheus stop"):
        assert forbidden not in code, forbidden
