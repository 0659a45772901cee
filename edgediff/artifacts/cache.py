"""A content-addressed cache of exported artifacts: same model, weights, kind and tool versions -> same folder."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgediff.constants import ENV_CACHE_DIR
from edgediff.io import atomic_write_json

logger = logging.getLogger(__name__)

ARTIFACT_FORMAT = 1
"""Bump when an exporter changes what it writes, so old cache entries are not reused."""
DONE_FILE = "artifact.json"


def cache_root() -> Path:
    """``$EDGEDIFF_CACHE_DIR``, else ``~/.cache/edgediff``."""
    env = os.environ.get(ENV_CACHE_DIR)
    return Path(env) if env else Path.home() / ".cache" / "edgediff"


def artifact_key(fingerprint: str, kind: str, extra: dict[str, Any] | None = None) -> str:
    """Hash of everything that determines an artifact's bytes."""
    import torch

    payload = json.dumps(
        {"fp": fingerprint, "kind": kind, "extra": extra or {}, "torch": torch.__version__, "format": ARTIFACT_FORMAT},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def find_cached(
    fingerprint: str, kind: str, *, extra: dict[str, Any] | None = None, root: Path | None = None
) -> tuple[Path, dict[str, Any]] | None:
    """The finished artifact ``cached_build`` would return, or None when the cache has none (nothing is built)."""
    folder = (root or cache_root()) / f"{kind}-{artifact_key(fingerprint, kind, extra)}"
    done = folder / DONE_FILE
    if not done.is_file():
        return None
    report = json.loads(done.read_text(encoding="utf-8"))
    report["cached"] = True
    return folder, report


def cached_build(
    fingerprint: str,
    kind: str,
    build: Callable[[Path], dict[str, Any]],
    *,
    extra: dict[str, Any] | None = None,
    root: Path | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Return the folder of an artifact, building it once.

    ``build(folder)`` writes the artifact's files into an empty temporary folder and returns its report (export
    time, sizes, op counts...). The folder is renamed into place only when complete, so an interrupted export leaves
    nothing that a later run could mistake for a finished one.

    Args:
        fingerprint: ``LDMComponents.fingerprint()``: architecture + weights.
        kind: e.g. ``"unet-onnx-fp32"``.
        build: The exporter.
        extra: Options that change the bytes (opset, precision...).
        root: Cache root (default ``cache_root()``).

    Returns:
        (folder, report) where report is what ``build`` returned plus ``cached: bool``.
    """
    found = find_cached(fingerprint, kind, extra=extra, root=root)
    if found is not None:
        return found
    folder = (root or cache_root()) / f"{kind}-{artifact_key(fingerprint, kind, extra)}"
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        report = dict(build(tmp))
        report.setdefault("build_s", time.perf_counter() - t0)
        report.update(kind=kind, extra=extra or {})
        atomic_write_json(tmp / DONE_FILE, report)
        try:
            tmp.rename(folder)
        except OSError:  # another process finished the same artifact first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report["cached"] = False
    logger.info("built %s in %.1f s -> %s", kind, report["build_s"], folder)
    return folder, report
