#!/usr/bin/env bash
# Build the local base image edgediff-base:bookworm-<arch> from Debian packages, for machines that cannot pull
# python:3.11-slim-bookworm (air-gapped sites, registry mirrors only): Python 3.11 + venv + CA certificates (and
# libpython3.11: Triton's Python backend stub links it) in a minimal Debian bookworm made by debootstrap; the result
# is an ordinary image (FROM scratch + the root filesystem).
#
#   scripts/build-base-image.sh [amd64|arm64] [--force]
#
# Needs root, debootstrap and a Debian mirror (DEBIAN_MIRROR, default http://deb.debian.org/debian); a foreign
# architecture also needs qemu-user-static + binfmt-support (the emulator is registered with the F flag, so the
# chroot runs without copying it in). The native one is also tagged edgediff-base:bookworm.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/docker-build-lib.sh
arch="" force=0
for a in "$@"; do case "$a" in --force) force=1 ;; *) arch="$a" ;; esac; done
arch=${arch:-$(native_arch)}
name="edgediff-base:bookworm-$arch"
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [ "$force" = 0 ] && image_exists "$name"; then log "$name exists (--force rebuilds it)"; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "error: debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "error: install debootstrap (apt-get install debootstrap)" >&2; exit 1; }
build=$(docker_build_cmd)
work=$(mktemp -d /tmp/edgediff-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
log "debootstrap bookworm $arch from $mirror"
debootstrap --variant=minbase --arch="$arch" --include=python3,python3-venv,libpython3.11,ca-certificates \
  bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/* "$work"/rootfs/var/log/* \
  "$work"/rootfs/usr/share/doc/* "$work"/rootfs/usr/share/man/* "$work"/rootfs/tmp/*
mkdir -p "$work/ctx"
tar -C "$work/rootfs" --numeric-owner -cf "$work/ctx/rootfs.tar" .
printf 'FROM scratch\nADD rootfs.tar /\nENV LANG=C.UTF-8\nCMD ["/bin/bash"]\n' >"$work/ctx/Dockerfile"
# --platform labels the image with the architecture of its files (docker import would label it with the host's).
$build --platform "linux/$arch" -t "$name" "$work/ctx"
[ "$arch" = "$(native_arch)" ] && docker tag "$name" edgediff-base:bookworm
log "$name built in $(( $(date +%s) - start )) s"
