"""The one registry of variants, used by generate, bench, export, the gateway and the Triton Python models alike."""

from __future__ import annotations

from edgediff.errors import InvalidArgumentError, UnknownVariantError, VariantUnavailableError
from edgediff.models.presets import get_preset
from edgediff.models.spec import ModelSpec, load_components
from edgediff.schedulers import split_row
from edgediff.variants.base import BuildOptions, BuiltVariant, Variant
from edgediff.variants.deepcache import DeepCacheVariant
from edgediff.variants.onnx_runtime import OnnxVariant
from edgediff.variants.openvino_lowmem import LowMemoryVariant
from edgediff.variants.openvino_runtime import OpenVinoVariant
from edgediff.variants.tensorrt_engine import TensorRTVariant
from edgediff.variants.torch_eager import CompileVariant, TorchVariant
from edgediff.variants.torch_lowmem import TorchLowMemoryVariant
from edgediff.variants.torchscript import JitVariant

BASELINE = "torch-fp32"

_VARIANTS: dict[str, Variant] = {}


def register(variant: Variant) -> Variant:
    """Add a variant to the registry (names are unique)."""
    if variant.name in _VARIANTS:
        raise ValueError(f"variant {variant.name!r} is already registered")
    _VARIANTS[variant.name] = variant
    return variant


_OPENVINO_BF16, _OPENVINO_INT8, _LOWMEM = OpenVinoVariant("bf16"), OpenVinoVariant("int8"), LowMemoryVariant()
_OPENVINO_BF16_INT8DEC = OpenVinoVariant("bf16", decoder_precision="int8")
_OPENVINO_FP32 = OpenVinoVariant("fp32")  # fp32 kernels: fast DeepCache variants on CPUs without native bf16
_OPENVINO_FP32_INT8DEC = OpenVinoVariant("fp32", decoder_precision="int8")
_TORCH_INT8_LOWMEM = TorchLowMemoryVariant("int8")

for _variant in (
    TorchVariant("torch-fp32", "fp32", "eager PyTorch, fp32: the study's baseline (CUDA when present, else CPU)", 0.0),
    TorchVariant("torch-fp16", "fp16", "eager PyTorch, fp16 weights (CUDA)", 5e-2),
    TorchVariant("torch-bf16", "bf16", "eager PyTorch with bf16 autocast on the CPU", 1e-1),
    JitVariant("fp32"),
    JitVariant("fp16"),
    OnnxVariant("fp32"),
    OnnxVariant("fp16"),
    _OPENVINO_FP32,
    _OPENVINO_BF16,
    _OPENVINO_INT8,
    _OPENVINO_BF16_INT8DEC,
    _OPENVINO_FP32_INT8DEC,
    DeepCacheVariant(_OPENVINO_FP32, 3),
    DeepCacheVariant(_OPENVINO_FP32_INT8DEC, 3),
    DeepCacheVariant(_OPENVINO_BF16, 3),
    DeepCacheVariant(_OPENVINO_INT8, 3),
    DeepCacheVariant(_OPENVINO_BF16_INT8DEC, 3),
    _LOWMEM,
    DeepCacheVariant(_LOWMEM, 3),
    _TORCH_INT8_LOWMEM,
    DeepCacheVariant(_TORCH_INT8_LOWMEM, 3),
    TensorRTVariant(),
    CompileVariant(),
):
    register(_variant)


def all_variants() -> list[Variant]:
    """Every registered variant, in registry order."""
    return list(_VARIANTS.values())


def variant_names() -> list[str]:
    """Names of every registered variant."""
    return list(_VARIANTS)


def get_variant(name: str) -> Variant:
    """The variant called ``name``.

    Raises:
        UnknownVariantError: no such variant; the message lists the known ones.
    """
    if name not in _VARIANTS:
        raise UnknownVariantError(f"--variant: unknown variant {name!r}; choose one of {', '.join(_VARIANTS)}")
    return _VARIANTS[name]


def available_variants() -> list[Variant]:
    """The variants that can run on this machine."""
    return [v for v in _VARIANTS.values() if v.availability().ok]


def require_available(name: str) -> Variant:
    """The variant called ``name`` if it can run here.

    Raises:
        UnknownVariantError: no such variant.
        VariantUnavailableError: it cannot run here; the message says why.
    """
    variant = get_variant(name)
    avail = variant.availability()
    if not avail.ok:
        raise VariantUnavailableError(f"variant {name} is unavailable here: {avail.reason}")
    return variant


def parse_variant_list(spec: str) -> list[str]:
    """``"all"`` -> every registered name; ``"a,b"`` -> ``["a", "b"]`` (each checked to exist).

    A name may carry a sampler, ``VARIANT@SCHEDULER[:STEPS]`` (``edgediff.schedulers.split_row``): bench rows.
    """
    if spec.strip() == "all":
        return variant_names()
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for name in names:
        get_variant(split_row(name)[0])
    return names


def load_model(model: str, weights: str | None = None, *, seed: int = 0, variant: str | None = None) -> ModelSpec:
    """Load the preset ``model`` with ``weights`` (or bundled / seeded synthetic ones) as ``variant`` needs it.

    ``Variant.load_model``: a variant that runs from exported artifacts alone (the low-memory ones) gets a spec whose
    torch modules are never built; any other variant (or none) gets them loaded.
    """
    preset = get_preset(model)
    if variant is not None:
        return get_variant(variant).load_model(preset, weights, seed=seed)
    return load_components(preset, weights, seed=seed, warn=False)


def build_variant(name: str, model: ModelSpec, options: BuildOptions | None = None) -> BuiltVariant:
    """Check, then build the variant ``name`` for ``model`` (whose modules load if the variant needs them).

    Raises:
        UnknownVariantError, VariantUnavailableError: see ``require_available``.
        InvalidArgumentError: DeepCache was asked of a variant that does not support it.
    """
    variant = require_available(name)
    options = options or BuildOptions()
    if options.deepcache_interval != 1 and not variant.supports_deepcache:
        raise InvalidArgumentError(f"--deepcache: variant {name} does not support DeepCache; use --deepcache 1")
    return variant.build(model, options)
