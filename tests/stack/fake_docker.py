"""A fake Docker engine at the SDK boundary, and a recorder that works over the fake or a real ``DockerClient``.

``FakeDockerClient`` implements only the SDK methods the Docker runtime calls. Container creation goes through the
SDK's own translation (``docker.models.containers._create_container_args`` and ``APIClient.create_container``, with
the HTTP request replaced), so a keyword the SDK would reject fails here too and each container's ``attrs`` hold the
exact JSON body the engine would receive (``Config``, ``HostConfig``, ``NetworkingConfig``).

``RecordingClient`` wraps either engine and logs every mutating call in order; at each ``containers.run`` it also
snapshots the state of the project's other containers, so a test can check that dependencies were satisfied when a
service was started. Errors are the SDK's own exception classes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
from docker.models.containers import _create_container_args

API_VERSION = "1.45"
_ids = itertools.count(1)


def _new_id() -> str:
    return f"{next(_ids):064x}"


class _OfflineAPI(docker.APIClient):
    """The SDK's low-level client with the request to the engine replaced by returning the body."""

    def create_container_from_config(self, config: dict[str, Any], name: str | None = None,
                                     platform: str | None = None) -> dict[str, Any]:
        return config


@dataclass
class Behaviour:
    """How a fake container of one service behaves.

    Attributes:
        exit_code: Exits with this code at its first ``reload()`` after the start (None: keeps running).
        healthy_after: ``reload()`` calls before its healthcheck reports healthy.
        unhealthy: Its healthcheck reports unhealthy instead.
    """

    exit_code: int | None = None
    healthy_after: int = 2
    unhealthy: bool = False


@dataclass
class FakeImage:
    id: str
    tags: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)


class FakeContainer:
    def __init__(self, engine: FakeDockerClient, name: str, body: dict[str, Any], behaviour: Behaviour,
                 image: FakeImage) -> None:
        self.engine = engine
        self.id = _new_id()
        self.name = name
        self.behaviour = behaviour
        self._reloads = 0
        host_config = body.pop("HostConfig", {}) or {}
        networking = body.pop("NetworkingConfig", {}) or {}
        config = dict(body)
        if not config.get("Healthcheck") or not (config["Healthcheck"].get("Test")):
            config["Healthcheck"] = (image.attrs.get("Config") or {}).get("Healthcheck")
        self.has_health = bool(config.get("Healthcheck")) and config["Healthcheck"]["Test"][:1] != ["NONE"]
        ports = {key: [{"HostIp": b.get("HostIp") or "0.0.0.0", "HostPort": b.get("HostPort") or "49153"}
                       for b in bindings]
                 for key, bindings in (host_config.get("PortBindings") or {}).items()}
        self.attrs: dict[str, Any] = {
            "Id": self.id,
            "Name": "/" + name,
            "Config": config,
            "HostConfig": host_config,
            "NetworkSettings": {"Networks": networking.get("EndpointsConfig") or {}, "Ports": ports},
            "State": {"Status": "running", "Running": True, "ExitCode": 0},
            "RestartCount": 0,
        }
        if self.has_health:
            self.attrs["State"]["Health"] = {"Status": "starting"}

    # properties of docker.models.containers.Container
    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def labels(self) -> dict[str, str]:
        return self.attrs["Config"].get("Labels") or {}

    @property
    def status(self) -> str:
        return self.attrs["State"]["Status"]

    def _advance(self) -> None:
        state = self.attrs["State"]
        if state["Status"] != "running":
            return
        self._reloads += 1
        if self.behaviour.exit_code is not None:
            self.exit(self.behaviour.exit_code)
        elif self.has_health and self._reloads >= self.behaviour.healthy_after:
            state["Health"]["Status"] = "unhealthy" if self.behaviour.unhealthy else "healthy"

    def exit(self, code: int) -> None:
        """Make the container exit now (tests use this to simulate a crash)."""
        self.attrs["State"].update({"Status": "exited", "Running": False, "ExitCode": code})
        self.attrs["State"].pop("Health", None)

    def reload(self) -> None:
        self.engine._require(self)
        self._advance()

    def wait(self, timeout: int | None = None, **_: Any) -> dict[str, Any]:
        self.engine._require(self)
        if self.status != "exited":
            raise AssertionError(f"wait() on running {self.name} would block the runtime")
        return {"StatusCode": self.attrs["State"]["ExitCode"], "Error": None}

    def stop(self, timeout: int | None = None) -> None:
        self.engine._require(self)
        self.engine.log.append(("container.stop", self.name))
        if self.status == "running":
            self.exit(0)

    def remove(self, force: bool = False, v: bool = False) -> None:
        self.engine._require(self)
        if self.status == "running" and not force:
            raise docker.errors.APIError(f"cannot remove running container {self.name}",
                                         explanation=f"You cannot remove a running container {self.id}")
        self.engine.log.append(("container.remove", self.name))
        del self.engine.container_objects[self.id]

    def logs(self, tail: int | str = "all", **_: Any) -> bytes:
        code = self.attrs["State"]["ExitCode"]
        return f"starting {self.name}\nlast line of {self.name} (exit {code})\n".encode()


class FakeNetwork:
    def __init__(self, engine: FakeDockerClient, name: str, driver: str, labels: dict[str, str]) -> None:
        self.engine, self.id, self.name = engine, _new_id(), name
        self.attrs = {"Name": name, "Id": self.id, "Driver": driver, "Labels": labels}

    def remove(self) -> None:
        users = [c.name for c in self.engine.container_objects.values()
                 if c.attrs["HostConfig"].get("NetworkMode") == self.name]
        if users:
            raise docker.errors.APIError(f"network {self.name} has active endpoints",
                                         explanation=f"error while removing network: network {self.name} has "
                                                     f"active endpoints {users}")
        self.engine.log.append(("network.remove", self.name))
        del self.engine.network_objects[self.name]


class FakeVolume:
    def __init__(self, engine: FakeDockerClient, name: str, labels: dict[str, str]) -> None:
        self.engine, self.id, self.name = engine, name, name
        self.attrs = {"Name": name, "Labels": labels, "Driver": "local"}

    def remove(self, force: bool = False) -> None:
        users = [c.name for c in self.engine.container_objects.values()
                 if any(b.split(":", 1)[0] == self.name for b in c.attrs["HostConfig"].get("Binds") or [])]
        if users:
            raise docker.errors.APIError(f"volume {self.name} is in use", explanation=f"volume is in use - {users}")
        self.engine.log.append(("volume.remove", self.name))
        del self.engine.volume_objects[self.name]


def _label_match(labels: dict[str, str], wanted: str | list[str]) -> bool:
    for item in [wanted] if isinstance(wanted, str) else wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


class _Images:
    def __init__(self, engine: FakeDockerClient) -> None:
        self.engine = engine

    def get(self, name: str) -> FakeImage:
        for image in self.engine.image_objects:
            if name in image.tags or name == image.id:
                return image
        raise docker.errors.ImageNotFound(f"No such image: {name}")

    def build(self, path: str, dockerfile: str = "Dockerfile", tag: str | None = None,
              buildargs: dict[str, str] | None = None, rm: bool = True, **kwargs: Any) -> tuple[FakeImage, Any]:
        context = Path(path)
        if not (context / dockerfile).is_file():  # the engine would fail the same way
            raise docker.errors.BuildError(f"Cannot locate specified Dockerfile: {dockerfile}", iter(()))
        self.engine.log.append(("images.build", tag, {"path": path, "dockerfile": dockerfile,
                                                      "buildargs": buildargs, **kwargs}))
        image = FakeImage(_new_id(), [tag] if tag else [], self.engine.image_config.get(tag or "", {}))
        self.engine.image_objects = [i for i in self.engine.image_objects if tag not in i.tags] + [image]
        return image, iter(())

    def pull(self, repository: str, tag: str | None = None, **_: Any) -> FakeImage:
        ref = repository if tag is None else f"{repository}:{tag}"
        if ":" not in ref.rsplit("/", 1)[-1]:
            ref += ":latest"
        self.engine.log.append(("images.pull", ref))
        if ref in self.engine.unpullable:  # what a registry that does not answer looks like
            raise docker.errors.APIError(f"Get https://registry-1.docker.io/v2/ ({ref}): dial tcp: lookup failed",
                                         explanation=f"pull access denied for {ref}: registry unreachable")
        image = FakeImage(_new_id(), [ref], self.engine.image_config.get(ref, {}))
        self.engine.image_objects.append(image)
        return image


class _Networks:
    def __init__(self, engine: FakeDockerClient) -> None:
        self.engine = engine

    def list(self, names: list[str] | None = None, filters: dict[str, Any] | None = None,
             **_: Any) -> list[FakeNetwork]:
        found = list(self.engine.network_objects.values())
        if names:  # the engine matches names by substring
            found = [n for n in found if any(x in n.name for x in names)]
        if filters and "label" in filters:
            found = [n for n in found if _label_match(n.attrs["Labels"], filters["label"])]
        return found

    def create(self, name: str, driver: str | None = None, labels: dict[str, str] | None = None,
               **kwargs: Any) -> FakeNetwork:
        if name in self.engine.network_objects:
            raise docker.errors.APIError(f"network with name {name} already exists",
                                         explanation=f"network with name {name} already exists")
        self.engine.log.append(("networks.create", name, {"driver": driver, "labels": labels, **kwargs}))
        network = FakeNetwork(self.engine, name, driver or "bridge", dict(labels or {}))
        self.engine.network_objects[name] = network
        return network

    def get(self, name: str) -> FakeNetwork:
        try:
            return self.engine.network_objects[name]
        except KeyError:
            raise docker.errors.NotFound(f"network {name} not found") from None


class _Volumes:
    def __init__(self, engine: FakeDockerClient) -> None:
        self.engine = engine

    def list(self, filters: dict[str, Any] | None = None, **_: Any) -> list[FakeVolume]:
        found = list(self.engine.volume_objects.values())
        if filters and "name" in filters:  # substring match, as the engine does
            found = [v for v in found if filters["name"] in v.name]
        if filters and "label" in filters:
            found = [v for v in found if _label_match(v.attrs["Labels"], filters["label"])]
        return found

    def create(self, name: str | None = None, driver: str | None = None, driver_opts: dict[str, str] | None = None,
               labels: dict[str, str] | None = None) -> FakeVolume:
        assert name, "the runtime always names its volumes"
        self.engine.log.append(("volumes.create", name, {"driver": driver, "driver_opts": driver_opts,
                                                         "labels": labels}))
        volume = self.engine.volume_objects.get(name) or FakeVolume(self.engine, name, dict(labels or {}))
        self.engine.volume_objects[name] = volume
        return volume

    def get(self, name: str) -> FakeVolume:
        try:
            return self.engine.volume_objects[name]
        except KeyError:
            raise docker.errors.NotFound(f"volume {name} not found") from None


class _Containers:
    def __init__(self, engine: FakeDockerClient) -> None:
        self.engine = engine

    def run(self, image: str, command: Any = None, **kwargs: Any) -> FakeContainer:
        engine = self.engine
        if kwargs.get("network") and kwargs.get("network_mode"):  # the SDK's own checks in run()
            raise RuntimeError('The options "network" and "network_mode" can not be used together.')
        if kwargs.get("networking_config") and not kwargs.get("network"):
            raise RuntimeError('The option "networking_config" can not be used without "network".')
        assert kwargs.get("detach") is True, "the runtime must run containers detached"
        create_kwargs = _create_container_args({**kwargs, "image": image, "command": command,
                                                "version": API_VERSION})
        name = create_kwargs.pop("name")
        platform = create_kwargs.pop("platform", None)
        body = engine.api.create_container(**create_kwargs, name=name, platform=platform)
        image_obj = engine.images.get(image)  # ImageNotFound, as the engine (run() would then pull)
        host_config = body["HostConfig"]
        network = host_config.get("NetworkMode")
        if network and network.startswith("container:"):
            self.get(network.split(":", 1)[1])  # NotFound, as the engine
        elif network and network not in ("bridge", "host", "none") and network not in engine.network_objects:
            raise docker.errors.NotFound(f"network {network} not found")
        for bind in host_config.get("Binds") or []:
            source = bind.split(":", 1)[0]
            if not source.startswith("/") and source not in engine.volume_objects:
                engine.implicit_volumes.append(source)  # the engine would create it silently
                engine.volume_objects[source] = FakeVolume(engine, source, {})
        if any(c.name == name for c in engine.container_objects.values()):
            raise docker.errors.APIError(f"Conflict. The container name /{name} is already in use",
                                         explanation=f'Conflict. The container name "/{name}" is already in use')
        service = (body.get("Labels") or {}).get("com.docker.compose.service", name)
        container = FakeContainer(engine, name, body, engine.behaviour.get(service, Behaviour()), image_obj)
        engine.container_objects[container.id] = container
        engine.log.append(("containers.run", name, container.attrs))
        return container

    def get(self, container_id: str) -> FakeContainer:
        for container in self.engine.container_objects.values():
            if container_id in (container.id, container.name):
                return container
        raise docker.errors.NotFound(f"No such container: {container_id}")

    def list(self, all: bool = False, filters: dict[str, Any] | None = None, **_: Any) -> list[FakeContainer]:
        found = [c for c in self.engine.container_objects.values() if all or c.status == "running"]
        if filters and "label" in filters:
            found = [c for c in found if _label_match(c.labels, filters["label"])]
        if filters and "name" in filters:
            found = [c for c in found if filters["name"] in c.name]
        return found


class FakeDockerClient:
    """An in-memory engine behind the ``docker.DockerClient`` methods the runtime uses.

    Args:
        behaviour: Service name -> how its containers behave (default: running; healthy after 2 reloads).
        images: Image references present from the start (e.g. pulled earlier).
        image_config: Image reference -> image ``attrs`` (e.g. a ``HEALTHCHECK`` from its Dockerfile).
    """

    def __init__(self, behaviour: dict[str, Behaviour] | None = None, images: list[str] | None = None,
                 image_config: dict[str, dict[str, Any]] | None = None) -> None:
        self.api = _OfflineAPI(base_url="unix:///nonexistent/docker.sock", version=API_VERSION)
        self.behaviour = dict(behaviour or {})
        self.image_config = dict(image_config or {})
        self.image_objects = [FakeImage(_new_id(), [ref], self.image_config.get(ref, {})) for ref in images or []]
        self.network_objects: dict[str, FakeNetwork] = {}
        self.volume_objects: dict[str, FakeVolume] = {}
        self.container_objects: dict[str, FakeContainer] = {}
        self.implicit_volumes: list[str] = []
        self.unpullable: set[str] = set()
        self.log: list[tuple[Any, ...]] = []
        self.images = _Images(self)
        self.networks = _Networks(self)
        self.volumes = _Volumes(self)
        self.containers = _Containers(self)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def _require(self, container: FakeContainer) -> None:
        if container.id not in self.container_objects:
            raise docker.errors.NotFound(f"No such container: {container.name}")


# --- recording over a fake or a real client --------------------------------------------------------------------------
@dataclass
class Call:
    """One mutating call through the recorder.

    Attributes:
        method: e.g. ``containers.run``, ``networks.create``, ``container.stop``.
        name: The container, network, volume or image it concerns.
        kwargs: Its keyword arguments (``containers.run``: everything but image and command).
        args: Positional arguments.
        peers: For ``containers.run``: the project's other containers then, name -> (status, health, exit code).
    """

    method: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    args: tuple[Any, ...] = ()
    peers: dict[str, tuple[str, str | None, int | None]] = field(default_factory=dict)


class _RecordedContainer:
    def __init__(self, inner: Any, recorder: RecordingClient) -> None:
        self._inner, self._recorder = inner, recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def stop(self, **kwargs: Any) -> Any:
        self._recorder.calls.append(Call("container.stop", self._inner.name, kwargs))
        return self._inner.stop(**kwargs)

    def remove(self, **kwargs: Any) -> Any:
        self._recorder.calls.append(Call("container.remove", self._inner.name, kwargs))
        return self._inner.remove(**kwargs)


class _RecordedNamed:
    def __init__(self, inner: Any, recorder: RecordingClient, kind: str) -> None:
        self._inner, self._recorder, self._kind = inner, recorder, kind

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def remove(self, **kwargs: Any) -> Any:
        self._recorder.calls.append(Call(f"{self._kind}.remove", self._inner.name, kwargs))
        return self._inner.remove(**kwargs)


class _RecordedCollection:
    def __init__(self, inner: Any, recorder: RecordingClient, kind: str) -> None:
        self._inner, self._recorder, self._kind = inner, recorder, kind

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _wrap(self, obj: Any) -> Any:
        if self._kind == "containers":
            return _RecordedContainer(obj, self._recorder)
        if self._kind in ("networks", "volumes"):
            return _RecordedNamed(obj, self._recorder, self._kind[:-1])
        return obj

    def list(self, *args: Any, **kwargs: Any) -> list[Any]:
        return [self._wrap(o) for o in self._inner.list(*args, **kwargs)]

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrap(self._inner.get(*args, **kwargs))

    def create(self, *args: Any, **kwargs: Any) -> Any:
        name = kwargs.get("name") or (args[0] if args else "")
        self._recorder.calls.append(Call(f"{self._kind}.create", str(name), dict(kwargs), args))
        return self._wrap(self._inner.create(*args, **kwargs))

    def build(self, **kwargs: Any) -> Any:
        self._recorder.calls.append(Call("images.build", str(kwargs.get("tag")), dict(kwargs)))
        return self._inner.build(**kwargs)

    def pull(self, *args: Any, **kwargs: Any) -> Any:
        self._recorder.calls.append(Call("images.pull", str(args[0] if args else kwargs.get("repository")),
                                         dict(kwargs), args))
        return self._inner.pull(*args, **kwargs)

    def run(self, image: str, command: Any = None, **kwargs: Any) -> Any:
        peers = {}
        project = (kwargs.get("labels") or {}).get("com.docker.compose.project")
        # list() inspects each container (fresh attrs on a real engine); no reload(), which would advance the fake
        for container in self._inner.list(all=True, filters={"label": f"com.docker.compose.project={project}"}):
            state = container.attrs.get("State") or {}
            peers[container.name] = (state.get("Status"), (state.get("Health") or {}).get("Status"),
                                     state.get("ExitCode"))
        self._recorder.calls.append(Call("containers.run", str(kwargs.get("name")), dict(kwargs), (image, command),
                                         peers))
        return self._wrap(self._inner.run(image, command, **kwargs))


class RecordingClient:
    """Forwards to ``inner`` (a ``FakeDockerClient`` or a real ``docker.DockerClient``) and records the calls."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[Call] = []
        self.images = _RecordedCollection(inner.images, self, "images")
        self.networks = _RecordedCollection(inner.networks, self, "networks")
        self.volumes = _RecordedCollection(inner.volumes, self, "volumes")
        self.containers = _RecordedCollection(inner.containers, self, "containers")

    def ping(self) -> bool:
        return bool(self.inner.ping())

    def close(self) -> None:
        self.inner.close()

    def of(self, method: str) -> list[Call]:
        """The calls of one method, in order."""
        return [c for c in self.calls if c.method == method]

    def index(self, method: str, name: str) -> int:
        """Position of the first ``method`` call on ``name`` in the log."""
        return next(i for i, c in enumerate(self.calls) if c.method == method and c.name == name)
