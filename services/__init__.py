"""Long-running processes: the gRPC gateway (``gateway``) and the Prometheus telemetry exporter (``exporter``)."""
