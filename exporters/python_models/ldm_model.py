"""Triton Python-backend model ``ldm_<variant>``: DDIM over BLS calls to ``unet_<variant>`` and ``vqdec_<variant>``.

Copied by ``edgediff export`` into ``<repo>/ldm_<variant>/1/model.py``. The loop is the core's
``edgediff.pipeline.LDMPipeline`` (the same code as in-process generation); only its UNet and decoder runners differ:
each UNet evaluation is one ``pb_utils.InferenceRequest(...).exec()`` to ``unet_<variant>`` (split into chunks of the
part's ``max_batch_size``), and decoding is one call to ``vqdec_<variant>``. Every BLS response is checked right after
``exec()``; an inner model's error is returned as this request's Triton error (model name, message and code kept),
never swallowed. Constants (scheduler config, latent shape, scaling factor, inner model names) come from
``config.pbtxt`` ``parameters``.

Concurrency: the model has several ``KIND_CPU`` instances (``instance_group`` count, the target's
``pipeline_instances``); each is its own Python-backend process whose ``execute`` runs one generation with blocking
BLS calls, so that many generations of one variant progress at once. Their UNet and decoder requests meet in the part
models' dynamic batcher, which runs the requests queued together (same step or not: the timestep is per item) as one
batched execution. ``async def execute`` would not give this: Triton's Python backend (24.04+) runs the coroutines of
one instance concurrently only for decoupled models, and a decoupled ``ldm_<variant>`` would force every client onto
the streaming API. Each instance builds its own ``LDMPipeline``; a generation's scheduler is its own
(``LDMPipeline.make_scheduler``), and a DeepCache image's state is keyed by its own random correlation ID, so
concurrent generations share nothing but the part models.

A DeepCache variant (``deepcache_interval`` > 1 in the parameters) has a stateful ``unet_<variant>`` under Triton's
sequence batcher, which keeps each image's deep feature (and runs the core's ``DeepCacheUNet`` there): every image of
a generation is one sequence with its own correlation ID, its first step carries the START flag, and when the
generation ends (finished, failed or cancelled) one request with the END flag per image closes it. The feature never
crosses a process boundary, so a DeepCache step costs one round trip of the latents like a plain one.

Inputs: ``SEED`` INT64 [1], ``STEPS`` INT32 [1], ``ETA`` FP32 [1] (optional, 0), ``BATCH`` INT32 [1] (optional, 1),
``SCHEDULER`` BYTES [1] (optional: ``ddim``, ``dpmpp`` or ``unipc``; default the config's ``scheduler`` parameter).
Outputs: ``IMAGE`` UINT8 [batch, H, W, 3] and ``TIMINGS`` FP64 [3] = denoise_s, decode_s, total_s.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from edgediff import constants as c
from edgediff.errors import InvalidArgumentError
from edgediff.pipeline import GenerationCancelled, LDMPipeline, initial_latents
from edgediff.request import GenerationRequest
from edgediff.schedulers import SCHEDULERS, check_scheduler


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


def bls_exec(
    model: str, inputs: list[pb_utils.Tensor], outputs: list[str], *, sequence_id: int = 0, flags: int = 0
) -> list[pb_utils.Tensor]:
    """One synchronous BLS inference returning the ``outputs`` tensors in order; raises ``InnerModelError``.

    ``sequence_id`` and ``flags`` address a stateful model (correlation ID, sequence START/END flags).
    """
    request = pb_utils.InferenceRequest(model_name=model, requested_output_names=list(outputs), inputs=inputs,
                                        correlation_id=sequence_id, flags=flags)
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


class BlsImageSequences:
    """One generation over a stateful DeepCache ``unet_<variant>``: each image is a Triton sequence.

    The first call opens one sequence per image (START flag, fresh correlation IDs), every call sends each image's
    latents as its own batch-1 request (the sequence batcher's rule), and ``close()`` sends each open image one
    END-flagged request that only releases its cached feature. ``close()`` never raises: a failed release is logged
    and Triton ends the sequence after its idle limit anyway.
    """

    def __init__(self, model: str, names: tuple[str, str, str]) -> None:
        self.model = model
        self.sample_name, self.timestep_name, self.output_name = names
        self.ids: list[int] = []
        self.opened: list[int] = []
        self.last: list[list[pb_utils.Tensor]] = []

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """One step of every image: the noise, in order."""
        items = bls_chunks([(self.sample_name, sample), (self.timestep_name, timestep)], 1)
        start = not self.ids
        if start:
            self.ids = [secrets.randbits(63) or 1 for _ in items]  # 0 is not a correlation ID
        elif len(items) != len(self.ids):
            raise ValueError(f"batch changed from {len(self.ids)} to {len(items)} images within one generation")
        self.last = items
        flags = pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START if start else 0
        noise = []
        for sequence_id, inputs in zip(self.ids, items, strict=True):
            noise.append(_to_numpy(bls_exec(self.model, inputs, [self.output_name], sequence_id=sequence_id,
                                            flags=flags)[0]))
            if start:
                self.opened.append(sequence_id)
        return torch.from_numpy(np.concatenate(noise))

    def close(self) -> None:
        """End every image that was opened (the inputs sent are ignored; the model only drops the feature)."""
        for index, sequence_id in enumerate(self.opened):
            try:
                bls_exec(self.model, self.last[index], [], sequence_id=sequence_id,
                         flags=pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END)
            except Exception as exc:  # the generation's own outcome matters more; Triton's idle limit frees it
                pb_utils.Logger.log_warn(f"closing DeepCache sequence {sequence_id} of {self.model}: {exc}")
        self.ids, self.opened, self.last = [], [], []


class BlsDeepCacheUNet:
    """``UNetRunner`` over a stateful DeepCache ``unet_<variant>``: one ``BlsImageSequences`` per generation."""

    def __init__(self, model: str, names: tuple[str, str, str]) -> None:
        self.model = model
        self.names = names

    def sequence(self) -> BlsImageSequences:
        """The callable for one generation; the pipeline closes it when the generation ends."""
        return BlsImageSequences(self.model, self.names)


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

    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        if default is None:
            raise InvalidArgumentError(f"{name} is required")
        return default
    array = tensor.as_numpy()
    if array.size != 1:
        raise InvalidArgumentError(f"{name} must hold exactly one value, got shape {list(array.shape)}")
    value = array.reshape(-1)[0]
    return value.item() if hasattr(value, "item") else value  # BYTES tensors hold Python bytes (no .item())


class TritonPythonModel:
    """The pipeline model: validates the request, runs ``LDMPipeline`` over BLS runners, returns images + timings."""

    def initialize(self, args: dict[str, str]) -> None:
        """Build the pipeline from the config's parameters (no artifact is loaded here)."""
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.c = c
        part_max_batch = int(params["part_max_batch"])
        self.max_batch = int(params["max_batch"])
        torch.set_num_threads(1)  # the scheduler's arithmetic is tiny; the parts own the cores
        interval = int(params.get("deepcache_interval", "1"))
        names = (c.UNET_INPUT_SAMPLE, c.UNET_INPUT_TIMESTEP, c.UNET_OUTPUT)
        if interval > 1:
            unet = BlsDeepCacheUNet(params["unet_model"], names)
            unet_label = f"{params['unet_model']} (DeepCache every {interval} steps, one sequence per image)"
        else:
            unet = BlsUNet(params["unet_model"], part_max_batch, names)
            unet_label = params["unet_model"]
        self.pipeline = LDMPipeline(
            unet=unet,
            decoder=BlsDecoder(params["vqdec_model"], part_max_batch, (c.VQDEC_INPUT, c.VQDEC_OUTPUT)),
            scheduler_config=json.loads(params["scheduler_config"]),
            latent_shape=tuple(json.loads(params["latent_shape"])),
            scaling_factor=float(params["scaling_factor"]),
            metadata={"preset": params["preset"], "variant": params["variant"], "weights": params["weights"],
                      "weights_sha256": params["weights_sha256"]},
            scheduler=params.get("scheduler", "ddim"),  # requests without SCHEDULER use the export's --scheduler
        )
        self._warm_up()
        pb_utils.Logger.log_info(f"{args['model_name']}: DDIM over {unet_label} + {params['vqdec_model']}")

    def _warm_up(self) -> None:
        """Import the samplers' and the noise's code now (diffusers: seconds), not in this instance's first request.

        Each of the model's instances is its own process: without this, the first generation that lands on each one
        would pay the imports (and a short deadline would cancel it before its first step).
        """
        for name in SCHEDULERS:
            self.pipeline.make_scheduler(name).set_timesteps(2)
        initial_latents(torch.Generator("cpu").manual_seed(0), 1, self.pipeline.latent_shape)

    def _generate(self, request: pb_utils.InferenceRequest) -> pb_utils.InferenceResponse:

        c = self.c
        checked = GenerationRequest.validated(  # the model's inputs enter here; the pipeline trusts them
            seed=int(_scalar(request, c.LDM_INPUT_SEED)),
            steps=int(_scalar(request, c.LDM_INPUT_STEPS)),
            eta=float(_scalar(request, c.LDM_INPUT_ETA, 0.0)),
            batch=int(_scalar(request, c.LDM_INPUT_BATCH, 1)),
            max_batch=self.max_batch,
        )

        name = pb_utils.get_input_tensor_by_name(request, c.LDM_INPUT_SCHEDULER)
        raw = _scalar(request, c.LDM_INPUT_SCHEDULER) if name is not None else None
        scheduler = check_scheduler(raw.decode() if isinstance(raw, bytes) else raw or self.pipeline.scheduler,
                                    eta=checked.eta, field=c.LDM_INPUT_SCHEDULER)
        is_cancelled = getattr(request, "is_cancelled", None)
        result = self.pipeline(seed=checked.seed, steps=checked.steps, eta=checked.eta, batch=checked.batch,
                               should_stop=is_cancelled, scheduler=scheduler)
        timings = np.array([getattr(result.timings, f) for f in c.LDM_TIMINGS_FIELDS], dtype=np.float64)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(c.LDM_OUTPUT_IMAGE, np.ascontiguousarray(result.images, dtype=np.uint8)),
            pb_utils.Tensor(c.LDM_OUTPUT_TIMINGS, timings),
        ])

    def execute(self, requests: list[pb_utils.InferenceRequest]) -> list[pb_utils.InferenceResponse]:
        """One generation per request; every failure becomes that request's Triton error."""
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
