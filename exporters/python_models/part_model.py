"""Triton Python-backend model: one part (UNet or VQ decoder) of an edgediff variant, run on the CPU.

On a ``KIND_GPU`` instance (the GPU targets' ``torch-fp32`` baseline) the part runs on that instance's GPU.

Copied by ``edgediff export --target cpu`` into ``<repo>/unet_<variant>/1/model.py`` and
``<repo>/vqdec_<variant>/1/model.py``. Everything it needs comes from ``config.pbtxt`` ``parameters`` (variant, part,
preset, repository-relative artifact path, threads); the artifact is loaded from this model's folder only, with the
core's variant code (``exporters.part_runtime``). Dynamic batching may hand several requests to one ``execute``: they
are run as one batch and split back, one response per request.

A DeepCache variant's ``unet_<variant>`` (part ``unet-deepcache``) is stateful and runs under Triton's sequence
batcher: each image is one sequence (batch 1, its own correlation ID). The first request (START flag) opens the
image's DeepCache state, each request returns one step's noise (full UNet or shallow branch, as the core's
``DeepCacheUNet`` decides), and a request with the END flag only closes the image (inputs ignored, no outputs). The
deep feature stays in this process. Metrics on Triton's port: ``edgediff_deepcache_evaluations_total{kind}`` and
``edgediff_deepcache_open_sequences``.
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from edgediff import constants as c
from edgediff.artifacts.build import IO_NAMES
from exporters.part_runtime import PartRunner, PartSpec, load_deepcache
from exporters.targets import DEEPCACHE_PART


class TritonPythonModel:
    """A UNet or VQ-decoder part on a CPU instance (or, eager PyTorch only, a GPU instance)."""

    def initialize(self, args: dict[str, str]) -> None:
        """Parse the config once and load the artifact (errors here fail the model load, with the reason)."""
        config = json.loads(args["model_config"])
        spec = PartSpec.from_parameters(config.get("parameters", {}))
        self.output_dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}
        self.runner = self.sequences = None
        if spec.part == DEEPCACHE_PART:
            self._init_deepcache(args["model_name"], spec, args["model_repository"], config)
            pb_utils.Logger.log_info(f"{args['model_name']}: {spec.variant} DeepCache every {spec.deepcache_interval} "
                                     f"steps, from {spec.artifact} and {spec.shallow_artifact}")
            return
        gpu = args.get("model_instance_kind") == "GPU"  # the GPU targets' torch-fp32 parts: KIND_GPU instances
        device = f"cuda:{args.get('model_instance_device_id', '0')}" if gpu else "cpu"
        self.runner = PartRunner(spec, args["model_repository"], device=device)
        pb_utils.Logger.log_info(f"{args['model_name']}: {spec.variant} {spec.part} from {spec.artifact} on {device}")

    def _init_deepcache(self, model: str, spec: object, model_dir: str, config: dict) -> None:

        idle_us = int(config.get("sequence_batching", {}).get("max_sequence_idle_microseconds", 0) or 0)
        idle_s = idle_us / 1e6 if idle_us else c.DEEPCACHE_SEQUENCE_IDLE_S
        self.input_names, (self.output_name,) = IO_NAMES["unet"]  # the feature never leaves: a plain UNet's tensors
        self.evaluations: dict[str, object] = {}
        self.open_gauge = None
        try:  # Triton's custom metrics; absent when the server runs with --allow-metrics=false
            family = pb_utils.MetricFamily
            counter = family(name=c.METRIC_DEEPCACHE_EVALUATIONS_TOTAL, kind=family.COUNTER,
                             description="DeepCache UNet evaluations (full: refreshes the feature)")
            gauge = family(name=c.METRIC_DEEPCACHE_OPEN_SEQUENCES, kind=family.GAUGE,
                           description="Images whose DeepCache feature this model holds")
            self.metric_families = (counter, gauge)  # a Metric must not outlive its family
            self.evaluations = {kind: counter.Metric(labels={"model": model, "kind": kind})
                                for kind in ("full", "shallow")}
            self.open_gauge = gauge.Metric(labels={"model": model})
        except Exception as exc:  # metrics are optional, serving is not
            pb_utils.Logger.log_warn(f"{model}: DeepCache metrics unavailable ({exc})")

        def count(kind: str) -> None:
            if kind in self.evaluations:
                self.evaluations[kind].increment(1)

        self.sequences = load_deepcache(spec, model_dir, idle_s, on_evaluation=count)

    def _inputs(self, request: pb_utils.InferenceRequest) -> dict[str, np.ndarray]:
        return {name: self._input(request, name) for name in self.runner.input_names}

    def execute(self, requests: list[pb_utils.InferenceRequest]) -> list[pb_utils.InferenceResponse]:
        """One response per request (errors as ``TritonError``)."""
        if self.sequences is not None:
            return self._execute_sequences(requests)
        return self._execute_batch(requests)

    def _execute_sequences(self, requests: list[pb_utils.InferenceRequest]) -> list[pb_utils.InferenceResponse]:
        """One DeepCache step per request (each request is one image of its own sequence)."""
        responses = []
        for request in requests:
            sequence_id = request.correlation_id()
            flags = request.flags()
            try:
                if flags & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END:
                    self.sequences.end(sequence_id)
                    responses.append(pb_utils.InferenceResponse(output_tensors=[]))
                    continue
                sample, timestep = (self._input(request, name) for name in self.input_names)
                noise = self.sequences.step(sequence_id, sample, timestep,
                                            start=bool(flags & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START))
                output = noise.astype(self.output_dtypes[self.output_name], copy=False)
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name,
                                                                                            output)]))
            except ValueError as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
            except Exception as exc:
                error = pb_utils.TritonError(f"{type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        if self.open_gauge is not None:
            self.open_gauge.set(len(self.sequences))
        return responses

    @staticmethod
    def _input(request: pb_utils.InferenceRequest, name: str) -> np.ndarray:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            raise ValueError(f"input {name!r} is missing")
        return tensor.as_numpy()

    def _execute_batch(self, requests: list[pb_utils.InferenceRequest]) -> list[pb_utils.InferenceResponse]:
        """Run all requests as one batch, split back into one response per request."""
        responses: list[pb_utils.InferenceResponse | None] = [None] * len(requests)
        batches: list[tuple[int, dict[str, np.ndarray]]] = []
        for index, request in enumerate(requests):
            try:
                batches.append((index, self._inputs(request)))
            except Exception as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses[index] = pb_utils.InferenceResponse(output_tensors=[], error=error)
        if batches:
            try:
                merged = batches[0][1] if len(batches) == 1 else {
                    name: np.concatenate([inputs[name] for _, inputs in batches]) for name in self.runner.input_names}
                outputs = {name: array.astype(self.output_dtypes[name], copy=False)
                           for name, array in self.runner.outputs(merged).items()}
                start = 0
                for index, inputs in batches:
                    size = len(inputs[self.runner.input_names[0]])
                    tensors = [pb_utils.Tensor(name, np.ascontiguousarray(array[start:start + size]))
                               for name, array in outputs.items()]
                    responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
                    start += size
            except Exception as exc:
                error = pb_utils.TritonError(f"{type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL)
                for index, _ in batches:
                    responses[index] = pb_utils.InferenceResponse(output_tensors=[], error=error)
        return responses

    def finalize(self) -> None:
        """Drop the loaded artifacts (and any DeepCache state)."""
        self.runner = self.sequences = None
