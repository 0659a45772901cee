"""Exporters: a Triton model repository per target (cpu, rtx, jetson) built from the core's cached artifacts.

- ``targets``: which variants a target serves, with which Triton backend and instance kind.
- ``configs``: the one ``config.pbtxt`` writer.
- ``repository``: ``export_repository(...)``, the staged, all-or-nothing repository writer, and its manifest.
- ``part_runtime``: loads one part (UNet or VQ decoder) of a variant inside a Python-backend model on the CPU.
- ``python_models/``: the Triton ``model.py`` files (a CPU part model and the ``ldm_<variant>`` BLS pipeline).

The server that serves the repository is started by ``services.triton.launcher``; the commands are ``cli/export.py``
and ``cli/triton.py``.
"""
