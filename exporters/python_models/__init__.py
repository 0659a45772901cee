"""Triton Python-backend ``model.py`` files, copied into ``<repo>/<model>/1/model.py`` by the exporter.

They run inside Triton's Python stub (``import triton_python_backend_utils``) and are not imported by edgediff itself:

- ``part_model.py``: one part (UNet or VQ decoder) of a variant on the CPU, through ``exporters.part_runtime``.
- ``ldm_model.py``: the ``ldm_<variant>`` pipeline: ``edgediff.pipeline.LDMPipeline`` whose UNet and decoder are BLS
  calls to ``unet_<variant>`` and ``vqdec_<variant>``.
"""
