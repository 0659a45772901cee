"""int8 OpenVINO IR: NNCF post-training quantization of the fp32 IR, calibrated on the pipeline's own inputs.

Weights and activations of the convolutions become int8 (per-channel symmetric weights; with the ``mixed`` preset,
asymmetric activations, which suit the SiLU outputs that feed most convolutions), except the first and the last
one. Matrix products (attention, linear layers), softmax and normalisations stay in floating point; SmoothQuant is
off, as it does not apply to convolutions. Keeping more of the UNet in floating point (``quantize_ir``'s
``keep_float``) was measured and not adopted: see ``QUANTIZATION``. What stays in floating point runs at
the inference precision chosen when the model is compiled (bf16 on CPUs that have it).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgediff.artifacts.openvino_ir import FILENAME
from edgediff.availability import require

logger = logging.getLogger(__name__)

IGNORED_TYPES = ("MatMul",)
"""Kept in floating point: attention products and the linear layers (time embedding, attention projections)."""
IGNORED_PATTERNS = (r".*/conv_in/.*", r".*/conv_out/.*")
"""Kept in floating point: the first and the last convolution (image-space input and the predicted noise)."""
QUANTIZATION = {"preset": "mixed", "model_type": "transformer", "smooth_quant": False, "fast_bias_correction": True,
                "ignored_types": list(IGNORED_TYPES), "ignored_patterns": list(IGNORED_PATTERNS)}
"""The NNCF settings (part of the int8 artifacts' cache keys).

Chosen on the trained digits model's quality gate (64 images, 20 steps, UNet int8 and decoder bf16; digits-FD, lower
is better, torch-fp32 181.5, gate limit 199.6): everything int8 265.4; first/last convolution kept 211.3; plus
MatMul kept 199.7; plus 6x the calibration trajectories (``calibration.SEEDS``) 192.0. The decoder alone in int8
costs little (188.8).

Mixed precision on the UNet's most sensitive layers (``benchmarks/int8_recipes.py``, 2026-12-03, AVX2-only EPYC):
keeping the convolutions of the last up block that read the skip connections (concatenated with the deep features:
two ranges under one int8 scale) in floating point scores better at 5 UniPC steps (181.9 and 84.4 % confident instead
of 189.5 and 81.2 %, both PASSED), but makes each celebahq-256 UNet call about 11 % slower on a CPU without bf16
(1.10 s instead of 0.99 s, ``benchmarks/ir_call_time.py``: fp32 islands and the conversions around them), 7 % of
a 5-step image; ``edgediff tune`` gates every row per machine, so the all-int8 recipe stays.
"""

TIME_EMBEDDING_PATTERNS = (r".*time_embedding.*",)
"""The time-embedding MLP (``time_embedding.linear_1`` and ``linear_2``); each ResNet block's projection of its
output (``time_emb_proj``) is compressed with the other linear layers."""
LINEAR_WEIGHTS = {"mode": "int8_asym", "per_channel": True,
                  "ignored_patterns": [*IGNORED_PATTERNS, *TIME_EMBEDDING_PATTERNS]}
"""Weight-only int8 compression of the linear layers left in floating point (``openvino-int8-wc`` artifacts, for
CPUs without native bf16; part of their cache key).

``IGNORED_TYPES`` keeps the linear layers' weights in floating point: 171.5 MiB of celebahq-256's int8 UNet, which
the CPU plugin packs at the compile precision, fp32 where the CPU has no bf16 (an AVX2-only one). Stored as int8
with a per-channel scale and zero point (NNCF ``compress_weights``) they take a quarter of that, and OpenVINO
decompresses them inside its kernels; activations stay in floating point. The time-embedding MLP (4 MiB) stays in
floating point: with it compressed the trained digits model fails the quality gate.

Chosen on the digits gate (openvino-int8, UniPC 5 steps, compiled at fp32, 2026-12-04; 64 images, confident share
>= 80.9 % and digits-FD <= 199.6 to pass): uncompressed 81.2 % / 177.4 PASSED; every linear layer int8, asymmetric
78.1 % / 186.3 and symmetric 78.1 % / 185.8, both FAILED; all but the time embedding's MLP and the blocks'
projections of it (48.2 MiB), asymmetric 81.2 % / 185.4 PASSED, symmetric 76.6 % / 182.0 FAILED; all but the MLP,
asymmetric 81.2 % / 184.2 PASSED (this setting: the projections are 44 MiB of fp32 weights, and keeping them put
celebahq-256's peak on that path at 1,020 MB instead of 934 MB). Compiled at bf16 the compressed layers saved 40 MB
but made each celebahq-256 UNet call 10-17 % slower, so CPUs with bf16 keep the plain ``openvino-int8`` artifact
(``openvino_runtime.int8_ir_format``).
"""


def quiet_nncf() -> None:
    """Show NNCF's warnings only, unless edgediff runs with ``-v`` (root logger at INFO or lower).

    NNCF logs every node it leaves in floating point at INFO: hundreds of lines per model.
    """
    nncf = require("nncf")
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        nncf.set_log_level(logging.WARNING)


def advanced_parameters(**changes: Any) -> Any:
    """``nncf.AdvancedQuantizationParameters`` of ``QUANTIZATION`` (SmoothQuant off), with ``changes`` on top."""
    nncf = require("nncf")
    return nncf.AdvancedQuantizationParameters(
        smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(convolution=-1, matmul=-1), **changes)


def quantize_ir(source: Path, samples: list[dict[str, np.ndarray]], folder: Path, *,
                keep_float: Sequence[str] = (), overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Quantize the IR at ``source`` with ``samples`` (one dict of named inputs per sample) into ``folder``.

    Args:
        source: fp32 ``model.xml``.
        samples: Calibration inputs, keyed by the model's input names.
        folder: Where to write the int8 ``model.xml`` + ``model.bin``.
        keep_float: Node-name patterns kept in floating point on top of ``IGNORED_PATTERNS``, for recipe
            experiments (``benchmarks/int8_recipes.py``); artifacts pass none.
        overrides: ``nncf.quantize`` keyword arguments that replace these settings, for recipe experiments
            (``benchmarks/int8_recipes.py``); artifacts never pass any. They are named in the report.

    Returns:
        The report: ``quantize_s``, ``samples``, ``fake_quantize_nodes``, ``size_bytes``, the settings.
    """
    ov = require("openvino")
    nncf = require("nncf")
    if not samples:
        raise ValueError("int8 quantization needs at least one calibration sample")
    quiet_nncf()
    model = ov.Core().read_model(str(source))
    names = {name for port in model.inputs for name in port.get_names()}
    samples = [{k: v for k, v in sample.items() if k in names} for sample in samples]  # exporters drop unused inputs
    t0 = time.perf_counter()
    settings: dict[str, Any] = {
        "preset": nncf.QuantizationPreset.MIXED,
        "model_type": nncf.ModelType.TRANSFORMER,
        "subset_size": len(samples),
        "fast_bias_correction": QUANTIZATION["fast_bias_correction"],
        "ignored_scope": nncf.IgnoredScope(types=list(IGNORED_TYPES), patterns=[*IGNORED_PATTERNS, *keep_float],
                                           validate=False),
        "advanced_parameters": advanced_parameters(),
        **(overrides or {}),
    }
    quantized = nncf.quantize(model, nncf.Dataset(samples), **settings)
    elapsed = time.perf_counter() - t0
    path = folder / FILENAME
    ov.save_model(quantized, str(path), compress_to_fp16=False)
    ops = collections.Counter(op.get_type_name() for op in quantized.get_ops())
    size = path.stat().st_size + path.with_suffix(".bin").stat().st_size
    logger.info("quantized %s with %d samples in %.1f s", source, len(samples), elapsed)
    return {"file": FILENAME, "size_bytes": size, "quantize_s": elapsed, "samples": len(samples),
            "fake_quantize_nodes": ops.get("FakeQuantize", 0),
            "quantization": {**QUANTIZATION, "keep_float": list(keep_float),
                             **({"overrides": {k: repr(v) for k, v in overrides.items()}} if overrides else {})}}


def compress_linear_weights(source: Path, folder: Path) -> dict[str, Any]:
    """Compress the floating-point linear weights of the int8 IR at ``source`` to int8 (``LINEAR_WEIGHTS``).

    Args:
        source: The int8 ``model.xml`` (``quantize_ir``'s output).
        folder: Where to write the compressed ``model.xml`` + ``model.bin``.

    Returns:
        The report: ``compress_s``, ``size_bytes``, ``compressed_layers`` (linear layers whose weights were
        floating-point constants and are int8 now), the settings.
    """
    ov = require("openvino")
    nncf = require("nncf")
    quiet_nncf()
    model = ov.Core().read_model(str(source))
    before = float_linear_weights(model)
    t0 = time.perf_counter()
    compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode(LINEAR_WEIGHTS["mode"]),
                                       ignored_scope=nncf.IgnoredScope(patterns=LINEAR_WEIGHTS["ignored_patterns"],
                                                                       validate=False))
    elapsed = time.perf_counter() - t0
    path = folder / FILENAME
    ov.save_model(compressed, str(path), compress_to_fp16=False)
    size = path.stat().st_size + path.with_suffix(".bin").stat().st_size
    return {"file": FILENAME, "size_bytes": size, "compress_s": elapsed,
            "compressed_layers": before - float_linear_weights(compressed), "linear_weights": LINEAR_WEIGHTS}


def float_linear_weights(model: Any) -> int:
    """How many ``MatMul`` nodes of an OpenVINO ``model`` read a floating-point constant (an uncompressed weight)."""
    return sum(1 for op in model.get_ops() if op.get_type_name() == "Constant"
               and op.get_output_element_type(0).is_real()
               and any(t.get_node().get_type_name() == "MatMul" for t in op.output(0).get_target_inputs()))
