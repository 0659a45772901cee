"""The compose project that ``edgediff up --runtime docker`` starts, read from the compose tool's normalised config.

Interpolation, ``.env``, ``env_file``, anchors, relative paths and validation are the compose tool's (``tool.py``).
This module keeps what the runtime decides by itself: which services the active profiles start and in which order,
their images and builds, ``depends_on`` conditions, restart policies, replicas, and the project's volume and network
names. A service key the runtime cannot map onto the Engine API is an error that names the service and the key,
never silently dropped: a stack started by ``edgediff up --runtime docker`` equals what
``docker compose --profile P up`` starts from the same file.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from services.stack.compose.tool import ComposeError, normalised_config
from services.stack.supervisor import dependency_order

CONDITION_STARTED = "service_started"
CONDITION_HEALTHY = "service_healthy"
CONDITION_COMPLETED = "service_completed_successfully"
CONDITIONS = (CONDITION_STARTED, CONDITION_HEALTHY, CONDITION_COMPLETED)
DEFAULT_NETWORK = "default"

MAPPED_KEYS = frozenset({
    "build", "cap_add", "cap_drop", "command", "container_name", "cpus", "depends_on", "deploy", "devices",
    "entrypoint", "environment", "extra_hosts", "gpus", "group_add", "healthcheck", "hostname", "image", "init",
    "ipc", "labels", "logging", "mem_limit", "network_mode", "networks", "pid", "platform", "ports", "privileged",
    "profiles", "pull_policy", "read_only", "restart", "runtime", "scale", "security_opt", "shm_size", "stdin_open",
    "stop_grace_period", "stop_signal", "sysctls", "tmpfs", "tty", "ulimits", "user", "volumes", "working_dir",
})
"""Service keys the Docker runtime maps (docker_args.run_arguments) or decides on (this module)."""
FOLDED_KEYS = frozenset({"env_file", "expose"})
"""Keys the tool folds into others (``env_file`` into ``environment``) or that change nothing on a user network."""
DEPLOY_KEYS = {"deploy": {"resources", "replicas", "restart_policy", "mode"},
               "deploy.resources": {"reservations", "limits"},
               "deploy.resources.limits": {"memory", "cpus", "pids"},
               "deploy.resources.reservations": {"devices", "memory", "cpus"}}

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration_s(value: Any, where: str) -> float:
    """A duration as the tool prints it (``10s``, ``1m30s``, ``500ms``; v2 ``3m0s``; or a number of seconds)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_S[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ComposeError(f"{where}: {value!r} is not a duration (e.g. 10s, 1m30s, 500ms)")
    return total


def as_list(value: Any) -> list[Any]:
    """A "string or list" field as a list."""
    return [] if value is None else list(value) if isinstance(value, list) else [value]


def as_command(value: Any) -> list[str] | None:
    """``command``/``entrypoint``: a list as is (as strings), a string split like a shell does."""
    if value is None:
        return None
    return shlex.split(value) if isinstance(value, str) else [scalar_str(v) for v in value]


def scalar_str(value: Any) -> str:
    """A scalar as compose writes it into a string (booleans ``true``/``false``, None as "")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


@dataclass(frozen=True)
class BuildSpec:
    """``build:`` of a service: context (absolute), Dockerfile relative to it, build args, multi-stage target."""

    context: Path
    dockerfile: str = "Dockerfile"
    args: tuple[tuple[str, str], ...] = ()
    target: str | None = None


@dataclass(frozen=True)
class Dependency:
    """One ``depends_on`` entry: the service, its condition, and whether it must be in the active profiles."""

    service: str
    condition: str = CONDITION_STARTED
    required: bool = True


@dataclass(frozen=True)
class RestartPolicy:
    """``restart:`` as the Engine API's restart policy (``max_retries`` for ``on-failure``, 0 = unlimited)."""

    name: str = "no"
    max_retries: int = 0

    def to_sdk(self) -> dict[str, Any] | None:
        """The ``restart_policy`` argument of ``containers.run`` (None for ``no``)."""
        if self.name == "no":
            return None
        policy: dict[str, Any] = {"Name": self.name}
        if self.name == "on-failure":
            policy["MaximumRetryCount"] = self.max_retries
        return policy


@dataclass(frozen=True)
class Mount:
    """One service ``volumes:``/``tmpfs:`` entry: kind ``volume`` (source = top-level key), ``bind`` or ``tmpfs``."""

    kind: str
    source: str | None
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class ResourceDef:
    """A top-level ``volumes:`` or ``networks:`` entry with the engine's name (``<project>_<key>`` by default)."""

    key: str
    name: str
    external: bool = False
    driver: str = ""
    driver_opts: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    internal: bool = False


@dataclass
class ComposeService:
    """One service: ``spec`` is the tool's normalised mapping; the rest is what the runtime decides on.

    ``depends_on`` holds the names (``supervisor.dependency_order`` sorts services directly); ``dependencies``
    the same entries with their conditions.
    """

    name: str
    spec: dict[str, Any]
    profiles: tuple[str, ...]
    image: str | None
    build: BuildSpec | None
    dependencies: tuple[Dependency, ...]
    depends_on: tuple[str, ...]
    restart: RestartPolicy
    replicas: int
    mounts: tuple[Mount, ...]
    networks: dict[str, tuple[str, ...]]
    network_mode: str | None = None
    container_name: str | None = None
    pull_policy: str | None = None
    platform: str | None = None
    stop_grace_period_s: float | None = None

    def active_in(self, profiles: Iterable[str]) -> bool:
        """True when the service runs with these profiles (services without ``profiles:`` always run)."""
        return not self.profiles or bool(set(self.profiles) & set(profiles))


@dataclass
class ComposeProject:
    """The whole file: path (absolute), top-level ``name:``, services in file order, volumes and networks by key."""

    path: Path
    name: str | None
    services: dict[str, ComposeService]
    volumes: dict[str, ResourceDef]
    networks: dict[str, ResourceDef]

    @property
    def directory(self) -> Path:
        """The project folder (where the compose file lives)."""
        return self.path.parent

    @property
    def profiles(self) -> list[str]:
        """Every profile some service declares, sorted."""
        return sorted({p for s in self.services.values() for p in s.profiles})

    def active_services(self, profiles: Iterable[str], without: Iterable[str] = ()) -> list[ComposeService]:
        """The services that ``docker compose --profile P ... up`` starts, in dependency order.

        Args:
            profiles: The active profiles.
            without: Services left out (``--scale NAME=0``).

        Raises:
            ComposeError: an active service requires a service that is not active (or left out).
            StackError: the dependencies loop.
        """
        profiles, left_out = list(profiles), set(without)
        active = [s for s in self.services.values() if s.active_in(profiles) and s.name not in left_out]
        names = {s.name for s in active}
        pruned = []
        for service in active:
            kept = tuple(d for d in service.dependencies if d.service in names)
            for dep in service.dependencies:
                if dep.service not in names and dep.required:
                    raise ComposeError(f"service {service.name} depends on {dep.service}, which is "
                                       + ("left out" if dep.service in left_out else
                                          f"not in the active profiles {profiles}"))
            pruned.append(service if kept == service.dependencies else
                          replace(service, dependencies=kept, depends_on=tuple(d.service for d in kept)))
        return dependency_order(pruned)  # type: ignore[arg-type]  # duck-typed: name + depends_on

    def all_services_ordered(self) -> list[ComposeService]:
        """Every service, in dependency order (for ``down``, whatever profile started them)."""
        return dependency_order(list(self.services.values()))  # type: ignore[arg-type]


# --- reading the tool's output ---------------------------------------------------------------------------------------
def _check_keys(value: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    unknown = sorted(str(k) for k in value if k not in set(allowed) and not str(k).startswith("x-"))
    if unknown:
        raise ComposeError(f"{where}: keys the Docker runtime cannot map: {', '.join(unknown)} "
                           "(use 'docker compose' or extend services/stack/compose/)")


def _dependencies(value: Any) -> tuple[Dependency, ...]:
    if isinstance(value, list):  # v1 keeps the list form
        return tuple(Dependency(str(v)) for v in value)
    deps = []
    for name, spec in (value or {}).items():
        spec = spec or {}
        condition = str(spec.get("condition", CONDITION_STARTED))
        if condition not in CONDITIONS:
            raise ComposeError(f"depends_on.{name}.condition: {condition!r} is not one of {', '.join(CONDITIONS)}")
        deps.append(Dependency(str(name), condition, bool(spec.get("required", True))))
    return tuple(deps)


def _restart(spec: Mapping[str, Any], where: str) -> RestartPolicy:
    policy = (spec.get("deploy") or {}).get("restart_policy")
    if policy:
        name = {"none": "no", "on-failure": "on-failure", "any": "always"}.get(str(policy.get("condition", "any")))
        if name is None:
            raise ComposeError(f"{where}.deploy.restart_policy.condition: expected none, on-failure or any")
        return RestartPolicy(name, int(policy.get("max_attempts") or 0))
    name, _, retries = scalar_str(spec.get("restart", "no")).partition(":")
    if name not in ("no", "always", "on-failure", "unless-stopped"):
        raise ComposeError(f"{where}.restart: {name!r} is not no, always, on-failure[:N] or unless-stopped")
    return RestartPolicy(name, int(retries or 0))


def _mount(value: Any, where: str) -> Mount:
    if isinstance(value, dict):  # long syntax (v2 always; v1 when the file uses it)
        kind, source, target = str(value.get("type", "volume")), value.get("source"), str(value.get("target"))
        read_only = bool(value.get("read_only", False))
    else:  # v1's short form: SOURCE:TARGET[:MODE], bind sources already absolute
        parts = str(value).split(":")
        if len(parts) < 2:
            raise ComposeError(f"{where}: anonymous volume {value!r} is not supported; declare a named volume")
        source, target = parts[0], parts[1]
        read_only = len(parts) > 2 and "ro" in parts[2].split(",")
        kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
    if kind == "tmpfs":
        return Mount("tmpfs", None, target)
    if kind not in ("bind", "volume") or not source:
        raise ComposeError(f"{where}: {kind} mount {value!r} is not supported (named volumes, binds and tmpfs are)")
    return Mount(kind, str(source), target, read_only)


def _service(name: str, spec: dict[str, Any], directory: Path) -> ComposeService:
    where = f"services.{name}"
    _check_keys(spec, MAPPED_KEYS | FOLDED_KEYS, where)
    deploy = spec.get("deploy") or {}
    for key, allowed in DEPLOY_KEYS.items():
        section = deploy if key == "deploy" else (deploy.get("resources") or {}) if key == "deploy.resources" else \
            ((deploy.get("resources") or {}).get(key.rsplit(".", 1)[1]) or {})
        _check_keys(section, allowed, f"{where}.{key}")
    if deploy.get("mode", "replicated") != "replicated":
        raise ComposeError(f"{where}.deploy.mode: only 'replicated' is supported")
    build = spec.get("build")
    if isinstance(build, str | Path):
        build = {"context": build}
    build_spec = None
    if build is not None:
        args = build.get("args") or {}
        if isinstance(args, list):
            args = dict(str(a).partition("=")[::2] for a in args)
        build_spec = BuildSpec((directory / str(build.get("context", "."))).resolve(),
                               str(build.get("dockerfile", "Dockerfile")),
                               tuple((str(k), scalar_str(v)) for k, v in args.items() if v is not None),
                               build.get("target"))
    if spec.get("image") is None and build_spec is None:
        raise ComposeError(f"{where}: needs an image or a build")
    mounts = [_mount(v, f"{where}.volumes[{i}]") for i, v in enumerate(spec.get("volumes") or [])]
    mounts += [Mount("tmpfs", None, str(t).split(":", 1)[0]) for t in as_list(spec.get("tmpfs"))]
    network_mode = spec.get("network_mode")
    networks = spec.get("networks")
    if isinstance(networks, list):
        networks = dict.fromkeys(networks)
    if network_mode is None and not networks:
        networks = {DEFAULT_NETWORK: None}
    replicas = spec.get("scale", deploy.get("replicas", 1))
    dependencies = _dependencies(spec.get("depends_on"))
    service = ComposeService(
        name=name, spec=spec, profiles=tuple(str(p) for p in spec.get("profiles") or ()),
        image=None if spec.get("image") is None else str(spec["image"]), build=build_spec,
        dependencies=dependencies, depends_on=tuple(d.service for d in dependencies),
        restart=_restart(spec, where), replicas=1 if replicas is None else int(replicas), mounts=tuple(mounts),
        networks={str(k): tuple(str(a) for a in (v or {}).get("aliases") or ()) for k, v in (networks or {}).items()},
        network_mode=network_mode, container_name=spec.get("container_name"), pull_policy=spec.get("pull_policy"),
        platform=spec.get("platform"),
        stop_grace_period_s=None if spec.get("stop_grace_period") is None else
        parse_duration_s(spec["stop_grace_period"], f"{where}.stop_grace_period"),
    )
    if service.container_name and service.replicas != 1:
        raise ComposeError(f"{where}: container_name cannot be used with more than one replica")
    return service


def _resources(kind: str, raw: Mapping[str, Any] | None, project: str) -> dict[str, ResourceDef]:
    out = {}
    for key, spec in (raw or {}).items():
        spec = spec or {}
        where = f"{kind}.{key}"
        _check_keys(spec, {"name", "external", "driver", "driver_opts", "labels", "internal", "attachable", "ipam"},
                    where)
        if (spec.get("ipam") or {}).get("config"):
            raise ComposeError(f"{where}.ipam: custom IPAM is not supported by the Docker runtime")
        external = spec.get("external", False)
        if isinstance(external, dict):  # legacy `external: {name: x}`
            spec = {**spec, "name": external.get("name", spec.get("name"))}
        external = bool(external)
        labels = spec.get("labels") or {}
        if isinstance(labels, list):
            labels = dict(str(item).partition("=")[::2] for item in labels)
        out[str(key)] = ResourceDef(
            str(key), str(spec.get("name") or (key if external else f"{project}_{key}")), external,
            str(spec.get("driver") or ("bridge" if kind == "networks" else "")),
            tuple(sorted((str(k), scalar_str(v)) for k, v in (spec.get("driver_opts") or {}).items())),
            tuple(sorted((str(k), scalar_str(v)) for k, v in labels.items())), bool(spec.get("internal", False)))
    return out


def load_compose(path: Path, project: str, env: Mapping[str, str] | None = None,
                 tool: list[str] | None = None) -> ComposeProject:
    """The project as the installed compose tool reads ``path`` (see ``tool.normalised_config``).

    Args:
        path: ``compose.yaml``.
        project: Project name (prefix of the network, volume and container names).
        env: Interpolation variables (default ``os.environ``); a ``.env`` beside the file fills the gaps.
        tool: The compose command line (default: the one installed).

    Raises:
        ComposeError: no compose tool, the tool rejects the file, or a key the runtime cannot map.
    """
    path = Path(path).resolve()
    raw = normalised_config(path, project, env, tool)
    _check_keys(raw, {"version", "name", "services", "volumes", "networks"}, str(path))
    # The tools print services sorted by name; independent services start in the file's order, as written.
    written = list((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("services") or {})
    by_name = raw.get("services") or {}
    ordered = sorted(by_name, key=lambda n: written.index(n) if n in written else len(written))
    services = {str(n): _service(str(n), dict(by_name[n]), path.parent) for n in ordered}
    volumes = _resources("volumes", raw.get("volumes"), project)
    networks = _resources("networks", raw.get("networks"), project)
    networks.setdefault(DEFAULT_NETWORK, ResourceDef(DEFAULT_NETWORK, f"{project}_{DEFAULT_NETWORK}", driver="bridge"))
    for service in services.values():
        for mount in service.mounts:
            if mount.kind == "volume" and mount.source not in volumes:
                raise ComposeError(f"services.{service.name}.volumes: volume {mount.source!r} is not declared")
        for dep in service.dependencies:
            if dep.service not in services:
                raise ComposeError(f"services.{service.name}.depends_on: unknown service {dep.service!r}")
    compose = ComposeProject(path, None if raw.get("name") is None else str(raw["name"]), services, volumes, networks)
    compose.all_services_ordered()  # raises on a cycle
    return compose
