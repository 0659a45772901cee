# Prometheus from Debian's `prometheus` package, for machines that cannot pull prom/prometheus (air-gapped sites,
# registry mirrors only). compose.yaml runs it when EDGEDIFF_PROMETHEUS_IMAGE=edgediff-prometheus:bookworm; the
# command line and the /prometheus data folder are those of prom/prometheus, so nothing else changes.
#
#   scripts/build-images.sh            (builds it with the local Debian base)
#   docker build -f docker/prometheus.Dockerfile -t edgediff-prometheus:bookworm docker/prometheus
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# policy-rc.d: the package's maintainer scripts must not start a daemon during the build. wget: the healthcheck.
# DL3008 (pin apt versions) does not apply: the version is whatever Debian bookworm's stable archive holds.
# hadolint ignore=DL3008
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus wget \
    && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* \
    && mkdir -p /prometheus \
    && chown prometheus:prometheus /prometheus \
    && prometheus --version

USER prometheus
WORKDIR /prometheus
EXPOSE 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:9090/-/ready"]
ENTRYPOINT ["/usr/bin/prometheus"]
# prom/prometheus's defaults; compose.yaml gives its own command line.
CMD ["--config.file=/etc/prometheus/prometheus.yml", \
     "--storage.tsdb.path=/prometheus"]
