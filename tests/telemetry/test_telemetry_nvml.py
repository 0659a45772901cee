"""NVML faked at the library call boundary: the ``pynvml`` functions the reader calls."""

from __future__ import annotations

from types import SimpleNamespace

import pynvml
import pytest

from edgediff.telemetry import EnergyMonitor, discover, nvml


class FakeNvml:
    def __init__(self, devices: int = 1) -> None:
        self.devices = devices
        self.init_error: int | None = None
        self.energy_supported = True
        self.power_mw = 123456
        self.energy_mj = 5_000_000
        self.used_bytes = 3 * 1024**3
        self.fail_power: int | None = None
        self.inits = 0
        self.shutdowns = 0

    def install(self, monkeypatch) -> None:
        for name in (
            "nvmlInit",
            "nvmlShutdown",
            "nvmlDeviceGetCount",
            "nvmlDeviceGetHandleByIndex",
            "nvmlDeviceGetName",
            "nvmlDeviceGetPowerUsage",
            "nvmlDeviceGetTotalEnergyConsumption",
            "nvmlDeviceGetMemoryInfo",
        ):
            monkeypatch.setattr(pynvml, name, getattr(self, name))

    def nvmlInit(self):
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return self.devices

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("handle", index)

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA GeForce RTX 4090"

    def nvmlDeviceGetPowerUsage(self, handle):
        if self.fail_power is not None:
            raise pynvml.NVMLError(self.fail_power)
        return self.power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.energy_supported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self.energy_mj

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=self.used_bytes, total=24 * 1024**3, free=21 * 1024**3)


@pytest.fixture
def fake(monkeypatch):
    fake = FakeNvml()
    fake.install(monkeypatch)
    return fake


def test_reads_power_energy_and_memory_in_si_units(fake):
    readers, reason = nvml.probe_nvml(lambda: 3.0)
    assert reason is None
    (reader,) = readers
    assert (reader.name, reader.domain, reader.device_name) == ("nvml:0", "gpu-board", "NVIDIA GeForce RTX 4090")
    assert reader.has_energy_counter
    (power,) = reader.read_power()
    assert (power.power_w, power.domain, power.source, power.t_s) == (123.456, "gpu-board", "nvml:0", 3.0)
    (energy,) = reader.read_energy()
    assert (energy.energy_j, energy.range_j) == (5000.0, None)
    (mem,) = reader.read_memory()
    assert (mem.kind, mem.used_bytes, mem.source) == ("gpu-used", 3 * 1024**3, "nvml:0")


def test_init_error_makes_nvml_unavailable_with_the_reason(fake, tmp_path):
    fake.init_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    found = discover(tmp_path, tegrastats_command=None)
    reasons = {u.reader: u.reason for u in found.unavailable}
    assert reasons["nvml"] == "NVML initialisation failed: Driver Not Loaded"
    assert not any(r.name.startswith("nvml") for r in found.readers)


def test_this_machine_either_has_a_gpu_or_says_why():
    readers, reason = nvml.probe_nvml(lambda: 0.0)
    assert readers or reason
    for reader in readers:
        reader.stop()


def test_energy_comes_from_the_counter_when_there_is_one(fake, clock):
    readers, _ = nvml.probe_nvml(clock)
    monitor = EnergyMonitor(readers, background=False, clock=clock)
    monitor.start()
    monitor.begin_window("gen")
    for _ in range(10):
        clock.advance(0.1)
        fake.energy_mj += 25_000  # 25 J per 0.1 s = 250 W by the counter; power usage says 123.456 W
        monitor.poll()
    m = monitor.end_window("gen")
    board = m.energy_j["gpu-board"]
    assert board.method == "counter"
    assert board.gross_j == pytest.approx(250.0, rel=1e-12)
    (reading,) = monitor.readings()
    assert reading.power_w == 123.456  # the gauge shows NVML's power reading
    monitor.close()
    assert fake.shutdowns == fake.inits == 1


def test_without_a_counter_power_is_integrated(fake, clock):
    fake.energy_supported = False
    readers, _ = nvml.probe_nvml(clock)
    assert readers[0].has_energy_counter is False
    assert readers[0].read_energy() == []
    monitor = EnergyMonitor(readers, background=False, clock=clock)
    monitor.start()
    monitor.begin_window("gen")
    for _ in range(20):
        clock.advance(0.1)
        monitor.poll()
    m = monitor.end_window("gen")
    assert m.energy_j["gpu-board"].method == "trapezoid"
    assert m.energy_j["gpu-board"].gross_j == pytest.approx(123.456 * 2.0, rel=1e-12)


def test_a_failing_read_marks_the_reader_down_then_up(fake, clock):
    readers, _ = nvml.probe_nvml(clock)
    monitor = EnergyMonitor(readers, background=False, clock=clock)
    monitor.start()
    fake.fail_power = pynvml.NVML_ERROR_GPU_IS_LOST
    clock.advance(0.1)
    monitor.poll()
    status = monitor.reader_status()["nvml:0"]
    assert not status.up
    assert "GPU is lost" in status.reason
    fake.fail_power = None
    clock.advance(0.1)
    monitor.poll()
    assert monitor.reader_status()["nvml:0"].up


def test_two_gpus_get_two_domains(monkeypatch):
    fake = FakeNvml(devices=2)
    fake.install(monkeypatch)
    readers, _ = nvml.probe_nvml(lambda: 0.0)
    assert [(r.name, r.domain) for r in readers] == [("nvml:0", "gpu-board"), ("nvml:1", "gpu-board-1")]
    assert readers[1].read_memory()[0].kind == "gpu-used-1"
