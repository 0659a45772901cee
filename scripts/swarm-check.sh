#!/usr/bin/env bash
# make swarm-check: the Swarm stack (deploy/swarm/stack.yaml) on a real 3-node Docker Swarm built inside this
# machine, under load, through a lost node and a rolling update; writes reports/swarm/swarm.json.
#
#   scripts/swarm-check.sh              the whole check: up, deploy, drive (deploy/swarm/check.py), tear down
#   scripts/swarm-check.sh up           build the swarm and deploy the stack, and leave it running (to look around:
#                                       docker -H unix:///run/edsw/mgr.sock service ls); then `down`
#   scripts/swarm-check.sh down         tear everything down (the check does it itself on exit, even when stopped)
#   scripts/swarm-check.sh kill-node N  the whole of node N dies at once (the driver calls it mid-load)
#
# Each node is a dockerd in its own network namespace (edsw-mgr, edsw-w1, edsw-w2; its own hostname, data-root,
# exec-root and cgroup parent), wired by veth pairs to a bridge in a fourth namespace (edsw-lan, 10.213.7.0/24). The
# host's own network namespace, its Docker engine and its iptables are not touched; no traffic leaves the
# namespaces. Images come from the host engine (docker save | docker load into each node): no registry.
# The manager is class cpu-a (its gateway through Triton, which the stack places on class A: so on the manager) and
# runs the router; w1 and w2 are class cpu-b (local backend). w2 is the node killed: it has a gateway task (class B
# has another node to move it to) and not Triton, so what the check measures is the gateways' tasks moving, with
# class A's Triton serving throughout.
# Needs root, dockerd/containerd/runc, iproute2 and util-linux (nsenter, unshare), and about 12 GB of disk.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=edsw
NODES=(mgr w1 w2)
declare -A ADDR=([mgr]=10.213.7.1 [w1]=10.213.7.2 [w2]=10.213.7.3)
declare -A DEVICE=([mgr]=cpu-a [w1]=cpu-b [w2]=cpu-b)
LAN_ADDR=10.213.7.254
ADDR_POOL=10.214.0.0/16       # overlay networks of the swarm (inside the namespaces only)
KILLED_NODE=w2
DATA=${EDGEDIFF_SWARM_DATA:-/var/lib/edgediff-swarm}
RUN=/run/$PREFIX
STACK=edgediff
IMAGE=${EDGEDIFF_SWARM_IMAGE:-edgediff-cpu:0.1.0}
ROLLED_IMAGE=$IMAGE-rolled
PROMETHEUS_IMAGE=${EDGEDIFF_SWARM_PROMETHEUS_IMAGE:-edgediff-prometheus:bookworm}
REPORT_DIR=$REPO/reports/swarm
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
HEAVY_LOCK=${EDGEDIFF_HEAVY_LOCK:-/tmp/edgediff-heavy.lock}   # heavy steps of the machine's users never overlap

log() { printf '[%s] swarm-check: %s\n' "$(date -u +%T)" "$*" >&2; }
die() { log "$*"; exit 1; }
heavy() { { flock 9; "$@"; } 9>"$HEAVY_LOCK"; }   # run a heavy step holding the machine's lock
on() { local node=$1; shift; docker -H "unix://$RUN/$node.sock" "$@"; }

# Every process of a node: those in its network namespace (dockerd, containerd, shims) and in its cgroup
# (the containers, which have namespaces of their own).
node_pids() {
    local node=$1
    if [ -e "/run/netns/$PREFIX-$node" ]; then ip netns pids "$PREFIX-$node" 2>/dev/null || true; fi
    find /sys/fs/cgroup -maxdepth 2 -type d -name "$PREFIX-$node" 2>/dev/null | while read -r group; do
        find "$group" -name cgroup.procs -exec cat {} + 2>/dev/null || true
    done
}

# The engine first (kill -9 of dockerd), then everything else of the node: a node lost, not only its engine.
kill_node() {
    local node=$1 pids
    if [ -f "$RUN/$node.pid" ]; then kill -9 "$(cat "$RUN/$node.pid")" 2>/dev/null || true; fi
    for _ in $(seq 100); do
        pids=$(node_pids "$node" | sort -u | tr '\n' ' ')
        [ -z "${pids// /}" ] && return 0
        # shellcheck disable=SC2086
        kill -9 $pids 2>/dev/null || true
        sleep 0.1
    done
    die "processes of node $node survive kill -9: $pids"
}

down() {
    local node mount group t0=$SECONDS
    for node in "${NODES[@]}"; do kill_node "$node"; done
    # overlay2 layers, network namespaces bound by the engines, secrets and configs: every mount under our roots
    { findmnt -rn -o TARGET | grep -E "^($DATA|$RUN)(/|$)" || true; } | sort -r | while read -r mount; do
        umount -l "$mount" 2>/dev/null || true
    done
    for node in "${NODES[@]}" lan; do
        if [ -e "/run/netns/$PREFIX-$node" ]; then ip netns delete "$PREFIX-$node"; fi
    done
    rm -rf --one-file-system "$DATA" "$RUN"
    find /sys/fs/cgroup -maxdepth 2 -type d -name "$PREFIX-*" 2>/dev/null | while read -r group; do
        find "$group" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    local left
    left=$( (ip netns list | grep "^$PREFIX-" || true; findmnt -rn -o TARGET | grep -E "^($DATA|$RUN)(/|$)" || true
             find /sys/fs/cgroup -maxdepth 2 -type d -name "$PREFIX-*" 2>/dev/null || true) | tr '\n' ' ')
    [ -z "${left// /}" ] || die "teardown left: $left"
    log "torn down in $((SECONDS - t0)) s: no process, mount, namespace, veth, bridge or cgroup of the swarm left"
}

start_node() {
    local node=$1
    mkdir -p "$DATA/$node" "$RUN/$node"
    echo '{}' > "$RUN/$node.json"   # not the host's /etc/docker/daemon.json
    ip netns add "$PREFIX-$node"
    ip -n "$PREFIX-$node" link set lo up
    ip -n "$PREFIX-lan" link add "$node" type veth peer name eth0 netns "$PREFIX-$node"
    ip -n "$PREFIX-lan" link set "$node" master br0 up
    ip -n "$PREFIX-$node" addr add "${ADDR[$node]}/24" dev eth0
    ip -n "$PREFIX-$node" link set eth0 up
    # `ip netns exec` would remount /sys, and dockerd would then find no devices cgroup: nsenter keeps the mounts.
    setsid nsenter --net="/run/netns/$PREFIX-$node" unshare --uts sh -c "hostname $PREFIX-$node && exec dockerd \
        --config-file $RUN/$node.json --data-root $DATA/$node --exec-root $RUN/$node --pidfile $RUN/$node.pid \
        -H unix://$RUN/$node.sock --cgroup-parent=/$PREFIX-$node" \
        > "$REPORT_DIR/dockerd-$node.log" 2>&1 < /dev/null &
    disown   # its end is the teardown's business, not a job of this shell
}

up() {
    local node token id
    mkdir -p "$REPORT_DIR" "$DATA" "$RUN"
    ip netns add "$PREFIX-lan"
    ip -n "$PREFIX-lan" link set lo up
    ip -n "$PREFIX-lan" link add br0 type bridge
    ip -n "$PREFIX-lan" addr add "$LAN_ADDR/24" dev br0
    ip -n "$PREFIX-lan" link set br0 up
    for node in "${NODES[@]}"; do start_node "$node"; done
    for node in "${NODES[@]}"; do
        for _ in $(seq 120); do on "$node" version >/dev/null 2>&1 && break; sleep 0.5; done
        on "$node" version >/dev/null || die "the engine of $node did not start (reports/swarm/dockerd-$node.log)"
    done
    log "3 engines up; forming the swarm"
    on mgr swarm init --advertise-addr "${ADDR[mgr]}" --listen-addr "${ADDR[mgr]}:2377" \
        --default-addr-pool "$ADDR_POOL" >/dev/null
    token=$(on mgr swarm join-token -q worker)
    for node in w1 w2; do
        on "$node" swarm join --token "$token" --advertise-addr "${ADDR[$node]}" --listen-addr "${ADDR[$node]}:2377" \
            "${ADDR[mgr]}:2377" >/dev/null
    done
    for node in "${NODES[@]}"; do
        id=$(on "$node" info --format '{{.Swarm.NodeID}}')
        on mgr node update --label-add "edgediff.device=${DEVICE[$node]}" "$id" >/dev/null
    done
    on mgr node update --label-add edgediff.router=true "$(on mgr info --format '{{.Swarm.NodeID}}')" >/dev/null
}

load_images() {
    local node tarball=$DATA/images.tar
    log "loading $IMAGE and $PROMETHEUS_IMAGE into each node (docker save | docker load)"
    docker image inspect "$IMAGE" "$PROMETHEUS_IMAGE" >/dev/null \
        || die "build the images first: make images ($IMAGE, $PROMETHEUS_IMAGE on the host engine)"
    docker save -o "$tarball" "$IMAGE" "$PROMETHEUS_IMAGE"
    local pids=()
    for node in "${NODES[@]}"; do on "$node" load -q -i "$tarball" >/dev/null & pids+=($!); done
    for pid in "${pids[@]}"; do wait "$pid" || die "docker load failed"; done
    rm -f "$tarball"
    for node in "${NODES[@]}"; do on "$node" tag "$IMAGE" "$ROLLED_IMAGE"; done
}

deploy() {
    log "docker stack deploy (model tiny, router policy fastest; class A through Triton, onnx-fp32)"
    # fastest: like devices share the load, so the node that dies has calls in flight
    (cd "$REPO" && EDGEDIFF_MODEL=tiny EDGEDIFF_THREADS=1 EDGEDIFF_FLEET_POLICY=fastest \
        EDGEDIFF_PROMETHEUS_IMAGE="$PROMETHEUS_IMAGE" \
        EDGEDIFF_GATEWAY_A_IMAGE="$IMAGE" EDGEDIFF_GATEWAY_B_IMAGE="$IMAGE" EDGEDIFF_ROUTER_IMAGE="$IMAGE" \
        EDGEDIFF_EXPORTER_IMAGE="$IMAGE" EDGEDIFF_TRITON_IMAGE="$IMAGE" EDGEDIFF_VARIANTS=onnx-fp32 \
        docker -H "unix://$RUN/mgr.sock" stack deploy --resolve-image never -c deploy/swarm/stack.yaml "$STACK")
}

check() {
    [ "$(id -u)" = 0 ] || die "needs root (network namespaces, dockerd)"
    for tool in dockerd containerd runc nsenter unshare ip findmnt; do
        command -v "$tool" >/dev/null || die "$tool not found"
    done
    docker info >/dev/null 2>&1 || die "no Docker engine at the default socket (make engine)"
    trap 'rc=$?; trap - EXIT INT TERM; log "tearing down"; down || rc=1; exit $rc' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    down   # what an earlier run, killed hard, may have left
    up
    heavy load_deploy_drive   # one hold of the machine's lock: images, the stack, the load (about 10 min)
}

load_deploy_drive() {
    local t0=$SECONDS
    load_images
    deploy
    log "images loaded and stack deployed in $((SECONDS - t0)) s; driving the load"
    nsenter --net="/run/netns/$PREFIX-lan" "$PYTHON" "$REPO/deploy/swarm/check.py" \
        --docker-host "unix://$RUN/mgr.sock" --stack "$STACK" --router "${ADDR[mgr]}:50051" \
        --prometheus "http://${ADDR[mgr]}:9090" --kill-node "$KILLED_NODE" \
        --kill-command "$REPO/scripts/swarm-check.sh kill-node $KILLED_NODE" --rolled-image "$ROLLED_IMAGE" \
        --setup-s "$((SECONDS - t0))" --out "$REPORT_DIR/swarm.json"
}

case "${1:-check}" in
    check) check ;;
    up) down; up; heavy load_images; deploy ;;
    down) down ;;
    kill-node) kill_node "${2:?kill-node NODE}" ;;
    *) die "usage: $0 [check|down|kill-node NODE]" ;;
esac
