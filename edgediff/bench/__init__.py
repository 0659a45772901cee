"""Benchmarks: latency per stage, peak memory, energy per image and fidelity per variant, written as a report.

``edgediff bench`` measures each variant one after another (``suite``), one variant at a time (``runner``, in a
fresh subprocess by default so the process memory high-water mark is per variant), then assembles a versioned report
(``report``, ``schema``) and writes it as JSON, CSV, Markdown, PNG plots and sample images (``report_writers``,
``plots``). ``edgediff compare`` builds the cross-device table from several reports (``compare``).

Heavy modules (torch, matplotlib, jsonschema) are imported inside the modules that need them, never here.
"""
