"""Prometheus exporter of edgediff telemetry (power, energy, memory) over ``edgediff.telemetry``.

Entry points: ``server.add_arguments(parser)`` and ``server.run_from_args(args)`` for ``edgediff exporter``, and
``python -m services.exporter``.
"""
