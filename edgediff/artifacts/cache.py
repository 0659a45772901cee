"""A content-addressed cache of exported artifacts: same model, weights, kind and tool versions -> same folder.

Every finished folder's ``artifact.json`` records the size and sha256 of each file it holds (hashed once, when the
artifact is written). ``find_cached`` checks them before handing a folder out (sizes always, sha256 streamed, once
per process while the files' stat is unchanged); a truncated or altered file makes the entry invalid: it is removed
and ``cached_build`` builds it again, so a damaged artifact is never served.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgediff.constants import ENV_CACHE_DIR
from edgediff.io import atomic_write_json, file_sha256

logger = logging.getLogger(__name__)

ARTIFACT_FORMAT = 1
"""Bump when an exporter changes what it writes, so old cache entries are not reused."""
DONE_FILE = "artifact.json"
FILES_KEY = "files"
"""``artifact.json`` key: ``{relative path: {"size": bytes, "sha256": hex}}`` of every file of the artifact."""
_verified: dict[str, tuple[tuple[int, int, int], ...]] = {}
"""Folders verified in this process -> the (inode, size, mtime_ns) of their files then (re-hashed when changed)."""
_verified_lock = threading.Lock()


class CorruptArtifactError(Exception):
    """A cached artifact's files do not match what was recorded when it was written (internal to this module)."""


def file_record(path: Path) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of a file, read in chunks (the page cache holds the bytes, not us)."""
    return {"size": path.stat().st_size, "sha256": file_sha256(path)}


def record_files(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file under ``folder`` except ``artifact.json``, keyed by relative path."""
    return {str(p.relative_to(folder)): file_record(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != DONE_FILE}


def verify_files(folder: Path, files: dict[str, dict[str, Any]]) -> None:
    """Check each recorded file's size, then its sha256.

    Raises:
        CorruptArtifactError: a file is missing, has another size or another sha256 (the message says which).
    """
    stats = []
    for rel, want in files.items():
        path = folder / rel
        try:
            st = path.stat()
        except OSError:
            raise CorruptArtifactError(f"{rel} is missing") from None
        if st.st_size != want["size"]:
            raise CorruptArtifactError(f"{rel} is {st.st_size} bytes, {want['size']} were written (truncated or "
                                       "altered)")
        stats.append((st.st_ino, st.st_size, st.st_mtime_ns))
    key = str(folder)
    with _verified_lock:
        if _verified.get(key) == tuple(stats):
            return
    for rel, want in files.items():
        got = file_record(folder / rel)["sha256"]
        if got != want["sha256"]:
            raise CorruptArtifactError(f"{rel} has sha256 {got[:12]}..., {want['sha256'][:12]}... was written "
                                       "(altered)")
    with _verified_lock:
        _verified[key] = tuple(stats)


def _discard(folder: Path, why: str) -> None:
    """Move a corrupt entry out of the way (atomically, so no reader sees half of it), then delete it."""
    logger.warning("cached artifact %s is damaged (%s): rebuilding it", folder, why)
    trash = folder.with_name(f"{folder.name}.corrupt-{os.getpid()}-{time.monotonic_ns()}")
    try:
        folder.rename(trash)
    except OSError:  # another process discarded it first
        return
    shutil.rmtree(trash, ignore_errors=True)
    with _verified_lock:
        _verified.pop(str(folder), None)


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
    """The finished artifact ``cached_build`` would return, or None when the cache has none (nothing is built).

    The entry's files are checked against the sizes and sha256 recorded when it was written; a damaged entry (or
    one without a record) is removed and None returned, so the caller builds it again.
    """
    folder = (root or cache_root()) / f"{kind}-{artifact_key(fingerprint, kind, extra)}"
    done = folder / DONE_FILE
    if not done.is_file():
        return None
    try:
        report = json.loads(done.read_text(encoding="utf-8"))
        files = report.get(FILES_KEY)
        if not isinstance(files, dict) or not files:
            raise CorruptArtifactError(f"{DONE_FILE} records no file sizes and checksums (written by an older "
                                       "edgediff)")
        verify_files(folder, files)
    except (CorruptArtifactError, OSError, ValueError, KeyError, TypeError) as exc:
        _discard(folder, str(exc))
        return None
    report["cached"] = True
    return folder, report


ABANDONED_AFTER_S = 1800.0
"""A build folder untouched this long, whose process is gone, is abandoned (longer than any quiet build stage)."""


def remove_abandoned_builds(folder: Path, *, idle_s: float = ABANDONED_AFTER_S) -> list[Path]:
    """Remove the ``FOLDER.tmp-PID-*`` build folders of processes that no longer exist; the ones removed.

    A build killed without a chance to clean up (SIGKILL, the OOM killer, a worker's fast exit on its death signal)
    leaves its temporary folder, hundreds of MB for a full-size model. A folder whose pid still runs here (or was
    reused) is left alone, and so is one written to in the last ``idle_s`` seconds: a cache shared with a container
    sees pids of another namespace, which look dead from here.
    """
    removed = []
    now = time.time()
    for tmp in folder.parent.glob(f"{folder.name}.tmp-*"):
        pid = tmp.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            touched = max([tmp.stat().st_mtime, *(entry.stat().st_mtime for entry in tmp.iterdir())])
        except OSError:
            continue
        if now - touched < idle_s:
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
        except PermissionError:  # alive, someone else's
            pass
    if removed:
        logger.info("removed %d abandoned build folder(s) of %s", len(removed), folder.name)
    return removed


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
    nothing that a later run could mistake for a finished one. The size and sha256 of each file are recorded then;
    an entry whose files no longer match is rebuilt (see ``find_cached``).

    Args:
        fingerprint: ``ModelSpec.fingerprint()``: architecture + weights.
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
    remove_abandoned_builds(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # unique per build: two threads of this process may build the same artifact at once (the pid, first, tells
    # remove_abandoned_builds whose it is)
    tmp = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-{os.getpid()}-", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the artifact from a container sharing the cache as another user
    t0 = time.perf_counter()
    try:
        report = dict(build(tmp))
        report.setdefault("build_s", time.perf_counter() - t0)
        report.update(kind=kind, extra=extra or {})
        report[FILES_KEY] = record_files(tmp)  # hashed once, here; checked by every find_cached
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
