"""Memory in use: the process (RSS and its high-water mark), the system, and CUDA when torch already uses it.

Read from procfs under a configurable root: ``proc/<pid>/status`` (``VmRSS``, ``VmHWM``) and ``proc/meminfo``
(``MemTotal``, ``MemAvailable``); procfs' "kB" are KiB. Kinds reported (the ``kind`` label of
``edgediff_memory_used_bytes``):

* ``process-rss``: resident set size now;
* ``process-peak-rss``: ``VmHWM``, the highest RSS since the process started (a lifetime mark, not per window);
* ``system-used``: ``MemTotal - MemAvailable``; ``system-available``: ``MemAvailable``;
* ``cuda-allocated`` / ``cuda-max-allocated``: ``torch.cuda.memory_allocated``/``max_memory_allocated`` of the
  current device, only in a process where torch is already imported and CUDA initialised (this module never
  imports torch: a process that did not use CUDA has no CUDA memory to report).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from edgediff.telemetry.base import MemorySample, Reader, ReaderError, read_text

logger = logging.getLogger(__name__)

READER_NAME = "memory"
KIB = 1024


def parse_kib_fields(text: str, fields: tuple[str, ...]) -> dict[str, int]:
    """Return the ``Name:  123 kB`` fields of a procfs file in bytes; fields that are absent are left out."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in fields:
            parts = value.split()
            if parts and parts[0].isdigit():
                scale = KIB if len(parts) > 1 and parts[1].lower() == "kb" else 1
                out[key] = int(parts[0]) * scale
    return out


class MemoryReader(Reader):
    """Process, system and CUDA memory.

    Args:
        root: Filesystem root that holds ``proc/`` (``/`` normally; a fixture tree in tests).
        pid: The process to watch; ``None`` for this process (``proc/self``).
        cuda: Report CUDA memory when torch has initialised CUDA in this process.
    """

    name = READER_NAME
    provides_power = False

    def __init__(self, root: str | Path = "/", pid: int | None = None, cuda: bool = True) -> None:
        self.root = Path(root)
        self.status_path = self.root / "proc" / ("self" if pid is None else str(pid)) / "status"
        self.meminfo_path = self.root / "proc" / "meminfo"
        self.cuda = cuda and pid is None

    def read_memory(self) -> list[MemorySample]:
        """Read every kind now; ``ReaderError`` when procfs cannot be read."""
        status = parse_kib_fields(read_text(self.status_path), ("VmRSS", "VmHWM"))
        meminfo = parse_kib_fields(read_text(self.meminfo_path), ("MemTotal", "MemAvailable"))
        out = []
        if "VmRSS" in status:
            out.append(MemorySample("process-rss", status["VmRSS"], "procfs"))
        if "VmHWM" in status:
            out.append(MemorySample("process-peak-rss", status["VmHWM"], "procfs"))
        if "MemTotal" in meminfo and "MemAvailable" in meminfo:
            out.append(MemorySample("system-used", meminfo["MemTotal"] - meminfo["MemAvailable"], "procfs"))
            out.append(MemorySample("system-available", meminfo["MemAvailable"], "procfs"))
        if self.cuda:
            out.extend(cuda_memory())
        return out


def cuda_memory() -> list[MemorySample]:
    """CUDA memory of this process, when torch is imported and has initialised CUDA; else nothing."""
    torch = sys.modules.get("torch")
    if torch is None:
        return []
    try:
        if not torch.cuda.is_initialized():
            return []
        return [
            MemorySample("cuda-allocated", int(torch.cuda.memory_allocated()), "torch.cuda"),
            MemorySample("cuda-max-allocated", int(torch.cuda.max_memory_allocated()), "torch.cuda"),
        ]
    except (RuntimeError, AttributeError) as exc:
        logger.debug("torch.cuda memory unavailable: %s", exc)
        return []


def probe_memory(root: str | Path = "/", pid: int | None = None) -> tuple[MemoryReader | None, str | None]:
    """Return ``(reader, None)`` when procfs answers under ``root``, else ``(None, reason)``."""
    reader = MemoryReader(root, pid)
    try:
        reader.read_memory()
    except ReaderError as exc:
        return None, str(exc)
    return reader, None
