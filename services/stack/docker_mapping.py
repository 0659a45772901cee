"""A compose service as ``client.containers.run`` arguments, with the names and labels docker compose v2 gives.

Pure functions (no engine): the Docker runtime calls them, and tests check their output through the SDK's own
translation into the Engine API body.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from edgediff.availability import require
from services.stack.compose_model import ComposeError, ComposeProject, ComposeService

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
        ComposeError: the service uses something the runtime cannot map (several networks).
    """
    docker_types = require("docker.types")
    remap = dict(host_port_remap or {})
    kwargs: dict[str, Any] = {
        "image": image,
        "command": service.command,
        "name": container_name(project, service, number),
        "detach": True,
        "environment": dict(service.environment),
    }
    if service.entrypoint is not None:
        kwargs["entrypoint"] = service.entrypoint
    ports: dict[str, Any] = {}
    for port in service.ports:
        host_port = remap.get(port.host_port, port.host_port) if port.host_port is not None else None
        binding: Any = host_port if port.host_ip is None else (port.host_ip, host_port)
        if port.host_ip is not None and host_port is None:
            binding = (port.host_ip,)
        if port.key in ports:
            previous = ports[port.key]
            ports[port.key] = [*previous, binding] if isinstance(previous, list) else [previous, binding]
        else:
            ports[port.key] = binding
    if ports:
        kwargs["ports"] = ports
    volumes = []
    tmpfs = {}
    for mount in service.mounts:
        mode = "ro" if mount.read_only else "rw"
        if mount.kind == "volume":
            volumes.append(f"{compose.volumes[str(mount.source)].name}:{mount.target}:{mode}")
        elif mount.kind == "bind":
            volumes.append(f"{mount.source}:{mount.target}:{mode}")
        else:
            tmpfs[mount.target] = ""
    if volumes:
        kwargs["volumes"] = volumes
    if tmpfs:
        kwargs["tmpfs"] = tmpfs
    if service.devices:
        kwargs["devices"] = list(service.devices)
    if service.gpus:
        kwargs["device_requests"] = [
            docker_types.DeviceRequest(driver=g.driver, count=g.count, device_ids=list(g.device_ids) or None,
                                       capabilities=[list(g.capabilities)], options=dict(g.options))
            for g in service.gpus
        ]
    if service.runtime:
        kwargs["runtime"] = service.runtime
    if service.healthcheck is not None:
        kwargs["healthcheck"] = service.healthcheck.to_sdk()
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
            raise ComposeError(f"services.{service.name}: the Docker runtime joins one network per service, "
                               f"not {len(service.networks)}")
        key, aliases = next(iter(service.networks.items()))
        network = compose.networks[key].name
        kwargs["network"] = network
        kwargs["networking_config"] = {
            network: docker_types.EndpointConfig(ENDPOINT_API_VERSION, aliases=[service.name, *aliases]),
        }
    optional = {
        "user": service.user, "working_dir": service.working_dir, "hostname": service.hostname,
        "shm_size": service.shm_size, "ipc_mode": service.ipc, "pid_mode": service.pid, "init": service.init,
        "stop_signal": service.stop_signal, "mem_limit": service.mem_limit, "nano_cpus": service.nano_cpus,
        "pids_limit": service.pids_limit, "platform": service.platform, "log_config": service.logging,
    }
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    flags = {"privileged": service.privileged, "read_only": service.read_only, "tty": service.tty,
             "stdin_open": service.stdin_open}
    kwargs.update({k: True for k, v in flags.items() if v})
    lists = {"cap_add": service.cap_add, "cap_drop": service.cap_drop, "security_opt": service.security_opt,
             "group_add": service.group_add}
    kwargs.update({k: list(v) for k, v in lists.items() if v})
    if service.extra_hosts:
        kwargs["extra_hosts"] = dict(service.extra_hosts)
    if service.sysctls:
        kwargs["sysctls"] = dict(service.sysctls)
    if service.ulimits:
        kwargs["ulimits"] = [docker_types.Ulimit(name=n, soft=s, hard=h) for n, (s, h) in service.ulimits.items()]
    kwargs["labels"] = {
        **service.labels,
        LABEL_PROJECT: project,
        LABEL_SERVICE: service.name,
        LABEL_NUMBER: str(number),
        LABEL_ONEOFF: "False",
        LABEL_WORKING_DIR: str(compose.directory),
        LABEL_CONFIG_FILES: str(compose.path),
        LABEL_DEPENDS_ON: ",".join(f"{d.service}:{d.condition}:false" for d in service.dependencies),
    }
    return kwargs


def config_hash(kwargs: Mapping[str, Any]) -> str:
    """A digest of a container's run arguments: a container whose hash differs is recreated by ``up``."""
    text = json.dumps({k: v for k, v in kwargs.items() if k != "labels"}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()
