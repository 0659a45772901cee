"""Two threads of one process building the same artifact at once each get their own temporary folder (issue 31).

Before the fix the temporary folder was named by the process id only: the second build deleted the first one's
folder while it was being written.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from edgediff.artifacts.cache import cached_build, find_cached, remove_abandoned_builds


def test_concurrent_builds_in_one_process_do_not_collide(tmp_path: Path) -> None:
    both_started = threading.Barrier(2, timeout=10)
    folders: list[Path] = []
    errors: list[BaseException] = []

    def build(folder: Path) -> dict[str, Any]:
        (folder / "part-a.bin").write_bytes(b"a" * 1000)
        both_started.wait()  # both builds are in progress now, each in its temporary folder
        (folder / "part-b.bin").write_bytes(b"b" * 1000)
        return {"files": 2}

    def worker() -> None:
        try:
            folders.append(cached_build("f" * 64, "kind", build, root=tmp_path)[0])
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == [] and len(folders) == 2 and folders[0] == folders[1]
    assert {p.name for p in folders[0].iterdir()} >= {"part-a.bin", "part-b.bin"}
    assert find_cached("f" * 64, "kind", root=tmp_path) is not None
    assert [p for p in tmp_path.iterdir() if ".tmp-" in p.name] == []  # the loser's folder was removed


def test_abandoned_unique_build_folders_are_still_found(tmp_path: Path) -> None:
    folder = tmp_path / "kind-abc"
    dead = tmp_path / "kind-abc.tmp-999999999-x1y2z3"  # a pid that cannot exist, then mkdtemp's suffix
    dead.mkdir()
    (dead / "f").write_bytes(b"1")
    assert remove_abandoned_builds(folder, idle_s=0) == [dead]
