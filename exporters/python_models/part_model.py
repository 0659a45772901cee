"""Triton Python-backend model: one part (UNet or VQ decoder) of an edgediff variant, run on the CPU.

Copied by ``edgediff export --target cpu`` into ``<repo>/unet_<variant>/1/model.py`` and
``<repo>/vqdec_<variant>/1/model.py`` (for a DeepCache variant into ``unet_full_<variant>`` and
``unet_shallow_<variant>`` instead of ``unet_<variant>``; the full part returns both its outputs, noise and deep
feature). Everything it needs comes from ``config.pbtxt`` ``parameters`` (variant, part, preset, repository-relative
artifact path, threads); the artifact is loaded from this model's folder only, with the core's variant code
(``exporters.part_runtime``). Dynamic batching may hand several requests to one ``execute``: they are run as one
batch and split back, one response per request.
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """A UNet or VQ-decoder part on a CPU instance."""

    def initialize(self, args: dict[str, str]) -> None:
        """Parse the config once and load the artifact (errors here fail the model load, with the reason)."""
        from exporters.part_runtime import PartRunner, PartSpec

        config = json.loads(args["model_config"])
        spec = PartSpec.from_parameters(config.get("parameters", {}))
        self.runner = PartRunner(spec, args["model_repository"])
        self.output_dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}
        pb_utils.Logger.log_info(f"{args['model_name']}: {spec.variant} {spec.part} from {spec.artifact}")

    def _inputs(self, request: pb_utils.InferenceRequest) -> dict[str, np.ndarray]:
        arrays = {}
        for name in self.runner.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"input {name!r} is missing")
            arrays[name] = tensor.as_numpy()
        return arrays

    def execute(self, requests: list[pb_utils.InferenceRequest]) -> list[pb_utils.InferenceResponse]:
        """Run all requests as one batch; one response per request (errors as ``TritonError``)."""
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
        """Drop the loaded artifact."""
        self.runner = None
