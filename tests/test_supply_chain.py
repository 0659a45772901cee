"""The install is what the repository says: dependency floors match the generated code, the lock matches pyproject,
and every download in a Dockerfile is checksummed (issue 31, item 7).

Regenerate the lock after changing a dependency in pyproject.toml: ``make lock`` (``scripts/lock.sh``).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LOCKS = {ROOT / "requirements.lock": ("dev",),
         ROOT / "docker" / "requirements-cpu.lock": ("onnx", "openvino", "triton", "serve", "telemetry", "loadtest")}
"""Each lock and the extras of edgediff it pins (scripts/lock.sh writes both)."""
GENERATED = ROOT / "services" / "proto" / "edgediff" / "v1"
UNLOCKED = {"torch"}
"""Installed in its own step (the CPU or CUDA build the machine needs), so not in the lock; see scripts/lock.sh."""
LOCK_ENVIRONMENT = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
                    "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                    "implementation_name": "cpython", "platform_python_implementation": "CPython"}
"""The environment the lock is resolved for: the CI and development machines, and the CPU image."""


def _project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["project"]


def _requirements(*wanted: str) -> list[Requirement]:
    """The requirements of ``edgediff[wanted...]`` (default: dev), nested extras of edgediff itself expanded."""
    project = _project()
    extras = project["optional-dependencies"]
    out, todo, seen = [Requirement(r) for r in project["dependencies"]], list(wanted or ("dev",)), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in extras[name]:
            req = Requirement(text)
            if canonicalize_name(req.name) == "edgediff":
                todo.extend(req.extras)
            else:
                out.append(req)
    return out


def _floor(name: str) -> Version:
    floors = [Version(spec.version) for req in _requirements() if canonicalize_name(req.name) == name
              for spec in req.specifier if spec.operator in (">=", "==")]
    assert floors, f"pyproject.toml declares no floor for {name}"
    return min(floors)


def test_grpc_floors_match_the_generated_code() -> None:
    text = (GENERATED / "generator_pb2_grpc.py").read_text()
    generated = Version(re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", text).group(1))
    for name in ("grpcio", "grpcio-health-checking", "grpcio-reflection", "grpcio-tools"):
        assert _floor(name) >= generated, f"{name} floor {_floor(name)} < {generated}: the generated code refuses it"


def test_protobuf_floor_matches_the_generated_code() -> None:
    text = (GENERATED / "generator_pb2.py").read_text()
    match = re.search(r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),"
                      r"\s*(\d+),", text)
    assert match, "generator_pb2.py has no protobuf runtime version guard"
    generated = Version(".".join(match.groups()))
    assert _floor("protobuf") >= generated, f"protobuf floor {_floor('protobuf')} < {generated}"


def _lock(path: Path) -> dict[str, tuple[Version, list[str], str]]:
    """``{name: (version, hashes, marker)}`` of the lock at ``path``."""
    entries: dict[str, tuple[Version, list[str], str]] = {}
    text = path.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        spec, *hashes = line.split(" --hash=")
        req = Requirement(spec)
        (pin,) = list(req.specifier)
        entries[canonicalize_name(req.name)] = (Version(pin.version), [h.strip() for h in hashes],
                                                str(req.marker or ""))
    return entries


@pytest.mark.parametrize("lock", list(LOCKS), ids=lambda p: p.name)
def test_the_lock_pins_every_package_with_hashes(lock: Path) -> None:
    entries = _lock(lock)
    assert len(entries) > 50
    for name, (_version, hashes, _marker) in entries.items():
        assert hashes and all(h.startswith("sha256:") and len(h) == 71 for h in hashes), name
    assert not UNLOCKED & set(entries), "torch is installed in its own step (scripts/lock.sh says why)"


@pytest.mark.parametrize("lock", list(LOCKS), ids=lambda p: p.name)
def test_the_lock_agrees_with_pyproject(lock: Path) -> None:
    entries = _lock(lock)
    disagree = []
    for req in _requirements(*LOCKS[lock]):
        name = canonicalize_name(req.name)
        if name in UNLOCKED or (req.marker is not None and not req.marker.evaluate(LOCK_ENVIRONMENT)):
            continue
        if name not in entries:
            disagree.append(f"{req} is not in the lock")
        elif not req.specifier.contains(entries[name][0], prereleases=True):
            disagree.append(f"{req}: the lock has {entries[name][0]}")
    assert not disagree, f"pyproject.toml and {lock.name} disagree (run `make lock`): " + "; ".join(disagree)


@pytest.mark.parametrize("lock", list(LOCKS), ids=lambda p: p.name)
def test_the_lock_records_its_command(lock: Path) -> None:
    header = lock.read_text().split("\n", 3)[:3]
    assert any("scripts/lock.sh" in line for line in header), header


@pytest.mark.parametrize("dockerfile", sorted((ROOT / "docker").glob("*.Dockerfile")), ids=lambda p: p.name)
def test_every_download_in_a_dockerfile_is_checksummed(dockerfile: Path) -> None:
    text = dockerfile.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if re.search(r"\b(curl|wget)\b[^|]*https?://", line) and not line.lstrip().startswith("#") \
                and "HEALTHCHECK" not in line and "CMD [" not in line:
            assert "sha256sum" in line, f"{dockerfile.name}: a download without a checksum: {line.strip()[:160]}"
            assert "| tar" not in line and "|tar" not in line, f"{dockerfile.name}: a download piped into tar"
        if re.search(r"pip install .*https?://", line):
            assert "--hash" in line or "sha256" in line, f"{dockerfile.name}: a wheel URL without a hash"


def test_make_setup_and_the_cpu_image_install_from_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    setup = makefile[makefile.index("$(VENV)/.installed:"):].split("\n\n", 1)[0]
    assert "--require-hashes" in setup and "requirements.lock" in setup
    cpu = (ROOT / "docker" / "cpu.Dockerfile").read_text()
    assert "--require-hashes" in cpu and "requirements-cpu.lock" in cpu
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "docker" not in ignored or "!docker/requirements-cpu.lock" in ignored, "the build context lacks the lock"
