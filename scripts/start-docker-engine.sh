#!/usr/bin/env bash
# `make test` / `.ci/run`: make sure a Docker engine answers, so the real-engine tests run instead of skipping.
# An engine that answers is used as it is. Otherwise, as root with dockerd installed (Debian's docker.io:
# `make system-deps`), start one in the background (log: /var/log/edgediff-dockerd.log) and wait for it.
# Without root or dockerd it says why and carries on: the real-engine tests then skip with that reason.
set -u
docker info >/dev/null 2>&1 && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v dockerd >/dev/null 2>&1; then
  echo "note: no Docker engine answers and none can be started here (needs root + dockerd); real-engine tests will skip" >&2
  exit 0
fi
echo "starting dockerd (log /var/log/edgediff-dockerd.log)" >&2
setsid nohup dockerd >>/var/log/edgediff-dockerd.log 2>&1 </dev/null &
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "warning: dockerd did not answer within 60 s (see /var/log/edgediff-dockerd.log); real-engine tests will skip" >&2
exit 0
