"""The ``edgediff`` proto package (imported as ``services.proto.edgediff`` so it never shadows the core)."""
