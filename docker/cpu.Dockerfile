# syntax=docker/dockerfile:1
# edgediff on CPU-only machines and boards (x86-64 and arm64): Python 3.11, CPU PyTorch, ONNX Runtime, OpenVINO,
# Triton 2.51 from the nvidia-pytriton wheel (Python backend only: every part runs in a KIND_CPU Python model),
# the gRPC gateway, the telemetry exporter and Locust.
#
#   docker build -f docker/cpu.Dockerfile -t edgediff-cpu .
#   docker buildx build --platform linux/amd64,linux/arm64 -f docker/cpu.Dockerfile -t edgediff-cpu .
#
# One image, several roles (compose.yaml picks the command): export, triton, gateway (the default), exporter, locust.
FROM python:3.11-slim-bookworm

# CPU wheels of PyTorch; the tag is the one the Makefile pins for CPU machines.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EDGEDIFF_CACHE_DIR=/cache

# A fixed non-root user. /models and /cache are owned by it so that the named volumes compose mounts there start
# with that owner (Docker copies the image folder's ownership into an empty named volume).
RUN groupadd --system --gid 10001 edgediff \
    && useradd --system --no-log-init --uid 10001 --gid edgediff --create-home --home-dir /home/edgediff \
       --shell /usr/sbin/nologin edgediff \
    && mkdir -p /models /cache /weights \
    && chown edgediff:edgediff /models /cache

WORKDIR /opt/edgediff

# PyTorch first, from the CPU index, so that the project install below finds it satisfied and never pulls CUDA wheels.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && python -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '${TORCH_VERSION}')"

# The source stays in /opt/edgediff after the install: Locust containers run loadtest/locustfile.py from here.
COPY pyproject.toml README.md ./
COPY edgediff ./edgediff
COPY exporters ./exporters
COPY services ./services
COPY loadtest ./loadtest
# DL3013 ("pin versions in pip") does not apply: this installs the repository itself, whose dependencies are
# bounded in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[onnx,openvino,triton,serve,telemetry,loadtest]"

USER 10001:10001

# gateway gRPC + metrics, exporter, Triton HTTP/gRPC/metrics, Locust web UI + master.
EXPOSE 50051 9401 9400 8000 8001 8002 8089 5557

# The default role is the gateway; compose.yaml gives every other role its own command and healthcheck.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "services.healthcheck", "grpc", "127.0.0.1:50051"]
CMD ["edgediff", "serve", "--backend", "triton", "--host", "0.0.0.0", "--triton-url", "triton:8001"]
