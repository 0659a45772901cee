"""``edgediff up --runtime docker``: the services of ``compose.yaml`` driven through the Docker Engine API.

``DockerRuntime(profile="jetson").up()`` starts what ``docker compose --profile jetson up --wait`` starts, with the
same names and labels (``<project>-<service>-<n>`` containers, ``<project>_default`` network, ``<project>_<key>``
volumes, ``com.docker.compose.*`` labels), so ``docker compose -p edgediff ps`` sees the stack too. Order: images
(built or reused), the network, the named volumes, then one service at a time in dependency order, each started only
once the conditions of its ``depends_on`` hold (``service_started``, ``service_healthy`` from the engine's own
healthcheck, ``service_completed_successfully`` from the one-shot's exit code). The containers are recorded in the
stack's state file with ``"runtime": "docker"``, so ``edgediff status`` and ``edgediff down`` work for both runtimes.

The ``docker`` SDK is imported lazily; every engine call goes through the one ``client`` object (tests pass a fake).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edgediff.availability import require
from edgediff.constants import ENV_WEIGHTS
from edgediff.errors import EdgediffError, InvalidArgumentError
from services.stack.compose.docker_args import (
    LABEL_CONFIG_HASH,
    LABEL_IMAGE,
    LABEL_NETWORK,
    LABEL_NUMBER,
    LABEL_PROJECT,
    LABEL_SERVICE,
    LABEL_VOLUME,
    config_hash,
    image_reference,
    run_arguments,
)
from services.stack.compose.project import (
    CONDITION_COMPLETED,
    CONDITION_HEALTHY,
    CONDITION_STARTED,
    ComposeError,
    ComposeProject,
    ComposeService,
    load_compose,
)
from services.stack.compose.tool import find_tool
from services.stack.state import default_state_dir, read_state, remove_state, write_state
from services.stack.supervisor import StackError

logger = logging.getLogger(__name__)

RUNTIME_NAME = "docker"
DEFAULT_PROJECT = "edgediff"
DEFAULT_WAIT_TIMEOUT_S = 900.0
DEFAULT_STOP_TIMEOUT_S = 10.0
ENGINE_TIMEOUT_S = 600
"""Socket read timeout of engine calls: an image build streams nothing while one long step runs."""

# Variables of compose.yaml that `edgediff up --model/--weights/--variants` set (documented at the top of the file).
COMPOSE_ENV_MODEL = "EDGEDIFF_MODEL"
COMPOSE_ENV_WEIGHTS_DIR = "EDGEDIFF_WEIGHTS_DIR"
COMPOSE_ENV_VARIANTS = "EDGEDIFF_VARIANTS"
COMPOSE_ENV_VARIANT = "EDGEDIFF_VARIANT"
CONTAINER_WEIGHTS_DIR = "/weights"
"""Where compose.yaml mounts ``$EDGEDIFF_WEIGHTS_DIR`` inside the containers."""

_PROJECT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
OPTIONAL_SERVICES = ("grafana",)
"""Services ``up`` leaves out, with a note, when their image is neither present nor pullable."""
LOCAL_IMAGE_DEFAULTS = {"EDGEDIFF_PROMETHEUS_IMAGE": "edgediff-prometheus:bookworm"}
"""compose.yaml's image variables -> the image ``make images`` builds from Debian packages in its place."""


class DockerEngineUnavailableError(EdgediffError):
    """No Docker engine answers (no daemon, no socket, no permission)."""


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def connect(client: Any = None) -> Any:
    """The Docker client to use: ``client`` as given, else ``docker.from_env()`` after a ping.

    Raises:
        DockerEngineUnavailableError: no engine answers; the message is one line with the fix.
        BackendMissingError: the ``docker`` SDK is not installed.
    """
    if client is not None:
        return client
    docker = require("docker")
    try:
        client = docker.from_env(timeout=ENGINE_TIMEOUT_S)
        client.ping()
    except docker.errors.DockerException as exc:
        raise DockerEngineUnavailableError(
            f"no Docker engine reachable ({_one_line(exc)}): start Docker or use --runtime local") from None
    return client


def engine_reachable() -> tuple[bool, str]:
    """``(True, "")`` when ``docker.from_env().ping()`` succeeds, else ``(False, why)`` (never raises)."""
    try:
        client = connect()
    except EdgediffError as exc:
        return False, str(exc)
    client.close()
    return True, ""


def compose_environment(
    *,
    model: str | None = None,
    weights_dir: Path | None = None,
    variants: Sequence[str] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The interpolation variables for compose.yaml that carry ``edgediff up``'s ``--model/--weights/--variants``.

    Args:
        model: Model preset (``EDGEDIFF_MODEL``).
        weights_dir: Host folder with diffusers-format weights: mounted at ``/weights`` (``EDGEDIFF_WEIGHTS_DIR``),
            which the containers then load (``EDGEDIFF_WEIGHTS=/weights``).
        variants: Variants to export and serve (``EDGEDIFF_VARIANTS``); the first is the default one
            (``EDGEDIFF_VARIANT``).
        base: Variables to start from (default ``os.environ``).
    """
    env = dict(os.environ if base is None else base)
    if model:
        env[COMPOSE_ENV_MODEL] = model
    if weights_dir is not None:
        env[COMPOSE_ENV_WEIGHTS_DIR] = str(Path(weights_dir).expanduser().resolve())
        env[ENV_WEIGHTS] = CONTAINER_WEIGHTS_DIR
    if variants:
        env[COMPOSE_ENV_VARIANTS] = ",".join(variants)
        env[COMPOSE_ENV_VARIANT] = variants[0]
    return env


def choose_runtime(profile: str, compose_file: Path, client: Any = None) -> tuple[str, str]:
    """What ``edgediff up --runtime auto`` runs: ``("docker", why)`` or ``("local", why not)``; never raises.

    Docker when an engine answers, a compose tool reads the file, and every image of the profile's services (Grafana
    aside: ``up`` leaves it out when it cannot be had) is on the engine already: ``auto`` never starts a long image
    build or a pull by itself (``make images`` builds them; ``--runtime docker`` builds and pulls).
    """
    try:
        client = connect(client)
    except EdgediffError as exc:
        return "local", str(exc)
    if find_tool() is None:
        return "local", "no compose tool ('docker compose' or 'docker-compose') to read compose.yaml"
    try:
        stack = DockerRuntime(client, compose_file=compose_file, profile=profile, echo=None)
        services = stack.services()
    except EdgediffError as exc:
        return "local", f"{compose_file.name}: {exc}"
    missing = []
    for service in services:
        ref = image_reference(stack.project, service)
        try:
            client.images.get(ref)
        except stack._docker.errors.DockerException:
            if service.name not in OPTIONAL_SERVICES:
                missing.append(ref)
    if missing:
        names = sorted(set(missing))
        return "local", (f"a Docker engine answers but {', '.join(names)} {'is' if len(names) == 1 else 'are'} not "
                         "on it: 'make images' builds the images (or use --runtime docker, which builds and pulls)")
    return "docker", "a Docker engine answers and the images of the profile are here"


def _print_line(line: str) -> None:
    print(line, flush=True)


class DockerRuntime:
    """The stack of ``compose.yaml`` for one profile, as Docker containers.

    Args:
        client: A ``docker.DockerClient`` (or an object with the same methods); default ``docker.from_env()``.
        project: Compose project name: prefix of the containers, the network and the volumes.
        compose_file: The compose file (relative paths in it are resolved against its folder).
        profile: The profile(s) to activate (``cpu``, ``rtx``, ``jetson``, plus ``loadtest`` if wanted).
        env: Variables for ``${VAR}`` interpolation (default ``os.environ``; see ``compose_environment``).
        state_dir: Where the stack's state file goes (default ``$EDGEDIFF_STACK_DIR`` or ~/.cache/edgediff/stack).
        host_port_remap: Published host port -> host port to publish instead (``--ports``).
        scale: Service -> number of replicas, overriding compose.yaml (e.g. ``{"locust-worker": 4}``).
        meta: Extra fields for the state file (model, variants, ...).
        echo: Where progress lines go (default stdout).
        poll_s: Seconds between two looks at a container that is starting.

    Raises:
        DockerEngineUnavailableError: no engine answers (``client`` not given and ``docker.from_env()`` fails).
        InvalidArgumentError: a bad project name or a profile no service of the file declares.
        ComposeError: the compose file cannot be read or mapped.
    """

    def __init__(
        self,
        client: Any = None,
        project: str = DEFAULT_PROJECT,
        compose_file: Path = Path("compose.yaml"),
        profile: str | Sequence[str] = "cpu",
        env: Mapping[str, str] | None = None,
        *,
        state_dir: Path | None = None,
        host_port_remap: Mapping[int, int] | None = None,
        scale: Mapping[str, int] | None = None,
        meta: Mapping[str, Any] | None = None,
        echo: Callable[[str], None] | None = _print_line,
        poll_s: float = 1.0,
    ) -> None:
        if not _PROJECT_NAME.match(project):
            raise InvalidArgumentError(f"project {project!r}: use lowercase letters, digits, '-' and '_'")
        self.project = project
        self.compose_file = Path(compose_file)
        self.profiles = [profile] if isinstance(profile, str) else list(profile)
        self.env = env
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.host_port_remap = dict(host_port_remap or {})
        self.scale = dict(scale or {})
        self.meta = dict(meta or {})
        self.echo = echo or (lambda _line: None)
        self.poll_s = poll_s
        self._compose: ComposeProject | None = None
        self._started: list[str] = []
        self._created_networks: list[str] = []
        self._docker = require("docker")
        self.client = connect(client)

    # --- the compose file -------------------------------------------------------------------------------------------
    @property
    def compose(self) -> ComposeProject:
        """The parsed compose file (read once)."""
        if self._compose is None:
            self._compose = load_compose(self.compose_file, self.project, self._variables())
        return self._compose

    def _variables(self) -> dict[str, str]:
        """The interpolation variables, with the images ``make images`` built locally where the file's are missing."""
        env = dict(os.environ if self.env is None else self.env)
        for variable, image in LOCAL_IMAGE_DEFAULTS.items():
            if env.get(variable):
                continue
            try:
                self.client.images.get(image)
            except self._docker.errors.DockerException:
                continue
            env[variable] = image
            self.echo(f"  {variable}={image} (built from Debian packages by 'make images')")
        return env

    def services(self) -> list[ComposeService]:
        """The services of the active profiles, in dependency order.

        Raises:
            InvalidArgumentError: a profile that no service declares.
        """
        declared = self.compose.profiles
        unknown = [p for p in self.profiles if p not in declared]
        if unknown:
            raise InvalidArgumentError(f"profile {unknown[0]!r} is not in {self.compose.path.name}; "
                                       f"choose from {', '.join(declared)}")
        for name, count in self.scale.items():
            if name not in self.compose.services:
                raise InvalidArgumentError(f"scale: unknown service {name!r}")
            if count < 0:
                raise InvalidArgumentError(f"scale: {name} needs 0 (left out) or more replicas, got {count}")
        return self.compose.active_services(self.profiles, without=[n for n, c in self.scale.items() if c == 0])

    def _replicas(self, service: ComposeService) -> int:
        return self.scale.get(service.name, service.replicas)

    # --- up ---------------------------------------------------------------------------------------------------------
    def up(self, wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S, *, build: bool = False,
           keep_on_failure: bool = False) -> dict[str, Any]:
        """Build or reuse images, create the network and volumes, start the services in order, wait until ready.

        Args:
            wait_timeout_s: The longest wait for one condition (a dependency healthy, a one-shot done, and at the
                end every service running/healthy/completed).
            build: Rebuild the images of services with ``build:`` even when they exist (``up --build``).
            keep_on_failure: Leave the containers when something fails (default: remove the containers and the
                network this call created; what ran before it stays).

        Returns:
            The state written to the state file (``runtime``, ``project``, ``profile``, ``services``...).

        Raises:
            StackError: a build, a pull, a container start or a wait failed (the message names the service and ends
                with the last lines of its log).
        """
        services = self._leave_out_unavailable(self.services())
        self._started = []
        self._created_networks = []
        try:
            images = self._ensure_images(services, rebuild=build)
            self._ensure_networks(services)
            self._ensure_volumes(services)
            self.state_dir.mkdir(parents=True, exist_ok=True)
            for service in services:
                for dep in service.dependencies:
                    if dep.condition != CONDITION_STARTED:
                        self.echo(f"  {service.name}: waiting for {dep.service} ({dep.condition})")
                    self._wait_condition(self.compose.services[dep.service], dep.condition, wait_timeout_s)
                self._start_service(service, images[service.name])
                self._write_state(services)
            self.echo(f"  waiting until every service is ready (at most {wait_timeout_s:.0f} s each)")
            for service in services:
                self._wait_ready(service, wait_timeout_s)
        except BaseException:
            if not keep_on_failure:
                try:
                    self._undo(services)
                except Exception as exc:  # keep the first error
                    logger.warning("cleaning up after a failed up: %s", exc)
            raise
        state = self._write_state(services)
        for service in services:
            entry = state["services"][service.name]
            port = f"port {entry['port']}" if entry.get("port") else ""
            self.echo(f"  {service.name:<16} {entry['status']:<10} {entry['container']:<32} {port}".rstrip())
        return state

    def _leave_out_unavailable(self, services: list[ComposeService]) -> list[ComposeService]:
        """Leave out the optional services (Grafana) whose image is neither here nor pullable, saying so.

        ``docker compose`` would stop there; the dashboards are the one part of the stack nothing else needs, and
        sites without a registry have no other way to get Grafana. The state file records what was left out.
        """
        errors = self._docker.errors
        for service in [s for s in services if s.name in OPTIONAL_SERVICES and s.build is None]:
            ref = image_reference(self.project, service)
            try:
                self.client.images.get(ref)
                continue
            except errors.ImageNotFound:
                pass
            try:
                self._pull(service, ref)
                continue
            except StackError as exc:
                why = str(exc)
            self.echo(f"  {service.name} left out: {why} (the rest of the stack does not need it)")
            self.scale[service.name] = 0
            self.meta.setdefault("left_out", []).append(service.name)
        return self.services()

    def _undo(self, services: Sequence[ComposeService]) -> None:
        """After a failed ``up``: remove the containers it started (newest first) and the network it created.

        Containers that ran before this ``up`` (another profile, an earlier ``up``) are left alone.
        """
        by_name = {s.name: s for s in services}
        for name in reversed(self._started):
            try:
                container = self.client.containers.get(name)
            except self._docker.errors.NotFound:
                continue
            self._remove_container(container, self._stop_timeout(by_name.get(container.labels.get(LABEL_SERVICE))))
            self.echo(f"  removed {name}")
        for network in self._created_networks:
            for found in self.client.networks.list(names=[network]):
                if found.name == network:
                    try:
                        found.remove()
                    except self._docker.errors.APIError:  # other containers still use it
                        logger.info("network %s still in use; kept", network)
        if self._containers():
            self._write_state(services)
        else:
            remove_state(self.state_dir)

    def _ensure_images(self, services: Sequence[ComposeService], *, rebuild: bool) -> dict[str, str]:
        errors = self._docker.errors
        done: set[str] = set()
        # Built images first: a service that only names the image another one builds (cpu-triton runs the image
        # cpu-export builds) then finds it instead of pulling it.
        for service in [s for s in services if s.build is not None] + [s for s in services if s.build is None]:
            ref = image_reference(self.project, service)
            if ref in done:
                continue
            if service.build is not None and (rebuild or service.pull_policy == "build"):
                self._build(service, ref)
            else:
                try:
                    self.client.images.get(ref)
                    if service.pull_policy == "always" and service.build is None:
                        self._pull(service, ref)
                except errors.ImageNotFound:
                    if service.build is not None:
                        self._build(service, ref)
                    elif service.pull_policy == "never":
                        raise StackError(f"{service.name}: image {ref} is missing and pull_policy is never") from None
                    else:
                        self._pull(service, ref)
                except errors.APIError as exc:
                    raise StackError(f"{service.name}: image {ref}: {_api_message(exc)}") from None
            done.add(ref)
        return {s.name: image_reference(self.project, s) for s in services}

    def _build(self, service: ComposeService, ref: str) -> None:
        assert service.build is not None
        spec = service.build
        self.echo(f"  building {ref} from {spec.context / spec.dockerfile} (service {service.name})")
        kwargs: dict[str, Any] = {"path": str(spec.context), "dockerfile": spec.dockerfile, "tag": ref,
                                  "buildargs": dict(spec.args), "rm": True}
        if spec.target:
            kwargs["target"] = spec.target
        if service.platform:
            kwargs["platform"] = service.platform
        errors = self._docker.errors
        try:
            self.client.images.build(**kwargs)
        except errors.BuildError as exc:
            raise StackError(f"{service.name}: building {ref} failed: {_one_line(exc)}") from None
        except errors.APIError as exc:
            raise StackError(f"{service.name}: building {ref} failed: {_api_message(exc)}") from None

    def _pull(self, service: ComposeService, ref: str) -> None:
        self.echo(f"  pulling {ref} (service {service.name})")
        try:
            self.client.images.pull(ref)
        except self._docker.errors.APIError as exc:
            raise StackError(f"{service.name}: pulling {ref} failed: {_api_message(exc)}") from None

    def _ensure_networks(self, services: Sequence[ComposeService]) -> None:
        keys = list(dict.fromkeys(k for s in services if s.network_mode is None for k in s.networks))
        for key in keys:
            spec = self.compose.networks[key]
            existing = [n for n in self.client.networks.list(names=[spec.name]) if n.name == spec.name]
            if existing:
                continue
            if spec.external:
                raise StackError(f"network {spec.name} is declared external but does not exist")
            labels = {**dict(spec.labels), LABEL_PROJECT: self.project, LABEL_NETWORK: key}
            kwargs: dict[str, Any] = {"driver": spec.driver, "labels": labels}
            if spec.driver_opts:
                kwargs["options"] = dict(spec.driver_opts)
            if spec.internal:
                kwargs["internal"] = True
            try:
                self.client.networks.create(spec.name, **kwargs)
            except self._docker.errors.APIError as exc:
                raise StackError(f"creating network {spec.name} failed: {_api_message(exc)}") from None
            self._created_networks.append(spec.name)

    def _ensure_volumes(self, services: Sequence[ComposeService]) -> None:
        keys = list(dict.fromkeys(str(m.source) for s in services for m in s.mounts if m.kind == "volume"))
        for key in keys:
            spec = self.compose.volumes[key]
            existing = [v for v in self.client.volumes.list(filters={"name": spec.name}) if v.name == spec.name]
            if existing:
                continue
            if spec.external:
                raise StackError(f"volume {spec.name} is declared external but does not exist")
            kwargs: dict[str, Any] = {"name": spec.name,
                                      "labels": {**dict(spec.labels), LABEL_PROJECT: self.project,
                                                 LABEL_VOLUME: key}}
            if spec.driver:
                kwargs["driver"] = spec.driver
            if spec.driver_opts:
                kwargs["driver_opts"] = dict(spec.driver_opts)
            try:
                self.client.volumes.create(**kwargs)
            except self._docker.errors.APIError as exc:
                raise StackError(f"creating volume {spec.name} failed: {_api_message(exc)}") from None

    def _start_service(self, service: ComposeService, image: str) -> None:
        errors = self._docker.errors
        replicas = self._replicas(service)
        for number in range(1, replicas + 1):
            kwargs = run_arguments(self.compose, service, project=self.project, image=image, number=number,
                                   host_port_remap=self.host_port_remap)
            image_id = self._image_id(image)
            digest = config_hash({**kwargs, "image_id": image_id})
            kwargs["labels"][LABEL_CONFIG_HASH] = digest
            kwargs["labels"][LABEL_IMAGE] = image_id
            name = kwargs["name"]
            try:
                existing = self.client.containers.get(name)
            except errors.NotFound:
                existing = None
            if existing is not None:
                if existing.labels.get(LABEL_CONFIG_HASH) == digest and existing.status == "running":
                    logger.info("%s is up to date and running", name)
                    continue
                self._remove_container(existing, self._stop_timeout(service))
            image_arg = kwargs.pop("image")
            command = kwargs.pop("command")
            try:
                self.client.containers.run(image_arg, command, **kwargs)
            except errors.APIError as exc:
                raise StackError(f"{service.name}: starting {name} failed: {_api_message(exc)}") from None
            self._started.append(name)
            self.echo(f"  started {name}")
        for container in self._containers(service.name):
            number = int(container.labels.get(LABEL_NUMBER, "1") or 1)
            if number > replicas:
                self._remove_container(container, self._stop_timeout(service))

    def _image_id(self, ref: str) -> str:
        try:
            return str(self.client.images.get(ref).id)
        except self._docker.errors.DockerException:
            return ""

    # --- waiting ----------------------------------------------------------------------------------------------------
    def _containers(self, service: str | None = None) -> list[Any]:
        labels = [f"{LABEL_PROJECT}={self.project}"]
        if service is not None:
            labels.append(f"{LABEL_SERVICE}={service}")
        return list(self.client.containers.list(all=True, filters={"label": labels}))

    def _wait_condition(self, dependency: ComposeService, condition: str, timeout_s: float) -> None:
        """Block until every container of ``dependency`` satisfies ``condition``."""
        containers = self._containers(dependency.name)
        if not containers:
            raise StackError(f"{dependency.name} has no container")
        for container in containers:
            if condition == CONDITION_HEALTHY:
                self._wait_until(container, dependency, timeout_s, need="healthy")
            elif condition == CONDITION_COMPLETED:
                self._wait_until(container, dependency, timeout_s, need="completed")
            # service_started: the container was started before this service, nothing to wait for

    def _wait_ready(self, service: ComposeService, timeout_s: float) -> None:
        """``up --wait``: running (healthy when it has a healthcheck), or a one-shot that exited 0."""
        for container in self._containers(service.name):
            self._wait_until(container, service, timeout_s, need="ready")

    def _wait_until(self, container: Any, service: ComposeService, timeout_s: float, need: str) -> None:
        """Poll ``container`` until it is ``healthy``, ``completed`` (exited 0) or ``ready`` (``up --wait``)."""
        deadline = time.monotonic() + timeout_s
        policy = service.restart
        while True:
            container.reload()
            state = container.attrs.get("State") or {}
            status = state.get("Status", container.status)
            health = (state.get("Health") or {}).get("Status")
            if status in ("exited", "dead"):
                code = int(container.wait(timeout=10).get("StatusCode", state.get("ExitCode", -1)))
                if code == 0 and need in ("completed", "ready") and policy.name in ("no", "on-failure"):
                    return
                if code == 0 and need == "completed":
                    return
                restarts = int(container.attrs.get("RestartCount") or 0)
                will_restart = policy.name in ("always", "unless-stopped") or (
                    policy.name == "on-failure" and code != 0
                    and (policy.max_retries == 0 or restarts < policy.max_retries))
                if not will_restart:
                    wanted = {"healthy": "healthy", "completed": "completed", "ready": "running"}[need]
                    raise StackError(f"{container.name} exited with code {code} (needed: {wanted}); "
                                     f"log: {self._log_tail(container)}")
            elif status == "running":
                if need == "healthy" and health is None:
                    raise StackError(f"{service.name} has no healthcheck, so service_healthy can never hold")
                if health == "unhealthy":
                    raise StackError(f"{container.name} is unhealthy; log: {self._log_tail(container)}")
                if need in ("ready", "healthy") and health in (None, "healthy"):
                    return
            if time.monotonic() >= deadline:
                raise StackError(f"{container.name} was not {need} after {timeout_s:.0f} s (state {status}"
                                 f"{', ' + health if health else ''}); log: {self._log_tail(container)}")
            time.sleep(self.poll_s)

    def _log_tail(self, container: Any, lines: int = 5) -> str:
        try:
            raw = container.logs(tail=lines)
        except self._docker.errors.DockerException:
            return "(no log)"
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
        tail = " | ".join(line.strip() for line in text.strip().splitlines()[-lines:]) or "(empty)"
        return tail if len(tail) <= 500 else "..." + tail[-497:]

    # --- down -------------------------------------------------------------------------------------------------------
    def down(self, *, remove_volumes: bool = False, timeout_s: float | None = None) -> list[str]:
        """Stop and remove the project's containers in reverse dependency order, then its network.

        Args:
            remove_volumes: Also remove the project's named volumes (the model repository, Prometheus data...).
            timeout_s: Seconds a container gets to stop before it is killed (default: its ``stop_grace_period``,
                else 10 s).

        Returns:
            The names of the containers removed, in removal order.
        """
        containers = self._containers()
        order = self._down_order()
        rank = {name: i for i, name in enumerate(order)}

        def key(container: Any) -> tuple[int, int]:
            service = container.labels.get(LABEL_SERVICE, "")
            number = int(container.labels.get(LABEL_NUMBER, "1") or 1)
            return (-rank.get(service, len(order)), -number)  # unknown services first, then reverse order

        removed = []
        for container in sorted(containers, key=key):
            service = self._compose_services().get(container.labels.get(LABEL_SERVICE, ""))
            stop_s = timeout_s if timeout_s is not None else self._stop_timeout(service)
            self._remove_container(container, stop_s)
            removed.append(container.name)
            self.echo(f"  removed {container.name}")
        project_filter = {"label": f"{LABEL_PROJECT}={self.project}"}
        errors = self._docker.errors
        for network in self.client.networks.list(filters=project_filter):
            try:
                network.remove()
                self.echo(f"  removed network {network.name}")
            except errors.APIError as exc:
                raise StackError(f"removing network {network.name} failed: {_api_message(exc)}") from None
        if remove_volumes:
            for volume in self.client.volumes.list(filters=project_filter):
                try:
                    volume.remove()
                    self.echo(f"  removed volume {volume.name}")
                except errors.APIError as exc:
                    raise StackError(f"removing volume {volume.name} failed: {_api_message(exc)}") from None
        state = read_state(self.state_dir)
        if state is not None and state.get("runtime") == RUNTIME_NAME and state.get("project") == self.project:
            remove_state(self.state_dir)
        return removed

    def _compose_services(self) -> dict[str, ComposeService]:
        """The compose file's services, or {} when it cannot be read (``down`` still works without it)."""
        try:
            return self.compose.services
        except (ComposeError, StackError):
            return {}

    def _down_order(self) -> list[str]:
        try:
            return [s.name for s in self.compose.all_services_ordered()]
        except (ComposeError, StackError):
            state = read_state(self.state_dir) or {}
            return list(state.get("order") or [])

    def _stop_timeout(self, service: ComposeService | None) -> float:
        if service is not None and service.stop_grace_period_s is not None:
            return service.stop_grace_period_s
        return DEFAULT_STOP_TIMEOUT_S

    def _remove_container(self, container: Any, stop_timeout_s: float) -> None:
        errors = self._docker.errors
        try:
            container.reload()
            if container.status in ("running", "restarting", "paused"):
                container.stop(timeout=max(0, round(stop_timeout_s)))
            container.remove()
        except errors.NotFound:
            return
        except errors.APIError as exc:
            raise StackError(f"removing {container.name} failed: {_api_message(exc)}") from None

    # --- status -----------------------------------------------------------------------------------------------------
    def status(self) -> dict[str, dict[str, Any]]:
        """Each service's containers as the engine sees them now.

        Returns:
            Service -> ``container``, ``containers``, ``status`` (healthy, starting, unhealthy, running, completed,
            exited, restarting, missing...), ``state`` and ``container_health`` (the engine's), ``port`` (first
            published host port), ``ports``, ``restarts``, ``last_exit``, ``image``, ``log`` (the command that shows
            it). Services of the active profiles without a container are ``missing``. There is no ``health`` key:
            in the local runtime's entries that key is a ``HealthCheck`` to re-run, here the engine has the answer.
        """
        by_service: dict[str, list[Any]] = {}
        for container in self._containers():
            by_service.setdefault(container.labels.get(LABEL_SERVICE, "?"), []).append(container)
        try:
            expected = [s.name for s in self.services()]
        except (ComposeError, StackError, InvalidArgumentError):
            expected = []
        names = expected + sorted(n for n in by_service if n not in expected)
        out = {}
        for name in names:
            containers = sorted(by_service.get(name, []), key=lambda c: int(c.labels.get(LABEL_NUMBER, "1") or 1))
            out[name] = _describe_service(containers)
        return out

    def snapshot(self, services: Sequence[ComposeService] | None = None) -> dict[str, Any]:
        """The state file's content: runtime, project, profile, compose file, order, meta and ``status()``."""
        order = [s.name for s in (services if services is not None else self.services())]
        return {
            "runtime": RUNTIME_NAME,
            "project": self.project,
            "profile": ",".join(self.profiles),
            "compose_file": str(self.compose.path),
            "order": order,
            **self.meta,
            "services": self.status(),
        }

    def _write_state(self, services: Sequence[ComposeService]) -> dict[str, Any]:
        state = self.snapshot(services)
        write_state(self.state_dir, state)
        return state


def _describe_service(containers: Sequence[Any]) -> dict[str, Any]:
    if not containers:
        return {"container": None, "containers": [], "status": "missing", "state": None, "container_health": None,
                "port": None, "ports": {}, "restarts": 0, "last_exit": None, "image": None, "log": None}
    described = [_describe_container(c) for c in containers]
    worst = next((d for d in described if d["status"] not in ("healthy", "running", "completed")), described[0])
    first = described[0]
    return {
        "container": first["container"],
        "containers": [d["container"] for d in described],
        "status": worst["status"],
        "state": worst["state"],
        "container_health": worst["container_health"],
        "port": first["port"],
        "ports": first["ports"],
        "restarts": sum(d["restarts"] for d in described),
        "last_exit": worst["last_exit"],
        "image": first["image"],
        "log": f"docker logs {worst['container']}",
    }


def _describe_container(container: Any) -> dict[str, Any]:
    attrs = container.attrs or {}
    state = attrs.get("State") or {}
    status = state.get("Status", container.status)
    health = (state.get("Health") or {}).get("Status")
    exit_code = state.get("ExitCode")
    if status == "running" and health:
        shown = health
    elif status == "exited":
        shown = "completed" if exit_code == 0 else "exited"
    else:
        shown = status
    ports: dict[str, str] = {}
    first_port = None
    for key, bindings in sorted(((attrs.get("NetworkSettings") or {}).get("Ports") or {}).items()):
        for binding in bindings or []:
            host_port = binding.get("HostPort")
            if host_port:
                ports[key] = f"{binding.get('HostIp') or '0.0.0.0'}:{host_port}"
                first_port = first_port or int(host_port)
    if not ports:  # not running: the requested bindings
        for key, bindings in sorted(((attrs.get("HostConfig") or {}).get("PortBindings") or {}).items()):
            for binding in bindings or []:
                if binding.get("HostPort"):
                    ports[key] = f"{binding.get('HostIp') or '0.0.0.0'}:{binding['HostPort']}"
                    first_port = first_port or int(binding["HostPort"])
    return {
        "container": container.name,
        "status": shown,
        "state": status,
        "container_health": health,
        "port": first_port,
        "ports": ports,
        "restarts": int(attrs.get("RestartCount") or 0),
        "last_exit": exit_code if status in ("exited", "dead") else None,
        "image": (attrs.get("Config") or {}).get("Image"),
    }


def _api_message(exc: Any) -> str:
    explanation = getattr(exc, "explanation", None)
    return _one_line(explanation if explanation else exc)


def read_docker_state(state_dir: Path) -> dict[str, Any] | None:
    """The state file when it records a Docker stack, else None."""
    state = read_state(state_dir)
    if state is None or state.get("runtime") != RUNTIME_NAME:
        return None
    return state


def runtime_from_state(state: Mapping[str, Any], client: Any = None, *, state_dir: Path | None = None,
                       env: Mapping[str, str] | None = None,
                       echo: Callable[[str], None] | None = _print_line) -> DockerRuntime:
    """The ``DockerRuntime`` that ``edgediff status``/``down`` use for a stack recorded by ``up``.

    Raises:
        DockerEngineUnavailableError: no engine answers.
    """
    profiles: Iterable[str] = str(state.get("profile") or "cpu").split(",")
    return DockerRuntime(client, project=str(state.get("project") or DEFAULT_PROJECT),
                         compose_file=Path(str(state.get("compose_file") or "compose.yaml")),
                         profile=list(profiles), env=env, state_dir=state_dir, echo=echo,
                         scale=dict.fromkeys(state.get("left_out") or [], 0),
                         meta={"left_out": list(state.get("left_out") or [])} if state.get("left_out") else None)
