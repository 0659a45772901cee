"""Triton Inference Server as a long-running process of the stack.

``launcher`` finds ``tritonserver`` (the system's or the one bundled in ``nvidia-pytriton``), starts it over a model
repository, waits until it is ready and stops it.
"""
