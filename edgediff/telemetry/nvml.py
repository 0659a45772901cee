"""NVIDIA GPUs through NVML (the ``pynvml`` module of nvidia-ml-py).

Per device: board power (``nvmlDeviceGetPowerUsage``, mW), the total-energy counter
(``nvmlDeviceGetTotalEnergyConsumption``, mJ since the driver loaded, Volta and newer; preferred over sampling power),
and device memory in use (``nvmlDeviceGetMemoryInfo().used``, bytes). Units are converted here and only here.

Device 0 reports the domain ``gpu-board``; device ``i > 0`` reports ``gpu-board-<i>`` so that no two devices share
a domain. The source is ``nvml:<i>``.
"""

from __future__ import annotations

import logging
from types import ModuleType

from edgediff.telemetry.base import DOMAIN_GPU_BOARD, EnergySample, MemorySample, PowerSample, Reader, ReaderError

logger = logging.getLogger(__name__)

READER_NAME = "nvml"


def _import_pynvml() -> ModuleType:
    import pynvml  # optional dependency (nvidia-ml-py), imported when probed

    return pynvml


def gpu_domain(index: int) -> str:
    """Return the power domain of GPU ``index``: ``gpu-board`` for device 0, ``gpu-board-<i>`` otherwise."""
    return DOMAIN_GPU_BOARD if index == 0 else f"{DOMAIN_GPU_BOARD}-{index}"


def memory_kind(index: int) -> str:
    """Return the memory kind of GPU ``index``: ``gpu-used`` for device 0, ``gpu-used-<i>`` otherwise."""
    return "gpu-used" if index == 0 else f"gpu-used-{index}"


class NvmlReader(Reader):
    """One NVIDIA GPU.

    Construct it through ``probe_nvml`` (which initialises NVML and finds the devices) or directly after
    ``nvmlInit``. Every ``NVMLError`` during a read becomes a ``ReaderError`` with NVML's message.

    Args:
        index: The NVML device index.
        pynvml: The ``pynvml`` module (injected so tests can fake the library at its call boundary).
        clock: Monotonic clock in seconds.
    """

    provides_power = True

    def __init__(self, index: int, pynvml: ModuleType, clock) -> None:
        self.index = index
        self.name = f"{READER_NAME}:{index}"
        self.source = self.name
        self.domain = gpu_domain(index)
        self._nvml = pynvml
        self._clock = clock
        self.owns_nvml_init = False
        """True for the one reader that calls ``nvmlShutdown`` on ``stop`` (set by ``probe_nvml``)."""
        try:
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.device_name = _as_str(pynvml.nvmlDeviceGetName(self._handle))
        except pynvml.NVMLError as exc:
            raise ReaderError(f"NVML device {index}: {exc}") from exc
        self.has_energy_counter = self._probe_energy_counter()

    def _probe_energy_counter(self) -> bool:
        try:
            self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except self._nvml.NVMLError as exc:
            logger.info(
                "%s (%s): no total-energy counter (%s); energy is integrated from power samples",
                self.name,
                self.device_name,
                exc,
            )
            return False
        return True

    def read_power(self) -> list[PowerSample]:
        """Board power now (NVML averages it over about a second on Ampere and newer)."""
        try:
            power_mw = self._nvml.nvmlDeviceGetPowerUsage(self._handle)
        except self._nvml.NVMLError as exc:
            raise ReaderError(f"nvmlDeviceGetPowerUsage on device {self.index}: {exc}") from exc
        return [PowerSample(t_s=self._clock(), power_w=power_mw / 1e3, domain=self.domain, source=self.source)]

    def read_energy(self) -> list[EnergySample]:
        """The total-energy counter, when the GPU has one (Volta and newer)."""
        if not self.has_energy_counter:
            return []
        try:
            energy_mj = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except self._nvml.NVMLError as exc:
            raise ReaderError(f"nvmlDeviceGetTotalEnergyConsumption on device {self.index}: {exc}") from exc
        return [EnergySample(t_s=self._clock(), energy_j=energy_mj / 1e3, domain=self.domain, source=self.source)]

    def read_memory(self) -> list[MemorySample]:
        """Device memory in use by every process."""
        try:
            used_bytes = int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)
        except self._nvml.NVMLError as exc:
            raise ReaderError(f"nvmlDeviceGetMemoryInfo on device {self.index}: {exc}") from exc
        return [MemorySample(kind=memory_kind(self.index), used_bytes=used_bytes, source=self.source)]

    def stop(self) -> None:
        """Release this reader's reference on NVML (NVML counts ``nvmlInit``/``nvmlShutdown`` pairs)."""
        if self.owns_nvml_init:
            self.owns_nvml_init = False
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError as exc:
                logger.debug("%s: nvmlShutdown failed: %s", self.name, exc)


def _as_str(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def probe_nvml(clock) -> tuple[list[NvmlReader], str | None]:
    """Initialise NVML and return a reader per GPU, or the reason there is none.

    Args:
        clock: Monotonic clock in seconds, shared with the monitor.

    Returns:
        ``(readers, None)`` when at least one GPU answered, else ``([], reason)``.
    """
    try:
        pynvml = _import_pynvml()
    except ImportError as exc:
        return [], f"nvidia-ml-py is not installed ({exc}); install it with: pip install nvidia-ml-py"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return [], f"NVML initialisation failed: {exc}"
    try:
        count = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError as exc:
        _shutdown_quietly(pynvml)
        return [], f"nvmlDeviceGetCount failed: {exc}"
    readers: list[NvmlReader] = []
    reasons: list[str] = []
    for index in range(count):
        try:
            readers.append(NvmlReader(index, pynvml, clock))
        except ReaderError as exc:
            reasons.append(str(exc))
    if not readers:
        _shutdown_quietly(pynvml)
        return [], "; ".join(reasons) if reasons else "NVML found no GPU"
    # One nvmlShutdown per successful nvmlInit: the first reader owns the reference.
    readers[0].owns_nvml_init = True
    return readers, None


def _shutdown_quietly(pynvml: ModuleType) -> None:
    try:
        pynvml.nvmlShutdown()
    except pynvml.NVMLError as exc:
        logger.debug("nvmlShutdown failed: %s", exc)
