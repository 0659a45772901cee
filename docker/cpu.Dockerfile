# edgediff on CPU-only machines and boards (x86-64 and arm64): Python 3.11, CPU PyTorch, ONNX Runtime, OpenVINO,
# Triton 2.51 from the nvidia-pytriton wheel (Python backend only: every part runs in a KIND_CPU Python model),
# the gRPC gateway, the telemetry exporter and Locust.
#
# Needs BuildKit (secrets and mounts): `docker buildx build` (Docker >= 23) or DOCKER_BUILDKIT=1 docker build.
#
#   docker buildx build --load -f docker/cpu.Dockerfile -t edgediff-cpu:0.1.0 .
#   scripts/build-images.sh                 what `make images` runs: works offline too (see docker/README.md)
#
# Build arguments and secrets (the defaults build on a machine that reaches Docker Hub and download.pytorch.org):
#   BASE_IMAGE        python:3.11-slim-bookworm; without a registry, edgediff-base:bookworm made from Debian packages
#                     by scripts/build-base-image.sh (any Debian/Ubuntu image with python3 >= 3.11 + venv works)
#   TORCH_VERSION     2.13.0 (the Makefile's pin); arm64 builds take 2.9.1, PyPI's last CPU-only aarch64 wheel
#   TORCH_INDEX_URL   the CPU wheel index; empty = the default pip index (PyPI) plus the wheelhouse
#   wheelhouse/       wheels in this folder of the build context are preferred to any index (e.g. the CPU torch
#                     wheel when download.pytorch.org is out of reach); it may hold only its README
#   secret ca_bundle  an extra CA bundle (PEM) for pip's HTTPS, e.g. behind a TLS-inspecting proxy:
#                     --secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt (never baked into a layer)
#   PIP_INDEX_URL     another index or a mirror (proxies: the usual HTTP(S)_PROXY build arguments)
#
# One image, several roles (compose.yaml picks the command): export, triton, gateway (the default), exporter, locust.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL=https://pypi.org/simple

# The application lives in its own virtual environment (the same on the official Python image and on a Debian base,
# whose system Python is externally managed); its bin/ comes first on PATH, so `python` and `edgediff` are its own.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    EDGEDIFF_CACHE_DIR=/cache

# A fixed non-root user. /models and /cache are owned by it so that the named volumes compose mounts there start
# with that owner (Docker copies the image folder's ownership into an empty named volume).
RUN groupadd --system --gid 10001 edgediff \
    && useradd --system --no-log-init --uid 10001 --gid edgediff --create-home --home-dir /home/edgediff \
       --shell /usr/sbin/nologin edgediff \
    && mkdir -p /models /cache /weights \
    && chown edgediff:edgediff /models /cache \
    && python3 -m venv /opt/venv

WORKDIR /opt/edgediff

# PyTorch first, so that the project install below finds it satisfied and never pulls CUDA wheels. pip prefers the
# wheelhouse's wheel (a local +cpu build sorts above the index's plain one). The layer depends only on these args.
RUN --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && pip install --no-cache-dir --find-links /wheelhouse --index-url "${TORCH_INDEX_URL:-${PIP_INDEX_URL}}" \
       "torch==${TORCH_VERSION}" \
    && python -c "import sys, torch; v = torch.__version__; print('torch', v); \
sys.exit(v.split('+')[0] != '${TORCH_VERSION}' or torch.version.cuda is not None)"

# The dependencies next, exactly as docker/requirements-cpu.lock pins them (the extras the image serves with, every
# file checked against its sha256; `make lock` regenerates it from pyproject.toml): editing the sources or
# pyproject.toml reuses this layer until the lock changes. setuptools is in the lock, so the project itself installs
# below without a network (no build isolation).
COPY docker/requirements-cpu.lock /tmp/requirements.lock
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && pip install --no-cache-dir --index-url "${PIP_INDEX_URL}" --require-hashes --no-deps \
       -r /tmp/requirements.lock \
    && rm /tmp/requirements.lock

# The source stays in /opt/edgediff after the install: Locust containers run loadtest/locustfile.py from here.
COPY pyproject.toml README.md ./
COPY edgediff ./edgediff
COPY exporters ./exporters
COPY services ./services
COPY loadtest ./loadtest
COPY cli ./cli
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && edgediff --help >/dev/null

USER 10001:10001

# gateway gRPC + metrics, exporter, Triton HTTP/gRPC/metrics, Locust web UI + master.
EXPOSE 50051 9401 9400 8000 8001 8002 8089 5557

# The default role is the gateway; compose.yaml gives every other role its own command and healthcheck.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "services.healthcheck", "grpc", "127.0.0.1:50051"]
CMD ["edgediff", "serve", "--backend", "triton", "--host", "0.0.0.0", "--triton-url", "triton:8001"]
