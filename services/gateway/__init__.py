"""The gRPC ``edgediff.v1.Generator`` gateway: validation, admission, auth and metrics in front of a backend.

Two backends: ``triton`` forwards to Triton's ``ldm_<variant>`` models; ``local`` runs the pipeline in-process with
plain PyTorch (the phone service). Nothing heavy is imported here: ``python -m cli serve --backend local`` never
imports tritonclient, ONNX Runtime or OpenVINO.
"""
