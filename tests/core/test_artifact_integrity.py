"""The artifact cache verifies what it serves: sizes and sha256 recorded at write, checked at load; a truncated or
altered file (here a real ONNX export) is rebuilt, never served."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgediff.artifacts import cache
from edgediff.artifacts.cache import DONE_FILE, FILES_KEY, cached_build, file_record, find_cached


def _builder(calls: list[int], payload: bytes = b"artifact-bytes" * 100) -> Any:
    def build(folder: Path) -> dict[str, Any]:
        calls.append(1)
        (folder / "model.bin").write_bytes(payload)
        (folder / "sub").mkdir()
        (folder / "sub" / "weights.bin").write_bytes(payload[::-1])
        return {"size_bytes": 2 * len(payload)}

    return build


def test_records_sizes_and_checksums_at_write(tmp_path: Path) -> None:
    calls: list[int] = []
    folder, report = cached_build("fp", "kind-a", _builder(calls), root=tmp_path)
    recorded = json.loads((folder / DONE_FILE).read_text())[FILES_KEY]
    assert set(recorded) == {"model.bin", "sub/weights.bin"}
    for rel, entry in recorded.items():
        assert entry == file_record(folder / rel)
    assert report[FILES_KEY] == recorded and report["cached"] is False
    again, report2 = cached_build("fp", "kind-a", _builder(calls), root=tmp_path)
    assert again == folder and report2["cached"] is True and len(calls) == 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "same_size_rewrite"])
def test_damaged_entry_is_rebuilt(tmp_path: Path, damage: str) -> None:
    calls: list[int] = []
    folder, _ = cached_build("fp", "kind-b", _builder(calls), root=tmp_path)
    assert find_cached("fp", "kind-b", root=tmp_path) is not None  # verified once (and memoised)
    target = folder / "sub" / "weights.bin"
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        target.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])
    elif damage == "delete":
        target.unlink()
    else:  # same size, other bytes, and the old mtime restored: only the sha256 can tell
        stat = target.stat()
        import os

        target.write_bytes(b"x" * len(data))
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        cache._verified.clear()  # a new process: nothing memoised
    assert find_cached("fp", "kind-b", root=tmp_path) is None  # refused...
    assert not folder.exists()  # ...and removed
    rebuilt, report = cached_build("fp", "kind-b", _builder(calls), root=tmp_path)
    assert report["cached"] is False and len(calls) == 2
    assert (rebuilt / "sub" / "weights.bin").read_bytes() == data


def test_entry_without_a_record_is_rebuilt(tmp_path: Path) -> None:
    calls: list[int] = []
    folder, _ = cached_build("fp", "kind-c", _builder(calls), root=tmp_path)
    done = folder / DONE_FILE
    report = json.loads(done.read_text())
    del report[FILES_KEY]
    done.write_text(json.dumps(report))  # as an older edgediff wrote it
    _, again = cached_build("fp", "kind-c", _builder(calls), root=tmp_path)
    assert again["cached"] is False and len(calls) == 2


def test_corrupt_onnx_artifact_is_rebuilt_not_served(tiny_components: Any, tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="onnx is not installed")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from edgediff.artifacts.build import build_artifact, find_artifact
    from edgediff.artifacts.onnx_export import FILENAME

    folder, _ = build_artifact(tiny_components, "vqdec", "onnx-fp32", root=tmp_path)
    onnx_file = folder / FILENAME
    good = onnx_file.read_bytes()
    onnx_file.write_bytes(good[: len(good) // 3])  # truncated, as by a full disk or a killed copy
    assert find_artifact(tiny_components, "vqdec", "onnx-fp32", root=tmp_path) is None
    folder2, report2 = build_artifact(tiny_components, "vqdec", "onnx-fp32", root=tmp_path)
    assert report2["cached"] is False
    assert file_record(folder2 / FILENAME) == report2[FILES_KEY][FILENAME]
    ort.InferenceSession(str(folder2 / FILENAME), providers=["CPUExecutionProvider"])  # a loadable model again


def test_a_build_removes_the_temporary_folders_of_dead_builders_only(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    key = cache.artifact_key("fp", "kind-c", None)
    abandoned = tmp_path / f"kind-c-{key}.tmp-{int(dead.stdout)}"  # its process has exited
    alive = tmp_path / f"kind-c-{key}.tmp-{os.getppid()}"  # a live process's build in progress
    other = tmp_path / f"kind-d-{key}.tmp-{int(dead.stdout)}"  # another artifact: not this build's business
    recent = tmp_path / f"kind-c-{key}.tmp-{int(dead.stdout) + 1_000_000}"  # no such pid here, but just written
    old = time.time() - cache.ABANDONED_AFTER_S - 60
    for folder in (abandoned, alive, other, recent):
        folder.mkdir()
        (folder / "partial.onnx").write_bytes(b"x" * 10)
        if folder is not recent:
            for path in (folder / "partial.onnx", folder):
                os.utime(path, (old, old))
    calls: list[int] = []
    folder, _ = cached_build("fp", "kind-c", _builder(calls), root=tmp_path)
    assert folder.name == f"kind-c-{key}" and calls == [1]
    assert not abandoned.exists() and alive.is_dir() and other.is_dir() and recent.is_dir()
