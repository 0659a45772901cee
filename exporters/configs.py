"""The one ``config.pbtxt`` writer: model configs as plain dicts, rendered in protobuf text format.

The dicts follow Triton's ``model_config.proto`` field names; the tests parse every rendered config with
``tritonclient.grpc.model_config_pb2.ModelConfig`` and ``google.protobuf.text_format``, so a typo in a field name or
an enum fails there. Constants the Python models need (preset, variant, scheduler config, scaling factor, latent
shape, artifact path) travel in ``parameters``, never as literals in ``model.py``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from edgediff.constants import (
    DEEPCACHE_SEQUENCE_IDLE_S,
    LDM_INPUT_BATCH,
    LDM_INPUT_ETA,
    LDM_INPUT_SCHEDULER,
    LDM_INPUT_SEED,
    LDM_INPUT_STEPS,
    LDM_OUTPUT_IMAGE,
    LDM_OUTPUT_TIMINGS,
    LDM_TIMINGS_FIELDS,
    UNET_INPUT_SAMPLE,
    UNET_INPUT_TIMESTEP,
    UNET_OUTPUT,
    VQDEC_INPUT,
    VQDEC_OUTPUT,
)
from exporters.targets import DEEPCACHE_PART, KIND_CPU, PYTHON_BACKEND, Placement

_MAP_FIELDS = frozenset({"parameters"})


class Enum(str):
    """A protobuf enum value (``KIND_GPU``, ``TYPE_FP32``): rendered bare, without quotes."""

    __slots__ = ()


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _quote(value)
    raise TypeError(f"cannot render {type(value).__name__} {value!r} in a model config")


def _render_fields(message: Mapping[str, Any], indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    for key, value in message.items():
        if value is None:
            continue
        if key in _MAP_FIELDS and isinstance(value, Mapping):
            for map_key, map_value in value.items():
                lines.append(f"{pad}{key} {{")
                lines.append(f"{pad}  key: {_quote(str(map_key))}")
                lines.append(f"{pad}  value {{ string_value: {_quote(str(map_value))} }}")
                lines.append(f"{pad}}}")
        elif isinstance(value, Mapping):
            lines.append(f"{pad}{key} {{")
            lines.extend(_render_fields(value, indent + 1))
            lines.append(f"{pad}}}")
        elif isinstance(value, list | tuple) and value and all(isinstance(v, Mapping) for v in value):
            lines.append(f"{pad}{key} [")
            for i, item in enumerate(value):
                lines.append(f"{pad}  {{")
                lines.extend(_render_fields(item, indent + 2))
                lines.append(f"{pad}  }}" + ("," if i < len(value) - 1 else ""))
            lines.append(f"{pad}]")
        elif isinstance(value, list | tuple):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return lines


def render_config(config: Mapping[str, Any]) -> str:
    """Render a model config dict as ``config.pbtxt`` text.

    Nested dicts become messages, lists of dicts repeated messages (``input [ {...}, {...} ]``), lists of scalars
    ``dims: [ 3, 64, 64 ]``, ``Enum`` values bare identifiers, and ``parameters`` (a ``str -> str`` dict) the
    ``key``/``value { string_value }`` map entries Triton expects.
    """
    return "\n".join(_render_fields(config, 0)) + "\n"


def _tensor(name: str, data_type: str, dims: list[int], **extra: Any) -> dict[str, Any]:
    return {"name": name, "data_type": Enum(data_type), "dims": list(dims), **extra}


def part_io(part: str, latent_shape: tuple[int, int, int], image_size: int) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs of a part model (batch axis implicit: ``max_batch_size > 0``).

    The timestep is ``[batch]`` in the artifact; Triton batching needs at least one dim per item, so it is declared
    ``dims: [1]`` and reshaped to ``[]`` for the native backends. A DeepCache UNet (``unet-deepcache``) keeps its deep
    feature inside and has exactly the plain UNet's tensors.
    """
    latent = list(latent_shape)
    if part in ("unet", DEEPCACHE_PART):
        inputs = [
            _tensor(UNET_INPUT_SAMPLE, "TYPE_FP32", latent),
            _tensor(UNET_INPUT_TIMESTEP, "TYPE_INT64", [1], reshape={"shape": []}),
        ]
        return inputs, [_tensor(UNET_OUTPUT, "TYPE_FP32", latent)]
    if part == "vqdec":
        return [_tensor(VQDEC_INPUT, "TYPE_FP32", latent)], [_tensor(VQDEC_OUTPUT, "TYPE_FP32", [3, image_size,
                                                                                                 image_size])]
    raise ValueError(f"part must be unet, {DEEPCACHE_PART} or vqdec, got {part!r}")


def part_config(
    *,
    name: str,
    part: str,
    placement: Placement,
    latent_shape: tuple[int, int, int],
    image_size: int,
    max_batch_size: int,
    parameters: Mapping[str, str],
    max_sequences: int = 1,
    queue_delay_us: int = 0,
) -> dict[str, Any]:
    """The config of ``unet_<variant>`` or ``vqdec_<variant>``.

    A plain part has Triton's dynamic batcher: the requests of concurrent generations (one per ``ldm_<variant>``
    instance) that queue while an execution runs, or arrive within ``queue_delay_us`` of each other, run as one
    batched execution. A DeepCache UNet (``part`` = ``unet-deepcache``) is stateful: instead of the dynamic batcher it
    has Triton's sequence batcher (strategy ``oldest``, so requests of different images still share an execution),
    which routes every request of one image (one correlation ID) to the same instance, where the image's deep feature
    is cached.

    Args:
        name: Model name (``unet_onnx_fp32``).
        part: ``unet``, ``vqdec`` or ``unet-deepcache``.
        placement: How the target serves the variant (backend/platform, instance kind, artifact file).
        latent_shape: (C, h, w) of the latents.
        image_size: Side of the decoded image.
        max_batch_size: Largest batch one execution takes (dynamic batching merges concurrent requests up to it).
        parameters: Constants for the Python model (ignored by native backends, kept for readers).
        max_sequences: Images a DeepCache UNet serves at once (``max_candidate_sequences``): at least the largest
            batch of one generation times the generations in progress at once, since every image of a batch is its
            own sequence and they all stay open.
        queue_delay_us: ``max_queue_delay_microseconds`` of the batcher: how long a request may wait for others to
            join its execution.
    """
    inputs, outputs = part_io(part, latent_shape, image_size)
    config: dict[str, Any] = {"name": name}
    if placement.platform:
        config["platform"] = placement.platform
        config["default_model_filename"] = placement.filename
    else:
        config["backend"] = placement.backend
    config.update(
        max_batch_size=max_batch_size,
        input=inputs,
        output=outputs,
        instance_group=[{"kind": Enum(placement.instance_kind), "count": 1}],
    )
    if part == DEEPCACHE_PART:
        config["sequence_batching"] = {
            "max_sequence_idle_microseconds": DEEPCACHE_SEQUENCE_IDLE_S * 1_000_000,
            "oldest": {"max_candidate_sequences": max_sequences, "max_queue_delay_microseconds": queue_delay_us},
        }
    else:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": queue_delay_us}
    config["parameters"] = dict(parameters)
    if placement.platform == "pytorch_libtorch":
        config["parameters"] = {**config["parameters"], "INFERENCE_MODE": "true"}
    return config


def ldm_io(image_size: int) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs of ``ldm_<variant>`` (no implicit batch axis; ``BATCH`` says how many images)."""
    inputs = [
        _tensor(LDM_INPUT_SEED, "TYPE_INT64", [1]),
        _tensor(LDM_INPUT_STEPS, "TYPE_INT32", [1]),
        _tensor(LDM_INPUT_ETA, "TYPE_FP32", [1], optional=True),
        _tensor(LDM_INPUT_BATCH, "TYPE_INT32", [1], optional=True),
        _tensor(LDM_INPUT_SCHEDULER, "TYPE_STRING", [1], optional=True),
    ]
    outputs = [
        _tensor(LDM_OUTPUT_IMAGE, "TYPE_UINT8", [-1, image_size, image_size, 3]),
        _tensor(LDM_OUTPUT_TIMINGS, "TYPE_FP64", [len(LDM_TIMINGS_FIELDS)]),
    ]
    return inputs, outputs


def ldm_config(*, name: str, image_size: int, parameters: Mapping[str, str], instances: int = 1) -> dict[str, Any]:
    """The config of the ``ldm_<variant>`` pipeline model (Python backend, CPU, BLS to the part models).

    Args:
        name: Model name (``ldm_onnx_fp32``).
        image_size: Side of the generated images.
        parameters: Constants for the model (scheduler config, inner model names, ``max_batch``...).
        instances: ``KIND_CPU`` instances: generations in progress at once. Each is its own Python-backend process
            whose ``execute`` runs one generation with blocking BLS calls, so ``instances`` generations send their
            UNet and decoder requests at the same time and the parts' batchers merge them.
    """
    if instances < 1:
        raise ValueError(f"instances must be >= 1, got {instances}")
    inputs, outputs = ldm_io(image_size)
    return {
        "name": name,
        "backend": PYTHON_BACKEND,
        "max_batch_size": 0,
        "input": inputs,
        "output": outputs,
        "instance_group": [{"kind": Enum(KIND_CPU), "count": instances}],
        "parameters": dict(parameters),
    }


def instance_count(config: Mapping[str, Any]) -> int:
    """Instances a model config declares (the sum over its ``instance_group`` entries; Triton's default is 1).

    Reads both this module's dicts and Triton's JSON form of a loaded model's config (``count`` as an int).
    """
    groups = config.get("instance_group") or [{}]
    return max(1, sum(int(group.get("count", 1) or 1) for group in groups))


def json_parameter(value: Any) -> str:
    """A JSON value for a ``parameters`` entry (compact, key order kept)."""
    return json.dumps(value, separators=(",", ":"))
