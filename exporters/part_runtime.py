"""The Triton side of a part model: its config parameters, numpy in and out, and DeepCache's image sequences.

What the Python-backend part model (``python_models/part_model.py``) calls. Loading is the variant's own
``Variant.load_part``, the method its in-process ``build`` loads the same artifacts with, and the DeepCache logic is
the core's ``DeepCacheUNet``: a part served by Triton computes what the variant computes in-process by construction.
Parts run on the CPU, except eager PyTorch (``torch-fp32``), which the GPU targets serve as Python-backend models on
a ``KIND_GPU`` instance: its module goes to the instance's device (``load_part``'s ``device``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgediff.artifacts.build import IO_NAMES, UNET_FULL, UNET_SHALLOW
from edgediff.constants import UNET_INPUT_TIMESTEP
from edgediff.errors import EdgediffError, InvalidArgumentError
from edgediff.models import get_preset
from edgediff.pipeline import UNetFn
from edgediff.variants import BuildOptions, get_variant
from edgediff.variants.base import PartFn
from edgediff.variants.deepcache import DeepCacheUNet
from edgediff.variants.torch_eager import PART_SUBFOLDER
from exporters.targets import DEEPCACHE_PART

__all__ = ["PART_SUBFOLDER", "DeepCacheSequences", "PartRunner", "PartSpec", "load_deepcache", "load_part"]


@dataclass(frozen=True)
class PartSpec:
    """What a part model loads: written into ``config.pbtxt`` ``parameters`` by the exporter.

    Attributes:
        variant: Registry name (``onnx-fp32``).
        part: ``unet``, ``vqdec``, ``unet-deepcache`` (or an artifact part, ``unet-full``/``unet-shallow``).
        preset: Model preset name (architecture of eager-PyTorch weights).
        artifact: Path of the artifact relative to the model folder (``1/model.onnx``, ``1/weights``); for
            ``unet-deepcache`` the full UNet's (``1/unet-full/model.xml``).
        threads: Intra-op threads; 0 means ``$EDGEDIFF_THREADS`` or the physical cores of the serving machine.
        shallow_artifact: ``unet-deepcache`` only: the shallow branch's artifact (``1/unet-shallow/model.xml``).
        deepcache_interval: ``unet-deepcache`` only: the full UNet runs every this many steps of an image.
    """

    variant: str
    part: str
    preset: str
    artifact: str
    threads: int = 0
    shallow_artifact: str = ""
    deepcache_interval: int = 1

    def to_parameters(self) -> dict[str, str]:
        """The ``parameters`` entries (all strings, as Triton stores them)."""
        parameters = {"variant": self.variant, "part": self.part, "preset": self.preset, "artifact": self.artifact,
                      "threads": str(self.threads)}
        if self.part == DEEPCACHE_PART:
            parameters.update(shallow_artifact=self.shallow_artifact, deepcache_interval=str(self.deepcache_interval))
        return parameters

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any]) -> PartSpec:
        """Read the spec back from a model config's ``parameters`` (Triton's JSON form or plain strings)."""
        values = {k: (v["string_value"] if isinstance(v, Mapping) else str(v)) for k, v in parameters.items()}
        missing = [k for k in ("variant", "part", "preset", "artifact") if k not in values]
        if missing:
            raise EdgediffError(f"config.pbtxt parameters lack {', '.join(missing)}; re-run 'edgediff export'")
        if values["part"] == DEEPCACHE_PART:
            missing = [k for k in ("shallow_artifact", "deepcache_interval") if k not in values]
            if missing:
                raise EdgediffError(f"config.pbtxt of a {DEEPCACHE_PART} model lacks parameters {', '.join(missing)}; "
                                    "re-run 'edgediff export'")
        return cls(variant=values["variant"], part=values["part"], preset=values["preset"],
                   artifact=values["artifact"], threads=int(values.get("threads", "0") or 0),
                   shallow_artifact=values.get("shallow_artifact", ""),
                   deepcache_interval=int(values.get("deepcache_interval", "1")))


def load_part(spec: PartSpec, model_dir: Path | str, device: str = "cpu") -> PartFn:
    """Load the artifact of ``spec`` from ``model_dir`` (a repository model folder) with ``Variant.load_part``.

    Args:
        spec: What to load.
        model_dir: The repository model folder.
        device: ``cpu``, or the GPU instance's ``cuda:<id>`` (eager PyTorch only); outputs are CPU tensors either way.

    Raises:
        EdgediffError: the artifact is missing, or the variant has no Python part runtime here (a GPU device for a
            variant other than eager PyTorch: the GPU targets serve those with native Triton backends).
    """
    path = Path(model_dir) / spec.artifact
    if not path.exists():
        raise EdgediffError(f"artifact {path} is missing; re-run 'edgediff export'")
    variant = get_variant(spec.variant)
    if device != "cpu" and variant.backend != "torch":
        raise EdgediffError(f"variant {spec.variant} has no Python part runtime on {device}; the GPU targets serve "
                            "it with a native Triton backend")
    return variant.load_part(spec.part, path, BuildOptions(threads=spec.threads or None),
                             preset=get_preset(spec.preset), device=device)


class PartRunner:
    """A loaded part that takes and returns numpy arrays keyed by the Triton tensor names.

    Args:
        spec: What to load.
        model_dir: The repository model folder (``<repo>/unet_onnx_fp32``).
        device: See ``load_part``.
    """

    def __init__(self, spec: PartSpec, model_dir: Path | str, device: str = "cpu") -> None:
        if spec.part not in IO_NAMES:
            raise EdgediffError(f"config.pbtxt names part {spec.part!r}; expected one of {', '.join(IO_NAMES)}")
        self.spec = spec
        self.input_names = list(IO_NAMES[spec.part][0])
        self.output_names = list(IO_NAMES[spec.part][1])
        self.output_name = self.output_names[0]
        self._fn = load_part(spec, model_dir, device)

    def outputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on a (possibly merged) batch; every output by name (the DeepCache full UNet has two).

        The timestep may arrive as ``[batch, 1]`` (Triton dims) or ``[batch]``.
        """
        args = []
        for name in self.input_names:
            array = np.asarray(inputs[name])
            if name == UNET_INPUT_TIMESTEP:
                array = array.reshape(-1).astype(np.int64, copy=False)
            args.append(torch.from_numpy(np.ascontiguousarray(array)))
        result = self._fn(*args)
        tensors = result if isinstance(result, tuple | list) else (result,)
        if len(tensors) != len(self.output_names):
            raise EdgediffError(f"part {self.spec.part} gave {len(tensors)} outputs, expected {self.output_names}")
        return {name: t.numpy() for name, t in zip(self.output_names, tensors, strict=True)}

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Run and return the first output (the only one of every part but ``unet-full``)."""
        return self.outputs(inputs)[self.output_name]


def _unet_args(sample: np.ndarray, timestep: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.from_numpy(np.ascontiguousarray(sample)),
            torch.from_numpy(np.asarray(timestep).reshape(-1).astype(np.int64, copy=False)))


class DeepCacheSequences:
    """The images a stateful ``unet-deepcache`` model is denoising, each with its own DeepCache state.

    An image is a Triton sequence: its first request (START flag) opens it with a fresh ``DeepCacheUNet.sequence()``
    (the core's cache logic: full UNet at the image's steps 0, N, 2N, ..., the shallow branch over the cached feature
    in between), every request runs one step of it, and its closing request (END flag) drops it without computing.
    Images idle for longer than ``idle_s`` (their pipeline model died) are dropped on the next request.

    Args:
        unet: The DeepCache runner over the loaded full and shallow parts.
        idle_s: See ``DEEPCACHE_SEQUENCE_IDLE_S`` (Triton's sequence batcher uses the same limit).
        clock: Monotonic seconds (tests pass a fake).
    """

    def __init__(self, unet: DeepCacheUNet, idle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.unet = unet
        self.idle_s = idle_s
        self.clock = clock
        self._open: dict[int | str, tuple[UNetFn, float]] = {}

    def __len__(self) -> int:
        return len(self._open)

    def step(self, sequence_id: int | str, sample: np.ndarray, timestep: np.ndarray, *, start: bool) -> np.ndarray:
        """The noise of one step of image ``sequence_id`` (``start``: its first request opens it).

        Raises:
            InvalidArgumentError: the image is not open (no START, or dropped after ``idle_s``).
        """
        now = self.clock()
        self._drop_idle(now)
        if start:
            self._open[sequence_id] = (self.unet.sequence(), now)
        elif sequence_id not in self._open:
            raise InvalidArgumentError(f"DeepCache sequence {sequence_id} is not open: its first request must carry "
                                       f"the sequence START flag (or it was idle over {self.idle_s:g} s and was "
                                       "dropped)")
        fn, _ = self._open[sequence_id]
        self._open[sequence_id] = (fn, now)
        return fn(*_unet_args(sample, timestep)).numpy()

    def end(self, sequence_id: int | str) -> bool:
        """Drop image ``sequence_id``'s state; False when it was not open."""
        return self._open.pop(sequence_id, None) is not None

    def _drop_idle(self, now: float) -> None:
        for key in [k for k, (_, used) in self._open.items() if now - used > self.idle_s]:
            del self._open[key]


def load_deepcache(
    spec: PartSpec, model_dir: Path | str, idle_s: float, on_evaluation: Callable[[str], None] | None = None
) -> DeepCacheSequences:
    """Load a ``unet-deepcache`` model's two artifacts as ``DeepCacheSequences``.

    Args:
        spec: A ``unet-deepcache`` spec (both artifacts and the interval).
        model_dir: The repository model folder.
        idle_s: See ``DeepCacheSequences``.
        on_evaluation: Called with ``"full"`` or ``"shallow"`` after each evaluation of that part (metrics).
    """
    if spec.part != DEEPCACHE_PART:
        raise EdgediffError(f"load_deepcache needs a {DEEPCACHE_PART} spec, got part {spec.part!r}")
    full = load_part(dataclasses.replace(spec, part=UNET_FULL), model_dir)
    shallow = load_part(dataclasses.replace(spec, part=UNET_SHALLOW, artifact=spec.shallow_artifact), model_dir)
    if on_evaluation is not None:
        full, shallow = _counted(full, "full", on_evaluation), _counted(shallow, "shallow", on_evaluation)
    return DeepCacheSequences(DeepCacheUNet(full, shallow, spec.deepcache_interval), idle_s)  # type: ignore[arg-type]


def _counted(fn: Callable[..., Any], kind: str, on_evaluation: Callable[[str], None]) -> Callable[..., Any]:
    def run(*args: torch.Tensor) -> Any:
        result = fn(*args)
        on_evaluation(kind)
        return result

    return run
