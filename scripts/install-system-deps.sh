#!/usr/bin/env bash
# Install the Debian packages the tests and the demo use for real: prometheus (+ promtool), docker-compose v1, and
# the Docker engine with what `make images` needs.
# Without root (or apt) it says what is missing and carries on: the tests that need them skip with that reason.
set -u
missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
# Docker engine (Debian's docker.io, unless an engine is installed already), debootstrap for the local base image,
# busybox-static for the small image of the runtime's fixture project: the real-engine tests.
{ command -v dockerd || docker info; } >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
[ -x /bin/busybox ] || missing+=(busybox-static)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: ${missing[*]} not installed and cannot install them here (need root + apt); related tests will skip" >&2
  exit 0
fi
echo "installing ${missing[*]} (Debian packages)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
  || echo "warning: apt-get install ${missing[*]} failed; related tests will skip" >&2
# The Debian package may start a system Prometheus on :9090. It is left alone: this script never stops or kills
# what edgediff did not start. The tests run their own Prometheus on free ports, and `edgediff up` moves its
# Prometheus to a free port when :9090 is taken (or set one with --ports prometheus=PORT).
exit 0
