"""``python -m services.exporter``: the telemetry exporter as a standalone process."""

from services.exporter.server import main

raise SystemExit(main())
