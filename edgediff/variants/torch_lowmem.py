"""The plain-PyTorch low-memory variants for phones: compact weights read by ``mmap``, one layer in memory at a time.

A phone running edgediff in Termux has Termux's PyTorch and nothing else (no OpenVINO, no ONNX Runtime), so
``openvino-int8-lowmem`` cannot run there. These variants need only torch and diffusers:

* the weights are stored once per model in a compact dtype (``torch-fp16-lowmem``: float16;
  ``torch-int8-lowmem``: int8 weight-only with per-output-channel scales) in a safetensors file beside the artifact
  cache (``edgediff.artifacts.torch_compact``), and mapped read-only: no fp32 copy of the model exists;
* the UNet and the VQ model are diffusers' own modules built on the ``meta`` device (no memory); a forward
  pre-hook on every module that owns weights materialises them as fp32 from the mapping right before it runs, and a
  forward hook drops them right after: at any moment one layer's fp32 weights are resident (the largest, a 3 x 3
  convolution of celebahq-256's UNet, is 29 MB);
* the decoder runs in two parts (``decoder_parts``): the trunk whole, the tail on overlapping tiles
  (``tiled_decode``, the tile plan of ``openvino-int8-lowmem``);
* activations are released as the forward goes (inference mode), and freed memory goes back to the system after
  each UNet call and after decoding (``malloc_trim``; large blocks are mapped, not kept in the heap);
* DeepCache is optional: the shallow branch touches only the shallow layers' weights.

Arithmetic stays fp32 (what every CPU PyTorch build runs fast); the compact dtype costs fidelity only through
rounding the stored weights (``tolerance``). It trades latency for memory: every UNet call re-reads and converts
the weights (from the page cache).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from edgediff.artifacts import prepare
from edgediff.artifacts.decoder_parts import DecoderTail, DecoderTrunk
from edgediff.artifacts.deepcache_modules import UNetFullWithFeature, UNetShallow
from edgediff.artifacts.torch_compact import VQVAE_PREFIXES, CompactWeights, build_compact, check_dtype, find_compact
from edgediff.errors import EdgediffError
from edgediff.models.presets import ModelPreset
from edgediff.models.spec import ModelSpec
from edgediff.models.weights import WeightsOrigin, model_fingerprint, weights_origin
from edgediff.variants.base import Availability, BuildOptions, BuiltVariant, StatelessUNet, Variant
from edgediff.variants.deepcache import DeepCacheUNet, check_interval
from edgediff.variants.openvino_lowmem import (
    DECODER_TILE_FRACTION,
    decoder_tile,
    import_diffusers_without_dynamo,
    limit_malloc_arenas,
    release_free_memory,
)
from edgediff.variants.tiled_decode import TiledDecoder

logger = logging.getLogger(__name__)

TOLERANCES = {"fp32": 1e-5, "fp16": 2e-2, "int8": 1e-1}
"""Relative L2 error of the final latents vs torch-fp32 allowed per storage dtype (tiny preset, 8 DDIM steps,
measured: fp32 0 (bit-exact), fp16 ~1e-3, int8 ~2e-2; see tests/perf/test_torch_lowmem.py)."""
ATOMIC_MODULES = ("VectorQuantizer",)
"""Modules whose forward reads their children's weights directly (not by calling them): materialised whole."""
MMAP_THRESHOLD_BYTES = 1 << 20
"""glibc ``M_MMAP_THRESHOLD``: blocks from 1 MB up are mapped and unmapped on free (glibc otherwise raises the
threshold to 32 MB after the first large free, and activations then stay in the heap)."""
M_MMAP_THRESHOLD = -3


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> None:
    """Fix glibc's mmap threshold (no dynamic raise): freed large tensors go straight back to the system.

    A libc other than glibc (Android's bionic) is left alone.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold)


def import_diffusers_models_lean() -> tuple[Any, Any]:
    """``(UNet2DModel, VQModel)`` imported without ``torch._dynamo`` and scipy (125 MB less resident memory).

    diffusers' model modules import ``torch._dynamo`` through ``@torch.compiler.disable`` decorators on hooks this
    process never uses, and scipy for schedulers' optional beta sigmas. While they import, the decorator is an
    identity and scipy reads as absent; both are restored right after, so later code that needs them still gets
    them. The dynamo guard of ``openvino_lowmem.import_diffusers_without_dynamo`` applies first.
    """
    import sys

    import_diffusers_without_dynamo()
    if "diffusers.models.unets.unet_2d" in sys.modules or "torch._dynamo" in sys.modules:
        from diffusers import UNet2DModel, VQModel

        return UNet2DModel, VQModel
    import torch.compiler
    from diffusers.utils import import_utils

    def disable(fn: Any = None, recursive: bool = True, reason: str | None = None) -> Any:
        return fn if fn is not None else (lambda f: f)

    original, scipy = torch.compiler.disable, import_utils._scipy_available
    torch.compiler.disable, import_utils._scipy_available = disable, False
    sys.modules["torch._dynamo"] = None  # type: ignore[assignment]
    try:
        from diffusers import UNet2DModel, VQModel
    finally:
        del sys.modules["torch._dynamo"]
        torch.compiler.disable, import_utils._scipy_available = original, scipy
    return UNet2DModel, VQModel


def _conv_pre_hook(module: torch.nn.Module, args: Any) -> None:
    """Choose the convolution kernel that needs less memory for this call.

    oneDNN (mkldnn) copies the weights into its blocked layout on every eager call (a second copy of the layer);
    PyTorch's own kernel instead unfolds the input (``in_channels x k x k x H x W`` floats). Deep, low-resolution
    layers have large weights and small inputs, shallow ones the opposite.
    """
    weight, x = module.weight, args[0]
    unfolded = x.shape[0] * weight.shape[1] * weight.shape[2] * weight.shape[3] * x.shape[-2] * x.shape[-1]
    module._edgediff_mkldnn = torch._C._get_mkldnn_enabled()  # type: ignore[assignment]
    torch._C._set_mkldnn_enabled(unfolded > weight.numel())


def _conv_hook(module: torch.nn.Module, args: Any, output: Any) -> None:
    torch._C._set_mkldnn_enabled(module._edgediff_mkldnn)  # type: ignore[arg-type]


_SKIPPED_INITS = ("normal_", "trunc_normal_")
"""``torch.nn.init`` functions made no-ops while a skeleton is built (a meta tensor has no values to fill)."""


QUANTIZE_ROWS = 512
"""Latent pixels per chunk of the codebook search (celebahq-256 whole: a 4096 x 8192 distance matrix, 134 MB)."""


def _chunked_quantize(self: Any, z: torch.Tensor) -> tuple[torch.Tensor, None, tuple[None, None, torch.Tensor]]:
    """The ``VectorQuantizer.forward`` of diffusers for decoding (no remap, no loss), its distance matrix in row chunks.

    Each row's distances, and so its nearest code, are computed as in the whole matrix.
    """
    z = z.permute(0, 2, 3, 1).contiguous()
    flat = z.view(-1, self.vq_embed_dim)
    codebook = self.embedding.weight
    indices = torch.cat([torch.argmin(torch.cdist(rows, codebook), dim=1) for rows in flat.split(QUANTIZE_ROWS)])
    z_q = self.embedding(indices).view(z.shape)
    z_q = z + (z_q - z)
    return z_q.permute(0, 3, 1, 2).contiguous(), None, (None, None, indices)


def _skeleton(cls: Any, config: dict[str, Any]) -> Any:
    """A diffusers model built on the ``meta`` device: its structure, no weights, no memory."""
    init = torch.nn.init
    saved = {name: getattr(init, name) for name in _SKIPPED_INITS}
    try:  # on meta, nn.init's normal_ runs a torch._refs decomposition that imports torch._dynamo (100 MB)
        for name in _SKIPPED_INITS:
            setattr(init, name, lambda tensor, *args, **kwargs: tensor)
        with torch.device("meta"):
            model = cls(**config)
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)
    quantize = getattr(model, "quantize", None)
    if quantize is not None and getattr(quantize, "remap", None) is None:
        quantize.forward = types.MethodType(_chunked_quantize, quantize)
    for module in model.modules():  # these pre-hooks read only shapes (the weights are still meta then)
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_pre_hook(_conv_pre_hook)
            module.register_forward_hook(_conv_hook)
    return model.eval().requires_grad_(False)


class StreamedWeights:
    """Fills a skeleton model's weights from a ``CompactWeights`` file around each module's forward.

    Every module that owns parameters or buffers (or an ``ATOMIC_MODULES`` ancestor of it) gets a forward pre-hook
    that materialises its tensors (fp32, from the mapping) and a forward hook that puts the meta tensors back, so the
    fp32 copy is garbage as soon as the module returns.

    Args:
        model: The skeleton (a diffusers model on ``meta``).
        weights: The compact file.
        prefix: Name prefix of the model's tensors in the file (``unet.``, ``vqvae.``).
        only: Stream only the modules whose names start with one of these (the file leaves the VQ encoder out);
            None streams every module.
    """

    def __init__(self, model: torch.nn.Module, weights: CompactWeights, prefix: str,
                 only: tuple[str, ...] | None = None) -> None:
        self.weights = weights
        self.loads = 0
        units: dict[str, torch.nn.Module] = {}
        atomic = [name for name, m in model.named_modules() if type(m).__name__ in ATOMIC_MODULES]
        for name, module in model.named_modules():
            if not (module._parameters or module._buffers) or (only and not (name + ".").startswith(only)):
                continue
            owner = next((a for a in atomic if name == a or name.startswith(a + ".")), name)
            units.setdefault(owner, model.get_submodule(owner) if owner else model)
        if "" in units:
            raise EdgediffError("streamed weights: the model's root owns tensors itself; it cannot be streamed")
        stored = set(weights.names())
        for name, unit in units.items():
            tensors = self._tensors(unit, f"{prefix}{name}.")
            missing = [full for full, _, _ in tensors if full not in stored]
            if missing:
                raise EdgediffError(f"streamed weights: {weights.path} lacks {missing[0]}")
            unit.register_forward_pre_hook(self._load_hook(tensors))
            unit.register_forward_hook(self._drop_hook(tensors))

    @staticmethod
    def _tensors(unit: torch.nn.Module, prefix: str) -> list[tuple[str, torch.nn.Module, str]]:
        """``(file name, owning module, attribute)`` of every tensor under ``unit``."""
        out = []
        for sub_name, sub in unit.named_modules():
            sub_prefix = f"{prefix}{sub_name}." if sub_name else prefix
            out += [(sub_prefix + key, sub, key) for key, value in sub._parameters.items() if value is not None]
            out += [(sub_prefix + key, sub, key) for key, value in sub._buffers.items() if value is not None]
        return out

    def _load_hook(self, tensors: list[tuple[str, torch.nn.Module, str]]) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any) -> None:
            for full, owner, key in tensors:
                value = self.weights.get(full)
                if key in owner._parameters:
                    owner._parameters[key] = torch.nn.Parameter(value, requires_grad=False)
                else:
                    owner._buffers[key] = value
            self.loads += 1

        return hook

    @staticmethod
    def _drop_hook(tensors: list[tuple[str, torch.nn.Module, str]]) -> Callable[..., None]:
        meta = [(owner, key, (owner._parameters | owner._buffers)[key]) for _, owner, key in tensors]

        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            for owner, key, placeholder in meta:
                if key in owner._parameters:
                    owner._parameters[key] = placeholder
                else:
                    owner._buffers[key] = placeholder

        return hook


def _fn(module: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``module`` in inference mode on CPU fp32 inputs; give the memory back afterwards."""

    def run(*args: torch.Tensor) -> Any:
        with torch.inference_mode():
            out = module(*(a.float() for a in args))
        release_free_memory()
        return out

    return run


class TorchLowMemoryVariant(Variant):
    """``torch-<dtype>-lowmem``: compact weights streamed into diffusers' modules layer by layer, tiled decoder.

    Args:
        dtype: Storage dtype of the weights: ``fp16`` or ``int8`` (``fp32`` for tests).
    """

    backend = "torch"
    device = "cpu"
    supports_deepcache = True

    def __init__(self, dtype: str) -> None:
        self.dtype = check_dtype(dtype)
        self.name = f"torch-{dtype}-lowmem"
        self.precision = dtype
        self.tolerance = TOLERANCES[dtype]
        stored = {"fp16": "float16", "int8": "int8 weight-only (per-channel scales)", "fp32": "fp32"}[dtype]
        self.description = (f"low memory, plain PyTorch (phones): {stored} weights mapped from one file, one layer "
                            "materialised at a time, tiled VQ decoder; slower")

    def availability(self) -> Availability:  # noqa: D102
        return Availability.yes()  # torch, diffusers and the standard library's mmap: what Termux has

    # --- artifacts ------------------------------------------------------------------------------------------------

    def prepare(self, components: ModelSpec, options: BuildOptions) -> dict[str, Any]:
        """Build (or find) the compact weights file."""
        folder, report = build_compact(components, self.dtype)
        return {"weights": {"path": str(folder / "weights.safetensors"), **report}}

    def _find(self, spec: ModelSpec) -> tuple[Path, dict[str, Any]] | None:
        found = find_compact(spec.fingerprint(), spec.preset.name, self.dtype)
        return None if found is None else (found[0], found[1])

    def _prepare_elsewhere(self, preset: ModelPreset, weights: WeightsOrigin) -> None:
        """Write the compact file in a child process (which holds the fp32 model once, then exits)."""
        logger.warning("%s: writing its compact weights in a separate process (once per model)", self.name)
        prepare.prepare_in_subprocess(model=preset.name, weights=weights.path, weights_seed=weights.seed or 0,
                              variant=self.name)

    def load_model(self, preset: ModelPreset, weights: str | None = None, *, seed: int = 0) -> ModelSpec:
        """The ``ModelSpec`` from the compact weights' folder (written first, in a child process, when missing)."""
        import_diffusers_without_dynamo()
        origin = weights_origin(preset, weights, seed=seed)
        fingerprint = model_fingerprint(preset, origin)
        found = find_compact(fingerprint, preset.name, self.dtype)
        if found is None:
            self._prepare_elsewhere(preset, origin)
            found = find_compact(fingerprint, preset.name, self.dtype)
        if found is None:
            raise EdgediffError(f"{self.name}: the artifact cache has no compact weights for {preset.name}")
        return found[2]

    # --- runtime --------------------------------------------------------------------------------------------------

    def build(self, spec: ModelSpec, options: BuildOptions) -> BuiltVariant:  # noqa: D102
        interval = check_interval(options.deepcache_interval)
        import_diffusers_without_dynamo()
        found = self._find(spec)
        if found is None:  # written here when the modules are in memory already, else by a child process
            if spec.has_modules:
                self.prepare(spec, options)
            else:
                self._prepare_elsewhere(spec.preset, spec.weights)
            found = self._find(spec)
        if found is None:
            raise EdgediffError(f"{self.name}: compact weights still missing from the cache after preparing them")
        path, report = found
        limit_malloc_arenas()
        fix_mmap_threshold()
        threads = options.resolved_threads()
        torch.set_num_threads(threads)
        built = build_runners(spec, CompactWeights(path), interval)
        info = {"device": "cpu", "precision": self.dtype, "compute_precision": "fp32", "threads": threads,
                "deepcache_interval": interval, "decoder_tile": built.pop("decoder_tile"),
                "artifacts": {"weights": {"path": str(path), **report}}}
        return BuiltVariant(self.name, built["unet"], built["decoder"], info)


def build_runners(spec: ModelSpec, weights: CompactWeights, interval: int = 1) -> dict[str, Any]:
    """The UNet runner and the decoder of ``spec``'s model over streamed ``weights``.

    Returns:
        ``{"unet": UNetRunner, "decoder": DecoderRunner, "decoder_tile": [side, overlap] or None}``.
    """
    unet_cls, vq_cls = import_diffusers_models_lean()

    unet = _skeleton(unet_cls, spec.preset.unet_config)
    vqvae = _skeleton(vq_cls, spec.preset.vqvae_config)
    StreamedWeights(unet, weights, "unet.")
    StreamedWeights(vqvae, weights, "vqvae.", only=VQVAE_PREFIXES)
    if interval == 1:
        plain = _fn(lambda sample, timestep: unet(sample, timestep).sample)
        runner: Any = StatelessUNet(plain)
    else:
        runner = DeepCacheUNet(_fn(UNetFullWithFeature(unet)), _fn(UNetShallow(unet)), interval)
    tile = decoder_tile(spec.preset.latent_shape[1], DECODER_TILE_FRACTION)
    factor = spec.preset.image_size // spec.preset.latent_shape[1]
    trunk, tail = _fn(DecoderTrunk(vqvae)), _fn(DecoderTail(vqvae))

    def decode(latents: torch.Tensor) -> torch.Tensor:
        hidden = trunk(latents)
        if tile is None:
            return tail(hidden)
        return TiledDecoder(tail, tile=tile[0], min_overlap=tile[1], factor=factor)(hidden)

    return {"unet": runner, "decoder": decode, "decoder_tile": list(tile) if tile else None}
