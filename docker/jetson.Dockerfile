# syntax=docker/dockerfile:1
# edgediff on NVIDIA Jetson Orin: JetPack 6.1 (L4T R36.4.0) base = Ubuntu 22.04, Python 3.10, CUDA 12.6, cuDNN 9.3,
# TensorRT 10.3 with its Python bindings; Triton 2.49 for Jetson (the igpu release, built against TensorRT 10.3) in
# /opt/tritonserver; PyTorch from NVIDIA's JetPack 6.1 wheel.
#
# Needs: a Jetson Orin module (Nano, NX, AGX) flashed with JetPack 6.1 or 6.2 (L4T R36.4.x) and the NVIDIA container
# runtime (`runtime: nvidia` in compose.yaml). JetPack 6 does not support the original Jetson Nano (JetPack 4.6,
# Python 3.6, TensorRT 8.2); edgediff's code needs Python >= 3.10, so that board is not served by this image.
# Build on the Jetson itself (or with buildx --platform linux/arm64 and QEMU):
#
#   docker build -f docker/jetson.Dockerfile -t edgediff-jetson .
#
# Python: every NVIDIA Python package of JetPack 6 (TensorRT bindings, PyTorch for Jetson) and Triton's Python
# backend stub are built for CPython 3.10, the system Python. edgediff declares requires-python >= 3.11 but its code
# also runs on 3.10 (tests/deploy checks that the sources compile under 3.10 and use no 3.11-only library names), so
# it is installed here with --ignore-requires-python.
#
# One image, several roles (compose.yaml picks the command): export, triton, gateway (the default), exporter.
FROM nvcr.io/nvidia/l4t-jetpack:r36.4.0

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG TRITON_VERSION=2.49.0
ARG TORCH_WHEEL=https://developer.download.nvidia.com/compute/redist/jp/v61/pytorch/torch-2.5.0a0+872d972e41.nv24.08.17622132-cp310-cp310-linux_aarch64.whl
# Every download is checked against its sha256 before it is used (SECURITY.md). NVIDIA publishes no checksum files
# for these two, so the builder pins them: fetch each once over HTTPS, check it, then pass
#   --build-arg TRITON_SHA256=<sha256sum of tritonserver${TRITON_VERSION}-igpu.tar.gz>
#   --build-arg TORCH_WHEEL_SHA256=<sha256sum of the TORCH_WHEEL file>
# A build without them stops at the first download and says which is missing.
ARG TRITON_SHA256=
ARG TORCH_WHEEL_SHA256=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EDGEDIFF_CACHE_DIR=/cache \
    PATH=/opt/tritonserver/bin:${PATH} \
    LD_LIBRARY_PATH=/opt/tritonserver/lib:${LD_LIBRARY_PATH}

# Runtime libraries of the Triton Jetson release (its docs/user_guide/jetson.md), Python and pip. The L4T apt
# repositories carry one build per JetPack release, and the base image tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       ca-certificates curl libarchive13 libb64-0d libopenblas0 libre2-9 libssl3 zlib1g \
       python3 python3-dev python3-pip \
    && rm -rf /var/lib/apt/lists/*

# Triton for Jetson: the release tarball, checked, unpacks to /opt/tritonserver (bin/, lib/, backends/).
RUN test -n "${TRITON_SHA256}" \
        || { echo "set --build-arg TRITON_SHA256 (the sha256 of tritonserver${TRITON_VERSION}-igpu.tar.gz)" >&2; exit 1; } \
    && curl -fsSL -o /tmp/tritonserver.tar.gz "https://github.com/triton-inference-server/server/releases/download/v${TRITON_VERSION}/tritonserver${TRITON_VERSION}-igpu.tar.gz" \
    && echo "${TRITON_SHA256}  /tmp/tritonserver.tar.gz" | sha256sum -c - \
    && tar -xzf /tmp/tritonserver.tar.gz -C /opt \
    && rm /tmp/tritonserver.tar.gz \
    && test -x /opt/tritonserver/bin/tritonserver

RUN groupadd --system --gid 10001 edgediff \
    && useradd --system --no-log-init --uid 10001 --gid edgediff --create-home --home-dir /home/edgediff \
       --shell /usr/sbin/nologin edgediff \
    && mkdir -p /models /cache /weights \
    && chown edgediff:edgediff /models /cache

WORKDIR /opt/edgediff

# The wheel URL names one exact build (hadolint cannot see the version inside a URL).
# hadolint ignore=DL3013
RUN test -n "${TORCH_WHEEL_SHA256}" \
        || { echo "set --build-arg TORCH_WHEEL_SHA256 (the sha256 of ${TORCH_WHEEL##*/})" >&2; exit 1; } \
    && python3 -m pip install --no-cache-dir "${TORCH_WHEEL}#sha256=${TORCH_WHEEL_SHA256}"

COPY pyproject.toml README.md ./
COPY edgediff ./edgediff
COPY exporters ./exporters
COPY services ./services
COPY loadtest ./loadtest
COPY cli ./cli
# No `gpu` extra: TensorRT comes with JetPack (its Python 3.10 bindings are in the base image) and PyPI has no
# onnxruntime-gpu for Jetson; the export builds TensorRT plans from the ONNX graph, which the CPU onnxruntime checks.
# DL3013 ("pin versions in pip") does not apply: this installs the repository itself, whose dependencies are
# bounded in pyproject.toml; tritonclient is pinned to the server's version.
# hadolint ignore=DL3013
RUN python3 -m pip install --no-cache-dir --ignore-requires-python \
        "tritonclient[grpc,http]==${TRITON_VERSION}" ".[onnx,serve,telemetry]" \
    && python3 -c "import tensorrt, torch; print('tensorrt', tensorrt.__version__, 'torch', torch.__version__)"

USER 10001:10001

# gateway gRPC + metrics, exporter, Triton HTTP/gRPC/metrics.
EXPOSE 50051 9401 9400 8000 8001 8002

# The default role is the gateway; compose.yaml gives every other role its own command and healthcheck.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-m", "services.healthcheck", "grpc", "127.0.0.1:50051"]
CMD ["edgediff", "serve", "--backend", "triton", "--host", "0.0.0.0", "--triton-url", "triton:8001"]
