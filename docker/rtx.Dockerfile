# syntax=docker/dockerfile:1
# edgediff on a desktop NVIDIA GPU (RTX): NGC Triton 25.02 = Triton 2.55, Ubuntu 24.04, Python 3.12, CUDA 12.8,
# TensorRT 10.8.0.43, with the onnxruntime, tensorrt, pytorch and python backends. Triton's Python backend runs the
# ldm_<variant> pipeline models with the system Python, so edgediff (and torch) are installed into it.
#
# Needs: x86-64 host, NVIDIA driver >= 560 (or a data-center driver covered by CUDA forward compatibility), a GPU of
# compute capability >= 7.5 (Turing or newer: every RTX card), and the NVIDIA Container Toolkit.
#
#   docker build -f docker/rtx.Dockerfile -t edgediff-rtx .
#
# One image, several roles (compose.yaml picks the command): export, triton, gateway (the default), exporter.
FROM nvcr.io/nvidia/tritonserver:25.02-py3

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# CUDA 12.8 wheels of PyTorch (the CUDA of the base image).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# Must equal the TensorRT of the base image: a plan only loads in the TensorRT version that built it, and Triton's
# tensorrt backend loads the plans that `edgediff export --target rtx` builds here. Checked below.
ARG TENSORRT_VERSION=10.8.0.43

# Ubuntu 24.04 marks the system Python as externally managed; this image exists to hold this one application.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    EDGEDIFF_CACHE_DIR=/cache

# A fixed non-root user (uid 10001: Ubuntu 24.04 images already use 1000). /models and /cache are owned by it so
# that the named volumes compose mounts there start with that owner.
RUN groupadd --system --gid 10001 edgediff \
    && useradd --system --no-log-init --uid 10001 --gid edgediff --create-home --home-dir /home/edgediff \
       --shell /usr/sbin/nologin edgediff \
    && mkdir -p /models /cache /weights \
    && chown edgediff:edgediff /models /cache

WORKDIR /opt/edgediff

RUN python3 -m pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md ./
COPY edgediff ./edgediff
COPY exporters ./exporters
COPY services ./services
COPY loadtest ./loadtest
COPY cli ./cli
# The `onnx` extra brings the CPU onnxruntime (used by the export) and `gpu` brings onnxruntime-gpu; both install the
# same `onnxruntime` module, so the CPU one is removed and the GPU one reinstalled over it. tritonclient is installed
# alone: the `triton` extra would add the pytriton wheel's own Triton 2.51, which this image does not need.
# DL3013 ("pin versions in pip") does not apply: this installs the repository itself, whose dependencies are
# bounded in pyproject.toml; tensorrt is pinned by TENSORRT_VERSION.
# hadolint ignore=DL3013
RUN python3 -m pip install --no-cache-dir "tensorrt==${TENSORRT_VERSION}" "tritonclient[grpc,http]>=2.51" \
        ".[onnx,serve,telemetry,loadtest,gpu]" \
    && ort_gpu="$(python3 -m pip show onnxruntime-gpu | sed -n 's/^Version: //p')" \
    && python3 -m pip uninstall --yes onnxruntime \
    && python3 -m pip install --no-cache-dir --no-deps --force-reinstall "onnxruntime-gpu==${ort_gpu}"

# Fail the build, not the first request, when the pip TensorRT and the image's libnvinfer disagree.
RUN trt_lib="libnvinfer.so.${TENSORRT_VERSION%.*}" \
    && if ! find /usr /opt -name "${trt_lib}" -print -quit | grep -q .; then \
         echo "TENSORRT_VERSION=${TENSORRT_VERSION} but the base image has no ${trt_lib}; set it to the image's TensorRT" >&2; \
         exit 1; \
       fi \
    && python3 -c "import sys, tensorrt; sys.exit(tensorrt.__version__ != '${TENSORRT_VERSION}')"

USER 10001:10001

# gateway gRPC + metrics, exporter, Triton HTTP/gRPC/metrics.
EXPOSE 50051 9401 9400 8000 8001 8002

# The default role is the gateway; compose.yaml gives every other role its own command and healthcheck. The base
# image's entrypoint (NVIDIA's banner and driver checks) is kept.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-m", "services.healthcheck", "grpc", "127.0.0.1:50051"]
CMD ["edgediff", "serve", "--backend", "triton", "--host", "0.0.0.0", "--triton-url", "triton:8001"]
