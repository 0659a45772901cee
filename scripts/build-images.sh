#!/usr/bin/env bash
# `make images`: build every image this machine can build, with or without registry access.
#
#   scripts/build-images.sh [--arch amd64|arm64] [--no-prometheus] [--check]
#
#   edgediff-cpu:0.1.0            docker/cpu.Dockerfile (tag suffix -arm64 for a foreign --arch)
#   edgediff-prometheus:bookworm  docker/prometheus.Dockerfile: Debian's prometheus package, for machines that
#                                 cannot pull prom/prometheus (compose.yaml: EDGEDIFF_PROMETHEUS_IMAGE)
# Grafana has no Debian package: its image is pulled by compose where a registry answers, else left out.
#
# Base image: $BASE_IMAGE if set; else python:3.11-slim-bookworm when present or pullable; else
# edgediff-base:bookworm-<arch> built from Debian packages (scripts/build-base-image.sh, needs root + debootstrap).
# Torch: a wheel for TORCH_VERSION in the host pip's find-links (or $EDGEDIFF_WHEELHOUSE) is linked into wheelhouse/
# and preferred; the index is then PyPI. arm64 takes torch 2.9.1 (PyPI's aarch64 torch 2.13.0 is a CUDA build).
# CA bundle: $EDGEDIFF_CA_BUNDLE, else pip's configured cert, else the system bundle; given to pip as a build
# secret (never stored in the image). --check prints what would be used and builds nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/docker-build-lib.sh

arch="" prometheus=1 check=0
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=$2; shift ;;
    --no-prometheus) prometheus=0 ;;
    --check) check=1 ;;
    *) echo "usage: $0 [--arch amd64|arm64] [--no-prometheus] [--check]" >&2; exit 2 ;;
  esac
  shift
done
docker version >/dev/null 2>&1 || { echo "error: no Docker engine answers (start dockerd)" >&2; exit 1; }
native=$(native_arch)
arch=${arch:-$native}
platform="linux/$arch"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
suffix=$([ "$arch" = "$native" ] && echo "" || echo "-$arch")
cpu_tag="edgediff-cpu:${version}${suffix}"
prom_tag="edgediff-prometheus:bookworm${suffix}"
if [ "$arch" = arm64 ]; then torch_default=2.9.1; else torch_default=$(sed -n 's/^ARG TORCH_VERSION=//p' docker/cpu.Dockerfile); fi
torch=${TORCH_VERSION:-$torch_default}
build=$(docker_build_cmd)

# --- base image ---
if [ -n "${BASE_IMAGE:-}" ]; then
  base=$BASE_IMAGE
elif docker image inspect --format '{{.Architecture}}' python:3.11-slim-bookworm 2>/dev/null | grep -qx "$arch" \
     || timeout 60 docker pull -q --platform "$platform" python:3.11-slim-bookworm >/dev/null 2>&1; then
  base=python:3.11-slim-bookworm
else
  base="edgediff-base:bookworm-$arch"
  log "python:3.11-slim-bookworm cannot be pulled: base $base from Debian packages"
  [ "$check" = 1 ] || bash scripts/build-base-image.sh "$arch"
fi

# --- wheelhouse: the host pip's find-links wheels of torch for this architecture ---
case "$arch" in amd64) wheel_arch=x86_64 ;; arm64) wheel_arch=aarch64 ;; *) wheel_arch=$arch ;; esac
links=${EDGEDIFF_WHEELHOUSE:-${PIP_FIND_LINKS:-$(pip config get global.find-links 2>/dev/null || true)}}
find wheelhouse -name '*.whl' -type f -delete 2>/dev/null || true
for dir in $links; do
  dir=${dir#file://}
  [ -d "$dir" ] || continue
  for whl in "$dir"/torch-"$torch"*-cp311-*"$wheel_arch".whl; do
    [ -f "$whl" ] && { ln -f "$whl" wheelhouse/ 2>/dev/null || cp "$whl" wheelhouse/; }
  done
done
build_args=(--build-arg "BASE_IMAGE=$base" --build-arg "TORCH_VERSION=$torch")
if ls wheelhouse/torch-*.whl >/dev/null 2>&1 || [ "$arch" = arm64 ]; then
  build_args+=(--build-arg "TORCH_INDEX_URL=")   # the wheelhouse (or PyPI's CPU-only aarch64 wheel)
fi
[ -n "${TORCH_INDEX_URL:-}" ] && build_args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
[ -n "${PIP_INDEX_URL:-}" ] && build_args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
for proxy in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
  [ -n "${!proxy:-}" ] && build_args+=(--build-arg "$proxy=${!proxy}")
done

# --- CA bundle for pip inside the build ---
ca=${EDGEDIFF_CA_BUNDLE:-${PIP_CERT:-$(pip config get global.cert 2>/dev/null || true)}}
[ -f "${ca:-}" ] || ca=/etc/ssl/certs/ca-certificates.crt
secret=()
[ -f "$ca" ] && secret=(--secret "id=ca_bundle,src=$ca")

log "image $cpu_tag: base $base, torch $torch ($(ls wheelhouse/*.whl 2>/dev/null | xargs -r -n1 basename | tr '\n' ' ')), CA ${ca:-none}, builder: $build"
[ "$check" = 1 ] && exit 0
# The image the tag named before this build: removed afterwards when the build replaced it (no dangling copies).
previous=$(docker image inspect --format '{{.Id}}' "$cpu_tag" 2>/dev/null || true)
start=$(date +%s)
$build --platform "$platform" -f docker/cpu.Dockerfile "${build_args[@]}" "${secret[@]}" -t "$cpu_tag" .
if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect --format '{{.Id}}' "$cpu_tag")" ]; then
  docker image rm "$previous" >/dev/null 2>&1 || true   # kept while a container still uses it
fi
log "$cpu_tag built in $(( $(date +%s) - start )) s, $(docker image inspect --format '{{.Size}}' "$cpu_tag" | awk '{printf "%.0f MB", $1/1e6}')"

official=$(sed -n 's/.*EDGEDIFF_PROMETHEUS_IMAGE:-\([^}]*\)}.*/\1/p' compose.yaml | head -1)
if [ "$prometheus" = 1 ] && { docker image inspect "$official" >/dev/null 2>&1 \
     || timeout 60 docker pull -q --platform "$platform" "$official" >/dev/null 2>&1; }; then
  log "$official is here: no local Prometheus image needed"
  prometheus=0
fi
if [ "$prometheus" = 1 ]; then
  prom_base=$base
  start=$(date +%s)
  $build --platform "$platform" -f docker/prometheus.Dockerfile --build-arg "BASE_IMAGE=$prom_base" \
    -t "$prom_tag" docker/prometheus
  log "$prom_tag built in $(( $(date +%s) - start )) s, $(docker image inspect --format '{{.Size}}' "$prom_tag" | awk '{printf "%.0f MB", $1/1e6}')"
fi
