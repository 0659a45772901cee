"""``edgediff.v1``: the Generator API and its generated code.

Regenerate from the repository root (the imports then read ``services.proto.edgediff.v1``)::

    python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. \
        services/proto/edgediff/v1/generator.proto

``tests/gateway/test_proto.py`` fails when the committed files differ from a fresh generation.
"""
