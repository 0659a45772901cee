"""The cpu overlay's gateway pod, run on the real Docker engine as the kubelet would run it.

No cluster runs here, so the pod of ``overlays/cpu`` is emulated with what its manifest says: each container's
command (the ``$(VAR)`` expanded from its ConfigMaps, the model swapped for ``tiny`` to stay fast), user, read-only
root filesystem, dropped capabilities and no privilege escalation, its emptyDirs as tmpfs, its volume claim as a
folder, its Secret as a read-only folder, and Triton and the gateway sharing one network namespace as containers of a
pod do. The tree's code runs in the image's environment (``PYTHONPATH``), so the test checks this checkout. It checks
what the schemas cannot: the images run so hardened, Triton is reachable only from inside the pod, the exec probes
pass, the token comes from the Secret, and a restart finds the exported models on the volume.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgediff.constants import GATEWAY_GRPC_PORT, TRITON_GRPC_PORT, TRITON_HTTP_PORT, TRITON_METRICS_PORT

from .deployfiles import ROOT, kustomize

pytestmark = pytest.mark.slow
MODEL = "tiny"
TOKEN = "pod-test-token"
READY_TIMEOUT_S = 300.0
SRC = "/opt/edgediff-src"


def _docker(*args: str, timeout_s: float = 600.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout_s)
    if check:
        assert proc.returncode == 0, f"docker {' '.join(args[:3])}: {proc.stderr[-2000:]}"
    return proc


@pytest.fixture(scope="module")
def pod() -> dict[str, Any]:
    """The cpu StatefulSet's pod template and the ConfigMaps its containers read."""
    if shutil.which("docker") is None or _docker("version", timeout_s=30, check=False).returncode != 0:
        pytest.skip("no Docker engine")
    objects = kustomize("overlays/cpu") + kustomize("base")
    workload = next(d for d in objects if d["kind"] == "StatefulSet")
    image = workload["spec"]["template"]["spec"]["containers"][0]["image"]
    if _docker("image", "inspect", image, timeout_s=30, check=False).returncode != 0:
        pytest.skip(f"{image} is not built (make images)")
    maps = {d["metadata"]["name"]: d["data"] for d in objects if d["kind"] == "ConfigMap"}
    return {"spec": workload["spec"]["template"]["spec"], "maps": maps}


def _env(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(pod["maps"][source["configMapRef"]["name"]])
    env["EDGEDIFF_MODEL"] = MODEL
    return env


def _run_args(pod: dict[str, Any], container: dict[str, Any], folders: dict[str, Path]) -> list[str]:
    """``docker run`` options for ``container`` as its manifest describes it."""
    spec = pod["spec"]
    security = {**spec["securityContext"], **container["securityContext"]}
    args = ["--user", f"{security['runAsUser']}:{security['runAsGroup']}", "--cap-drop", "ALL",
            "-e", f"PYTHONPATH={SRC}", "-v", f"{ROOT}:{SRC}:ro", "-w", SRC]
    if security["readOnlyRootFilesystem"]:
        args.append("--read-only")
    if security["allowPrivilegeEscalation"] is False:
        args += ["--security-opt", "no-new-privileges"]
    assert security["capabilities"]["drop"] == ["ALL"] and security["seccompProfile"]["type"] == "RuntimeDefault"
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes.get(mount["name"])
        if volume is not None and "emptyDir" in volume:
            size = volume["emptyDir"].get("sizeLimit", "64Mi").replace("Gi", "g").replace("Mi", "m")
            if mount["mountPath"] == "/dev/shm":
                args += ["--shm-size", size]
            else:
                args += ["--tmpfs", f"{mount['mountPath']}:size={size}"]
        else:  # a volume claim or the Secret
            source = folders[mount["name"]]
            args += ["-v", f"{source}:{mount['mountPath']}" + (":ro" if mount.get("readOnly") else "")]
    for key, value in _env(pod, container).items():
        args += ["-e", f"{key}={value}"]
    return [*args, container["image"]]


def _command(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    env = _env(pod, container)
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in container["command"]]


def _probe(name: str, container: dict[str, Any], probe: str) -> subprocess.CompletedProcess[str]:
    return _docker("exec", name, *container[probe]["exec"]["command"], timeout_s=60, check=False)


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    """The pod's volume claims (models, cache) and its Secret, as folders (fsGroup: usable by the pod's user)."""
    found = {name: tmp_path / name for name in ("models", "cache", "token")}
    for folder in found.values():
        folder.mkdir()
        folder.chmod(0o777)
    (found["token"] / "gateway-token").write_text(TOKEN)
    (found["token"] / "gateway-token").chmod(0o444)
    return found


@pytest.fixture
def names() -> Iterator[dict[str, str]]:
    suffix = uuid.uuid4().hex[:8]
    found = {"triton": f"edgediff-pod-triton-{suffix}", "gateway": f"edgediff-pod-gateway-{suffix}"}
    yield found
    for name in found.values():
        _docker("rm", "-f", name, timeout_s=60, check=False)


def test_cpu_pod_runs_as_the_manifest_says(pod: dict[str, Any], folders: dict[str, Path],
                                           names: dict[str, str]) -> None:
    import grpc

    from services.gateway.client import GeneratorClient

    spec = pod["spec"]
    export = spec["initContainers"][0]
    triton, gateway = (next(c for c in spec["containers"] if c["name"] == n) for n in ("triton", "gateway"))
    # the init container, with no network, on an empty volume; then again, as after a restart
    exported = []
    for _ in range(2):
        start = time.monotonic()
        _docker("run", "--rm", "--network", "none", *_run_args(pod, export, folders), *_command(pod, export))
        exported.append(time.monotonic() - start)
    assert (folders["models"] / "manifest.json").is_file()
    # Triton and the gateway in one network namespace, as a pod's containers
    _docker("run", "-d", "--name", names["triton"], *_run_args(pod, triton, folders), *_command(pod, triton))
    _docker("run", "-d", "--name", names["gateway"], "--network", f"container:{names['triton']}",
            *_run_args(pod, gateway, folders), *_command(pod, gateway))
    deadline = time.monotonic() + READY_TIMEOUT_S
    while _probe(names["gateway"], gateway, "readinessProbe").returncode != 0:
        logs = _docker("logs", names["triton"], check=False).stderr[-1500:]
        assert time.monotonic() < deadline, f"the gateway never got ready; Triton:\n{logs}"
        time.sleep(2)
    for container, name in ((gateway, names["gateway"]), (triton, names["triton"])):
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in container:
                result = _probe(name, container, probe)
                assert result.returncode == 0, f"{container['name']} {probe}: {result.stderr}"
    # from another pod: Triton's inference ports are closed, its metrics and the gateway open
    address = _docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", names["triton"]).stdout.strip()
    reach = {port: _docker("run", "--rm", export["image"], "python3", "-m", "services.healthcheck", "tcp",
                           f"{address}:{port}", timeout_s=60, check=False).returncode
             for port in (TRITON_GRPC_PORT, TRITON_HTTP_PORT, TRITON_METRICS_PORT, GATEWAY_GRPC_PORT)}
    assert reach == {TRITON_GRPC_PORT: 1, TRITON_HTTP_PORT: 1, TRITON_METRICS_PORT: 0, GATEWAY_GRPC_PORT: 0}
    # the token from the Secret: refused without it, an image with it
    with GeneratorClient(f"{address}:{GATEWAY_GRPC_PORT}", timeout_s=120) as anonymous, \
            pytest.raises(grpc.RpcError) as refused:
        anonymous.generate(seed=1, steps=2)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with GeneratorClient(f"{address}:{GATEWAY_GRPC_PORT}", token=TOKEN, timeout_s=120) as client:
        response = client.generate(seed=1, steps=2)
    assert response.images and response.images[0].startswith(b"\x89PNG\r\n\x1a\n")
    print(f"export into an empty volume {exported[0]:.1f} s, again onto the kept volume {exported[1]:.1f} s")
