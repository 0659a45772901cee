"""Compose service fields: their value types and parsers, and compose's scalar syntaxes (durations, sizes, lists)."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.stack.supervisor import StackError

CONDITION_STARTED = "service_started"
CONDITION_HEALTHY = "service_healthy"
CONDITION_COMPLETED = "service_completed_successfully"
CONDITIONS = (CONDITION_STARTED, CONDITION_HEALTHY, CONDITION_COMPLETED)


class ComposeError(StackError):
    """The compose file is missing, malformed, or uses a key the Docker runtime cannot map."""


# --- small value types -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildSpec:
    """``build:`` of a service.

    Attributes:
        context: Build context folder (absolute).
        dockerfile: Dockerfile path relative to the context (compose's default ``Dockerfile``).
        args: Build arguments.
        target: Multi-stage target, if any.
    """

    context: Path
    dockerfile: str = "Dockerfile"
    args: tuple[tuple[str, str], ...] = ()
    target: str | None = None


@dataclass(frozen=True)
class PortSpec:
    """One published (or only exposed) container port.

    Attributes:
        container_port: The port inside the container.
        protocol: ``tcp`` or ``udp``.
        host_port: The host port; None lets the engine choose one.
        host_ip: Host address to bind; None binds every address.
    """

    container_port: int
    protocol: str = "tcp"
    host_port: int | None = None
    host_ip: str | None = None

    @property
    def key(self) -> str:
        """The Engine API's port key, e.g. ``"8000/tcp"``."""
        return f"{self.container_port}/{self.protocol}"


@dataclass(frozen=True)
class Mount:
    """One ``volumes:`` entry of a service.

    Attributes:
        kind: ``volume`` (named, declared at the top level), ``bind`` (a host path) or ``tmpfs``.
        source: The top-level volume key (``volume``), the absolute host path (``bind``), None (``tmpfs``).
        target: The path inside the container.
        read_only: Mounted read-only.
    """

    kind: str
    source: str | None
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class GpuRequest:
    """``deploy.resources.reservations.devices`` entry (or ``gpus:``): the Engine API's ``DeviceRequest``.

    Attributes:
        driver: Device driver (``nvidia``), "" for the engine's default.
        count: Number of devices, -1 for all.
        device_ids: Explicit device ids (instead of ``count``).
        capabilities: Capabilities that must all be present, e.g. ``("gpu",)``.
        options: Driver options.
    """

    driver: str = ""
    count: int | None = -1
    device_ids: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ("gpu",)
    options: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class HealthSpec:
    """``healthcheck:`` of a service, durations in seconds (None: the engine's default).

    Attributes:
        test: ``["CMD", ...]``, ``["CMD-SHELL", "..."]`` or ``["NONE"]`` (disabled); empty inherits the image's.
        interval_s: Time between checks.
        timeout_s: Time before a check counts as failed.
        retries: Consecutive failures before ``unhealthy``.
        start_period_s: Grace period after the start.
        start_interval_s: Time between checks during the start period (Engine API 1.44+).
    """

    test: tuple[str, ...] = ()
    interval_s: float | None = None
    timeout_s: float | None = None
    retries: int | None = None
    start_period_s: float | None = None
    start_interval_s: float | None = None

    @property
    def disabled(self) -> bool:
        """True for ``disable: true`` / ``test: ["NONE"]``."""
        return self.test[:1] == ("NONE",)

    def to_sdk(self) -> dict[str, Any]:
        """The ``healthcheck`` argument of ``containers.run``: test plus durations in nanoseconds."""
        out: dict[str, Any] = {"test": list(self.test)}
        for key, value in (("interval", self.interval_s), ("timeout", self.timeout_s),
                           ("start_period", self.start_period_s)):
            if value is not None:
                out[key] = round(value * 1e9)
        if self.retries is not None:
            out["retries"] = self.retries
        return out


@dataclass(frozen=True)
class Dependency:
    """One ``depends_on`` entry.

    Attributes:
        service: The service depended on.
        condition: ``service_started``, ``service_healthy`` or ``service_completed_successfully``.
        required: False lets the stack start when that service is not in the active profiles.
    """

    service: str
    condition: str = CONDITION_STARTED
    required: bool = True


@dataclass(frozen=True)
class RestartPolicy:
    """``restart:`` as the Engine API's restart policy.

    Attributes:
        name: ``no``, ``always``, ``on-failure`` or ``unless-stopped``.
        max_retries: For ``on-failure``: how many restarts (0 = unlimited).
    """

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


# --- scalar parsers -------------------------------------------------------------------------------------------------
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_BYTES = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)", re.IGNORECASE)
_BYTES_UNIT = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_duration_s(value: Any, where: str) -> float:
    """A compose duration (``10s``, ``1m30s``, ``500ms``, or a bare number of seconds) in seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_S[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ComposeError(f"{where}: {value!r} is not a duration (e.g. 10s, 1m30s, 500ms)")
    return total


def parse_bytes(value: Any, where: str) -> int:
    """A compose byte size (``512m``, ``1gb``, ``2GiB``, or a number of bytes) in bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _BYTES.fullmatch(str(value).strip())
    if match is None:
        raise ComposeError(f"{where}: {value!r} is not a size (e.g. 512m, 1g)")
    return int(float(match.group(1)) * _BYTES_UNIT[match.group(2).lower()])


def as_int(value: Any, where: str) -> int:
    """An integer field (compose values may be interpolated strings)."""
    try:
        if isinstance(value, bool):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise ComposeError(f"{where}: {value!r} is not an integer") from None


def as_bool(value: Any, where: str) -> bool:
    """A boolean field: YAML booleans or true/false/yes/no/on/off/1/0 strings."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "y", "on", "1"):
        return True
    if text in ("false", "no", "n", "off", "0", ""):
        return False
    raise ComposeError(f"{where}: {value!r} is not a boolean")


def scalar_str(value: Any) -> str:
    """A scalar as compose writes it into a string (booleans as ``true``/``false``, None as "")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def str_list(value: Any, where: str) -> list[str]:
    """A "string or list of strings" field."""
    if value is None:
        return []
    if isinstance(value, str | int | float):
        return [str(value)]
    if isinstance(value, list):
        return [scalar_str(v) for v in value]
    raise ComposeError(f"{where}: expected a string or a list, got {type(value).__name__}")


def parse_command(value: Any, where: str) -> list[str] | None:
    """``command``/``entrypoint``: a list as is, a string split like a shell does."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ComposeError(f"{where}: {exc}") from None
    if isinstance(value, list):
        return [scalar_str(v) for v in value]
    raise ComposeError(f"{where}: expected a string or a list")


def parse_mapping(value: Any, where: str, sep: str = "=",
                  env: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """A compose "dict or list of KEY=VALUE" field; a bare KEY takes its value from ``env`` (None if unset there)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): (None if v is None else scalar_str(v)) for k, v in value.items()}
    if isinstance(value, list):
        out: dict[str, str | None] = {}
        for item in value:
            key, found, val = str(item).partition(sep)
            out[key.strip()] = val if found else (env.get(key.strip()) if env is not None else None)
        return out
    raise ComposeError(f"{where}: expected a mapping or a list of KEY{sep}VALUE")


# --- ports, volumes, devices ----------------------------------------------------------------------------------------
def _port_range(text: str, where: str) -> list[int]:
    first, _, last = text.partition("-")
    start = as_int(first, where)
    end = as_int(last, where) if last else start
    if not 0 < start <= end <= 65535:
        raise ComposeError(f"{where}: invalid port range {text!r}")
    return list(range(start, end + 1))


def parse_port(value: Any, where: str) -> list[PortSpec]:
    """One ``ports:`` entry (short ``[IP:][HOST:]CONTAINER[/proto]`` with ranges, or the long mapping syntax)."""
    if isinstance(value, dict):
        unknown = set(value) - {"target", "published", "host_ip", "protocol", "mode", "name", "app_protocol"}
        if unknown:
            raise ComposeError(f"{where}: unsupported port keys {sorted(unknown)}")
        target = as_int(value.get("target"), f"{where}.target")
        protocol = str(value.get("protocol", "tcp"))
        published = value.get("published")
        host_ip = value.get("host_ip")
        if published in (None, ""):
            return [PortSpec(target, protocol, None, host_ip)]
        hosts = _port_range(str(published), f"{where}.published")
        if len(hosts) != 1:
            raise ComposeError(f"{where}: a published range needs a target range (use the short syntax)")
        return [PortSpec(target, protocol, hosts[0], host_ip)]
    text = str(value).strip()
    text, _, protocol = text.partition("/")
    protocol = protocol or "tcp"
    host_ip: str | None = None
    if text.startswith("["):  # [::1]:8000:8000
        close = text.index("]")
        host_ip, text = text[1:close], text[close + 2:]
    parts = text.split(":")
    if len(parts) == 3:
        host_ip, host, container = parts[0] or None, parts[1], parts[2]
    elif len(parts) == 2:
        host, container = parts
    elif len(parts) == 1:
        host, container = "", parts[0]
    else:
        raise ComposeError(f"{where}: invalid port {value!r}")
    containers = _port_range(container, where)
    if not host:
        return [PortSpec(c, protocol, None, host_ip) for c in containers]
    hosts = _port_range(host, where)
    if len(hosts) != len(containers):
        raise ComposeError(f"{where}: host and container port ranges differ in length in {value!r}")
    return [PortSpec(c, protocol, h, host_ip) for c, h in zip(containers, hosts, strict=True)]


def _is_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source == "."


def host_path(source: str, directory: Path) -> str:
    """A host path of the compose file (``~`` expanded, relative to ``directory``), absolute."""
    path = Path(os.path.expanduser(source))
    return str(path if path.is_absolute() else (directory / path).resolve())


def parse_mount(value: Any, directory: Path, where: str) -> Mount:
    """One service ``volumes:`` entry (short ``SRC:DST[:MODE]`` or the long mapping syntax)."""
    if isinstance(value, dict):
        unknown = set(value) - {"type", "source", "target", "read_only", "bind", "volume", "tmpfs", "consistency"}
        if unknown:
            raise ComposeError(f"{where}: unsupported volume keys {sorted(unknown)}")
        kind = str(value.get("type", "volume"))
        target = value.get("target")
        if not target:
            raise ComposeError(f"{where}: a volume needs a target")
        read_only = as_bool(value.get("read_only", False), f"{where}.read_only")
        source = value.get("source")
        if kind == "bind":
            if not source:
                raise ComposeError(f"{where}: a bind mount needs a source")
            return Mount("bind", host_path(str(source), directory), str(target), read_only)
        if kind == "volume":
            if not source:
                raise ComposeError(f"{where}: anonymous volumes are not supported; declare a named volume")
            return Mount("volume", str(source), str(target), read_only)
        if kind == "tmpfs":
            return Mount("tmpfs", None, str(target), False)
        raise ComposeError(f"{where}: unsupported volume type {kind!r}")
    parts = str(value).split(":")
    if len(parts) == 1:
        raise ComposeError(f"{where}: anonymous volume {value!r} is not supported; declare a named volume")
    if len(parts) > 3:
        raise ComposeError(f"{where}: invalid volume {value!r}")
    source, target = parts[0], parts[1]
    modes = set(parts[2].split(",")) if len(parts) == 3 else set()
    unknown_modes = modes - {"ro", "rw", "z", "Z", "cached", "delegated", "consistent", "nocopy"}
    if unknown_modes:
        raise ComposeError(f"{where}: unsupported volume mode(s) {sorted(unknown_modes)} in {value!r}")
    read_only = "ro" in modes
    if _is_path(source):
        return Mount("bind", host_path(source, directory), target, read_only)
    return Mount("volume", source, target, read_only)


def parse_device(value: Any, where: str) -> str:
    """One ``devices:`` entry as the Engine API's ``HOST:CONTAINER:PERMISSIONS``."""
    if isinstance(value, dict):
        source, target = value.get("source"), value.get("target", value.get("source"))
        perms = value.get("permissions", "rwm")
    else:
        parts = str(value).split(":")
        if len(parts) > 3 or not parts[0]:
            raise ComposeError(f"{where}: invalid device {value!r}")
        source = parts[0]
        target = parts[1] if len(parts) > 1 and parts[1] else source
        perms = parts[2] if len(parts) > 2 else "rwm"
    return f"{source}:{target}:{perms}"


def parse_gpu_request(value: Any, where: str) -> GpuRequest:
    """One ``deploy.resources.reservations.devices`` entry."""
    if not isinstance(value, dict):
        raise ComposeError(f"{where}: expected a mapping")
    unknown = set(value) - {"driver", "count", "device_ids", "capabilities", "options"}
    if unknown:
        raise ComposeError(f"{where}: unsupported device keys {sorted(unknown)}")
    device_ids = tuple(str(d) for d in value.get("device_ids") or ())
    raw_count = value.get("count")
    if device_ids:
        count: int | None = None
    elif raw_count is None or str(raw_count).lower() == "all":
        count = -1
    else:
        count = as_int(raw_count, f"{where}.count")
    capabilities = tuple(str(c) for c in value.get("capabilities") or ())
    if not capabilities:
        raise ComposeError(f"{where}: device reservations need capabilities (e.g. [gpu])")
    options = tuple(sorted((str(k), scalar_str(v)) for k, v in (value.get("options") or {}).items()))
    return GpuRequest(str(value.get("driver") or ""), count, device_ids, capabilities, options)


def parse_healthcheck(value: Any, where: str) -> HealthSpec:
    """``healthcheck:`` (``disable: true`` gives ``test: ["NONE"]``)."""
    if not isinstance(value, dict):
        raise ComposeError(f"{where}: expected a mapping")
    unknown = set(value) - {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
    if unknown:
        raise ComposeError(f"{where}: unsupported healthcheck keys {sorted(unknown)}")
    if as_bool(value.get("disable", False), f"{where}.disable"):
        return HealthSpec(test=("NONE",))
    test = value.get("test")
    if isinstance(test, str):
        test_tuple: tuple[str, ...] = ("CMD-SHELL", test)
    elif isinstance(test, list):
        test_tuple = tuple(scalar_str(t) for t in test)
        if test_tuple and test_tuple[0] not in ("CMD", "CMD-SHELL", "NONE"):
            raise ComposeError(f"{where}.test: a list must start with CMD, CMD-SHELL or NONE")
    elif test is None:
        test_tuple = ()
    else:
        raise ComposeError(f"{where}.test: expected a string or a list")

    def duration(key: str) -> float | None:
        return None if value.get(key) is None else parse_duration_s(value[key], f"{where}.{key}")

    retries = value.get("retries")
    return HealthSpec(test_tuple, duration("interval"), duration("timeout"),
                      None if retries is None else as_int(retries, f"{where}.retries"),
                      duration("start_period"), duration("start_interval"))


def parse_restart(value: Any, where: str) -> RestartPolicy:
    """``restart:``: ``no``, ``always``, ``on-failure[:N]`` or ``unless-stopped``."""
    text = scalar_str(value).strip() or "no"
    name, _, retries = text.partition(":")
    if name not in ("no", "always", "on-failure", "unless-stopped"):
        raise ComposeError(f"{where}: {value!r} is not no, always, on-failure[:N] or unless-stopped")
    if retries and name != "on-failure":
        raise ComposeError(f"{where}: only on-failure takes a retry count")
    return RestartPolicy(name, as_int(retries, where) if retries else 0)


def parse_dependencies(value: Any, where: str) -> tuple[Dependency, ...]:
    """``depends_on:`` as a list (``service_started``) or a mapping with conditions."""
    if value is None:
        return ()
    if isinstance(value, list):
        return tuple(Dependency(str(v)) for v in value)
    if isinstance(value, dict):
        deps = []
        for name, spec in value.items():
            spec = spec or {}
            unknown = set(spec) - {"condition", "required", "restart"}
            if unknown:
                raise ComposeError(f"{where}.{name}: unsupported keys {sorted(unknown)}")
            condition = str(spec.get("condition", CONDITION_STARTED))
            if condition not in CONDITIONS:
                raise ComposeError(f"{where}.{name}.condition: {condition!r} is not one of {', '.join(CONDITIONS)}")
            deps.append(Dependency(str(name), condition,
                                   as_bool(spec.get("required", True), f"{where}.{name}.required")))
        return tuple(deps)
    raise ComposeError(f"{where}: expected a list or a mapping")
