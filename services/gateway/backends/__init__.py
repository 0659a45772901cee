"""Gateway backends: ``local`` (in-process PyTorch) and ``triton`` (tritonclient.grpc), each imported on demand."""
