"""The Dockerfiles: hadolint-clean, pinned bases, a non-root user, no secrets; and the Jetson image's Python 3.10.

Built for real by tests/deploy/test_engine_e2e.py (the cpu and Prometheus images) where a Docker engine answers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .deployfiles import DOCKERFILES, ROOT, require_tool

HADOLINT = str(Path(sys.executable).parent / "hadolint")
SOURCE_PACKAGES = ("edgediff", "exporters", "services", "loadtest", "cli")
EXPECTED_BASES = {
    "cpu.Dockerfile": "python:3.11-slim-bookworm",
    "rtx.Dockerfile": "nvcr.io/nvidia/tritonserver:25.02-py3",
    "jetson.Dockerfile": "nvcr.io/nvidia/l4t-jetpack:r36.4.0",
}
"""The device images' base (a build argument's default where the base is one: BASE_IMAGE of the cpu image)."""
SERVICE_IMAGES = {"prometheus.Dockerfile": "debian:bookworm-slim"}
"""Images that stand in for a registry's where none answers (built FROM the local Debian base by make images)."""
DEVICE_DOCKERFILES = [p for p in DOCKERFILES if p.name in EXPECTED_BASES]
PY311_ONLY = re.compile(r"(\.UTC\b|from datetime import [^\n]*\bUTC\b|StrEnum|tomllib|typing\.Self|"
                        r"import [^\n]*\bSelf\b|ExceptionGroup|except\*|hashlib\.file_digest|TaskGroup|"
                        r"typing\.Never|LiteralString|NotRequired|asyncio\.timeout\()")
"""Standard-library names and syntax new in Python 3.11 (the Jetson image runs JetPack's Python 3.10)."""


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", path.read_text())
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_the_three_device_images_exist() -> None:
    assert sorted(p.name for p in DOCKERFILES) == sorted({**EXPECTED_BASES, **SERVICE_IMAGES})


def _bases(instructions: list[tuple[str, str]]) -> list[str]:
    """FROM arguments with ``${ARG}`` replaced by the default of an ARG declared before the first FROM."""
    defaults: dict[str, str] = {}
    bases = []
    for keyword, args in instructions:
        if keyword == "ARG" and not bases and "=" in args:
            name, _, value = args.partition("=")
            defaults[name] = value
        elif keyword == "FROM":
            image = args.split()[0]  # without `AS stage`
            bases.append(re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image))
    return bases


def test_prometheus_image_runs_debians_package_as_its_user() -> None:
    path = ROOT / "docker" / "prometheus.Dockerfile"
    instructions = _instructions(path)
    assert _bases(instructions) == [SERVICE_IMAGES[path.name]]
    assert [a for k, a in instructions if k == "USER"] == ["prometheus"]
    run = " ".join(a for k, a in instructions if k == "RUN")
    assert "apt-get install -y --no-install-recommends prometheus wget" in run and "policy-rc.d" in run
    assert ("ENTRYPOINT", '["/usr/bin/prometheus"]') in instructions
    assert any(k == "HEALTHCHECK" for k, _ in instructions)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    hadolint = require_tool("hadolint", HADOLINT)
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "warning", str(dockerfile)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_hadolint_ignore_is_justified(dockerfile: Path) -> None:
    lines = dockerfile.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            rules = line.split("=", 1)[1].split(",")
            reason = lines[i - 1] if i else ""
            assert reason.startswith("#") and len(reason) > 20, f"{dockerfile.name}:{i + 1}: ignore without a reason"
            assert all(re.fullmatch(r"DL\d{4}", r) for r in rules), line
            assert rules != ["DL3006"] and "DL3007" not in rules, "never ignore the base-image pin rules"


@pytest.mark.parametrize("dockerfile", DEVICE_DOCKERFILES, ids=lambda p: p.name)
def test_image_rules(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    bases = _bases(instructions)
    assert set(bases) == {EXPECTED_BASES[dockerfile.name]}, "one pinned base image (stages included)"
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1] == "10001:10001", "the image must end as the non-root edgediff user"
    for keyword, args in instructions:
        if keyword == "RUN" and re.search(r"\bpip3? install\b|-m pip install", args):
            assert "--no-cache-dir" in args, args
        if keyword in ("ENV", "ARG"):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|API_KEY)\w*=", args, re.IGNORECASE), args
        assert keyword != "ADD", "use COPY (or curl with a pinned URL)"
    copied = [args.split()[0] for keyword, args in instructions if keyword == "COPY"]
    assert set(SOURCE_PACKAGES) <= set(copied) and "pyproject.toml" in copied
    assert any(keyword == "HEALTHCHECK" for keyword, _ in instructions)
    text = dockerfile.read_text()
    assert 'mkdir -p /models /cache /weights' in text and 'chown edgediff:edgediff /models /cache' in text


def test_images_pin_the_runtimes_they_pair_with() -> None:
    rtx = (ROOT / "docker" / "rtx.Dockerfile").read_text()
    assert "ARG TENSORRT_VERSION=10.8.0.43" in rtx and '"tensorrt==${TENSORRT_VERSION}"' in rtx
    cpu = (ROOT / "docker" / "cpu.Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    torch_pin = re.search(r"ARG TORCH_VERSION=(\S+)", cpu).group(1)
    assert f"torch=={torch_pin}" in makefile, "the CPU image pins the torch the Makefile pins"
    assert "ARG TORCH_VERSION=" + torch_pin in rtx
    jetson = (ROOT / "docker" / "jetson.Dockerfile").read_text()
    assert '"tritonclient[grpc,http]==${TRITON_VERSION}"' in jetson


def test_dockerignore_keeps_what_the_images_copy() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for name in (*SOURCE_PACKAGES, "pyproject.toml", "README.md"):
        assert name not in ignored
        assert (ROOT / name).exists(), name
    assert {".git", ".venv", "tests", "model_repository"} <= ignored


def _python310() -> str:
    """A working Python 3.10: on PATH, or one pyenv installed (its shims fail unless the version is selected)."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [shutil.which("python3.10"), *map(str, sorted(pyenv_root.glob("versions/3.10*/bin/python3.10")))]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                               text=True, timeout=30)
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 10)":
            return candidate
    pytest.skip("python3.10 is not installed: cannot check the sources compile for the Jetson image's Python")


def _sources() -> list[Path]:
    return sorted(p for package in SOURCE_PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_sources_compile_under_python_310() -> None:
    python310 = _python310()
    script = ("import sys\nfor path in sys.argv[1:]:\n"
              "    compile(open(path, encoding='utf-8').read(), path, 'exec', dont_inherit=True)\n")
    sources = [str(p) for p in _sources()]
    result = subprocess.run([python310, "-c", script, *sources], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


def test_sources_use_no_python_311_only_names() -> None:
    offenders = [f"{path.relative_to(ROOT)}: {m.group(0)}" for path in _sources()
                 for m in PY311_ONLY.finditer(path.read_text(encoding="utf-8"))]
    assert not offenders, "the Jetson image runs Python 3.10 (JetPack 6): " + "; ".join(offenders)


def test_the_311_check_sees_through_module_aliases() -> None:
    # `import datetime as dt; dt.UTC` fails on 3.10 just like `datetime.UTC` (it slipped through once)
    for source in ("dt.datetime.now(dt.UTC)", "_dt.UTC", "datetime.UTC", "from datetime import UTC, datetime"):
        assert PY311_ONLY.search(source), source
    assert not PY311_ONLY.search("dt.datetime.now(dt.timezone.utc)")
