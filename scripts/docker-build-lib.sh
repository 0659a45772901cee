# shellcheck shell=bash
# Helpers shared by the image build scripts (sourced, not run).

# BUILD: the command that builds with BuildKit (build secrets, RUN --mount, --platform).
#   docker buildx (Docker >= 23 with the buildx plugin) when present, else a client with BuildKit built in
#   (Docker <= 22, e.g. Debian's docker.io 20.10 at /usr/bin/docker) with DOCKER_BUILDKIT=1.
#   Override with EDGEDIFF_DOCKER_BUILD="..." (e.g. "docker buildx build --load").
docker_build_cmd() {
  if [ -n "${EDGEDIFF_DOCKER_BUILD:-}" ]; then
    echo "$EDGEDIFF_DOCKER_BUILD"
  elif docker buildx version >/dev/null 2>&1; then
    echo "docker buildx build --load"
  else
    local c major
    for c in docker /usr/bin/docker; do
      command -v "$c" >/dev/null 2>&1 || continue
      major=$("$c" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)
      if [ -n "$major" ] && [ "$major" -lt 23 ] 2>/dev/null; then
        echo "env DOCKER_BUILDKIT=1 $c build"
        return 0
      fi
    done
    echo "error: no BuildKit builder: install the docker buildx plugin (or Docker <= 22)" >&2
    return 1
  fi
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# The engine's architecture in Debian's words (amd64, arm64).
native_arch() {
  case "$(docker version --format '{{.Server.Arch}}' 2>/dev/null || uname -m)" in
    amd64|x86_64) echo amd64 ;;
    arm64|aarch64) echo arm64 ;;
    *) dpkg --print-architecture ;;
  esac
}

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
