"""The supervisor on small real processes: order, health, restart with back-off, clean stop."""

import socket
import sys
import time

import pytest

from cli.up import parse_ports
from edgediff.errors import InvalidArgumentError
from edgediff.processes import pid_alive
from services.stack.local_runtime import prometheus_config
from services.stack.state import read_state
from services.stack.supervisor import HealthCheck, ServiceSpec, StackError, Supervisor, dependency_order


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_service(name: str, port: int, depends_on=()) -> ServiceSpec:
    return ServiceSpec(
        name=name, argv=[sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        health=HealthCheck("http", f"http://127.0.0.1:{port}/"), port=port, depends_on=depends_on,
        startup_timeout_s=20,
    )


def test_dependency_order_and_errors():
    a, b, c = (ServiceSpec(n, ["true"], HealthCheck("http", "x"), 1, depends_on=d)
               for n, d in (("a", ("b",)), ("b", ()), ("c", ("a", "b"))))
    assert [s.name for s in dependency_order([c, a, b])] == ["b", "a", "c"]
    with pytest.raises(StackError, match="unknown service"):
        dependency_order([ServiceSpec("x", ["true"], HealthCheck("http", "x"), 1, depends_on=("nope",))])
    loop = [ServiceSpec("x", ["true"], HealthCheck("http", "x"), 1, depends_on=("y",)),
            ServiceSpec("y", ["true"], HealthCheck("http", "x"), 1, depends_on=("x",))]
    with pytest.raises(StackError, match="cycle"):
        dependency_order(loop)


def test_start_restart_and_stop(tmp_path):
    import threading

    p1, p2 = free_port(), free_port()
    sup = Supervisor([http_service("web2", p2, ("web1",)), http_service("web1", p1)], tmp_path,
                     backoff_s=(0.2,), max_restarts=2, meta={"profile": "test"})
    sup.start_all()
    state = read_state(tmp_path)
    assert list(state["services"]) == ["web1", "web2"]
    assert all(s["status"] == "healthy" for s in state["services"].values())
    runner = threading.Thread(target=sup.run, kwargs={"poll_s": 0.1})
    runner.start()
    try:
        victim = state["services"]["web1"]["pid"]
        import os
        import signal

        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            s = read_state(tmp_path)["services"]["web1"]
            if s["restarts"] == 1 and s["status"] == "healthy":
                break
            time.sleep(0.1)
        assert s["restarts"] == 1 and s["status"] == "healthy" and s["pid"] != victim
        assert HealthCheck("http", f"http://127.0.0.1:{p1}/").check()
    finally:
        sup.request_stop()
        runner.join(10)
        pids = [s["pid"] for s in read_state(tmp_path)["services"].values()]
        sup.stop_all()
    assert read_state(tmp_path) is None
    assert not any(pid_alive(p) for p in pids)


def _kill_and_wait_restart(sup: Supervisor, state_dir, restarts: int) -> dict:
    import os
    import signal

    os.kill(read_state(state_dir)["services"]["web"]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for running in sup.services:
            sup._watch(running)
        sup._write_state()
        service = read_state(state_dir)["services"]["web"]
        if service["status"] == "failed" or (service["restarts"] == restarts and service["status"] == "healthy"):
            return service
        time.sleep(0.1)
    return service


def test_the_restart_budget_is_counted_over_a_time_window(tmp_path):
    port = free_port()
    sup = Supervisor([http_service("web", port)], tmp_path, max_restarts=1, restart_window_s=1.0, backoff_s=(0.1,))
    sup.start_all()
    try:
        assert _kill_and_wait_restart(sup, tmp_path, 1)["status"] == "healthy"
        time.sleep(1.2)  # the first restart left the window: the budget is whole again (before: failed for life)
        assert _kill_and_wait_restart(sup, tmp_path, 2)["status"] == "healthy"
        service = _kill_and_wait_restart(sup, tmp_path, 3)  # a second death within the window: given up
        assert service["status"] == "failed" and service["restarts"] == 2
    finally:
        sup.stop_all()


def test_the_state_records_each_process_identity(tmp_path):
    from edgediff.processes import is_same_process

    sup = Supervisor([http_service("web", free_port())], tmp_path)
    sup.start_all()
    try:
        state = read_state(tmp_path)
        web = state["services"]["web"]
        assert web["identity"]["cmdline"] == list(sup.services[0].spec.argv)
        assert is_same_process(web["pid"], web["identity"])
        assert is_same_process(state["supervisor_pid"], state["supervisor_identity"])
        assert not is_same_process(web["pid"], {**web["identity"], "start_ticks": web["identity"]["start_ticks"] + 1})
        assert not is_same_process(web["pid"], {**web["identity"], "cmdline": ["another-program"]})
        assert not is_same_process(web["pid"], None)
    finally:
        sup.stop_all()


def test_a_service_that_never_gets_healthy_stops_everything(tmp_path):
    port = free_port()
    broken = ServiceSpec("broken", [sys.executable, "-c", "import time; time.sleep(60)"],
                         HealthCheck("http", f"http://127.0.0.1:{free_port()}/"), 1, startup_timeout_s=1.5)
    sup = Supervisor([http_service("web", port), broken], tmp_path)
    with pytest.raises(StackError, match="broken was not healthy"):
        sup.start_all()
    assert read_state(tmp_path) is None
    assert not any(pid_alive(r.process.pid) for r in sup.services if r.process)


def test_a_service_that_exits_reports_its_log(tmp_path):
    crash = ServiceSpec("crash", [sys.executable, "-c", "print('boom: bad config'); raise SystemExit(3)"],
                        HealthCheck("http", "http://127.0.0.1:9/"), 1, startup_timeout_s=10)
    with pytest.raises(StackError, match=r"exited with code 3.*boom: bad config"):
        Supervisor([crash], tmp_path).start_all()


def test_parse_ports():
    ports = parse_ports("gateway=50061, exporter=9410")
    assert ports["gateway"] == 50061 and ports["exporter"] == 9410 and ports["triton-grpc"] == 8001
    for bad, message in (("nope=1", "unknown service"), ("gateway=x", "not a port"), ("gateway=70000", "outside"),
                         ("gateway=8001", "share a port")):
        with pytest.raises(InvalidArgumentError, match=message):
            parse_ports(bad)


def test_prometheus_config_is_the_compose_one_on_loopback():
    ports = parse_ports("gateway-metrics=19401,exporter=19400,triton-metrics=18002,prometheus=19090")
    config = prometheus_config(ports)
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets == {"gateway": ["127.0.0.1:19401"], "exporter": ["127.0.0.1:19400"],
                       "triton": ["127.0.0.1:18002"], "prometheus": ["127.0.0.1:19090"]}


def test_a_repository_written_by_other_exporter_code_is_re_exported(tmp_path):
    # `edgediff up` reuses a finished export only when this edgediff's exporter wrote it: a repository from another
    # checkout or release may hold configs and model.py copies of another layout (e.g. DeepCache before it was one
    # stateful model), so it is exported again
    import json

    from exporters.manifest import export_mismatch, exporter_sha256
    from exporters.repository import export_repository

    repo = tmp_path / "repo"
    export_repository(model="tiny", target="cpu", variants=["onnx-fp32"], repo=repo, configs_only=True)
    asked = {"model": "tiny", "target": "cpu", "variants": ["onnx-fp32"], "weights": None}
    assert export_mismatch(repo, **asked) is None
    manifest = json.loads((repo / "manifest.json").read_text())
    assert manifest["exporter_sha256"] == exporter_sha256()
    manifest["exporter_sha256"] = "0" * 64
    (repo / "manifest.json").write_text(json.dumps(manifest))
    assert "other exporter code" in export_mismatch(repo, **asked)
