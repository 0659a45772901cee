"""The plain-PyTorch low-memory variants for phones: compact weights read by ``mmap``, one layer in memory at a time.

A phone running edgediff in Termux has Termux's PyTorch and nothing else (no OpenVINO, no ONNX Runtime), so
``openvino-int8-lowmem`` cannot run there. These variants need only torch and diffusers:

* the weights are stored once per model as int8 weight-only with per-output-channel scales in a safetensors file
  beside the artifact cache (``edgediff.artifacts.torch_compact``), written tensor by tensor from the weights (the
  first run never holds the fp32 model either), and mapped read-only: no fp32 copy of the model exists;
* the UNet and the VQ model are diffusers' own modules built on the ``meta`` device (no memory); a forward
  pre-hook on every module that owns weights materialises them as fp32 from the mapping right before it runs, and a
  forward hook drops them right after: at any moment one layer's fp32 weights are resident (the largest, a 3 x 3
  convolution of celebahq-256's UNet, is 29 MB);
* the decoder runs in two parts (``decoder_parts``): the trunk whole, the tail on overlapping tiles
  (``tiled_decode``, the tile plan of ``openvino-int8-lowmem``);
* activations are released as the forward goes (inference mode), and freed memory goes back to the system after
  each UNet call and after decoding (``malloc_trim``; large blocks are mapped, not kept in the heap);
* DeepCache is optional: the shallow branch touches only the shallow layers' weights.

Arithmetic is bf16 where the CPU has native bf16 (AVX-512 BF16, AMX, Arm BF16; CPU autocast keeps norms fp32, as
``torch-bf16``), else fp32; the compact dtype costs fidelity through rounding the stored weights (``tolerance``).
Every UNet call re-reads the weights (from the page cache) and casts each layer's int8 integers, exact in bf16 and
fp32, into one reused buffer (``WeightArena``: no allocation per layer); a convolution or linear layer's
per-channel scale is applied to its output (``conv(x, q * s) = conv(x, q) * s``), so the weights are read once.
Its default sampler is UniPC at 5 steps, which passes the digits gate with it (``services.gateway.backends.local``).
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

from edgediff.artifacts.decoder_parts import DecoderTail, DecoderTrunk
from edgediff.artifacts.deepcache_modules import UNetFullWithFeature, UNetShallow
from edgediff.artifacts.torch_compact import (
    FILENAME,
    VQVAE_PREFIXES,
    CompactWeights,
    build_compact,
    check_dtype,
    find_compact,
)
from edgediff.artifacts.weight_stream import meta_module
from edgediff.availability import cpu_supports_bf16
from edgediff.errors import EdgediffError
from edgediff.models.presets import ModelPreset
from edgediff.models.spec import ModelSpec, describe_model
from edgediff.variants.base import Availability, BuildOptions, BuiltVariant, StatelessUNet, Variant, to_cpu_float
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

TOLERANCES = {"fp32": 1e-5, "int8": 1e-1}
"""Relative L2 error of the final latents vs torch-fp32 allowed per storage dtype (tiny preset, 8 DDIM steps,
measured: fp32 0 (bit-exact), int8 ~2e-2; see tests/perf/test_torch_lowmem.py)."""
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
    layers have large weights and small inputs, shallow ones the opposite. In bf16 oneDNN always runs.
    """
    weight, x = module.weight, args[0]
    unfolded = x.shape[0] * weight.shape[1] * weight.shape[2] * weight.shape[3] * x.shape[-2] * x.shape[-1]
    module._edgediff_mkldnn = torch._C._get_mkldnn_enabled()  # type: ignore[assignment]
    bf16 = torch.is_autocast_enabled("cpu")  # oneDNN is the CPU's bf16 convolution: the native one is slow
    torch._C._set_mkldnn_enabled(bf16 or unfolded > weight.numel())


def _conv_hook(module: torch.nn.Module, args: Any, output: Any) -> None:
    torch._C._set_mkldnn_enabled(module._edgediff_mkldnn)  # type: ignore[arg-type]


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
    model = meta_module(cls, config)  # initialisers dropped (on meta they would import torch._dynamo: 100 MB)
    quantize = getattr(model, "quantize", None)
    if quantize is not None and getattr(quantize, "remap", None) is None:
        quantize.forward = types.MethodType(_chunked_quantize, quantize)
    for module in model.modules():  # these pre-hooks read only shapes (the weights are still meta then)
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_pre_hook(_conv_pre_hook)
            module.register_forward_hook(_conv_hook)
    return model


class WeightArena:
    """One reused fp32 buffer that streamed layers materialise their weights into, as a stack.

    A fresh tensor per layer and call would be new memory every time (large blocks are mapped and unmapped: page
    faults and zeroing, about 1.1 GB per celebahq-256 UNet call); the arena is allocated once, as large as the
    largest layer (which sets the peak anyway), and reused. Nested layers stack; a layer that does not fit above
    others in use gets its own tensors.
    """

    ALIGN = 16
    """Elements (64 bytes): every view starts where a fresh allocation would be aligned."""

    def __init__(self) -> None:
        self._buffer = torch.empty(0, dtype=torch.float32)
        self._top = 0

    def take(self, shapes: list[torch.Size], dtypes: list[torch.dtype]) -> tuple[list[torch.Tensor], int]:
        """Views for tensors of ``shapes`` and ``dtypes`` (fp32 or bf16), and what ``give_back`` must be given."""
        sizes = [-(-s.numel() * d.itemsize // 64) * self.ALIGN  # fp32 elements, rounded up to whole 64 bytes
                 for s, d in zip(shapes, dtypes, strict=True)]
        need = sum(sizes)
        if self._top + need > self._buffer.numel():
            if self._top:  # layers below still use the buffer: this one gets its own memory
                return [torch.empty(s, dtype=d) for s, d in zip(shapes, dtypes, strict=True)], 0
            self._buffer = torch.empty(need, dtype=torch.float32)
        views, offset = [], self._top
        for shape, dtype, size in zip(shapes, dtypes, sizes, strict=True):
            views.append(self._buffer[offset:offset + size].view(dtype)[:shape.numel()].view(shape))
            offset += size
        self._top += need
        return views, need

    def give_back(self, taken: int) -> None:
        """Release the last ``take`` (stack order)."""
        self._top -= taken

    def reset(self) -> None:
        """Nothing is in use (before a model call: a call that raised never gave its layers back)."""
        self._top = 0


class StreamedWeights:
    """Fills a skeleton model's weights from a ``CompactWeights`` file around each module's forward.

    Every module that owns parameters or buffers (or an ``ATOMIC_MODULES`` ancestor of it) gets a forward pre-hook
    that materialises its tensors (fp32, from the mapping, into ``arena``) and a forward hook that puts the meta
    tensors back, so at most the running layers' fp32 weights exist.

    Args:
        model: The skeleton (a diffusers model on ``meta``).
        weights: The compact file.
        prefix: Name prefix of the model's tensors in the file (``unet.``, ``vqvae.``).
        only: Stream only the modules whose names start with one of these (the file leaves the VQ encoder out);
            None streams every module.
        arena: The reused buffer (shared by the models of one pipeline); None makes one.
        compute_dtype: The dtype int8-stored weights are materialised in (``bfloat16`` where the CPU computes in
            it); every other tensor (norms, biases, the codebook, first and last convolutions) is fp32.
    """

    def __init__(self, model: torch.nn.Module, weights: CompactWeights, prefix: str,
                 only: tuple[str, ...] | None = None, arena: WeightArena | None = None,
                 compute_dtype: torch.dtype = torch.float32) -> None:
        self.weights = weights
        self.arena = arena or WeightArena()
        self.compute_dtype = compute_dtype
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
        shapes = [(owner._parameters | owner._buffers)[key].shape for _, owner, key in tensors]
        dtypes = [self.compute_dtype if self.weights.quantized(full) else torch.float32 for full, _, _ in tensors]

        def hook(module: torch.nn.Module, args: Any) -> None:
            views, taken = self.arena.take(shapes, dtypes)
            module._edgediff_taken = taken  # type: ignore[assignment]
            scaled = _output_scaled(module, tensors, self.weights)
            for (full, owner, key), view in zip(tensors, views, strict=True):
                value = self.weights.get(full, out=view, dequantize=not (scaled and owner is module))
                if key in owner._parameters:
                    owner._parameters[key] = torch.nn.Parameter(value, requires_grad=False)
                else:
                    owner._buffers[key] = value
            if scaled:  # y = (x * q) * scale + bias: the bias is added after the scale, outside the layer
                module.__dict__["_edgediff_scale"] = self.weights.scale(scaled)  # plain attributes, not parameters
                module.__dict__["_edgediff_bias"] = module._parameters.get("bias")
                module._parameters["bias"] = None
            self.loads += 1

        return hook

    def _drop_hook(self, tensors: list[tuple[str, torch.nn.Module, str]]) -> Callable[..., Any]:
        meta = [(owner, key, (owner._parameters | owner._buffers)[key]) for _, owner, key in tensors]

        def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
            for owner, key, placeholder in meta:
                if key in owner._parameters:
                    owner._parameters[key] = placeholder
                else:
                    owner._buffers[key] = placeholder
            self.arena.give_back(module._edgediff_taken)  # type: ignore[arg-type]
            scale = module.__dict__.pop("_edgediff_scale", None)
            if scale is None:
                return None
            bias = module.__dict__.pop("_edgediff_bias", None)
            shape = (-1,) if isinstance(module, torch.nn.Linear) else (-1, *([1] * (output.dim() - 2)))
            out = output.float().mul_(scale.view(shape))
            return out if bias is None else out.add_(bias.view(shape))

        return hook


def _output_scaled(module: torch.nn.Module, tensors: list[tuple[str, torch.nn.Module, str]],
                   weights: CompactWeights) -> str | None:
    """The int8 weight of a convolution or linear layer whose scale is applied to its output, or None.

    With one scale per output channel, ``conv(x, q * s) = conv(x, q) * s``: the layer runs on the integers (cast, one
    pass over the weights) and its output, far smaller than its weights in deep layers, is scaled instead.
    """
    if not isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
        return None
    name = next((full for full, owner, key in tensors if owner is module and key == "weight"), None)
    return name if name is not None and weights.quantized(name) else None


def _fn(module: Callable[..., Any], arena: WeightArena, compute_dtype: torch.dtype) -> Callable[..., Any]:
    """Run ``module`` in inference mode on CPU fp32 inputs, fp32 out; give the memory back afterwards.

    In bf16, under CPU autocast (norms and softmax stay fp32, as in ``torch-bf16``).
    """
    autocast = compute_dtype != torch.float32

    def run(*args: torch.Tensor) -> Any:
        arena.reset()
        ctx = torch.autocast("cpu", dtype=compute_dtype) if autocast else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            out = module(*(a.float() for a in args))
        release_free_memory()
        return to_cpu_float(out) if autocast else out

    return run


class TorchLowMemoryVariant(Variant):
    """``torch-<dtype>-lowmem``: compact weights streamed into diffusers' modules layer by layer, tiled decoder.

    Args:
        dtype: Storage dtype of the weights: ``int8`` (``fp32`` for tests).
    """

    backend = "torch"
    device = "cpu"
    supports_deepcache = True

    def __init__(self, dtype: str) -> None:
        self.dtype = check_dtype(dtype)
        self.name = f"torch-{dtype}-lowmem"
        self.precision = dtype
        self.tolerance = TOLERANCES[dtype]
        stored = {"int8": "int8 weight-only (per-channel scales)", "fp32": "fp32"}[dtype]
        self.description = (f"low memory, plain PyTorch (phones): {stored} weights mapped from one file, one layer "
                            "materialised at a time (bf16 where the CPU has it), tiled VQ decoder")

    def compute_dtype(self) -> torch.dtype:
        """bf16 for int8 weights where the CPU computes bf16 natively (about twice fp32's speed), else fp32.

        The fp32 storage (a test mode) always computes fp32, so it reproduces torch-fp32 bit for bit.
        """
        return torch.bfloat16 if self.dtype == "int8" and cpu_supports_bf16() else torch.float32

    def availability(self) -> Availability:  # noqa: D102
        return Availability.yes()  # torch, diffusers and the standard library's mmap: what Termux has

    # --- artifacts ------------------------------------------------------------------------------------------------

    def prepare(self, components: ModelSpec, options: BuildOptions) -> dict[str, Any]:
        """Build (or find) the compact weights file (streamed from the weights: the modules are not used)."""
        folder, report = self._build(components)
        return {"weights": {"path": str(folder / FILENAME), **report}}

    def _build(self, spec: ModelSpec) -> tuple[Path, dict[str, Any]]:
        """The compact file, written in this process tensor by tensor when the cache lacks it (once per model)."""
        if find_compact(spec.fingerprint(), spec.preset.name, self.dtype) is None:
            logger.warning("%s: writing its compact weights, streamed from the %s weights (once per model)",
                           self.name, spec.weights.kind)
            limit_malloc_arenas()  # each tensor's memory goes back to the system when it is written, not to a heap
            fix_mmap_threshold()  # that only grows (glibc's dynamic threshold kept 700 MB of them for celebahq-256)
        return build_compact(spec, self.dtype, classes=import_diffusers_models_lean())

    def load_model(self, preset: ModelPreset, weights: str | None = None, *, seed: int = 0) -> ModelSpec:
        """The model without its modules (``describe_model``), its compact weights written first when missing."""
        import_diffusers_without_dynamo()
        spec = describe_model(preset, weights, seed=seed)
        self._build(spec)
        return spec

    # --- runtime --------------------------------------------------------------------------------------------------

    def build(self, spec: ModelSpec, options: BuildOptions) -> BuiltVariant:  # noqa: D102
        interval = check_interval(options.deepcache_interval)
        import_diffusers_without_dynamo()
        folder, report = self._build(spec)
        path = folder / FILENAME
        limit_malloc_arenas()
        fix_mmap_threshold()
        threads = options.resolved_threads()
        torch.set_num_threads(threads)
        compute = self.compute_dtype()
        built = build_runners(spec, CompactWeights(path), interval, compute)
        info = {"device": "cpu", "precision": self.dtype,
                "compute_precision": "bf16" if compute == torch.bfloat16 else "fp32", "threads": threads,
                "deepcache_interval": interval, "decoder_tile": built.pop("decoder_tile"),
                "artifacts": {"weights": {"path": str(path), **report}}}
        return BuiltVariant(self.name, built["unet"], built["decoder"], info)


def build_runners(spec: ModelSpec, weights: CompactWeights, interval: int = 1,
                  compute_dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The UNet runner and the decoder of ``spec``'s model over streamed ``weights``, computing in ``compute_dtype``.

    Returns:
        ``{"unet": UNetRunner, "decoder": DecoderRunner, "decoder_tile": [side, overlap] or None}``.
    """
    unet_cls, vq_cls = import_diffusers_models_lean()

    unet = _skeleton(unet_cls, spec.preset.unet_config)
    vqvae = _skeleton(vq_cls, spec.preset.vqvae_config)
    arena = WeightArena()  # one buffer for both: the UNet and the decoder never run at once
    StreamedWeights(unet, weights, "unet.", arena=arena, compute_dtype=compute_dtype)
    StreamedWeights(vqvae, weights, "vqvae.", only=VQVAE_PREFIXES, arena=arena, compute_dtype=compute_dtype)
    if interval == 1:
        plain = _fn(lambda sample, timestep: unet(sample, timestep).sample, arena, compute_dtype)
        runner: Any = StatelessUNet(plain)
    else:
        runner = DeepCacheUNet(_fn(UNetFullWithFeature(unet), arena, compute_dtype),
                               _fn(UNetShallow(unet), arena, compute_dtype), interval)
    tile = decoder_tile(spec.preset.latent_shape[1], DECODER_TILE_FRACTION)
    factor = spec.preset.image_size // spec.preset.latent_shape[1]
    trunk, tail = _fn(DecoderTrunk(vqvae), arena, compute_dtype), _fn(DecoderTail(vqvae), arena, compute_dtype)

    def decode(latents: torch.Tensor) -> torch.Tensor:
        hidden = trunk(latents)
        if tile is None:
            return tail(hidden)
        return TiledDecoder(tail, tile=tile[0], min_overlap=tile[1], factor=factor)(hidden)

    return {"unet": runner, "decoder": decode, "decoder_tile": list(tile) if tile else None}
