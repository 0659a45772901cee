"""``manifest.json`` of a model repository: what was exported, from which weights, with which tools.

The manifest is written last and atomically. While an export moves its models into place it says
``"state": "exporting"``; a repository whose manifest says so (or that holds a staging folder) is a half-finished
export, and ``edgediff triton`` refuses it.

Each part model's entry records the size (``file_sizes``) and sha256 (``files``) of its artifact files, computed when
they were written; ``verify_repository`` checks them before Triton is started over the repository (sizes first, then
the sha256, streamed), so a truncated or altered ONNX/OpenVINO/TensorRT file is refused, never served.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from edgediff import __version__
from edgediff.errors import EdgediffError
from edgediff.io import file_sha256
from edgediff.models import get_preset
from edgediff.models.weights import weights_origin

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
STATE_EXPORTING = "exporting"
STATE_COMPLETE = "complete"
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"

_DISTRIBUTIONS = {
    "torch": ("torch",),
    "diffusers": ("diffusers",),
    "onnx": ("onnx",),
    "onnxsim": ("onnxsim",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "openvino": ("openvino",),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt_cu12"),
    "nvidia-pytriton": ("nvidia-pytriton",),
}


EXPORTER_SOURCES = ("configs.py", "targets.py", "repository.py", "part_runtime.py", "python_models/ldm_model.py",
                    "python_models/part_model.py")
"""The code that shapes a repository: its layout and configs, the Python models copied into it, and what they import
back at serving time (paths relative to ``exporters/``)."""


def exporter_sha256() -> str:
    """Fingerprint of ``EXPORTER_SOURCES`` as they are now, recorded in every manifest.

    A repository whose manifest has another one was written by other exporter code (an older checkout or release):
    its configs and ``model.py`` copies may not match what this edgediff serves, so ``edgediff up`` re-exports it
    (fast: the artifacts come from the content-hash cache).
    """
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for relative in EXPORTER_SOURCES:
        digest.update(relative.encode() + b"\0" + (root / relative).read_bytes())
    return digest.hexdigest()


def tool_versions() -> dict[str, str | None]:
    """Installed versions of the export and serving tools (None when missing), read without importing them."""
    versions: dict[str, str | None] = {"edgediff": __version__}
    for key, distributions in _DISTRIBUTIONS.items():
        versions[key] = None
        for dist in distributions:
            try:
                versions[key] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions


def tree_files(path: Path, exclude: tuple[str, ...] = ()) -> list[Path]:
    """The files under ``path`` (sorted; names in ``exclude`` left out), or ``[path]`` for a file."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name not in exclude and "__pycache__" not in p.parts)


def tree_sha256(path: Path, exclude: tuple[str, ...] = ()) -> str:
    """SHA-256 of a file, or of a folder's files (relative names and bytes, in sorted order)."""
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for item in tree_files(path, exclude):
        digest.update(str(item.relative_to(path)).encode())
        digest.update(file_sha256(item).encode())
    return digest.hexdigest()


def tree_size(path: Path, exclude: tuple[str, ...] = ()) -> int:
    """Bytes of a file, or of the files under a folder."""
    return sum(p.stat().st_size for p in tree_files(path, exclude))


def read_manifest(repo: Path | str) -> dict[str, Any] | None:
    """The repository's manifest, or None when it has none.

    Raises:
        EdgediffError: the manifest exists but is not valid JSON.
    """
    path = Path(repo) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EdgediffError(f"{path} is not a valid manifest ({exc}); re-run 'edgediff export'") from exc


def repository_problems(repo: Path | str, *, check_sha256: bool = True) -> list[str]:
    """What differs between the artifact files of ``repo`` and what its manifest recorded at export, or [].

    Sizes are checked for every file first (cheap); then, when ``check_sha256``, the sha256 of each (streamed).

    Raises:
        EdgediffError: the manifest exists but is not valid JSON.
    """
    root = Path(repo)
    manifest = read_manifest(root)
    if manifest is None:
        return []
    recorded: list[tuple[str, str, int | None]] = []
    for entry in manifest.get("variants", {}).values():
        for part in entry.get("parts", {}).values():
            sizes = part.get("file_sizes") or {}
            model = part.get("model", "")
            for rel, sha in (part.get("files") or {}).items():
                recorded.append((f"{model}/{rel}", sha, sizes.get(rel)))
    problems = []
    for rel, _sha, size in recorded:
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif size is not None and path.stat().st_size != size:
            problems.append(f"{rel} is {path.stat().st_size} bytes, the export wrote {size} (truncated or altered)")
    if problems or not check_sha256:
        return problems
    for rel, sha, _size in recorded:
        got = file_sha256(root / rel)
        if got != sha:
            problems.append(f"{rel} has sha256 {got[:12]}..., the export wrote {sha[:12]}... (altered)")
    return problems


def verify_repository(repo: Path | str) -> None:
    """Refuse a repository whose artifact files are not the ones exported (see ``repository_problems``).

    Raises:
        EdgediffError: a file is missing, truncated or altered; the message names it and how to fix it.
    """
    problems = repository_problems(repo)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise EdgediffError(f"model repository {repo}: {problems[0]}{more}; it will not be served. Re-run "
                            "'edgediff export' for it (damaged cached artifacts are rebuilt)")


def unfinished_export(repo: Path | str) -> str | None:
    """Why ``repo`` is a half-finished export (a staging folder, or a manifest still saying exporting), else None."""
    root = Path(repo)
    staging = sorted(p.name for p in root.glob(STAGING_PREFIX + "*")) if root.is_dir() else []
    if staging:
        return f"{root} holds {staging[0]}: an export is running or was interrupted; re-run 'edgediff export'"
    manifest = read_manifest(root)
    if manifest is not None and manifest.get("state") != STATE_COMPLETE:
        return f"{root / MANIFEST_NAME} says state={manifest.get('state')!r}: the export did not finish; re-run it"
    return None


def export_mismatch(repo: Path, *, model: str, target: str, variants: list[str], weights: str | None) -> str | None:
    """Why ``repo`` does not hold a finished export of this model, weights, target and variants, or None if it does.

    Checked in order: a finished export, the preset, the target, the exporter code (``exporter_sha256``), the
    weights' sha256, every variant, and every artifact's size and sha256 (a damaged one is re-exported, never served).
    """
    unfinished = unfinished_export(repo)
    if unfinished:
        return unfinished
    manifest = read_manifest(repo)
    if manifest is None:
        return f"{repo} has no {MANIFEST_NAME}"
    if manifest.get("preset") != model:
        return f"it holds preset {manifest.get('preset')}, not {model}"
    if manifest.get("target", {}).get("name") != target:
        return f"it was exported for target {manifest.get('target', {}).get('name')}, not {target}"
    if manifest.get("exporter_sha256") != exporter_sha256():
        return "it was written by other exporter code (another edgediff checkout or release)"
    if manifest.get("weights", {}).get("sha256") != weights_origin(get_preset(model), weights).sha256:
        return "its weights differ from the ones asked for"
    missing = [v for v in variants if v not in manifest.get("variants", {})]
    if missing:
        return f"variants {', '.join(missing)} are not exported"
    damaged = repository_problems(repo)
    return f"its artifacts are damaged: {damaged[0]}" if damaged else None
