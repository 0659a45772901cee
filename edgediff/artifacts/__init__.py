"""Exported artifacts of a model (TorchScript, ONNX + onnxsim, ONNX fp16, OpenVINO IR, TensorRT plan).

Both the in-process variants and the Triton repository writer (``exporters/``) use these builders, so an artifact is
built one way only, and cached by content hash so a second run does not re-export.
"""
