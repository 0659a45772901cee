"""Triton Python-backend model ``ldm_<variant>``: DDIM over BLS calls to ``unet_<variant>`` and ``vqdec_<variant>``.

Copied by ``edgediff export`` into ``<repo>/ldm_<variant>/1/model.py``. The loop is the core's
``edgediff.pipeline.LDMPipeline`` (the same code as in-process generation); only its UNet and decoder runners differ:
each UNet evaluation is one ``pb_utils.InferenceRequest(...).exec()`` to ``unet_<variant>`` (split into chunks of the
part's ``max_batch_size``), and decoding is one call to ``vqdec_<variant>``. Every BLS response is checked right after
``exec()``; an inner model's error is returned as this request's Triton error (model name, message and code kept),
never swallowed. Constants (scheduler config, latent shape, scaling factor, inner model names) come from
``config.pbtxt`` ``parameters``.

A DeepCache variant (``deepcache_interval`` > 1 in the parameters) has no ``unet_<variant>``: its UNet runner is the
core's ``edgediff.variants.deepcache.DeepCacheUNet`` (the cache logic is not repeated here), whose full function is
a BLS call to ``unet_full_<variant>`` returning noise and deep feature and whose shallow function is a BLS call to
``unet_shallow_<variant>`` with the cached feature; the cache lives in the per-generation ``sequence()`` callable. The
feature is never copied here: the full call's output tensors are sent back as the shallow calls' inputs.

Inputs: ``SEED`` INT64 [1], ``STEPS`` INT32 [1], ``ETA`` FP32 [1] (optional, 0), ``BATCH`` INT32 [1] (optional, 1).
Outputs: ``IMAGE`` UINT8 [batch, H, W, 3] and ``TIMINGS`` FP64 [3] = denoise_s, decode_s, total_s.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import torch
import triton_python_backend_utils as pb_utils


class InnerModelError(Exception):
    """A BLS call to a part model failed; carries the inner model's name, message and Triton error code."""

    def __init__(self, model: str, message: str, code: int) -> None:
        super().__init__(f"{model}: {message}")
        self.code = code


def _to_numpy(tensor: pb_utils.Tensor) -> np.ndarray:
    """An owned CPU copy of a BLS output (GPU outputs of native backends come through DLPack)."""
    if tensor.is_cpu():
        return np.array(tensor.as_numpy(), copy=True)
    return torch.from_dlpack(tensor.to_dlpack()).cpu().numpy()


def bls_exec(model: str, inputs: list[pb_utils.Tensor], outputs: list[str]) -> list[pb_utils.Tensor]:
    """One synchronous BLS inference returning the ``outputs`` tensors in order; raises ``InnerModelError``."""
    request = pb_utils.InferenceRequest(model_name=model, requested_output_names=list(outputs), inputs=inputs)
    response = request.exec()
    if response.has_error():
        error = response.error()
        code = error.code() if hasattr(error, "code") else pb_utils.TritonError.INTERNAL
        raise InnerModelError(model, error.message(), code)
    tensors = []
    for output in outputs:
        tensor = pb_utils.get_output_tensor_by_name(response, output)
        if tensor is None:
            raise InnerModelError(model, f"response has no output {output!r}", pb_utils.TritonError.INTERNAL)
        tensors.append(tensor)
    return tensors


def _bls_arrays(inputs: list[tuple[str, torch.Tensor]]) -> list[tuple[str, np.ndarray]]:
    """Tensors as the arrays the parts take: fp32, except the timestep (any integer tensor), INT64 ``[batch, 1]``."""
    arrays = []
    for name, tensor in inputs:
        tensor = tensor.detach().cpu()
        if tensor.dtype.is_floating_point:
            arrays.append((name, tensor.float().numpy()))
        else:
            arrays.append((name, tensor.numpy().astype(np.int64).reshape(-1, 1)))
    return arrays


def bls_chunks(inputs: list[tuple[str, torch.Tensor]], max_batch: int) -> list[list[pb_utils.Tensor]]:
    """``inputs`` as BLS tensors, in chunks of at most ``max_batch`` items (the part's ``max_batch_size``)."""
    arrays = _bls_arrays(inputs)
    return [[pb_utils.Tensor(name, np.ascontiguousarray(a[start:start + max_batch])) for name, a in arrays]
            for start in range(0, arrays[0][1].shape[0], max_batch)]


def bls_chunked(model: str, inputs: list[tuple[str, torch.Tensor]], output: str, max_batch: int) -> torch.Tensor:
    """One output of BLS calls over chunks of ``inputs`` (see ``bls_chunks``), concatenated."""
    return torch.from_numpy(np.concatenate([_to_numpy(bls_exec(model, chunk, [output])[0])
                                            for chunk in bls_chunks(inputs, max_batch)]))


class BlsFeature:
    """A DeepCache deep feature left in the full part's BLS output tensors, one per chunk.

    The shallow calls send these same tensors back, so the pipeline model never copies the largest tensor of the
    loop (celebahq-256: 7.3 MB) out of Triton's shared memory and into it again. ``shape[0]`` is the batch (all
    ``DeepCacheUNet`` looks at).
    """

    def __init__(self, chunks: list[pb_utils.Tensor], batch: int) -> None:
        self.chunks = chunks
        self.shape = (batch,)


class BlsUNet:
    """``UNetRunner`` whose evaluations are BLS calls to the ``unet_<variant>`` model."""

    def __init__(self, model: str, max_batch: int, names: tuple[str, str, str]) -> None:
        self.model = model
        self.max_batch = max_batch
        self.sample_name, self.timestep_name, self.output_name = names

    def _run(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return bls_chunked(self.model, [(self.sample_name, sample), (self.timestep_name, timestep)], self.output_name,
                           self.max_batch)

    def sequence(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The callable for one generation (stateless)."""
        return self._run


class BlsDeepCacheParts:
    """The full and shallow functions of ``DeepCacheUNet`` as BLS calls to ``unet_full_<v>`` / ``unet_shallow_<v>``.

    Args:
        full_model: ``unet_full_<variant>`` (sample, timestep -> noise, deep feature).
        shallow_model: ``unet_shallow_<variant>`` (sample, timestep, deep feature -> noise).
        max_batch: The parts' ``max_batch_size``.
        names: Tensor names: sample, timestep, noise, deep feature.
    """

    def __init__(self, full_model: str, shallow_model: str, max_batch: int, names: tuple[str, str, str, str]) -> None:
        self.full_model = full_model
        self.shallow_model = shallow_model
        self.max_batch = max_batch
        self.sample_name, self.timestep_name, self.output_name, self.feature_name = names

    def _chunks(self, sample: torch.Tensor, timestep: torch.Tensor) -> list[list[pb_utils.Tensor]]:
        return bls_chunks([(self.sample_name, sample), (self.timestep_name, timestep)], self.max_batch)

    def full(self, sample: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor, BlsFeature]:
        """``(noise, feature)`` from the full UNet; the feature stays in Triton's tensors."""
        noise, features = [], []
        for inputs in self._chunks(sample, timestep):
            noise_tensor, feature_tensor = bls_exec(self.full_model, inputs, [self.output_name, self.feature_name])
            noise.append(_to_numpy(noise_tensor))
            features.append(feature_tensor)
        return torch.from_numpy(np.concatenate(noise)), BlsFeature(features, sample.shape[0])

    def shallow(self, sample: torch.Tensor, timestep: torch.Tensor, feature: BlsFeature) -> torch.Tensor:
        """The noise from the shallow branch over the cached ``feature`` (sent back as it came)."""
        noise = [_to_numpy(bls_exec(self.shallow_model, [*inputs, chunk], [self.output_name])[0])
                 for inputs, chunk in zip(self._chunks(sample, timestep), feature.chunks, strict=True)]
        return torch.from_numpy(np.concatenate(noise))


class BlsDecoder:
    """``DecoderRunner`` whose decoding is a BLS call to the ``vqdec_<variant>`` model."""

    def __init__(self, model: str, max_batch: int, names: tuple[str, str]) -> None:
        self.model = model
        self.max_batch = max_batch
        self.input_name, self.output_name = names

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode (chunked to the part's ``max_batch_size``)."""
        return bls_chunked(self.model, [(self.input_name, latents)], self.output_name, self.max_batch)


def _scalar(request: pb_utils.InferenceRequest, name: str, default: object = None) -> object:
    from edgediff.errors import InvalidArgumentError

    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        if default is None:
            raise InvalidArgumentError(f"{name} is required")
        return default
    array = tensor.as_numpy()
    if array.size != 1:
        raise InvalidArgumentError(f"{name} must hold exactly one value, got shape {list(array.shape)}")
    return array.reshape(-1)[0].item()


class TritonPythonModel:
    """The pipeline model: validates the request, runs ``LDMPipeline`` over BLS runners, returns images + timings."""

    def initialize(self, args: dict[str, str]) -> None:
        """Build the pipeline from the config's parameters (no artifact is loaded here)."""
        from edgediff import constants as c
        from edgediff.pipeline import LDMPipeline

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.c = c
        part_max_batch = int(params["part_max_batch"])
        self.max_batch = int(params["max_batch"])
        torch.set_num_threads(1)  # the scheduler's arithmetic is tiny; the parts own the cores
        interval = int(params.get("deepcache_interval", "1"))
        if interval > 1:
            from edgediff.variants.deepcache import DeepCacheUNet

            parts = BlsDeepCacheParts(params["unet_full_model"], params["unet_shallow_model"], part_max_batch,
                                      (c.UNET_INPUT_SAMPLE, c.UNET_INPUT_TIMESTEP, c.UNET_OUTPUT, c.UNET_FEATURE))
            unet = DeepCacheUNet(full=parts.full, shallow=parts.shallow, interval=interval)
            unet_label = f"DeepCache every {interval} steps over {parts.full_model} + {parts.shallow_model}"
        else:
            unet = BlsUNet(params["unet_model"], part_max_batch,
                           (c.UNET_INPUT_SAMPLE, c.UNET_INPUT_TIMESTEP, c.UNET_OUTPUT))
            unet_label = params["unet_model"]
        self.pipeline = LDMPipeline(
            unet=unet,
            decoder=BlsDecoder(params["vqdec_model"], part_max_batch, (c.VQDEC_INPUT, c.VQDEC_OUTPUT)),
            scheduler_config=json.loads(params["scheduler_config"]),
            latent_shape=tuple(json.loads(params["latent_shape"])),
            scaling_factor=float(params["scaling_factor"]),
            metadata={"preset": params["preset"], "variant": params["variant"], "weights": params["weights"],
                      "weights_sha256": params["weights_sha256"]},
        )
        pb_utils.Logger.log_info(f"{args['model_name']}: DDIM over {unet_label} + {params['vqdec_model']}")

    def _generate(self, request: pb_utils.InferenceRequest) -> pb_utils.InferenceResponse:
        from edgediff.pipeline import validate_request

        c = self.c
        seed = int(_scalar(request, c.LDM_INPUT_SEED))
        steps = int(_scalar(request, c.LDM_INPUT_STEPS))
        eta = float(_scalar(request, c.LDM_INPUT_ETA, 0.0))
        batch = int(_scalar(request, c.LDM_INPUT_BATCH, 1))
        validate_request(steps=steps, eta=eta, batch=batch, seed=seed, max_batch=self.max_batch)
        is_cancelled = getattr(request, "is_cancelled", None)
        result = self.pipeline(seed=seed, steps=steps, eta=eta, batch=batch, should_stop=is_cancelled)
        timings = np.array([getattr(result.timings, f) for f in c.LDM_TIMINGS_FIELDS], dtype=np.float64)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(c.LDM_OUTPUT_IMAGE, np.ascontiguousarray(result.images, dtype=np.uint8)),
            pb_utils.Tensor(c.LDM_OUTPUT_TIMINGS, timings),
        ])

    def execute(self, requests: list[pb_utils.InferenceRequest]) -> list[pb_utils.InferenceResponse]:
        """One generation per request; every failure becomes that request's Triton error."""
        from edgediff.errors import InvalidArgumentError
        from edgediff.pipeline import GenerationCancelled

        responses = []
        for request in requests:
            try:
                responses.append(self._generate(request))
                continue
            except InvalidArgumentError as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
            except InnerModelError as exc:
                error = pb_utils.TritonError(str(exc), exc.code)
            except GenerationCancelled as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.CANCELLED)
            except Exception as exc:  # reported to the caller, with its type, never swallowed
                error = pb_utils.TritonError(f"{type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL)
            responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        return responses

    def finalize(self) -> None:
        """Nothing to release (the parts own the artifacts)."""
        self.pipeline = None
