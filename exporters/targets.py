"""Deployment targets: which variants each serves, through which Triton backend, on which kind of instance.

On ``cpu`` every part runs inside a Python-backend model (``KIND_CPU``) that calls the core's variant code (a
DeepCache variant's ``unet_<v>`` is a stateful model holding both DeepCache artifacts and each image's cached deep
feature, see ``DEEPCACHE_PART``); on
``rtx`` and ``jetson`` the parts use Triton's native backends (``onnxruntime_onnx``, ``tensorrt_plan``,
``pytorch_libtorch``) with ``KIND_GPU``, except the ``torch-fp32`` baseline: eager PyTorch has no native backend, so
its parts are Python-backend models on a ``KIND_GPU`` instance (the part model moves the weights to the instance's
GPU), and the study's comparison (fp32 vs TensorRT) runs on one server. The ``ldm_<variant>`` pipeline is a
Python-backend model on every target.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgediff.artifacts.tensorrt_plan import PROFILE_MAX_BATCH
from edgediff.availability import (
    is_cuda_available,
    is_module_available,
    is_onnxruntime_available,
    is_openvino_available,
    is_tensorrt_available,
)
from edgediff.errors import InvalidArgumentError
from edgediff.variants import get_variant
from edgediff.variants.deepcache import DeepCacheVariant
from edgediff.variants.openvino_runtime import int8_ir_format

KIND_CPU = "KIND_CPU"
KIND_GPU = "KIND_GPU"
PYTHON_BACKEND = "python"
WEIGHTS_FORMAT = "weights"
"""Eager-PyTorch variants carry their part's weights (diffusers layout) instead of a traced artifact."""


def deepcache_interval(variant: str) -> int:
    """The registered variant's fixed DeepCache interval (``openvino-bf16-dc3`` -> 3); 1 for one without DeepCache.

    Raises:
        UnknownVariantError: ``variant`` is not registered.
    """
    found = get_variant(variant)
    return found.interval if isinstance(found, DeepCacheVariant) else 1


DEEPCACHE_PART = "unet-deepcache"
"""The served UNet part of a DeepCache variant: one Python-backend model with the ``unet-full`` and ``unet-shallow``
artifacts and Triton's sequence batcher; each image is one sequence (its correlation ID keys the cached deep feature),
so the feature never leaves the model's process."""


def unet_part(variant: str) -> str:
    """The part the variant's ``unet_<v>`` model serves: ``"unet"``, or ``DEEPCACHE_PART``."""
    return "unet" if deepcache_interval(variant) == 1 else DEEPCACHE_PART


@dataclass(frozen=True)
class Placement:
    """How one variant's parts are served on one target.

    Attributes:
        variant: Registry name (``onnx-fp32``).
        artifact_format: ``edgediff.artifacts.build`` format of the UNet parts (and of the decoder unless
            ``decoder_format`` says otherwise), or ``WEIGHTS_FORMAT``.
        filename: What goes into ``<model>/1/`` (a file, or the ``weights`` folder).
        backend: Triton ``backend`` (``python``) or None when ``platform`` names a native backend.
        platform: Triton ``platform`` (``onnxruntime_onnx``, ``tensorrt_plan``, ``pytorch_libtorch``) or None.
        instance_kind: ``KIND_CPU`` or ``KIND_GPU``.
    """

    variant: str
    artifact_format: str
    filename: str
    backend: str | None
    platform: str | None
    instance_kind: str
    decoder_format: str | None = None

    def format_of(self, part: str) -> str:
        """The artifact format of ``part`` (``vqdec`` or a UNet part).

        An int8 OpenVINO part takes the int8 IR this CPU's variant runs (``int8_ir_format``: its linear weights
        compressed too where there is no native bf16), so the served part computes what the variant computes.
        """
        fmt = (self.decoder_format or self.artifact_format) if part == "vqdec" else self.artifact_format
        return int8_ir_format() if fmt == "openvino-int8" else fmt

    @property
    def formats(self) -> tuple[str, ...]:
        """Every artifact format the placement needs."""
        return tuple(dict.fromkeys((self.format_of("unet"), self.format_of("vqdec"))))

    @property
    def backend_label(self) -> str:
        """``python`` or the native platform, for tables and the manifest."""
        return self.platform or self.backend or ""

    @property
    def deepcache_interval(self) -> int:
        """See ``deepcache_interval``."""
        return deepcache_interval(self.variant)

    @property
    def unet_part(self) -> str:
        """See ``unet_part``."""
        return unet_part(self.variant)


@dataclass(frozen=True)
class Target:
    """A deployment target.

    Attributes:
        name: ``cpu``, ``rtx`` or ``jetson``.
        description: One line for ``--help`` and the README.
        placements: Variant name -> placement, for every variant this target can serve.
        default_variants: What ``edgediff export`` builds without ``--variants``.
        max_batch_size: ``max_batch_size`` of the part models, at most the TensorRT profile's largest batch
            (``PROFILE_MAX_BATCH``); the pipeline model sends larger batches in chunks.
        pipeline_instances: Instances of each ``ldm_<variant>`` model: generations of one variant in progress at
            once (each instance is one Python-backend process running one generation), and so the gateway's default
            concurrency. Equal to ``max_batch_size``: enough batch-1 generations to fill one merged UNet execution.
        queue_delay_us: The part models' dynamic-batcher ``max_queue_delay_microseconds``: how long a UNet or
            decoder request waits for the same step of other generations to join its execution. Small next to one
            UNet evaluation (tens of milliseconds on a CPU, a few on a GPU), so a lone generation barely pays it.
    """

    name: str
    description: str
    placements: dict[str, Placement]
    default_variants: tuple[str, ...]
    max_batch_size: int = PROFILE_MAX_BATCH
    pipeline_instances: int = PROFILE_MAX_BATCH
    queue_delay_us: int = 2000

    @property
    def gpu(self) -> bool:
        """True when the parts run on GPU instances."""
        return any(p.instance_kind == KIND_GPU for p in self.placements.values())

    def placement(self, variant: str) -> Placement:
        """The placement of ``variant``.

        Raises:
            InvalidArgumentError: the target does not serve it; the message lists what it serves.
        """
        if variant not in self.placements:
            raise InvalidArgumentError(
                f"--variants: variant {variant!r} cannot be served on target {self.name}; "
                f"choose from {', '.join(self.placements)}"
            )
        return self.placements[variant]


def _cpu(variant: str, fmt: str, filename: str, decoder_format: str | None = None) -> Placement:
    return Placement(variant, fmt, filename, PYTHON_BACKEND, None, KIND_CPU, decoder_format)


def _gpu(variant: str, fmt: str, filename: str, platform: str) -> Placement:
    return Placement(variant, fmt, filename, None, platform, KIND_GPU)


def _gpu_python(variant: str, fmt: str, filename: str) -> Placement:
    return Placement(variant, fmt, filename, PYTHON_BACKEND, None, KIND_GPU)


def _gpu_placements() -> dict[str, Placement]:
    placements = (
        _gpu_python("torch-fp32", WEIGHTS_FORMAT, "weights"),  # the baseline every speedup is measured against
        _gpu("onnx-fp32", "onnx-fp32", "model.onnx", "onnxruntime_onnx"),
        _gpu("onnx-fp16", "onnx-fp16", "model.onnx", "onnxruntime_onnx"),
        _gpu("jit-fp16", "torchscript-fp16", "model.pt", "pytorch_libtorch"),
        _gpu("trt-fp16", "tensorrt-fp16", "model.plan", "tensorrt_plan"),
    )
    return {p.variant: p for p in placements}


_CPU_PLACEMENTS = (
    _cpu("torch-fp32", WEIGHTS_FORMAT, "weights"),
    _cpu("torch-bf16", WEIGHTS_FORMAT, "weights"),
    _cpu("jit-fp32", "torchscript-fp32", "model.pt"),
    _cpu("onnx-fp32", "onnx-fp32", "model.onnx"),
    _cpu("openvino-fp32", "openvino", "model.xml"),
    _cpu("openvino-bf16", "openvino", "model.xml"),
    _cpu("openvino-int8", "openvino-int8", "model.xml"),
    _cpu("openvino-bf16-int8dec", "openvino", "model.xml", decoder_format="openvino-int8"),
    _cpu("openvino-fp32-int8dec", "openvino", "model.xml", decoder_format="openvino-int8"),
    # DeepCache: unet_<v> is one stateful Python model (DEEPCACHE_PART) holding both DeepCache artifacts
    _cpu("openvino-bf16-dc3", "openvino", "model.xml"),
    _cpu("openvino-int8-dc3", "openvino-int8", "model.xml"),
    _cpu("openvino-bf16-int8dec-dc3", "openvino", "model.xml", decoder_format="openvino-int8"),
    _cpu("openvino-fp32-dc3", "openvino", "model.xml"),
    _cpu("openvino-fp32-int8dec-dc3", "openvino", "model.xml", decoder_format="openvino-int8"),
)

TARGETS: dict[str, Target] = {
    "cpu": Target(
        name="cpu",
        description="x86/Arm CPU: every part in a Python-backend model (KIND_CPU) running the core's variant code",
        placements={p.variant: p for p in _CPU_PLACEMENTS},
        default_variants=("torch-fp32", "jit-fp32", "onnx-fp32", "openvino-fp32"),
    ),
    "rtx": Target(
        name="rtx",
        description="desktop NVIDIA GPU: native onnxruntime_onnx / tensorrt_plan / pytorch_libtorch models and the "
                    "torch-fp32 baseline as Python models (all KIND_GPU)",
        placements=_gpu_placements(),
        default_variants=("torch-fp32", "onnx-fp32", "onnx-fp16", "jit-fp16", "trt-fp16"),
        queue_delay_us=500,
    ),
    "jetson": Target(
        name="jetson",
        description="NVIDIA Jetson (JetPack Triton): the same native GPU backends, smaller batches",
        placements=_gpu_placements(),
        default_variants=("torch-fp32", "onnx-fp16", "trt-fp16"),
        max_batch_size=2,
        pipeline_instances=2,
        queue_delay_us=500,
    ),
}


def get_target(name: str) -> Target:
    """The target called ``name``.

    Raises:
        InvalidArgumentError: unknown target; the message lists the known ones.
    """
    if name not in TARGETS:
        raise InvalidArgumentError(f"--target: unknown target {name!r}; choose one of {', '.join(TARGETS)}")
    return TARGETS[name]


def build_blocker(artifact_format: str) -> str | None:
    """Why ``artifact_format`` cannot be built on this machine, or None when it can."""
    if artifact_format == WEIGHTS_FORMAT:
        return None
    if artifact_format.startswith("onnx") and not is_onnxruntime_available():
        return "needs onnx, onnxsim and onnxruntime: pip install 'edgediff[onnx]'"
    if artifact_format == "openvino" and not (is_openvino_available() and is_onnxruntime_available()):
        return "needs openvino and the ONNX export: pip install 'edgediff[openvino,onnx]'"
    if artifact_format.startswith("openvino-int8") and not (is_openvino_available() and is_onnxruntime_available()
                                                   and is_module_available("nncf")):
        return "needs openvino, nncf and the ONNX export: pip install 'edgediff[openvino,onnx]'"
    if artifact_format == "torchscript-fp16" and not is_cuda_available():
        return "a TorchScript fp16 module is traced on a CUDA device; run the export on the GPU machine"
    if artifact_format == "tensorrt-fp16":
        if not is_cuda_available():
            return "a TensorRT plan is built on the GPU that serves it; no CUDA device here"
        if not is_tensorrt_available():
            return "needs the tensorrt Python package: pip install 'edgediff[gpu]'"
        if not is_onnxruntime_available():
            return "the plan is built from the ONNX export: pip install 'edgediff[onnx]'"
    return None
