"""The Docker runtime against the SDK boundary: what it asks the engine for must be what compose.yaml says.

Every test runs over ``RecordingClient(FakeDockerClient())``; the fixture-project test and (opt-in, it builds the
images) the repository test run the same assertions against a real engine when ``docker.from_env().ping()`` works.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from edgediff.constants import (
    ENV_WEIGHTS,
    EXPORTER_PORT,
    GATEWAY_GRPC_PORT,
    GATEWAY_METRICS_PORT,
    GRAFANA_PORT,
    LOCUST_WEB_PORT,
    PROMETHEUS_PORT,
)
from edgediff.errors import EdgediffError, InvalidArgumentError
from services.stack.compose.docker_args import LABEL_CONFIG_HASH, LABEL_NUMBER, LABEL_PROJECT, LABEL_SERVICE
from services.stack.docker_runtime import (
    COMPOSE_ENV_MODEL,
    COMPOSE_ENV_VARIANT,
    COMPOSE_ENV_VARIANTS,
    COMPOSE_ENV_WEIGHTS_DIR,
    DockerEngineUnavailableError,
    DockerRuntime,
    compose_environment,
    engine_reachable,
    read_docker_state,
)
from services.stack.state import read_state
from services.stack.supervisor import StackError
from tests.stack.fake_docker import Behaviour, FakeDockerClient, RecordingClient

ROOT = Path(__file__).resolve().parents[2]
REPO_COMPOSE = ROOT / "compose.yaml"
FIXTURE_COMPOSE = Path(__file__).parent / "fixtures" / "docker" / "compose.yaml"
NO_ENGINE = "no Docker engine reachable"
PUBLISHED_PORT = {"gateway": (GATEWAY_GRPC_PORT, GATEWAY_METRICS_PORT), "exporter": (EXPORTER_PORT,),
                  "prometheus": (PROMETHEUS_PORT,), "grafana": (GRAFANA_PORT,), "locust-master": (LOCUST_WEB_PORT,)}
"""Host ports compose.yaml publishes, by service role, from the one place they live."""


# --- engines ----------------------------------------------------------------------------------------------------------
_ENGINE: tuple[bool, str] | None = None


def real_engine() -> tuple[bool, str]:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = engine_reachable()
    return _ENGINE


def make_client(kind: str, behaviour: dict[str, Behaviour] | None = None, images: list[str] | None = None,
                ) -> RecordingClient:
    if kind == "fake":
        return RecordingClient(FakeDockerClient(behaviour, images))
    ok, why = real_engine()
    if not ok:
        pytest.skip(why)  # "no Docker engine reachable (...): start Docker or use --runtime local"
    return RecordingClient(docker.from_env())


LOCAL_BUSYBOX = "edgediff-fixture-busybox:1"
"""busybox from Debian's static binary (busybox-static), where busybox:1.36 cannot be pulled."""
_FIXTURE_IMAGE: str | None = None


def fixture_image(client: Any) -> str:
    """A busybox image on the real engine: busybox:1.36 when present or pullable, else one built from /bin/busybox."""
    global _FIXTURE_IMAGE
    if _FIXTURE_IMAGE is None:
        for name in ("busybox:1.36", LOCAL_BUSYBOX):
            try:
                client.images.get(name)
                _FIXTURE_IMAGE = name
                return name
            except docker.errors.ImageNotFound:
                continue
        try:
            client.images.pull("busybox:1.36")
            _FIXTURE_IMAGE = "busybox:1.36"
            return _FIXTURE_IMAGE
        except docker.errors.APIError:
            pass
        busybox = Path("/bin/busybox")
        if not busybox.is_file():
            pytest.fail("busybox:1.36 cannot be pulled and /bin/busybox is missing (make system-deps installs "
                        "busybox-static)")
        with tempfile.TemporaryDirectory() as context:
            shutil.copy2(busybox, Path(context) / "busybox")
            (Path(context) / "Dockerfile").write_text(
                'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n')
            client.images.build(path=context, tag=LOCAL_BUSYBOX, rm=True)
        _FIXTURE_IMAGE = LOCAL_BUSYBOX
    return _FIXTURE_IMAGE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def runtime(client: RecordingClient, compose: Path, profile: Any, env: dict[str, str], state_dir: Path,
            project: str = "edgediff", **kwargs: Any) -> DockerRuntime:
    kwargs.setdefault("poll_s", 0.0 if isinstance(client.inner, FakeDockerClient) else 0.5)
    return DockerRuntime(client, project=project, compose_file=compose, profile=profile, env=env,
                         state_dir=state_dir, echo=None, **kwargs)


def container_attrs(client: RecordingClient, name: str) -> dict[str, Any]:
    """What the engine holds for a container (the fake: the create body; a real engine: inspect)."""
    return client.inner.containers.get(name).attrs


# --- expectations from compose.yaml itself (independent of the runtime's parser) -------------------------------------
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def resolve(text: str, env: dict[str, str]) -> str:
    return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), str(text))


def nanoseconds(duration: str) -> int:
    assert duration.endswith("s") and not duration.endswith("ms"), duration
    return int(float(duration[:-1]) * 1e9)


def active(raw: dict[str, Any], profiles: tuple[str, ...]) -> list[str]:
    return [name for name, spec in raw["services"].items()
            if not spec.get("profiles") or set(spec["profiles"]) & set(profiles)]


def dependencies(spec: dict[str, Any]) -> dict[str, str]:
    deps = spec.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (cond or {}).get("condition", "service_started") for name, cond in deps.items()}


def expected_binds(spec: dict[str, Any], env: dict[str, str], project: str, directory: Path) -> list[str]:
    binds = []
    for entry in spec.get("volumes") or []:
        parts = resolve(entry, env).split(":")
        source, target = parts[0], parts[1]
        mode = parts[2] if len(parts) > 2 else "rw"
        if source.startswith("."):
            source = str((directory / source).resolve())
        elif not source.startswith("/"):
            source = f"{project}_{source}"
        binds.append(f"{source}:{target}:{mode}")
    return binds


def assert_condition_held(peers: dict[str, tuple[str, str | None, int | None]], dep_container: str,
                          condition: str) -> None:
    status, health, code = peers[dep_container]
    if condition == "service_completed_successfully":
        assert (status, code) == ("exited", 0), (dep_container, peers[dep_container])
    elif condition == "service_healthy":
        assert (status, health) == ("running", "healthy"), (dep_container, peers[dep_container])
    else:
        assert status in ("running", "exited"), (dep_container, peers[dep_container])


def check_up_against_compose(client: RecordingClient, raw: dict[str, Any], profiles: tuple[str, ...],
                             env: dict[str, str], project: str, directory: Path) -> list[str]:
    """The assertions shared by the fake and the real engine; returns the container names in start order."""
    expected = active(raw, profiles)
    runs = client.of("containers.run")
    started = [c.kwargs["labels"][LABEL_SERVICE] for c in runs]
    replicas = {n: (raw["services"][n].get("deploy") or {}).get("replicas", 1) for n in expected}
    assert sorted(started) == sorted(n for n in expected for _ in range(replicas[n]))
    first_run = client.calls.index(runs[0])
    position = {c.name: i for i, c in enumerate(runs)}

    # network first, then volumes, then containers
    network = f"{project}_default"
    assert [c.name for c in client.of("networks.create")] == [network]
    created = client.of("networks.create")[0]
    assert created.kwargs["driver"] == "bridge"
    assert created.kwargs["labels"][LABEL_PROJECT] == project
    assert client.index("networks.create", network) < first_run
    used_volumes = {f"{project}_{e.split(':')[0]}" for n in expected for e in raw["services"][n].get("volumes") or []
                    if not resolve(e, env).startswith((".", "/"))}
    assert {c.name for c in client.of("volumes.create")} == used_volumes
    assert all(client.index("volumes.create", v) < first_run for v in used_volumes)
    if isinstance(client.inner, FakeDockerClient):
        assert client.inner.implicit_volumes == []

    for call in runs:
        service = call.kwargs["labels"][LABEL_SERVICE]
        spec = raw["services"][service]
        for dep, condition in dependencies(spec).items():
            dep_container = f"{project}-{dep}-1"
            assert position[dep_container] < position[call.name], f"{service} started before {dep}"
            assert_condition_held(call.peers, dep_container, condition)

        attrs = container_attrs(client, call.name)
        config, host = attrs["Config"], attrs["HostConfig"]
        labels = config["Labels"]
        assert labels[LABEL_PROJECT] == project and labels[LABEL_SERVICE] == service
        if "command" in spec:
            command = spec["command"]
            command = command.split() if isinstance(command, str) else command
            assert config["Cmd"] == [resolve(a, env) for a in command]
        environment = spec.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(e.split("=", 1) if "=" in e else (e, env.get(e, "")) for e in environment)
        for key, value in environment.items():
            assert f"{key}={resolve(value, env)}" in config["Env"], (service, key)
        assert sorted(host.get("Binds") or []) == sorted(expected_binds(spec, env, project, directory)), service
        role = next((r for r in PUBLISHED_PORT if service == r or service.endswith("-" + r)), None)
        if role is not None and directory == ROOT:
            for port in PUBLISHED_PORT[role]:
                assert host["PortBindings"][f"{port}/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
            assert len(host["PortBindings"]) == len(PUBLISHED_PORT[role])
        if "healthcheck" in spec:
            check = spec["healthcheck"]
            test = check["test"]
            assert config["Healthcheck"]["Test"] == (["CMD-SHELL", test] if isinstance(test, str) else test)
            assert config["Healthcheck"]["Interval"] == nanoseconds(check["interval"])
            assert config["Healthcheck"]["Timeout"] == nanoseconds(check["timeout"])
            assert config["Healthcheck"]["Retries"] == check["retries"]
        reservations = ((spec.get("deploy") or {}).get("resources") or {}).get("reservations") or {}
        if reservations.get("devices"):
            assert host["DeviceRequests"] == [{"Driver": "nvidia", "Count": -1, "DeviceIDs": [],
                                               "Capabilities": [["gpu"]], "Options": {}}], service
        else:
            assert not host.get("DeviceRequests"), service
        if spec.get("runtime"):
            assert host["Runtime"] == spec["runtime"]
        restart = spec.get("restart", "no").split(":")[0]
        assert (host.get("RestartPolicy") or {}).get("Name", "no") in (restart, "")
        aliases = (spec.get("networks") or {}).get("default", {}) or {}
        endpoint = attrs["NetworkSettings"]["Networks"][network]
        assert {service, *aliases.get("aliases", [])} <= set(endpoint["Aliases"]), service
    return [c.name for c in runs]


def check_down_order(client: RecordingClient, raw: dict[str, Any], project: str, started: list[str]) -> None:
    removed = [c.name for c in client.of("container.remove")]
    assert sorted(removed) == sorted(started)
    for name in started:
        service = name[len(project) + 1:].rsplit("-", 1)[0]
        for dep in dependencies(raw["services"][service]):
            assert removed.index(name) < removed.index(f"{project}-{dep}-1"), f"{dep} removed before {service}"
    last_container = max(client.index("container.remove", n) for n in removed)
    assert client.index("network.remove", f"{project}_default") > last_container


# --- the repository's compose.yaml ------------------------------------------------------------------------------------
PROFILES = [("cpu",), ("rtx",), ("jetson",), ("cpu", "loadtest")]


@pytest.mark.parametrize("kind", ["fake", "real"])
@pytest.mark.parametrize("profiles", PROFILES, ids=["+".join(p) for p in PROFILES])
def test_up_starts_exactly_the_profile_services_as_compose_says(kind: str, profiles: tuple[str, ...],
                                                                 tmp_path: Path) -> None:
    if kind == "real":
        make_client("real")  # skips without an engine
        if profiles[0] != "cpu":
            pytest.skip(f"the {profiles[0]} images need a GPU base image (NGC / l4t) and a GPU; none here")
        if profiles != ("cpu",) or os.environ.get("EDGEDIFF_DOCKER_E2E") != "1":
            pytest.skip("the cpu profile runs on this engine in tests/deploy/test_engine_e2e.py; this variant also "
                        "needs Grafana's image (pulled): EDGEDIFF_DOCKER_E2E=1 runs it (cpu) where a registry answers")
    raw = yaml.safe_load(REPO_COMPOSE.read_text())
    weights = tmp_path / "weights"
    weights.mkdir()
    env = compose_environment(model="tiny", weights_dir=weights, variants=["onnx-fp32"], base={})
    behaviour = {name: Behaviour(exit_code=0) for name in raw["services"] if name.endswith("-export")}
    client = make_client(kind, behaviour)
    project = "edgediff" if kind == "fake" else f"edgediff-test-{uuid.uuid4().hex[:8]}"
    stack = runtime(client, REPO_COMPOSE, list(profiles), env, tmp_path / "state", project=project)
    try:
        state = stack.up(wait_timeout_s=5 if kind == "fake" else 1800)
        started = check_up_against_compose(client, raw, profiles, env, project, ROOT)

        # images: each built tag once (cpu-export and locust-master share edgediff-cpu), the others pulled
        expected = active(raw, profiles)
        built = {raw["services"][n]["image"] for n in expected if "build" in raw["services"][n]}
        assert sorted(c.name for c in client.of("images.build")) == sorted(built)
        for call in client.of("images.build"):
            assert (Path(call.kwargs["path"]) / call.kwargs["dockerfile"]).is_file()
        pulled = {resolve(raw["services"][n]["image"], env) for n in expected} - built
        if kind == "fake":
            assert {c.name for c in client.of("images.pull")} == pulled

        # the flags of `edgediff up` reached the containers
        export = container_attrs(client, f"{project}-{profiles[0]}-export-1")
        assert "tiny" in export["Config"]["Cmd"] and "onnx-fp32" in export["Config"]["Cmd"]
        assert f"{ENV_WEIGHTS}=/weights" in export["Config"]["Env"]
        assert f"{weights}:/weights:ro" in export["HostConfig"]["Binds"]

        # the state file: same file as the local runtime, runtime docker
        assert state["runtime"] == "docker" and read_state(tmp_path / "state") == state
        assert list(state["services"]) == [s.name for s in stack.services()]
        assert state["services"][f"{profiles[0]}-export"]["status"] == "completed"
        assert state["services"][f"{profiles[0]}-gateway"]["status"] == "healthy"
        assert state["services"][f"{profiles[0]}-gateway"]["port"] == GATEWAY_GRPC_PORT
    finally:
        removed = stack.down(remove_volumes=True)
    check_down_order(client, raw, project, started)
    assert read_state(tmp_path / "state") is None
    assert {c.name for c in client.of("volume.remove")} == {c.name for c in client.of("volumes.create")}
    assert len(removed) == len(started)


# --- the small fixture project (runs for real when an engine is there) -----------------------------------------------
@pytest.fixture(params=["fake", "real"])
def fixture_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[DockerRuntime, RecordingClient,
                                                                                   dict[str, str]]]:
    kind = request.param
    behaviour = {"prepare": Behaviour(exit_code=0)}
    client = make_client(kind, behaviour)
    project = "fx" if kind == "fake" else f"edgediff-test-{uuid.uuid4().hex[:8]}"
    env = {"FIXTURE_PORT": str(free_port()), "FIXTURE_MODE": "ci"}
    if kind == "real":
        env["FIXTURE_IMAGE"] = fixture_image(client.inner)
    stack = runtime(client, FIXTURE_COMPOSE, ["extra"], env, tmp_path / "state", project=project)
    try:
        yield stack, client, env
    finally:
        stack.down(remove_volumes=True)
        assert client.inner.containers.list(all=True, filters={"label": f"{LABEL_PROJECT}={project}"}) == []


@pytest.mark.slow
def test_fixture_project_up_status_down(fixture_stack: tuple[DockerRuntime, RecordingClient, dict[str, str]]
                                        ) -> None:
    stack, client, env = fixture_stack
    raw = yaml.safe_load(FIXTURE_COMPOSE.read_text())
    is_fake = isinstance(client.inner, FakeDockerClient)
    state = stack.up(wait_timeout_s=10 if is_fake else 300, build=True)  # build=True: same calls on a warm engine
    started = check_up_against_compose(client, raw, ("extra",), env, stack.project, FIXTURE_COMPOSE.parent)
    assert started[:3] == [f"{stack.project}-prepare-1", f"{stack.project}-backend-1", f"{stack.project}-frontend-1"]
    assert sorted(started[3:]) == [f"{stack.project}-worker-1", f"{stack.project}-worker-2"]

    (build,) = client.of("images.build")
    assert build.kwargs["buildargs"] == {"GREETING": "hello", "BASE": env.get("FIXTURE_IMAGE", "busybox:1.36")}
    assert build.kwargs["tag"] == "edgediff-fixture-prepare:1"
    frontend = container_attrs(client, f"{stack.project}-frontend-1")
    assert frontend["HostConfig"]["PortBindings"] == {
        "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": env["FIXTURE_PORT"]}]}
    assert frontend["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert "/www" in frontend["HostConfig"]["Tmpfs"]

    assert state["services"]["prepare"]["status"] == "completed"
    assert state["services"]["frontend"]["status"] == "healthy"
    assert state["services"]["frontend"]["port"] == int(env["FIXTURE_PORT"])
    assert state["services"]["worker"]["containers"] == [f"{stack.project}-worker-1", f"{stack.project}-worker-2"]
    assert stack.status()["backend"]["container_health"] == "healthy"
    assert state["services"]["backend"]["log"] == f"docker logs {stack.project}-backend-1"
    assert read_docker_state(stack.state_dir) == state

    removed = stack.down()  # volumes are kept by default
    assert removed[:2] == [f"{stack.project}-worker-2", f"{stack.project}-worker-1"]
    assert removed[2:] == [f"{stack.project}-frontend-1", f"{stack.project}-backend-1", f"{stack.project}-prepare-1"]
    assert client.of("volume.remove") == []
    assert [v.name for v in client.inner.volumes.list(filters={"label": f"{LABEL_PROJECT}={stack.project}"})] == [
        f"{stack.project}_data"]
    assert read_state(stack.state_dir) is None
    assert stack.status()["frontend"]["status"] == "missing"


# --- behaviour on the fake engine ------------------------------------------------------------------------------------
def fake_stack(tmp_path: Path, behaviour: dict[str, Behaviour] | None = None, images: list[str] | None = None,
               profile: Any = (), env: dict[str, str] | None = None, **kwargs: Any) -> tuple[DockerRuntime,
                                                                                              RecordingClient]:
    client = RecordingClient(FakeDockerClient({"prepare": Behaviour(exit_code=0), **(behaviour or {})}, images))
    return runtime(client, FIXTURE_COMPOSE, list(profile), env or {}, tmp_path / "state", project="fx",
                   **kwargs), client


def test_failed_one_shot_stops_the_stack_and_shows_its_log(tmp_path: Path) -> None:
    stack, client = fake_stack(tmp_path, {"prepare": Behaviour(exit_code=3)})
    with pytest.raises(StackError, match=r"fx-prepare-1 exited with code 3 \(needed: completed\); log: .*last line"):
        stack.up(wait_timeout_s=5)
    assert [c.name for c in client.of("containers.run")] == ["fx-prepare-1"]  # backend never started
    assert [c.name for c in client.of("container.remove")] == ["fx-prepare-1"]
    assert [c.name for c in client.of("network.remove")] == ["fx_default"]
    assert read_state(stack.state_dir) is None


def test_keep_on_failure_leaves_the_containers(tmp_path: Path) -> None:
    stack, client = fake_stack(tmp_path, {"backend": Behaviour(unhealthy=True)})
    with pytest.raises(StackError, match="fx-backend-1 is unhealthy"):
        stack.up(wait_timeout_s=5, keep_on_failure=True)
    assert "fx-frontend-1" not in [c.name for c in client.of("containers.run")]
    assert client.of("container.remove") == []
    assert stack.status()["backend"]["status"] == "unhealthy"
    assert read_docker_state(stack.state_dir)["services"]["backend"]["container"] == "fx-backend-1"


def test_health_wait_times_out_with_the_state(tmp_path: Path) -> None:
    stack, _ = fake_stack(tmp_path, {"backend": Behaviour(healthy_after=10**9)}, poll_s=0.01)
    with pytest.raises(StackError, match=r"fx-backend-1 was not healthy after 0 s \(state running, starting\)"):
        stack.up(wait_timeout_s=0.05)


def test_service_healthy_needs_a_healthcheck(tmp_path: Path) -> None:
    compose = tmp_path / "compose.yaml"
    compose.write_text(yaml.safe_dump({"services": {
        "db": {"image": "busybox:1.36"},
        "web": {"image": "busybox:1.36", "depends_on": {"db": {"condition": "service_healthy"}}}}}))
    client = RecordingClient(FakeDockerClient(images=["busybox:1.36"]))
    stack = runtime(client, compose, [], {}, tmp_path / "state", project="hc")
    with pytest.raises(StackError, match="db has no healthcheck, so service_healthy can never hold"):
        stack.up(wait_timeout_s=1)


def test_second_up_reuses_images_network_volumes_and_running_containers(tmp_path: Path) -> None:
    stack, client = fake_stack(tmp_path, env={"FIXTURE_MODE": "a"})
    decoys = client.inner  # names that the engine's substring filters would confuse with ours
    decoys.networks.create("fx_default_old", driver="bridge", labels={})
    decoys.volumes.create(name="fx_data_backup", labels={})
    stack.up(wait_timeout_s=5)
    assert [c.name for c in client.of("networks.create")] == ["fx_default"]
    assert [c.name for c in client.of("volumes.create")] == ["fx_data"]
    first_runs = len(client.of("containers.run"))
    stack.up(wait_timeout_s=5)
    again = [c.name for c in client.of("containers.run")][first_runs:]
    assert again == ["fx-prepare-1"]  # the exited one-shot runs again; running services are kept
    assert len(client.of("images.build")) == 1
    assert len(client.of("networks.create")) == 1 and len(client.of("volumes.create")) == 1

    changed, _ = fake_stack(tmp_path, env={"FIXTURE_MODE": "b"})
    changed.client = client  # same engine, new configuration
    before = len(client.of("containers.run"))
    changed.up(wait_timeout_s=5)
    recreated = [c.name for c in client.of("containers.run")][before:]
    assert recreated == ["fx-prepare-1", "fx-backend-1", "fx-frontend-1"]  # FIXTURE_MODE changed their env
    hashes = {c.labels[LABEL_CONFIG_HASH] for c in client.inner.container_objects.values()}
    assert len(hashes) == 3


def test_images_reused_when_present_and_rebuilt_on_request(tmp_path: Path) -> None:
    stack, client = fake_stack(tmp_path, images=["edgediff-fixture-prepare:1", "busybox:1.36"])
    stack.up(wait_timeout_s=5)
    assert client.of("images.build") == [] and client.of("images.pull") == []
    stack.down()
    stack.up(wait_timeout_s=5, build=True)
    assert [c.name for c in client.of("images.build")] == ["edgediff-fixture-prepare:1"]


def test_ports_remap_and_scale(tmp_path: Path) -> None:
    env = {"FIXTURE_PORT": "28080"}
    stack, client = fake_stack(tmp_path, profile=["extra"], env=env, host_port_remap={28080: 29090},
                               scale={"worker": 3})
    state = stack.up(wait_timeout_s=5)
    frontend = container_attrs(client, "fx-frontend-1")
    assert frontend["HostConfig"]["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "29090"}]}
    assert state["services"]["worker"]["containers"] == ["fx-worker-1", "fx-worker-2", "fx-worker-3"]
    assert [container_attrs(client, f"fx-worker-{i}")["Config"]["Labels"][LABEL_NUMBER] for i in (1, 2, 3)] == [
        "1", "2", "3"]
    removed = stack.down()
    assert removed[:3] == ["fx-worker-3", "fx-worker-2", "fx-worker-1"]


def test_gpu_requests_and_runtime(tmp_path: Path) -> None:
    stack, client = fake_stack(tmp_path, profile=["gpu"])
    stack.up(wait_timeout_s=5)
    host = container_attrs(client, "fx-accelerated-1")["HostConfig"]
    assert host["DeviceRequests"] == [{"Driver": "nvidia", "Count": 1, "DeviceIDs": [],
                                       "Capabilities": [["gpu", "compute"]], "Options": {}}]
    assert host["Runtime"] == "nvidia" and host["ShmSize"] == 256 << 20


def test_status_shows_a_crashed_service(tmp_path: Path) -> None:
    stack, client = fake_stack(tmp_path)
    stack.up(wait_timeout_s=5)
    client.inner.containers.get("fx-frontend-1").exit(1)
    status = stack.status()
    assert status["frontend"]["status"] == "exited" and status["frontend"]["last_exit"] == 1
    assert status["backend"]["status"] == "healthy"
    assert status["prepare"]["status"] == "completed"


def test_unknown_profile_names_the_choices(tmp_path: Path) -> None:
    stack, _ = fake_stack(tmp_path, profile=["tpu"])
    with pytest.raises(InvalidArgumentError, match=r"profile 'tpu' is not in compose\.yaml; choose from extra, gpu"):
        stack.up()


def test_no_engine_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def unreachable(*_: Any, **__: Any) -> Any:
        raise docker.errors.DockerException(
            "Error while fetching server API version: ('Connection aborted.',\n FileNotFoundError(2, 'No such file'))")

    monkeypatch.setattr(docker, "from_env", unreachable)
    with pytest.raises(DockerEngineUnavailableError) as info:
        DockerRuntime(compose_file=REPO_COMPOSE, profile="cpu", state_dir=tmp_path)
    message = str(info.value)
    assert isinstance(info.value, EdgediffError)  # the CLI prints it as one line and exits 2
    assert "\n" not in message
    assert message.startswith(f"{NO_ENGINE} (Error while fetching server API version")
    assert message.endswith(": start Docker or use --runtime local")
    assert engine_reachable() == (False, message)


def test_compose_environment_sets_variables_compose_yaml_reads(tmp_path: Path) -> None:
    env = compose_environment(model="digits", weights_dir=tmp_path, variants=["onnx-fp32", "torch-fp32"],
                              base={"KEEP": "1"})
    assert env == {"KEEP": "1", COMPOSE_ENV_MODEL: "digits", COMPOSE_ENV_WEIGHTS_DIR: str(tmp_path.resolve()),
                   ENV_WEIGHTS: "/weights", COMPOSE_ENV_VARIANTS: "onnx-fp32,torch-fp32",
                   COMPOSE_ENV_VARIANT: "onnx-fp32"}
    text = REPO_COMPOSE.read_text()
    for name in (COMPOSE_ENV_MODEL, COMPOSE_ENV_WEIGHTS_DIR, COMPOSE_ENV_VARIANTS, COMPOSE_ENV_VARIANT, ENV_WEIGHTS):
        assert "${" + name in text, f"compose.yaml no longer reads {name}"
    assert ":/weights:" in text


def test_cli_up_without_engine_prints_one_line_and_exits_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    def unreachable(*_: Any, **__: Any) -> Any:
        raise docker.errors.DockerException("Error while fetching server API version: Connection refused")

    monkeypatch.setattr(docker, "from_env", unreachable)
    code = main(["up", "--runtime", "docker", "--profile", "cpu", "--state-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and NO_ENGINE in err[0] and err[0].endswith("start Docker or use --runtime local")


def test_every_mapped_field_passes_the_sdk(tmp_path: Path) -> None:
    """Each compose key the model maps becomes an argument the SDK accepts and turns into the Engine API body."""
    (tmp_path / "app.env").write_text("FROM_FILE=1\n")
    compose = tmp_path / "compose.yaml"
    compose.write_text(yaml.safe_dump({
        "services": {
            "all": {
                "image": "busybox:1.36", "entrypoint": "/bin/sh -c", "command": ["sleep 1"],
                "env_file": "app.env", "environment": {"FLAG": "true", "N": 3},
                "ports": ["9000", {"target": 53, "published": 5353, "protocol": "udp"}],
                "volumes": [{"type": "bind", "source": ".", "target": "/src", "read_only": True}],
                "tmpfs": ["/run"], "devices": ["/dev/null:/dev/nothing"],
                "user": "1000:1000", "working_dir": "/src", "privileged": False,
                "cap_add": ["NET_ADMIN"], "cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"],
                "hostname": "allhost", "extra_hosts": ["db:10.0.0.2", "cache=10.0.0.3"], "shm_size": "64m",
                "ipc": "private", "init": True, "tty": True, "stdin_open": True, "read_only": True,
                "stop_signal": "SIGINT", "stop_grace_period": "3s", "labels": ["team=edge"],
                "ulimits": {"nofile": {"soft": 1024, "hard": 2048}, "nproc": 512},
                "sysctls": {"net.core.somaxconn": 1024}, "group_add": ["video"], "mem_limit": "256m",
                "cpus": 0.5, "platform": "linux/amd64", "logging": {"driver": "json-file",
                                                                    "options": {"max-size": "1m"}},
                "healthcheck": {"disable": True}, "restart": "always",
                "deploy": {"resources": {"reservations": {"devices": [{"capabilities": ["gpu"]}]}}},
            },
            "sidecar": {"image": "busybox:1.36", "network_mode": "service:all", "depends_on": ["all"]},
        },
    }, sort_keys=False))
    client = RecordingClient(FakeDockerClient(images=["busybox:1.36"]))
    stack = runtime(client, compose, [], {}, tmp_path / "state", project="every")
    stack.up(wait_timeout_s=5)
    attrs = container_attrs(client, "every-all-1")
    config, host = attrs["Config"], attrs["HostConfig"]
    assert config["Entrypoint"] == ["/bin/sh", "-c"] and config["Cmd"] == ["sleep 1"]
    assert {"FROM_FILE=1", "FLAG=true", "N=3"} <= set(config["Env"])
    assert host["PortBindings"] == {"9000/tcp": [{"HostIp": "", "HostPort": ""}],
                                    "53/udp": [{"HostIp": "", "HostPort": "5353"}]}
    assert host["Binds"] == [f"{tmp_path}:/src:ro"] and host["Tmpfs"] == {"/run": ""}
    assert host["Devices"] == [{"PathOnHost": "/dev/null", "PathInContainer": "/dev/nothing",
                                "CgroupPermissions": "rwm"}]
    assert host["DeviceRequests"][0]["Count"] == -1 and host["DeviceRequests"][0]["Capabilities"] == [["gpu"]]
    assert config["User"] == "1000:1000" and config["WorkingDir"] == "/src" and config["Hostname"] == "allhost"
    assert host["CapAdd"] == ["NET_ADMIN"] and host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert sorted(host["ExtraHosts"]) == ["cache:10.0.0.3", "db:10.0.0.2"]
    assert host["ShmSize"] == 64 << 20 and host["IpcMode"] == "private" and host["Init"] is True
    assert config["Tty"] is True and config["OpenStdin"] is True and host["ReadonlyRootfs"] is True
    assert config["StopSignal"] == "SIGINT" and config["Labels"]["team"] == "edge"
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 2048},
                               {"Name": "nproc", "Soft": 512, "Hard": 512}]
    assert host["Sysctls"] == {"net.core.somaxconn": "1024"} and host["GroupAdd"] == ["video"]
    assert host["Memory"] == 256 << 20 and host["NanoCpus"] == 500_000_000
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m"}}
    assert config["Healthcheck"]["Test"] == ["NONE"] and host["RestartPolicy"] == {"Name": "always"}
    (platform_call,) = [c for c in client.of("containers.run") if c.name == "every-all-1"]
    assert platform_call.kwargs["platform"] == "linux/amd64"
    sidecar = container_attrs(client, "every-sidecar-1")["HostConfig"]
    assert sidecar["NetworkMode"] == "container:every-all-1"
    removed = stack.down()
    assert removed == ["every-sidecar-1", "every-all-1"]
    assert [c.kwargs for c in client.of("container.stop") if c.name == "every-all-1"] == [{"timeout": 3}]


def test_failed_up_leaves_what_ran_before_it(tmp_path: Path) -> None:
    stack, client = fake_stack(tmp_path)
    stack.up(wait_timeout_s=5)
    other, _ = fake_stack(tmp_path, profile=["gpu"])
    other.client = client  # the same engine
    client.inner.behaviour["accelerated"] = Behaviour(exit_code=1)  # crash-loops (restart: unless-stopped)
    with pytest.raises(StackError, match=r"fx-accelerated-1 was not ready after 0 s \(state exited\)"):
        other.up(wait_timeout_s=0.2)
    removed = [c.name for c in client.of("container.remove")]
    # this up re-ran the one-shot and started accelerated: only those go; backend and frontend keep running
    assert removed == ["fx-prepare-1", "fx-accelerated-1", "fx-prepare-1"]
    assert client.of("network.remove") == []  # created by the first up, still used
    status = stack.status()
    assert (status["backend"]["status"], status["frontend"]["status"]) == ("healthy", "healthy")
    assert read_docker_state(stack.state_dir) is not None


def test_status_and_down_from_the_state_file_alone(tmp_path: Path) -> None:
    """What `edgediff status` / `edgediff down` do in another process: rebuild the runtime from the state file."""
    from services.stack.docker_runtime import runtime_from_state

    stack, client = fake_stack(tmp_path, profile=["extra"], meta={"model": "tiny", "variants": ["onnx-fp32"]})
    stack.up(wait_timeout_s=5)
    state = read_docker_state(stack.state_dir)
    assert state is not None and state["model"] == "tiny" and state["profile"] == "extra"
    again = runtime_from_state(state, client, state_dir=stack.state_dir, env={}, echo=None)
    assert again.project == "fx" and again.status() == stack.status()
    assert again.down() == ["fx-worker-2", "fx-worker-1", "fx-frontend-1", "fx-backend-1", "fx-prepare-1"]
    assert read_state(stack.state_dir) is None


def test_auto_runtime_picks_docker_only_when_the_images_are_here() -> None:
    from services.stack.docker_runtime import choose_runtime

    runtime, why = choose_runtime("cpu", REPO_COMPOSE, RecordingClient(FakeDockerClient()))
    assert runtime == "local" and why.startswith("a Docker engine answers but edgediff-cpu:0.1.0, ")
    assert why.endswith("are not on it: 'make images' builds the images (or use --runtime docker, which builds "
                        "and pulls)")
    here = ["edgediff-cpu:0.1.0", "prom/prometheus:v2.54.1"]  # Grafana's image is optional: up leaves it out
    runtime, why = choose_runtime("cpu", REPO_COMPOSE, RecordingClient(FakeDockerClient(images=here)))
    assert (runtime, why) == ("docker", "a Docker engine answers and the images of the profile are here")


def test_grafana_left_out_when_its_image_cannot_be_had(tmp_path: Path) -> None:
    client = RecordingClient(FakeDockerClient({"cpu-export": Behaviour(exit_code=0)},
                                              images=["edgediff-cpu:0.1.0", "prom/prometheus:v2.54.1"]))
    client.inner.unpullable = {"grafana/grafana-oss:11.2.2"}
    lines: list[str] = []
    stack = DockerRuntime(client, compose_file=REPO_COMPOSE, profile="cpu", env={}, state_dir=tmp_path,
                          echo=lines.append, poll_s=0.0)
    state = stack.up(wait_timeout_s=5)
    assert "grafana" not in state["services"] and state["left_out"] == ["grafana"]
    assert any(line.startswith("  grafana left out: grafana: pulling grafana/grafana-oss:11.2.2 failed: pull access")
               for line in lines)
    assert "edgediff-grafana-1" not in [c.name for c in client.of("containers.run")]
    from services.stack.docker_runtime import runtime_from_state

    again = runtime_from_state(read_docker_state(tmp_path), client, state_dir=tmp_path, env={}, echo=None)
    assert "grafana" not in again.status()
    stack.down()
