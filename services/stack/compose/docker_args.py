"""A normalised compose service as ``client.containers.run`` arguments, with the names and labels compose v2 gives.

Pure functions (no engine): the Docker runtime calls them, and tests check their output through the SDK's own
translation into the Engine API body. Sizes (``shm_size``, ``mem_limit``) go to the SDK as the tool prints them: the
SDK parses ``1gb``/``256m`` itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from edgediff.availability import require
from services.stack.compose.project import (
    ComposeError,
    ComposeProject,
    ComposeService,
    as_command,
    as_list,
    parse_duration_s,
    scalar_str,
)

# Labels docker compose v2 puts on what it creates; the same here, so both tools see one project.
LABEL_PROJECT = "com.docker.compose.project"
LABEL_SERVICE = "com.docker.compose.service"
LABEL_NUMBER = "com.docker.compose.container-number"
LABEL_ONEOFF = "com.docker.compose.oneoff"
LABEL_CONFIG_HASH = "com.docker.compose.config-hash"
LABEL_DEPENDS_ON = "com.docker.compose.depends_on"
LABEL_IMAGE = "com.docker.compose.image"
LABEL_WORKING_DIR = "com.docker.compose.project.working_dir"
LABEL_CONFIG_FILES = "com.docker.compose.project.config_files"
LABEL_NETWORK = "com.docker.compose.network"
LABEL_VOLUME = "com.docker.compose.volume"
ENDPOINT_API_VERSION = "1.41"
"""Only gates which endpoint fields the SDK accepts (aliases need 1.22+); the engine's version is not asked."""


def container_name(project: str, service: ComposeService, number: int = 1) -> str:
    """The container's name as compose v2 gives it: ``<project>-<service>-<n>`` (or ``container_name:``)."""
    return service.container_name or f"{project}-{service.name}-{number}"


def image_reference(project: str, service: ComposeService) -> str:
    """The image a service runs: its ``image:``, else compose's ``<project>-<service>`` for a built one."""
    return service.image or f"{project}-{service.name}"


def _mapping(value: Any, sep: str = "=") -> dict[str, str]:
    """A "mapping or list of KEY=VALUE" field as strings (entries without a value are dropped, as compose does)."""
    if isinstance(value, dict):
        return {str(k): scalar_str(v) for k, v in value.items() if v is not None}
    pairs = (str(item).partition(sep) for item in as_list(value))
    return {k.strip(): v for k, found, v in pairs if found}


def _ports(spec: Mapping[str, Any], remap: Mapping[int, int], where: str) -> dict[str, Any]:
    """``ports:`` (v2's long form, or v1's ``[IP:][HOST:]CONTAINER[/PROTO]``) as the SDK's ``ports`` argument."""
    ports: dict[str, Any] = {}
    for entry in as_list(spec.get("ports")):
        if isinstance(entry, dict):
            target, protocol = entry.get("target"), entry.get("protocol") or "tcp"
            published, host_ip = entry.get("published") or None, entry.get("host_ip") or None
        else:
            text, _, protocol = str(entry).partition("/")
            host_ip, host = None, ""
            if text.startswith("["):  # [::1]:8000:8000
                close = text.index("]")
                host_ip, text = text[1:close], text[close + 2:]
            parts = text.rsplit(":", 2) if host_ip is None else text.rsplit(":", 1)
            target = parts[-1]
            if len(parts) >= 2:
                host = parts[-2]
            if len(parts) == 3:
                host_ip = parts[0] or None
            published, protocol = host or None, protocol or "tcp"
        if "-" in str(target) or "-" in str(published or ""):
            raise ComposeError(f"{where}.ports: port ranges ({entry!r}) are not supported by the Docker runtime")
        host_port = None if published is None else int(published)
        if host_port is not None:
            host_port = remap.get(host_port, host_port)
        binding: Any = host_port if host_ip is None else (host_ip, host_port) if host_port else (host_ip,)
        key = f"{int(target)}/{protocol}"
        previous = ports.get(key)
        ports[key] = binding if previous is None else [*as_list(previous), binding]
    return ports


def _device_requests(spec: Mapping[str, Any], docker_types: Any) -> list[Any]:
    reservations = (((spec.get("deploy") or {}).get("resources") or {}).get("reservations") or {})
    requests = list(reservations.get("devices") or [])
    gpus = spec.get("gpus")
    if gpus is not None:
        requests += [{"count": "all"}] if str(gpus).lower() == "all" else list(gpus)
    out = []
    for request in requests:
        count = request.get("count", "all" if not request.get("device_ids") else None)
        out.append(docker_types.DeviceRequest(
            driver=str(request.get("driver") or ""), count=-1 if str(count).lower() == "all" else count,
            device_ids=[str(d) for d in request.get("device_ids") or []] or None,
            capabilities=[[str(c) for c in request.get("capabilities") or ["gpu"]]],
            options={str(k): scalar_str(v) for k, v in (request.get("options") or {}).items()}))
    return out


def _healthcheck(value: Mapping[str, Any], where: str) -> dict[str, Any]:
    if value.get("disable"):
        return {"test": ["NONE"]}
    test = value.get("test")
    out: dict[str, Any] = {"test": ["CMD-SHELL", test] if isinstance(test, str) else [scalar_str(t) for t in
                                                                                      as_list(test)]}
    for key in ("interval", "timeout", "start_period", "start_interval"):
        if value.get(key) is not None and key != "start_interval":  # start_interval: Engine API 1.44+, not sent
            out[key] = round(parse_duration_s(value[key], f"{where}.healthcheck.{key}") * 1e9)
    if value.get("retries") is not None:
        out["retries"] = int(value["retries"])
    return out


def _devices(spec: Mapping[str, Any]) -> list[str]:
    devices = []
    for device in as_list(spec.get("devices")):
        if isinstance(device, dict):
            source = device["source"]
            device = f"{source}:{device.get('target') or source}:{device.get('permissions') or 'rwm'}"
        devices.append(str(device) if str(device).count(":") == 2 else
                       f"{device}:{device}:rwm" if ":" not in str(device) else f"{device}:rwm")
    return devices


def run_arguments(
    compose: ComposeProject,
    service: ComposeService,
    *,
    project: str,
    image: str,
    number: int = 1,
    host_port_remap: Mapping[int, int] | None = None,
) -> dict[str, Any]:
    """Keyword arguments of ``client.containers.run`` for one container of ``service`` (no engine needed).

    Args:
        compose: The project the service belongs to (volume and network names).
        service: The service.
        project: Project name.
        image: Image reference or id.
        number: Replica number (1-based).
        host_port_remap: Published host port -> the host port to use instead (``edgediff up --ports``).

    Raises:
        ComposeError: the service uses something the runtime cannot map (several networks, port ranges).
    """
    docker_types = require("docker.types")
    spec, where = service.spec, f"services.{service.name}"
    kwargs: dict[str, Any] = {"image": image, "command": as_command(spec.get("command")),
                              "name": container_name(project, service, number), "detach": True,
                              "environment": _mapping(spec.get("environment"))}
    entrypoint = as_command(spec.get("entrypoint"))
    if entrypoint is not None:
        kwargs["entrypoint"] = entrypoint
    ports = _ports(spec, dict(host_port_remap or {}), where)
    if ports:
        kwargs["ports"] = ports
    binds, tmpfs = [], {}
    for mount in service.mounts:
        mode = "ro" if mount.read_only else "rw"
        if mount.kind == "volume":
            binds.append(f"{compose.volumes[str(mount.source)].name}:{mount.target}:{mode}")
        elif mount.kind == "bind":
            binds.append(f"{mount.source}:{mount.target}:{mode}")
        else:
            tmpfs[mount.target] = ""
    if binds:
        kwargs["volumes"] = binds
    if tmpfs:
        kwargs["tmpfs"] = tmpfs
    if spec.get("devices"):
        kwargs["devices"] = _devices(spec)
    requests = _device_requests(spec, docker_types)
    if requests:
        kwargs["device_requests"] = requests
    if spec.get("healthcheck") is not None:
        kwargs["healthcheck"] = _healthcheck(spec["healthcheck"], where)
    restart = service.restart.to_sdk()
    if restart is not None:
        kwargs["restart_policy"] = restart
    if service.network_mode is not None:
        mode = service.network_mode
        if mode.startswith("service:"):  # compose names a service; the engine wants its container
            mode = f"container:{project}-{mode.split(':', 1)[1]}-1"
        kwargs["network_mode"] = mode
    else:
        if len(service.networks) != 1:
            raise ComposeError(f"{where}: the Docker runtime joins one network per service, "
                               f"not {len(service.networks)}")
        key, aliases = next(iter(service.networks.items()))
        network = compose.networks[key].name
        kwargs["network"] = network
        kwargs["networking_config"] = {
            network: docker_types.EndpointConfig(ENDPOINT_API_VERSION, aliases=[service.name, *aliases]),
        }
    deploy = spec.get("deploy") or {}
    limits = (deploy.get("resources") or {}).get("limits") or {}
    cpus = spec.get("cpus", limits.get("cpus"))
    logging_spec = spec.get("logging")
    optional = {
        "runtime": spec.get("runtime"), "user": None if spec.get("user") is None else str(spec["user"]),
        "working_dir": spec.get("working_dir"), "hostname": spec.get("hostname"), "shm_size": spec.get("shm_size"),
        "ipc_mode": spec.get("ipc"), "pid_mode": spec.get("pid"), "init": spec.get("init"),
        "stop_signal": spec.get("stop_signal"), "mem_limit": spec.get("mem_limit", limits.get("memory")),
        "nano_cpus": None if cpus is None else int(float(cpus) * 1e9), "pids_limit": limits.get("pids"),
        "platform": service.platform,
        "log_config": None if logging_spec is None else {"type": logging_spec.get("driver", "json-file"),
                                                         "config": logging_spec.get("options") or {}},
    }
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    kwargs.update({k: True for k in ("privileged", "read_only", "tty", "stdin_open") if spec.get(k)})
    kwargs.update({k: [str(v) for v in spec[k]] for k in ("cap_add", "cap_drop", "security_opt", "group_add")
                   if spec.get(k)})
    if spec.get("extra_hosts"):
        hosts = spec["extra_hosts"]
        kwargs["extra_hosts"] = ({str(k): scalar_str(v) for k, v in hosts.items()} if isinstance(hosts, dict) else
                                 dict(_host_entry(str(h)) for h in hosts))
    if spec.get("sysctls"):
        kwargs["sysctls"] = _mapping(spec["sysctls"])
    if spec.get("ulimits"):
        kwargs["ulimits"] = [docker_types.Ulimit(name=str(n), soft=int(v["soft"]), hard=int(v["hard"]))
                             if isinstance(v, dict) else docker_types.Ulimit(name=str(n), soft=int(v), hard=int(v))
                             for n, v in spec["ulimits"].items()]
    kwargs["labels"] = {
        **_mapping(spec.get("labels")),
        LABEL_PROJECT: project,
        LABEL_SERVICE: service.name,
        LABEL_NUMBER: str(number),
        LABEL_ONEOFF: "False",
        LABEL_WORKING_DIR: str(compose.directory),
        LABEL_CONFIG_FILES: str(compose.path),
        LABEL_DEPENDS_ON: ",".join(f"{d.service}:{d.condition}:false" for d in service.dependencies),
    }
    return kwargs


def _host_entry(text: str) -> tuple[str, str]:
    host, _, address = text.partition("=") if "=" in text else text.partition(":")
    return host, address


def config_hash(kwargs: Mapping[str, Any]) -> str:
    """A digest of a container's run arguments: a container whose hash differs is recreated by ``up``."""
    text = json.dumps({k: v for k, v in kwargs.items() if k != "labels"}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()
