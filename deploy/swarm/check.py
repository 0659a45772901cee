"""The driver of ``make swarm-check`` (scripts/swarm-check.sh builds the swarm, deploys the stack, then runs this).

Bounded load through the fleet router while (a) one worker node dies (its engine is killed with ``kill -9``, then
everything else of it) and (b) both gateway services roll to a new image tag; every request is counted, none is
retried by the client (failing over is the router's job). Class A's gateway generates through Triton (on the
manager, which is not the node killed), class B's in-process. Writes ``reports/swarm/swarm.json`` and exits 0 when
the targets are met: no accepted request lost, none failed during the rolling update, the lost node's tasks running
elsewhere, the update completed (not rolled back), both device classes served requests through the router.

    python deploy/swarm/check.py --docker-host unix:///run/edsw/mgr.sock --router 10.213.7.1:50051 ...
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script from the repository: services/ is importable

from services.gateway.client import GeneratorClient  # noqa: E402

STACK_FILE = REPO / "deploy" / "swarm" / "stack.yaml"
SERVICES = tuple(yaml.safe_load(STACK_FILE.read_text())["services"])
GATEWAYS = ("gateway-a", "gateway-b")
TRITON = "triton"
TRITON_SUCCESS_METRIC = "nv_inference_request_success"
"""Triton's per-model counter of successful requests (one of edgediff.constants.TRITON_METRICS)."""
REQUEST_TIMEOUT_S = 120.0
"""Deadline of one request: a request without an answer by then is lost."""
POLL_S = 0.5


@dataclass
class Outcome:
    """One request as the client saw it (times in seconds since the load started)."""

    start_s: float
    end_s: float
    code: str
    upstream: str = ""
    details: str = ""


class Docker:
    """The swarm manager's engine, through the docker CLI."""

    def __init__(self, host: str, stack: str) -> None:
        self.host = host
        self.stack = stack

    def run(self, *args: str, timeout_s: float = 60.0) -> str:
        """``docker -H HOST ARGS``; its stdout."""
        result = subprocess.run(["docker", "-H", self.host, *args], capture_output=True, text=True, timeout=timeout_s)
        if result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def service(self, name: str) -> str:
        """The stack's full service name."""
        return f"{self.stack}_{name}"

    def replicas(self) -> dict[str, str]:
        """``{service: "running/desired"}`` of the stack."""
        out = self.run("service", "ls", "--filter", f"label=com.docker.stack.namespace={self.stack}",
                       "--format", "{{.Name}} {{.Replicas}}")
        return dict(line.split(" ", 1) for line in out.splitlines() if line.strip())

    def running_tasks(self, name: str) -> list[tuple[str, str]]:
        """``[(node hostname, current state)]`` of the tasks of service ``name`` that should run."""
        out = self.run("service", "ps", self.service(name), "--filter", "desired-state=running",
                       "--format", "{{.Node}}|{{.CurrentState}}")
        return [tuple(line.split("|", 1)) for line in out.splitlines() if line.strip()]  # type: ignore[misc]

    def nodes(self) -> list[dict[str, str]]:
        """Each node's hostname, role, state, availability and edgediff.device label."""
        ids = self.run("node", "ls", "-q").split()
        out = self.run("node", "inspect", "--format",
                       '{{.Description.Hostname}}|{{.Spec.Role}}|{{.Status.State}}|{{.Status.Addr}}|'
                       '{{index .Spec.Labels "edgediff.device"}}', *ids)
        rows = []
        for line in out.splitlines():
            hostname, role, state, addr, device = line.split("|")
            rows.append({"hostname": hostname, "role": role, "state": state, "address": addr,
                         "device_class": device})
        return sorted(rows, key=lambda r: r["hostname"])

    def update_state(self, name: str) -> str:
        """The service's UpdateStatus.State (``updating``, ``completed``, ``rollback_*``, ``paused``...)."""
        return self.run("service", "inspect", "--format", "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
                        self.service(name)).strip()


def scrape(url: str, timeout_s: float = 3.0) -> str:
    """The text of an HTTP endpoint."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return response.read().decode()


def serving_upstreams(router: str) -> set[str]:
    """The upstream gateways the router would send a request to now (its ListVariants, healthy upstreams only)."""
    try:
        with GeneratorClient(router, timeout_s=5.0) as client:
            variants = client.list_variants().variants
    except grpc.RpcError:
        return set()
    return {name for variant in variants for name in variant.upstreams}


def router_outcomes(router_metrics_url: str) -> dict[str, dict[str, int]]:
    """``{upstream: {outcome: count}}`` from the router's ``edgediff_fleet_requests_total``."""
    from prometheus_client.parser import text_string_to_metric_families

    from edgediff.constants import METRIC_FLEET_REQUESTS_TOTAL

    out: dict[str, dict[str, int]] = {}
    for family in text_string_to_metric_families(scrape(router_metrics_url)):
        for sample in family.samples:
            if sample.name == METRIC_FLEET_REQUESTS_TOTAL:
                row = out.setdefault(sample.labels["upstream"], {})
                row[sample.labels["outcome"]] = int(sample.value)
    return out


def wait_until(predicate, timeout_s: float, what: str) -> float:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until true; returns the seconds it took.

    Raises:
        TimeoutError: naming ``what``.
    """
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            if predicate():
                return time.monotonic() - t0
        except (RuntimeError, OSError, subprocess.TimeoutExpired):
            pass
        time.sleep(POLL_S)
    raise TimeoutError(f"{what}: not after {timeout_s:.0f} s")


class Load:
    """``concurrency`` client loops through the router, bounded in requests and seconds; no client retries."""

    def __init__(self, router: str, concurrency: int, max_requests: int, steps: int) -> None:
        self.router = router
        self.concurrency = concurrency
        self.max_requests = max_requests
        self.steps = steps
        self.outcomes: list[Outcome] = []
        self.in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sent = 0
        self._threads: list[threading.Thread] = []
        self.t0 = 0.0

    def now(self) -> float:
        """Seconds since the load started."""
        return time.monotonic() - self.t0

    def start(self) -> None:
        """Start the client loops."""
        self.t0 = time.monotonic()
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._loop, name=f"client-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Send nothing more; wait for the requests in flight (each bounded by its deadline)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT_S + 10)

    def _next_seed(self) -> int | None:
        with self._lock:
            if self._stop.is_set() or self._sent >= self.max_requests:
                return None
            self._sent += 1
            self.in_flight += 1
            return self._sent

    def _loop(self) -> None:
        with GeneratorClient(self.router, timeout_s=REQUEST_TIMEOUT_S) as client:
            while (seed := self._next_seed()) is not None:
                start = self.now()
                try:
                    response = client.generate(seed=seed, steps=self.steps)
                    outcome = Outcome(start, self.now(), "OK", response.upstream)
                except grpc.RpcError as exc:
                    outcome = Outcome(start, self.now(), exc.code().name, details=exc.details() or "")
                with self._lock:
                    self.outcomes.append(outcome)
                    self.in_flight -= 1


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def failed_between(outcomes: list[Outcome], start_s: float, end_s: float) -> int:
    """Failed requests that were in flight at some time in ``[start_s, end_s]``."""
    return sum(1 for o in outcomes if o.code != "OK" and o.start_s <= end_s and o.end_s >= start_s)


def save_logs(docker: Docker, services: tuple[str, ...], folder: Path) -> None:
    """Each service's logs (stdout and stderr of every task that can still be reached) as ``folder/NAME.log``."""
    for name in services:
        try:
            result = subprocess.run(["docker", "-H", docker.host, "service", "logs", "--timestamps",
                                     docker.service(name)], capture_output=True, text=True, timeout=30)
            text = result.stdout + result.stderr
        except subprocess.TimeoutExpired as exc:  # tasks of a dead node never answer
            text = f"{exc.stdout or ''}{exc.stderr or ''}\n(docker service logs timed out)\n"
        (folder / f"{name}.log").write_text(text if isinstance(text, str) else text.decode())


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def prometheus_targets(url: str) -> dict[str, dict[str, int]]:
    """``{job: {"up": n, "total": m}}`` of Prometheus's active targets."""
    data = json.loads(scrape(f"{url}/api/v1/targets?state=active"))
    jobs: dict[str, dict[str, int]] = {}
    for target in data["data"]["activeTargets"]:
        row = jobs.setdefault(target["labels"]["job"], {"up": 0, "total": 0})
        row["total"] += 1
        row["up"] += target["health"] == "up"
    return dict(sorted(jobs.items()))


def prometheus_query(url: str, query: str, label: str) -> dict[str, float]:
    """``{label value: value}`` of an instant PromQL query."""
    data = json.loads(scrape(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"))
    return {row["metric"].get(label, ""): float(row["value"][1]) for row in data["data"]["result"]}


def main(argv: list[str] | None = None) -> int:
    """Run the check; 0 when every target is met, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docker-host", required=True, help="the manager's engine, unix:///...sock")
    parser.add_argument("--stack", default="edgediff")
    parser.add_argument("--router", required=True, help="HOST:PORT of the router's gRPC port")
    parser.add_argument("--prometheus", required=True, help="Prometheus's URL")
    parser.add_argument("--kill-node", required=True, help="hostname suffix of the worker to kill (w2)")
    parser.add_argument("--kill-command", required=True, help="shell command that kills that node")
    parser.add_argument("--rolled-image", required=True, help="image tag the gateways roll to")
    parser.add_argument("--concurrency", type=int, default=3, help="client loops (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps per request (default: %(default)s)")
    parser.add_argument("--max-requests", type=int, default=6000, help="most requests sent (default: %(default)s)")
    parser.add_argument("--warmup-s", type=float, default=20.0, help="load before the node dies, s")
    parser.add_argument("--settle-s", type=float, default=15.0, help="load between the phases and after, s")
    parser.add_argument("--deploy-timeout-s", type=float, default=600.0, help="wait for the stack to converge, s")
    parser.add_argument("--setup-s", type=float, default=0.0, help="seconds the swarm took to build (reported)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    docker = Docker(args.docker_host, args.stack)
    router_metrics = f"http://{args.router.rsplit(':', 1)[0]}:9401/metrics"
    t_check = time.monotonic()

    def converged() -> bool:
        counts = docker.replicas()
        running_desired = [(r.split("/")[0], r.split("/")[1].split(" ")[0]) for r in counts.values()]
        return len(counts) == len(SERVICES) and all(running == desired != "0" for running, desired in running_desired)

    print("swarm-check: waiting for every service's replicas", flush=True)
    deploy_s = wait_until(converged, args.deploy_timeout_s, "the stack's replicas running")
    gateway_tasks = {name: len(docker.running_tasks(name)) for name in GATEWAYS}
    expected_upstreams = sum(gateway_tasks.values())
    wait_until(lambda: len(serving_upstreams(args.router)) == expected_upstreams, 120,
               "the router serving through every gateway")
    nodes_before = docker.nodes()
    killed = next(n["hostname"] for n in nodes_before if n["hostname"].endswith(args.kill_node))
    triton_nodes = [node for node, _ in docker.running_tasks(TRITON)]
    if killed in triton_nodes:  # the check is about the gateways' tasks moving, with class A's backend up
        raise SystemExit(f"swarm-check: Triton runs on {killed}, the node to kill; place it elsewhere")
    on_killed = {name: [node for node, _ in docker.running_tasks(name)].count(killed) for name in GATEWAYS}
    if not any(on_killed.values()):
        raise SystemExit(f"swarm-check: no gateway task runs on {killed}; nothing to move")
    print(f"swarm-check: stack up in {deploy_s:.0f} s, {expected_upstreams} gateways; load starts", flush=True)

    load = Load(args.router, args.concurrency, args.max_requests, args.steps)
    load.start()
    error = ""
    t_kill = node_down_s = rescheduled_s = router_sees_s = t_update = t_update_end = None
    final: dict[str, str] = {}
    images: dict[str, list[str]] = {}
    try:
        time.sleep(args.warmup_s)
        # (a) a worker dies: its engine first, then its containerd, shims and containers
        t_kill = load.now()
        subprocess.run(args.kill_command, shell=True, check=True, timeout=60)
        print(f"swarm-check: {killed} killed at {t_kill:.1f} s", flush=True)

        def node_down() -> bool:
            return any(n["hostname"] == killed and n["state"] == "down" for n in docker.nodes())

        def moved() -> bool:
            for name in GATEWAYS:
                tasks = docker.running_tasks(name)
                running = [node for node, state in tasks if node != killed and state.startswith("Running")]
                if len(running) < gateway_tasks[name]:
                    return False
            return True

        wait_until(node_down, 120, f"{killed} marked down")
        node_down_s = load.now() - t_kill
        wait_until(moved, 300, f"{killed}'s gateway tasks running elsewhere")
        rescheduled_s = load.now() - t_kill
        wait_until(lambda: len(serving_upstreams(args.router)) == expected_upstreams, 120,
                   "the router serving through the moved task")
        router_sees_s = load.now() - t_kill
        print(f"swarm-check: node down after {node_down_s:.1f} s, tasks moved after {rescheduled_s:.1f} s", flush=True)
        time.sleep(args.settle_s)

        # (b) both gateway services roll to the new tag, start-first, while the load goes on
        t_update = load.now()
        for name in GATEWAYS:
            docker.run("service", "update", "--detach", "--no-resolve-image", "--image", args.rolled_image,
                       docker.service(name))

        def updated() -> bool:
            for name in GATEWAYS:
                final[name] = docker.update_state(name)
            return all(state not in ("updating", "", "rollback_started") for state in final.values())

        wait_until(updated, 600, "the rolling update")
        t_update_end = load.now()
        images = {name: sorted({line.strip() for line in docker.run(
            "service", "ps", docker.service(name), "--filter", "desired-state=running",
            "--format", "{{.Image}}").splitlines()}) for name in GATEWAYS}
        print(f"swarm-check: rolling update {final} in {t_update_end - t_update:.1f} s", flush=True)
        time.sleep(args.settle_s)
    except (TimeoutError, RuntimeError, subprocess.SubprocessError) as exc:  # reported, with what was measured
        error = str(exc)
        print(f"swarm-check: {error}", flush=True)
    finally:
        load.stop()
    t_end = load.now()
    save_logs(docker, ("router", *GATEWAYS, TRITON), args.out.parent)

    outcomes = load.outcomes
    ok = [o for o in outcomes if o.code == "OK"]
    failed = [o for o in outcomes if o.code != "OK"]
    by_code: dict[str, int] = {}
    for o in failed:
        by_code[o.code] = by_code.get(o.code, 0) + 1
    refused = by_code.get("RESOURCE_EXHAUSTED", 0)  # the router's admission said no: not accepted
    per_upstream: dict[str, int] = {}
    per_class: dict[str, int] = {}
    for o in ok:
        per_upstream[o.upstream] = per_upstream.get(o.upstream, 0) + 1
        device_class = o.upstream.split("/", 1)[0]  # the router's upstream label: CLASS/ADDRESS
        per_class[device_class] = per_class.get(device_class, 0) + 1
    classes = sorted({n["device_class"] for n in nodes_before if n["device_class"]})
    latencies = [o.end_s - o.start_s for o in ok]
    try:
        targets = prometheus_targets(args.prometheus)
    except (OSError, ValueError, KeyError) as exc:
        targets = {"error": str(exc)}  # type: ignore[dict-item]
    try:
        triton_requests = prometheus_query(args.prometheus, f"sum by (model) ({TRITON_SUCCESS_METRIC})", "model")
    except (OSError, ValueError, KeyError) as exc:
        triton_requests = {"error": str(exc)}  # type: ignore[dict-item]
    failed_during_update = (failed_between(outcomes, t_update, t_update_end)
                            if t_update is not None and t_update_end is not None else None)
    lost = len(outcomes) - len(ok) - refused
    rolled = len(final) == len(GATEWAYS) and all(state == "completed" for state in final.values()) and all(
        imgs == [args.rolled_image] for imgs in images.values())
    try:
        router_counts = router_outcomes(router_metrics)
    except (OSError, ValueError) as exc:
        router_counts = {"error": str(exc)}  # type: ignore[dict-item]
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, the 3 nodes are network namespaces of this machine",
        "nodes": nodes_before,
        "nodes_after": docker.nodes(),
        "gateway_tasks": gateway_tasks,
        "load": {"concurrency": args.concurrency, "steps": args.steps, "model": "tiny", "seconds": round(t_end, 1),
                 "client_retries": 0, "request_timeout_s": REQUEST_TIMEOUT_S},
        "requests": len(outcomes),
        "ok": len(ok),
        "failed": len(failed),
        "failed_by_code": by_code,
        "lost_accepted": lost,
        "failures": [{"start_s": round(o.start_s, 2), "end_s": round(o.end_s, 2), "code": o.code,
                      "details": o.details[:300]} for o in failed[:50]],
        "latency_s": {"p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95),
                      "max": max(latencies, default=None)},
        "ok_per_upstream": dict(sorted(per_upstream.items())),
        "ok_per_class": {name: per_class.get(name, 0) for name in classes},
        "triton": {"nodes": triton_nodes, "serves": "gateway-a",
                   f"{TRITON_SUCCESS_METRIC}_by_model": triton_requests},
        "router_requests_by_upstream": router_counts,
        "node_killed": {"node": killed, "at_s": _rounded(t_kill), "gateway_tasks_on_it": on_killed,
                        "how": "kill -9 of its dockerd, then of its containerd, shims and containers",
                        "seconds_until_node_down": _rounded(node_down_s),
                        "seconds_until_router_serves_all": _rounded(router_sees_s),
                        "failed_until_rescheduled": (failed_between(outcomes, t_kill, t_kill + rescheduled_s)
                                                     if t_kill is not None and rescheduled_s is not None else None)},
        "seconds_until_rescheduled": _rounded(rescheduled_s),
        "rolling_update": {"services": list(GATEWAYS), "image": args.rolled_image, "order": "start-first",
                           "at_s": _rounded(t_update),
                           "seconds": _rounded(t_update_end - t_update
                                               if t_update is not None and t_update_end is not None else None),
                           "state": final, "images_after": images, "completed": rolled},
        "failed_during_update": failed_during_update,
        "prometheus_targets": targets,
        "setup_s": round(args.setup_s, 1),
        "check_s": round(time.monotonic() - t_check, 1),
        "error": error,
    }
    report["targets_met"] = (not error and lost == 0 and failed_during_update == 0 and rolled
                             and rescheduled_s is not None and len(outcomes) > 0
                             and all(per_class.get(name, 0) > 0 for name in classes))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("requests", "failed", "lost_accepted", "seconds_until_rescheduled",
                                             "failed_during_update", "ok_per_class", "targets_met")}), flush=True)
    print(f"swarm-check: wrote {args.out}", flush=True)
    return 0 if report["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
