"""``compose.yaml`` read into a small typed model, with compose's ``${VAR:-default}`` interpolation and profiles.

Only what the Docker runtime maps onto the Engine API is modelled. A key it cannot map is an error that names the
service and the key, never silently dropped: a stack started by ``edgediff up --runtime docker`` must equal what
``docker compose --profile P up`` starts from the same file.

Paths (build contexts, bind mounts, ``env_file``) are resolved against the compose file's folder, as compose does.
Variables come from the given environment, then from a ``.env`` file beside the compose file.

The parsers of single fields live in ``compose_fields``, interpolation in ``compose_interpolation``; this module
assembles services and the project, and re-exports what the runtime and its tests use.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgediff.errors import BackendMissingError
from services.stack.compose_fields import (
    CONDITION_COMPLETED,
    CONDITION_HEALTHY,
    CONDITION_STARTED,
    CONDITIONS,
    BuildSpec,
    ComposeError,
    Dependency,
    GpuRequest,
    HealthSpec,
    Mount,
    PortSpec,
    RestartPolicy,
    as_bool,
    as_int,
    host_path,
    parse_bytes,
    parse_command,
    parse_dependencies,
    parse_device,
    parse_duration_s,
    parse_gpu_request,
    parse_healthcheck,
    parse_mapping,
    parse_mount,
    parse_port,
    parse_restart,
    scalar_str,
    str_list,
)
from services.stack.compose_interpolation import interpolate, interpolate_tree, read_env_file
from services.stack.supervisor import dependency_order

__all__ = [
    "CONDITIONS", "CONDITION_COMPLETED", "CONDITION_HEALTHY", "CONDITION_STARTED", "DEFAULT_NETWORK", "BuildSpec",
    "ComposeError", "ComposeProject", "ComposeService", "Dependency", "GpuRequest", "HealthSpec", "Mount",
    "NetworkDef", "PortSpec", "RestartPolicy", "VolumeDef", "interpolate", "load_compose", "parse_bytes",
    "parse_duration_s", "parse_mount", "parse_port",
]

DEFAULT_NETWORK = "default"


@dataclass(frozen=True)
class VolumeDef:
    """A top-level ``volumes:`` entry.

    Attributes:
        key: Its key in the file.
        name: The engine's volume name (``<project>_<key>`` unless ``name:`` or ``external``).
        external: True when the volume must exist already (never created, never removed).
        driver: Volume driver ("" = local).
        driver_opts: Driver options.
        labels: Extra labels.
    """

    key: str
    name: str
    external: bool = False
    driver: str = ""
    driver_opts: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class NetworkDef:
    """A top-level ``networks:`` entry (``default`` always exists).

    Attributes:
        key: Its key in the file.
        name: The engine's network name (``<project>_<key>`` unless ``name:`` or ``external``).
        external: True when the network must exist already.
        driver: Network driver (``bridge`` unless given).
        driver_opts: Driver options.
        labels: Extra labels.
        internal: No outside access.
    """

    key: str
    name: str
    external: bool = False
    driver: str = "bridge"
    driver_opts: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    internal: bool = False


@dataclass
class ComposeService:
    """One service of ``compose.yaml`` with every value interpolated and normalised.

    ``depends_on`` holds the names (so ``supervisor.dependency_order`` sorts services directly); ``dependencies``
    holds the same entries with their conditions.
    """

    name: str
    profiles: tuple[str, ...] = ()
    image: str | None = None
    build: BuildSpec | None = None
    container_name: str | None = None
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    environment: dict[str, str] = field(default_factory=dict)
    ports: list[PortSpec] = field(default_factory=list)
    expose: list[str] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    gpus: list[GpuRequest] = field(default_factory=list)
    runtime: str | None = None
    depends_on: tuple[str, ...] = ()
    dependencies: tuple[Dependency, ...] = ()
    healthcheck: HealthSpec | None = None
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    user: str | None = None
    working_dir: str | None = None
    privileged: bool = False
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    security_opt: list[str] = field(default_factory=list)
    network_mode: str | None = None
    networks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    hostname: str | None = None
    extra_hosts: dict[str, str] = field(default_factory=dict)
    shm_size: int | None = None
    ipc: str | None = None
    pid: str | None = None
    init: bool | None = None
    tty: bool = False
    stdin_open: bool = False
    read_only: bool = False
    stop_signal: str | None = None
    stop_grace_period_s: float | None = None
    labels: dict[str, str] = field(default_factory=dict)
    ulimits: dict[str, tuple[int, int]] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)
    group_add: list[str] = field(default_factory=list)
    mem_limit: int | None = None
    nano_cpus: int | None = None
    pids_limit: int | None = None
    platform: str | None = None
    pull_policy: str | None = None
    logging: dict[str, Any] | None = None
    replicas: int = 1

    def active_in(self, profiles: Iterable[str]) -> bool:
        """True when the service runs with these profiles (services without ``profiles:`` always run)."""
        return not self.profiles or bool(set(self.profiles) & set(profiles))


@dataclass
class ComposeProject:
    """The whole file.

    Attributes:
        path: The compose file (absolute).
        name: Top-level ``name:``, if any.
        services: Services in file order.
        volumes: Top-level volumes by key.
        networks: Top-level networks by key (``default`` included).
    """

    path: Path
    name: str | None
    services: dict[str, ComposeService]
    volumes: dict[str, VolumeDef]
    networks: dict[str, NetworkDef]

    @property
    def directory(self) -> Path:
        """The project folder (where the compose file lives)."""
        return self.path.parent

    @property
    def profiles(self) -> list[str]:
        """Every profile some service declares, sorted."""
        return sorted({p for s in self.services.values() for p in s.profiles})

    def active_services(self, profiles: Iterable[str]) -> list[ComposeService]:
        """The services that ``docker compose --profile P ... up`` starts, in dependency order.

        Raises:
            ComposeError: an active service requires a service that is not active, or the dependencies loop.
        """
        profiles = list(profiles)
        active = [s for s in self.services.values() if s.active_in(profiles)]
        names = {s.name for s in active}
        pruned = []
        for service in active:
            kept = []
            for dep in service.dependencies:
                if dep.service in names:
                    kept.append(dep)
                elif dep.required:
                    raise ComposeError(f"service {service.name} depends on {dep.service}, which is not in the "
                                       f"active profiles {profiles}")
            pruned.append(_with_dependencies(service, tuple(kept)))
        return dependency_order(pruned)  # type: ignore[arg-type]  # duck-typed: name + depends_on

    def all_services_ordered(self) -> list[ComposeService]:
        """Every service, in dependency order (for ``down``, whatever profile started them)."""
        return dependency_order(list(self.services.values()))  # type: ignore[arg-type]


def _with_dependencies(service: ComposeService, deps: tuple[Dependency, ...]) -> ComposeService:
    if deps == service.dependencies:
        return service
    return replace(service, dependencies=deps, depends_on=tuple(d.service for d in deps))


# --- services ------------------------------------------------------------------------------------------------------
_IGNORED_KEYS = frozenset({"expose"})
"""Keys that change nothing on a user-defined network (kept in the model, not sent to the engine)."""


def _extra_hosts(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): scalar_str(v) for k, v in value.items()}
    if not isinstance(value, list):
        raise ComposeError(f"{where}: expected a mapping or a list of HOST:IP")
    hosts = {}
    for item in value:
        text = str(item)
        host, sep, address = text.partition("=") if "=" in text else text.partition(":")
        if not sep or not address:
            raise ComposeError(f"{where}: {text!r} is not HOST:IP or HOST=IP")
        hosts[host] = address
    return hosts


def _build(value: Any, directory: Path, env: Mapping[str, str], where: str) -> BuildSpec:
    if isinstance(value, str):
        return BuildSpec(Path(host_path(value, directory)))
    if not isinstance(value, dict):
        raise ComposeError(f"{where}: expected a path or a mapping")
    unknown = set(value) - {"context", "dockerfile", "args", "target", "labels", "network", "shm_size",
                            "cache_from", "extra_hosts", "platforms", "pull"}
    if unknown:
        raise ComposeError(f"{where}: unsupported build keys {sorted(unknown)}")
    context = Path(host_path(str(value.get("context", ".")), directory))
    args = parse_mapping(value.get("args"), f"{where}.args", env=env)
    return BuildSpec(context, str(value.get("dockerfile", "Dockerfile")),
                     tuple((k, v) for k, v in args.items() if v is not None),
                     None if value.get("target") is None else str(value["target"]))


def _deploy(service: ComposeService, value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise ComposeError(f"{where}: expected a mapping")
    unknown = set(value) - {"resources", "replicas", "restart_policy", "mode"}
    if unknown:
        raise ComposeError(f"{where}: unsupported deploy keys {sorted(unknown)}")
    if value.get("mode", "replicated") != "replicated":
        raise ComposeError(f"{where}.mode: only 'replicated' is supported")
    if value.get("replicas") is not None:
        service.replicas = as_int(value["replicas"], f"{where}.replicas")
    policy = value.get("restart_policy")
    if policy:
        condition = {"none": "no", "on-failure": "on-failure", "any": "always"}.get(str(policy.get("condition")))
        if condition is None:
            raise ComposeError(f"{where}.restart_policy.condition: expected none, on-failure or any")
        retries = policy.get("max_attempts")
        service.restart = RestartPolicy(condition, as_int(retries, where) if retries is not None else 0)
    resources = value.get("resources") or {}
    unknown = set(resources) - {"reservations", "limits"}
    if unknown:
        raise ComposeError(f"{where}.resources: unsupported keys {sorted(unknown)}")
    limits = resources.get("limits") or {}
    unknown = set(limits) - {"memory", "cpus", "pids"}
    if unknown:
        raise ComposeError(f"{where}.resources.limits: unsupported keys {sorted(unknown)}")
    if limits.get("memory") is not None:
        service.mem_limit = parse_bytes(limits["memory"], f"{where}.resources.limits.memory")
    if limits.get("cpus") is not None:
        service.nano_cpus = int(float(limits["cpus"]) * 1e9)
    if limits.get("pids") is not None:
        service.pids_limit = as_int(limits["pids"], f"{where}.resources.limits.pids")
    reservations = resources.get("reservations") or {}
    unknown = set(reservations) - {"devices", "memory", "cpus"}  # memory/cpus reservations: scheduling hints only
    if unknown:
        raise ComposeError(f"{where}.resources.reservations: unsupported keys {sorted(unknown)}")
    for i, device in enumerate(reservations.get("devices") or []):
        service.gpus.append(parse_gpu_request(device, f"{where}.resources.reservations.devices[{i}]"))


def _service(name: str, raw: Any, directory: Path, env: Mapping[str, str]) -> ComposeService:
    where = f"services.{name}"
    if not isinstance(raw, dict):
        raise ComposeError(f"{where}: expected a mapping")
    service = ComposeService(name=name)
    handled: set[str] = set()

    def take(key: str) -> Any:
        handled.add(key)
        return raw.get(key)

    service.profiles = tuple(str_list(take("profiles"), f"{where}.profiles"))
    service.image = None if take("image") is None else str(raw["image"])
    if take("build") is not None:
        service.build = _build(raw["build"], directory, env, f"{where}.build")
    if service.image is None and service.build is None:
        raise ComposeError(f"{where}: needs an image or a build")
    service.container_name = take("container_name")
    service.command = parse_command(take("command"), f"{where}.command")
    service.entrypoint = parse_command(take("entrypoint"), f"{where}.entrypoint")
    for env_file in str_list(take("env_file"), f"{where}.env_file"):
        path = Path(host_path(env_file, directory))
        try:
            service.environment.update(read_env_file(path))
        except OSError as exc:
            raise ComposeError(f"{where}.env_file: cannot read {path}: {exc.strerror}") from None
    for key, val in parse_mapping(take("environment"), f"{where}.environment", env=env).items():
        if val is not None:
            service.environment[key] = val
        elif key in env:
            service.environment[key] = env[key]
    for i, port in enumerate(take("ports") or []):
        service.ports.extend(parse_port(port, f"{where}.ports[{i}]"))
    service.expose = str_list(take("expose"), f"{where}.expose")
    for i, volume in enumerate(take("volumes") or []):
        service.mounts.append(parse_mount(volume, directory, f"{where}.volumes[{i}]"))
    for tmpfs in str_list(take("tmpfs"), f"{where}.tmpfs"):
        service.mounts.append(Mount("tmpfs", None, tmpfs.split(":", 1)[0]))
    service.devices = [parse_device(d, f"{where}.devices") for d in take("devices") or []]
    gpus = take("gpus")
    if gpus is not None:
        if str(gpus).lower() == "all":
            service.gpus.append(GpuRequest())
        elif isinstance(gpus, list):
            service.gpus.extend(parse_gpu_request(g, f"{where}.gpus") for g in gpus)
        else:
            raise ComposeError(f"{where}.gpus: expected 'all' or a list of device requests")
    service.runtime = take("runtime")
    service.dependencies = parse_dependencies(take("depends_on"), f"{where}.depends_on")
    service.depends_on = tuple(d.service for d in service.dependencies)
    if take("healthcheck") is not None:
        service.healthcheck = parse_healthcheck(raw["healthcheck"], f"{where}.healthcheck")
    if take("restart") is not None:
        service.restart = parse_restart(raw["restart"], f"{where}.restart")
    if take("deploy") is not None:
        _deploy(service, raw["deploy"], f"{where}.deploy")
    if take("scale") is not None:
        service.replicas = as_int(raw["scale"], f"{where}.scale")
    service.user = None if take("user") is None else str(raw["user"])
    service.working_dir = take("working_dir")
    service.privileged = as_bool(take("privileged") or False, f"{where}.privileged")
    service.cap_add = str_list(take("cap_add"), f"{where}.cap_add")
    service.cap_drop = str_list(take("cap_drop"), f"{where}.cap_drop")
    service.security_opt = str_list(take("security_opt"), f"{where}.security_opt")
    service.network_mode = take("network_mode")
    networks = take("networks")
    if networks is not None:
        if service.network_mode is not None:
            raise ComposeError(f"{where}: network_mode and networks cannot be used together")
        if isinstance(networks, list):
            service.networks = {str(n): () for n in networks}
        elif isinstance(networks, dict):
            for net, spec in networks.items():
                spec = spec or {}
                unknown = set(spec) - {"aliases"}
                if unknown:
                    raise ComposeError(f"{where}.networks.{net}: unsupported keys {sorted(unknown)}")
                service.networks[str(net)] = tuple(str(a) for a in spec.get("aliases") or ())
        else:
            raise ComposeError(f"{where}.networks: expected a list or a mapping")
    elif service.network_mode is None:
        service.networks = {DEFAULT_NETWORK: ()}
    service.hostname = take("hostname")
    service.extra_hosts = _extra_hosts(take("extra_hosts"), f"{where}.extra_hosts")
    if take("shm_size") is not None:
        service.shm_size = parse_bytes(raw["shm_size"], f"{where}.shm_size")
    service.ipc = take("ipc")
    service.pid = take("pid")
    if take("init") is not None:
        service.init = as_bool(raw["init"], f"{where}.init")
    service.tty = as_bool(take("tty") or False, f"{where}.tty")
    service.stdin_open = as_bool(take("stdin_open") or False, f"{where}.stdin_open")
    service.read_only = as_bool(take("read_only") or False, f"{where}.read_only")
    service.stop_signal = take("stop_signal")
    if take("stop_grace_period") is not None:
        service.stop_grace_period_s = parse_duration_s(raw["stop_grace_period"], f"{where}.stop_grace_period")
    service.labels = {k: v or "" for k, v in parse_mapping(take("labels"), f"{where}.labels").items()}
    for key, limit in (take("ulimits") or {}).items():
        if isinstance(limit, dict):
            service.ulimits[str(key)] = (as_int(limit.get("soft"), where), as_int(limit.get("hard"), where))
        else:
            service.ulimits[str(key)] = (as_int(limit, where), as_int(limit, where))
    service.sysctls = {k: v or "" for k, v in parse_mapping(take("sysctls"), f"{where}.sysctls").items()}
    service.group_add = str_list(take("group_add"), f"{where}.group_add")
    if take("mem_limit") is not None:
        service.mem_limit = parse_bytes(raw["mem_limit"], f"{where}.mem_limit")
    if take("cpus") is not None:
        service.nano_cpus = int(float(raw["cpus"]) * 1e9)
    service.platform = take("platform")
    service.pull_policy = take("pull_policy")
    if service.pull_policy not in (None, "always", "never", "missing", "if_not_present", "build"):
        raise ComposeError(f"{where}.pull_policy: {service.pull_policy!r} is not always, never, missing or build")
    logging_spec = take("logging")
    if logging_spec is not None:
        if not isinstance(logging_spec, dict):
            raise ComposeError(f"{where}.logging: expected a mapping")
        service.logging = {"type": logging_spec.get("driver", "json-file"), "config": logging_spec.get("options") or {}}
    unknown = {k for k in raw if k not in handled and not str(k).startswith("x-")} - _IGNORED_KEYS
    if unknown:
        raise ComposeError(f"{where}: keys the Docker runtime cannot map: {', '.join(sorted(unknown))} "
                           "(use 'docker compose' or extend services/stack/compose_model.py)")
    if service.container_name and service.replicas != 1:
        raise ComposeError(f"{where}: container_name cannot be used with more than one replica")
    return service


def _top_level(kind: str, raw: Any, project: str, cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, spec in (raw or {}).items():
        spec = spec or {}
        where = f"{kind}.{key}"
        allowed = {"name", "external", "driver", "driver_opts", "labels"} | ({"internal", "attachable", "ipam"}
                                                                             if kind == "networks" else set())
        unknown = {k for k in spec if not str(k).startswith("x-")} - allowed
        if unknown:
            raise ComposeError(f"{where}: unsupported keys {sorted(unknown)}")
        if spec.get("ipam"):
            raise ComposeError(f"{where}.ipam: custom IPAM is not supported by the Docker runtime")
        external = spec.get("external", False)
        if isinstance(external, dict):  # legacy `external: {name: x}`
            spec = {**spec, "name": external.get("name", spec.get("name"))}
            external = True
        external = as_bool(external, f"{where}.external")
        name = str(spec.get("name") or (key if external else f"{project}_{key}"))
        fields: dict[str, Any] = {
            "key": str(key), "name": name, "external": external,
            "driver_opts": tuple(sorted((str(k), scalar_str(v)) for k, v in (spec.get("driver_opts") or {}).items())),
            "labels": tuple(sorted((k, v or "")
                                   for k, v in parse_mapping(spec.get("labels"), f"{where}.labels").items())),
        }
        if spec.get("driver"):
            fields["driver"] = str(spec["driver"])
        if kind == "networks":
            fields["internal"] = as_bool(spec.get("internal", False), f"{where}.internal")
        out[str(key)] = cls(**fields)
    return out


def load_compose(path: Path, project: str, env: Mapping[str, str] | None = None) -> ComposeProject:
    """Read, interpolate and check a compose file.

    Args:
        path: ``compose.yaml``.
        project: Project name (prefix of the network, volume and container names).
        env: Variables for interpolation (default ``os.environ``); a ``.env`` beside the file fills the gaps.

    Raises:
        ComposeError: unreadable or malformed file, an unmappable key, an undeclared volume or network.
        BackendMissingError: PyYAML is not installed.
    """
    try:
        import yaml
    except ImportError as exc:
        raise BackendMissingError(f"PyYAML is not installed ({exc}); install it with: pip install pyyaml") from exc

    path = Path(path).resolve()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ComposeError(f"cannot read compose file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ComposeError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("services"), dict):
        raise ComposeError(f"{path}: no 'services:' mapping")
    variables: dict[str, str] = {}
    dotenv = path.parent / ".env"
    if dotenv.is_file():
        variables.update(read_env_file(dotenv))
    variables.update(os.environ if env is None else env)
    unknown = {k for k in raw if not str(k).startswith("x-")} - {"version", "name", "services", "volumes", "networks"}
    if unknown:
        raise ComposeError(f"{path}: top-level keys the Docker runtime cannot map: {', '.join(sorted(unknown))}")
    tree = {k: interpolate_tree(v, variables, str(k)) for k, v in raw.items() if not str(k).startswith("x-")}
    services = {str(name): _service(str(name), spec, path.parent, variables)
                for name, spec in tree["services"].items()}
    volumes = _top_level("volumes", tree.get("volumes"), project, VolumeDef)
    networks = _top_level("networks", tree.get("networks"), project, NetworkDef)
    networks.setdefault(DEFAULT_NETWORK, NetworkDef(DEFAULT_NETWORK, f"{project}_{DEFAULT_NETWORK}"))
    for service in services.values():
        for mount in service.mounts:
            if mount.kind == "volume" and mount.source not in volumes:
                raise ComposeError(f"services.{service.name}.volumes: volume {mount.source!r} is not declared "
                                   "in the top-level volumes")
        for net in service.networks:
            if net not in networks:
                raise ComposeError(f"services.{service.name}.networks: network {net!r} is not declared")
        for dep in service.dependencies:
            if dep.service not in services:
                raise ComposeError(f"services.{service.name}.depends_on: unknown service {dep.service!r}")
    project_model = ComposeProject(path, None if tree.get("name") is None else str(tree["name"]), services,
                                   volumes, networks)
    project_model.all_services_ordered()  # raises on a cycle
    return project_model
