"""The low-memory variant for phones and small boards: int8 weights, streamed UNet stages, a tiled decoder.

Peak memory is what breaks a phone (the study's needed 2.4 GB and swap), so this variant never holds more weights
than it needs at that moment:

* it never builds the fp32 torch model: it runs from a ``ModelSpec`` and artifacts exported beforehand (a child
  process exports whatever the cache lacks; ``edgediff.artifacts.prepare_worker``);
* the UNet is cut into int8 stages of bounded size (``edgediff.artifacts.unet_stages``); each is compiled right
  before it runs and released right after, so only one stage's weights are resident at a time;
* with DeepCache the small shallow branch stays compiled, so cached steps load nothing;
* the decoder runs int8 in two parts (``decoder_parts``): the trunk at latent resolution whole (its attention is
  global), the tail, where activations grow to 256 x 256, on overlapping tiles (``tiled_decode``);
* every model is compiled for static shapes (OpenVINO then plans its activation memory) and released after use;
  freed memory goes back to the system (one malloc arena, ``malloc_trim``, TBB's allocator caches cleaned);
* diffusers is imported without ``torch._dynamo`` (71 MB), which a process that never compiles does not need.

It trades latency for memory: each full step recompiles the stages (from OpenVINO's on-disk compiled cache).
Measured on celebahq-256 (benchmarks/RESULTS.md): about 510 MB peak RSS for a whole image in a fresh process.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgediff.artifacts import lowmem, prepare
from edgediff.artifacts.build import IO_NAMES, UNET_SHALLOW, build_artifact, find_artifact
from edgediff.artifacts.cache import cache_root
from edgediff.artifacts.lowmem import TAIL_INPUT
from edgediff.artifacts.openvino_ir import FILENAME
from edgediff.artifacts.unet_stages import run_stages
from edgediff.availability import cpu_supports_bf16, is_module_available, is_onnxruntime_available, require
from edgediff.constants import VQDEC_INPUT
from edgediff.errors import EdgediffError
from edgediff.models.presets import ModelPreset
from edgediff.models.spec import ModelSpec
from edgediff.models.weights import WeightsOrigin, model_fingerprint, weights_origin
from edgediff.variants.base import Availability, BuildOptions, BuiltVariant, StatelessUNet, Variant
from edgediff.variants.deepcache import DeepCacheUNet, check_interval
from edgediff.variants.tiled_decode import TiledDecoder

logger = logging.getLogger(__name__)

DECODER_TILE_FRACTION: float | None = 0.6
"""Largest decoder tile side as a fraction of the latent side; the plan takes the fewest tiles of at most that side
and then the smallest side that covers the latent with them (64 -> 2 x 2 tiles of 36 overlapping by 8: each a third
of the whole decoder's activations, 1.27x its work; the 3 x 3 tiles of 32 before were 2.25x, and the tiled tail was
half the phone variant's image time). None decodes whole (exact, more memory)."""
TILE_MIN_OVERLAP_FRACTION = 0.125
"""Least tile overlap as a fraction of the latent side (64 -> 8)."""
COMPILED_CACHE = True
"""Keep OpenVINO's compiled stages on disk (``CACHE_DIR``): every full step recompiles them, about a third faster
from the cache."""
COMPILED_CACHE_DIR = "openvino-compiled"
"""Folder of those compiled blobs under the artifact cache root."""
TOLERANCE = 2.5e-1
"""Relative L2 error of the final latents vs torch-fp32 allowed (int8 stages; measured on the tiny preset)."""


DECODER_MIN_TILE = 16
"""Smallest tile side in latent pixels: below it the per-tile normalisation costs too much fidelity (the digits
preset's 8 x 8 latents tiled in 4 x 4 tiles doubled its digits-FD), so small latents decode whole (they are small)."""


def decoder_tile(latent_size: int, fraction: float | None) -> tuple[int, int] | None:
    """``(tile side, least overlap)`` in latent pixels of the tiled decoder, or None to decode whole."""
    if fraction is None:
        return None
    largest = math.ceil(latent_size * fraction)
    overlap = max(1, round(latent_size * TILE_MIN_OVERLAP_FRACTION))
    if largest <= overlap:
        return None
    count = max(2, math.ceil((latent_size - overlap) / (largest - overlap)))  # tiles per side
    side = max(2, DECODER_MIN_TILE, math.ceil((latent_size + (count - 1) * overlap) / count))
    if side >= latent_size:
        return None
    return side, min(side - 1, overlap)


class StreamedModel:
    """An OpenVINO IR compiled for the shapes of each call and released when the call returns.

    Static shapes let OpenVINO plan its activation memory ahead (the decoder's peak drops by a third against a
    dynamic batch); compiling takes a few milliseconds per MB of weights. Inputs are matched by name: an exporter
    may have dropped an input the graph does not use (a stage of attention layers takes no time embedding).

    Args:
        core: The ``openvino.Core`` to compile with.
        path: ``model.xml``.
        config: Compile properties.
        input_names: Names of the positional arguments of a call.
    """

    def __init__(self, core: Any, path: Path, config: dict[str, Any], input_names: list[str]) -> None:
        self.core = core
        self.path = path
        self.config = config
        self.input_names = list(input_names)

    def compile(self, *args: torch.Tensor) -> Any:
        """Compile for the shapes of ``args`` (callers keep the result to hold the model resident)."""
        model = self.core.read_model(str(self.path))
        present = {name for port in model.inputs for name in port.get_names()}
        model.reshape({name: list(arg.shape) for name, arg in zip(self.input_names, args, strict=True)
                       if name in present})
        return self.core.compile_model(model, "CPU", self.config)

    def infer(self, compiled: Any, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Run ``compiled`` on CPU tensors; every output copied out as a CPU fp32 tensor."""
        present = {name for port in compiled.inputs for name in port.get_names()}
        feeds = {name: np.ascontiguousarray(arg.cpu().numpy())
                 for name, arg in zip(self.input_names, args, strict=True) if name in present}
        request = compiled.create_infer_request()
        request.infer(feeds)
        return tuple(torch.from_numpy(np.array(request.get_output_tensor(i).data, copy=True)).float()
                     for i in range(len(compiled.outputs)))

    def __call__(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Compile, infer once, release; returns every output as a CPU fp32 tensor."""
        outputs = self.infer(self.compile(*args), args)
        release_free_memory()
        return outputs


def import_diffusers_without_dynamo() -> None:
    """Import the parts of diffusers the pipeline uses without importing ``torch._dynamo`` (71 MB of memory).

    ``diffusers.utils.torch_utils`` imports ``torch._dynamo`` only to mark classes for ``torch.compile``, and falls
    back to a no-op when the import fails. A process that never compiles (the low-memory one) makes that import fail
    while diffusers loads, then lifts the block, so anything that really needs ``torch._dynamo`` later still imports
    it. A no-op once diffusers (or ``torch._dynamo``) is loaded.
    """
    if "torch._dynamo" in sys.modules or "diffusers.utils.torch_utils" in sys.modules:
        return
    sys.modules["torch._dynamo"] = None  # type: ignore[assignment]
    try:
        from diffusers import DDIMScheduler  # noqa: F401
        from diffusers.utils.torch_utils import randn_tensor  # noqa: F401
    finally:
        del sys.modules["torch._dynamo"]


M_ARENA_MAX = -8
"""glibc's ``mallopt`` parameter number of the arena limit."""


def limit_malloc_arenas() -> None:
    """One glibc malloc arena for the whole process (measured: 20 MB less peak on celebahq-256).

    By default every thread that allocates (OpenVINO's TBB workers) gets an arena of its own, whose freed memory
    stays with it; one shared arena returns it to the next allocation, whichever thread asks. Process-wide, and only
    for threads that have not allocated yet: the low-memory variant calls it before it compiles anything. A libc
    other than glibc is left alone.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 1)


def release_free_memory() -> None:
    """Hand freed memory back to the system, so the next stage starts from less.

    OpenVINO allocates through TBB's scalable allocator, which keeps freed blocks cached for reuse; its
    ``scalable_allocation_command(TBBMALLOC_CLEAN_ALL_BUFFERS)`` returns them. glibc's ``malloc_trim`` does the same
    for the heap. Either library missing (another platform) is not an error.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libtbbmalloc.so.2", mode=os.RTLD_NOLOAD | os.RTLD_LAZY).scalable_allocation_command(0, None)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class _StreamedDeepCache:
    """DeepCache whose shallow branch stays compiled over a run of cached steps only.

    It is released before each full step (whose stages need the memory) and when the generation ends (before
    decoding), and compiled again, in about 0.1 s, at the next cached step.
    """

    def __init__(self, full: Callable[..., tuple[torch.Tensor, torch.Tensor]], shallow: StreamedModel,
                 interval: int) -> None:
        self.full, self.shallow, self.interval = full, shallow, interval

    def sequence(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """A fresh DeepCache callable owning its shallow model (garbage with the callable)."""
        resident = _ResidentModel(self.shallow)

        def full(sample: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            resident.release()
            return self.full(sample, timestep)

        return DeepCacheUNet(full, resident, self.interval).sequence()


class _ResidentModel:
    """A model kept compiled between calls (recompiled when the shapes change) until ``release``."""

    def __init__(self, model: StreamedModel) -> None:
        self.model = model
        self.compiled: Any = None
        self.shapes: list[tuple[int, ...]] = []

    def release(self) -> None:
        """Drop the compiled model and its memory."""
        if self.compiled is not None:
            self.compiled = None
            release_free_memory()

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        shapes = [tuple(a.shape) for a in args]
        if self.compiled is None or shapes != self.shapes:
            self.release()
            self.compiled, self.shapes = self.model.compile(*args), shapes
        return self.model.infer(self.compiled, args)[0]


class LowMemoryVariant(Variant):
    """``openvino-int8-lowmem``: int8 UNet stages streamed one at a time, int8 tiled decoder, no torch model."""

    name = "openvino-int8-lowmem"
    backend = "openvino"
    precision = "int8"
    device = "cpu"
    description = ("low memory (phones): int8 OpenVINO UNet stages compiled one at a time, int8 tiled VQ decoder, "
                   "no torch model in memory; slower")
    tolerance = TOLERANCE
    supports_deepcache = True

    def availability(self) -> Availability:  # noqa: D102
        if not is_module_available("openvino"):
            return Availability.no("needs openvino: pip install 'edgediff[openvino]'")
        if not (is_onnxruntime_available() and is_module_available("nncf")):
            return Availability.no("its artifacts need onnx, onnxsim and nncf: pip install 'edgediff[onnx,openvino]'")
        return Availability.yes()

    # --- artifacts ------------------------------------------------------------------------------------------------

    def prepare(self, model: ModelSpec, options: BuildOptions) -> dict[str, Any]:
        """Build (or find) the manifest, the stages, the tile decoder and, with DeepCache, the shallow branch."""
        _, stages = lowmem.build_manifest(model)
        reports: dict[str, Any] = {}
        for index, (folder, report) in enumerate(lowmem.build_stages(model, stages)):
            reports[f"unet-stage{index}"] = {"path": str(folder / FILENAME), **report}
        for part, (folder, report) in lowmem.build_decoder(model).items():
            reports[part] = {"path": str(folder / FILENAME), **report}
        if check_interval(options.deepcache_interval) > 1:
            folder, report = build_artifact(model, UNET_SHALLOW, "openvino-int8")
            reports[UNET_SHALLOW] = {"path": str(folder / FILENAME), **report}
        return reports

    def _find(self, spec: ModelSpec, options: BuildOptions) -> dict[str, Any] | None:
        """The cached artifacts of ``spec`` (same keys as ``prepare``), or None when one is missing."""
        manifest = lowmem.find_manifest(spec.fingerprint(), spec.preset.name)
        if manifest is None:
            return None
        found: dict[str, Any] = {"stages": manifest[1]}
        stage_artifacts = lowmem.find_stages(spec, manifest[1])
        decoder = lowmem.find_decoder(spec)
        if stage_artifacts is None or decoder is None:
            return None
        for index, (folder, report) in enumerate(stage_artifacts):
            found[f"unet-stage{index}"] = {"path": str(folder / FILENAME), **report}
        for part, (folder, report) in decoder.items():
            found[part] = {"path": str(folder / FILENAME), **report}
        if options.deepcache_interval > 1:
            shallow = find_artifact(spec, UNET_SHALLOW, "openvino-int8")
            if shallow is None:
                return None
            found[UNET_SHALLOW] = {"path": str(shallow[0] / FILENAME), **shallow[1]}
        return found

    def _prepare_elsewhere(self, preset: ModelPreset, weights: WeightsOrigin, options: BuildOptions) -> None:
        """Export what is missing in a child process (which holds the fp32 model, then exits)."""
        logger.warning("%s: exporting its artifacts in a separate process (once per model)", self.name)
        prepare.prepare_in_subprocess(model=preset.name, weights=weights.path, weights_seed=weights.seed or 0,
                              variant=self.name, deepcache=options.deepcache_interval)

    def load_model(self, preset: ModelPreset, weights: str | None = None, *, seed: int = 0) -> ModelSpec:
        """The ``ModelSpec`` from the artifact cache (exported first, in a child process, when missing)."""
        import_diffusers_without_dynamo()
        origin = weights_origin(preset, weights, seed=seed)
        fingerprint = model_fingerprint(preset, origin)
        manifest = lowmem.find_manifest(fingerprint, preset.name)
        if manifest is None:
            self._prepare_elsewhere(preset, origin, BuildOptions())
            manifest = lowmem.find_manifest(fingerprint, preset.name)
        if manifest is None:
            raise EdgediffError(f"{self.name}: the artifact cache has no manifest for {preset.name} after export")
        return manifest[0]

    # --- runtime --------------------------------------------------------------------------------------------------

    def build(self, model: ModelSpec, options: BuildOptions) -> BuiltVariant:
        """Streamed runners over the cached artifacts.

        What the cache lacks is exported in this process when ``model`` has its modules in memory already, else in a
        child process: this one never loads them.
        """
        interval = check_interval(options.deepcache_interval)
        import_diffusers_without_dynamo()
        found = self._find(model, options)
        if found is None:
            if model.has_modules:
                self.prepare(model, options)
            else:
                self._prepare_elsewhere(model.preset, model.weights, options)
            found = self._find(model, options)
        if found is None:
            raise EdgediffError(f"{self.name}: artifacts still missing from the cache after export")
        limit_malloc_arenas()
        ov = require("openvino")
        core = ov.Core()
        if COMPILED_CACHE:

            core.set_property({"CACHE_DIR": str(cache_root() / COMPILED_CACHE_DIR)})
        threads = options.resolved_threads()
        precision = "bf16" if cpu_supports_bf16() else "f32"
        config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads,
                  "PERFORMANCE_HINT": "LATENCY"}
        stages = found["stages"]
        streamed = [StreamedModel(core, Path(found[f"unet-stage{i}"]["path"]), config, stage.input_names())
                    for i, stage in enumerate(stages)]

        def full(sample: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:

            return run_stages(stages, lambda index, inputs: streamed[index](*inputs), sample, timestep)

        if interval == 1:
            unet: Any = StatelessUNet(lambda sample, timestep: full(sample, timestep)[0])
        else:

            shallow = StreamedModel(core, Path(found[UNET_SHALLOW]["path"]), config, IO_NAMES[UNET_SHALLOW][0])
            unet = _StreamedDeepCache(full, shallow, interval)
        tile = decoder_tile(model.preset.latent_shape[1], DECODER_TILE_FRACTION)
        trunk = StreamedModel(core, Path(found["vqdec-trunk"]["path"]), config, [VQDEC_INPUT])
        tail = StreamedModel(core, Path(found["vqdec-tail"]["path"]), config, [TAIL_INPUT])
        factor = model.preset.image_size // model.preset.latent_shape[1]
        decoder = _StreamedDecoder(trunk, tail, tile=tile, factor=factor)
        info = {"device": "cpu", "precision": "int8", "compile_precision": precision, "threads": threads,
                "deepcache_interval": interval, "stages": [list(s.layers) for s in stages],
                "decoder_tile": list(tile) if tile else None,
                "artifacts": {k: v for k, v in found.items() if k != "stages"}}
        return BuiltVariant(self.name, unet, decoder, info)


class _StreamedDecoder:
    """The decoder trunk, whole; then the tail, whole or tile by tile; each compiled for its call and released."""

    def __init__(self, trunk: StreamedModel, tail: StreamedModel, *, tile: tuple[int, int] | None,
                 factor: int) -> None:
        self.trunk, self.tail = trunk, tail
        self.tile, self.factor = tile, factor

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        hidden = self.trunk(latents)[0]
        if self.tile is None:
            return self.tail(hidden)[0]
        side, overlap = self.tile
        image = _decode_tiles(self.tail, self.tail.compile(hidden[..., :side, :side]), hidden, side, overlap,
                              self.factor)
        release_free_memory()  # the compiled tail is gone with _decode_tiles' frame
        return image


def _decode_tiles(model: StreamedModel, compiled: Any, hidden: torch.Tensor, side: int, overlap: int,
                  factor: int) -> torch.Tensor:
    decode: Callable[[torch.Tensor], torch.Tensor] = lambda h: model.infer(compiled, (h,))[0]  # noqa: E731
    return TiledDecoder(decode, tile=side, min_overlap=overlap, factor=factor)(hidden)
