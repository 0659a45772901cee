"""Prometheus exporter of edgediff telemetry (power, energy, memory) over ``edgediff.telemetry``.

``server.run_exporter(...)`` runs it; ``edgediff exporter`` (``cli/exporter.py``) is its command line.
"""
