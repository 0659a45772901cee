from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

from edgediff.telemetry.memory import MemoryReader, cuda_memory, probe_memory

PROC = Path(__file__).parent / "fixtures" / "proc"
KIB = 1024


def test_procfs_fixture_reads_exactly():
    samples = MemoryReader(PROC, cuda=False).read_memory()
    assert [(s.kind, s.used_bytes, s.source) for s in samples] == [
        ("process-rss", 654321 * KIB, "procfs"),
        ("process-peak-rss", 812345 * KIB, "procfs"),
        ("system-used", (16318284 - 10485760) * KIB, "procfs"),
        ("system-available", 10485760 * KIB, "procfs"),
    ]


def test_another_process_by_pid(tmp_path):
    shutil.copytree(PROC, tmp_path, dirs_exist_ok=True)
    (tmp_path / "proc/4242").mkdir()
    (tmp_path / "proc/4242/status").write_text("Name:\tworker\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n")
    kinds = {s.kind: s.used_bytes for s in MemoryReader(tmp_path, pid=4242).read_memory()}
    assert kinds["process-rss"] == 1024 * KIB
    assert kinds["process-peak-rss"] == 2048 * KIB


def test_this_machine_has_procfs():
    reader, reason = probe_memory("/")
    assert reason is None
    kinds = {s.kind: s.used_bytes for s in reader.read_memory()}
    assert kinds["process-rss"] > 0
    assert kinds["process-peak-rss"] >= kinds["process-rss"]


def test_missing_procfs_says_which_file(tmp_path):
    reader, reason = probe_memory(tmp_path)
    assert reader is None
    assert str(tmp_path / "proc/self/status") in reason


def test_cuda_memory_only_when_torch_initialised_cuda(monkeypatch):
    cuda = SimpleNamespace(
        is_initialized=lambda: True, memory_allocated=lambda: 1_000_000, max_memory_allocated=lambda: 3_000_000
    )
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    assert [(s.kind, s.used_bytes) for s in cuda_memory()] == [
        ("cuda-allocated", 1_000_000),
        ("cuda-max-allocated", 3_000_000),
    ]
    cuda.is_initialized = lambda: False
    assert cuda_memory() == []
    monkeypatch.delitem(sys.modules, "torch")
    assert cuda_memory() == []
