"""Give back the pages of a memory-mapped weights file once a compiler has copied what it needs out of them.

OpenVINO maps an IR's ``model.bin`` (``read_model``) and its CPU plugin packs every weight into buffers of its own
while it compiles (the blocked int8/bf16 layouts its kernels read). The compiled model keeps the mapping open, and
every page the compiler read stays in this process's resident set: for the celebahq-256 int8 UNet, 390 MB of file
pages beside the 360 MB of packed weights, twice the weights in RSS (measured 2026-12-04, benchmarks/RESULTS.md).
The packed copy is what inference reads; the mapped file is touched again only for a few small constants.

``releasing_mapped_pages`` tells the kernel, while the compile runs and once after it, that this process no longer
needs those pages (``madvise(MADV_DONTNEED)`` on the file's read-only mappings). Nothing is lost: a page read again
is faulted back in from the page cache, with the same bytes. The file pages of the compile then never pile up, so
the compile's peak is the packed weights, not twice them. Linux only; elsewhere (or if the kernel refuses) it does
nothing, which is the old behaviour.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MADV_DONTNEED = 4
"""Linux ``madvise`` advice: drop this range's pages from the process (file pages are read back on access)."""
POLL_S = 0.01
"""How often the pages are dropped while a compile runs (the compiler reads about 40 MB per 10 ms here)."""


def _madvise() -> Any:
    try:
        fn = ctypes.CDLL("libc.so.6", use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_MADVISE = _madvise()


def read_only_mappings(path: Path, maps: str = "/proc/self/maps") -> list[tuple[int, int]]:
    """``(start, end)`` addresses of this process's read-only mappings of ``path`` (none where /proc is absent)."""
    target = os.path.realpath(path)
    ranges = []
    try:
        with open(maps, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].rstrip("\n") == target and "w" not in fields[1]:
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    ranges.append((start, end))
    except OSError:
        return []
    return ranges


def drop_mapped_pages(path: Path) -> int:
    """Drop this process's resident pages of its read-only mappings of ``path``; returns the bytes advised."""
    if _MADVISE is None:
        return 0
    advised = 0
    for start, end in read_only_mappings(path):
        if _MADVISE(start, end - start, MADV_DONTNEED) == 0:
            advised += end - start
    return advised


@contextlib.contextmanager
def releasing_mapped_pages(path: Path, *, poll_s: float = POLL_S) -> Iterator[None]:
    """While the block runs (a compile), and once after it, drop the resident pages of ``path``'s mappings."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(poll_s):
            drop_mapped_pages(path)

    worker = threading.Thread(target=loop, name="drop-mapped-pages", daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join()
        drop_mapped_pages(path)
