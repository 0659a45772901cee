"""Soak with faults: the full local stack under Locust while Triton is killed twice and the gateway restarted once.

Starts ``edgediff up --runtime local --profile cpu --model tiny`` (loopback, free ports, its own state folder and
Triton repository), drives the gateway with Locust users (in this process) for ``--duration-s`` seconds, and meanwhile:

* kills ``tritonserver`` with SIGKILL at 20 % and 70 % of the run (the supervisor restarts it),
* restarts the gateway at 45 % (SIGTERM: graceful; the supervisor starts a new one),
* sends a stream of malformed calls: random bytes as the Generate message, out-of-range fields, huge strings,
  unknown methods and services.

Every Generate call is classified from the client's side:

* ``not_accepted``: it never reached a gateway (connection refused while the gateway restarted);
* ``completed``: OK;
* ``failed``: answered by the gateway with a status other than OK (by code, e.g. UNAVAILABLE for a generation that
  was running inside Triton when it was killed, RESOURCE_EXHAUSTED when the queue was full);
* ``lost``: accepted and never answered: the connection dropped under it, or the client's deadline
  (``--deadline-s``, longer than the gateway's ``--max-backend-wait``) passed without an answer. Must be 0.

The RSS of every process of the stack (each service's process tree, the supervisor, this client) is read after a
warm-up and at the end; a service whose RSS grew by more than ``--rss-bound-mib`` MiB and ``--rss-bound-frac`` of its
start value fails the run. Services restarted by the faults are compared by name (new process, same role).

Bounded in time: a watchdog stops everything ``--duration-s`` + startup + 5 min after the start. Loopback only.
Exit 0 when lost == 0, no malformed call got INTERNAL/UNKNOWN, every process stayed within the bound and the stack
was serving at the end; 1 otherwise. Writes a JSON report (``--out``) and prints a Markdown summary.

Run (takes ``--duration-s`` + about 2 min)::

    flock /tmp/edgediff-heavy.lock .venv/bin/python benchmarks/soak_faults.py --duration-s 660
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import grpc

# Locust first: it monkey-patches the process with gevent (subprocess, sockets, sleep all cooperate).
import locust
import psutil
from locust import between, task
from locust.env import Environment

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from loadtest.grpc_user import GrpcUser  # noqa: E402  (after the path fix; also switches gRPC to gevent)
from services.proto.edgediff.v1 import generator_pb2, generator_pb2_grpc  # noqa: E402

GENERATE = "/edgediff.v1.Generator/Generate"
PORT_NAMES = ("gateway", "gateway-metrics", "exporter", "triton-http", "triton-grpc", "triton-metrics", "prometheus")
TRANSPORT_PREFIXES = ("socket closed", "connection reset", "goaway", "broken pipe", "stream removed", "rst_stream",
                      "deadline exceeded", "recvmsg", "sendmsg", "end of tcp stream", "stream terminated")
"""gRPC core's own messages (the call died on the wire, no server answer), lower case, matched at the start."""
NEVER_CONNECTED = ("failed to connect", "connection refused", "dns resolution failed")
MALFORMED_KINDS = ("random_bytes", "out_of_range", "huge_string", "unknown_method", "unknown_service")
BAD_CODES = ("INTERNAL", "UNKNOWN")


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 now."""
    socks, ports = [], []
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
            ports.append(int(sock.getsockname()[1]))
    finally:
        for sock in socks:
            sock.close()
    return ports


def classify(code: str, details: str) -> str:
    """``not_accepted``, ``lost`` or ``failed`` for a non-OK Generate outcome (see the module docstring)."""
    text = details.strip().lower()
    if code == "UNAVAILABLE" and any(marker in text for marker in NEVER_CONNECTED):
        return "not_accepted"
    if code in ("CANCELLED", "UNKNOWN", "CLIENT_ERROR") or text.startswith(TRANSPORT_PREFIXES):
        return "lost"
    return "failed"


def short_reason(details: str) -> str:
    """A bounded grouping key of a failure message (numbers and addresses dropped)."""
    words = [w for w in details.replace(":", " ").split() if not any(c.isdigit() for c in w)]
    return " ".join(words[:8])


class Tally:
    """Every Generate outcome of the Locust users, and the malformed calls' outcomes."""

    def __init__(self) -> None:
        self.sent = 0
        self.in_flight = 0
        self.outcomes: Counter[str] = Counter()
        self.failed_by_code: Counter[str] = Counter()
        self.failed_reasons: Counter[str] = Counter()
        self.lost_details: list[str] = []
        self.backend_wait_ms: list[float] = []
        self.latency_s: list[float] = []
        self.malformed: dict[str, Counter[str]] = {kind: Counter() for kind in MALFORMED_KINDS}
        self.malformed_bad: list[str] = []
        self.sending = True


TALLY = Tally()
SETTINGS: dict[str, Any] = {}


class SoakUser(GrpcUser):
    """Generate calls with random seeds; the outcome of each is tallied (and reported to Locust's stats)."""

    stub_class = generator_pb2_grpc.GeneratorStub
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        self.timeout_s = SETTINGS["deadline_s"]

    @task
    def generate(self) -> None:
        if not TALLY.sending:
            gevent.sleep(0.5)
            return
        request = generator_pb2.GenerateRequest(seed=random.getrandbits(63), steps=SETTINGS["steps"])
        TALLY.sent += 1
        TALLY.in_flight += 1
        t0 = time.perf_counter()
        try:
            future = self.stub.Generate.future(request, timeout=self.timeout_s)
            try:
                response = future.result()
            except grpc.RpcError as exc:
                code = exc.code().name if isinstance(exc.code(), grpc.StatusCode) else "UNKNOWN"
                details = str(exc.details() or "")
                kind = classify(code, details)
                TALLY.outcomes[kind] += 1
                if kind == "failed":
                    TALLY.failed_by_code[code] += 1
                    TALLY.failed_reasons[f"{code}: {short_reason(details)}"] += 1
                elif kind == "lost":
                    TALLY.lost_details.append(f"{code}: {details[:200]}")
                return
            except Exception as exc:  # a failure on this side still counts: nothing is dropped silently
                TALLY.outcomes["lost"] += 1
                TALLY.lost_details.append(f"CLIENT_ERROR: {type(exc).__name__}: {exc}")
                return
            TALLY.outcomes["completed"] += 1
            TALLY.latency_s.append(time.perf_counter() - t0)
            TALLY.backend_wait_ms.append(float(response.timings.backend_wait_ms))
        finally:
            TALLY.in_flight -= 1


def malformed_calls(target: str, stop: gevent.event.Event) -> None:
    """Send one malformed call every ~0.5 s until ``stop``; tally each status; INTERNAL/UNKNOWN are flagged."""
    channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
    raw = channel.unary_unary(GENERATE, request_serializer=None, response_deserializer=None)
    typed = generator_pb2_grpc.GeneratorStub(channel)
    rng = random.Random(21)
    try:
        while not stop.is_set():
            kind = rng.choice(MALFORMED_KINDS)
            try:
                if kind == "random_bytes":
                    raw(rng.randbytes(rng.randint(1, 4096)), timeout=SETTINGS["deadline_s"])
                elif kind == "out_of_range":
                    field = rng.choice([{"steps": 5000}, {"eta": 2.5}, {"eta": float("nan")}, {"batch_size": 999},
                                        {"format": "jpeg"}, {"variant": "no-such-variant"}, {"steps": 2**32 - 1}])
                    typed.Generate(generator_pb2.GenerateRequest(**field), timeout=SETTINGS["deadline_s"])
                elif kind == "huge_string":
                    size = rng.choice([100_000, 1_000_000, 8_000_000])
                    field = rng.choice(["variant", "format"])
                    typed.Generate(generator_pb2.GenerateRequest(**{field: "x" * size}),
                                   timeout=SETTINGS["deadline_s"])
                elif kind == "unknown_method":
                    channel.unary_unary("/edgediff.v1.Generator/Nope", request_serializer=None,
                                        response_deserializer=None)(b"", timeout=30)
                else:
                    channel.unary_unary("/no.such.Service/Call", request_serializer=None,
                                        response_deserializer=None)(rng.randbytes(16), timeout=30)
                code, details = "OK", ""
            except grpc.RpcError as exc:
                code = exc.code().name if isinstance(exc.code(), grpc.StatusCode) else "UNKNOWN"
                details = str(exc.details() or "")
            if code == "UNAVAILABLE" and any(m in details.lower() for m in NEVER_CONNECTED):
                code = "UNAVAILABLE(not accepted)"
            TALLY.malformed[kind][code] += 1
            if code in BAD_CODES or not (code == "OK" or details):
                TALLY.malformed_bad.append(f"{kind}: {code}: {details[:200]}")
            stop.wait(rng.uniform(0.3, 0.7))
    finally:
        channel.close()


def read_state(state_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((state_dir / "stack.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def service_pid(state_dir: Path, name: str) -> int | None:
    return read_state(state_dir).get("services", {}).get(name, {}).get("pid")


def rss_snapshot(state_dir: Path) -> dict[str, Any]:
    """RSS of each service's process tree, the supervisor and this client, MiB (with every pid and its RSS)."""
    state = read_state(state_dir)
    out: dict[str, Any] = {}
    roots = {name: svc.get("pid") for name, svc in state.get("services", {}).items()}
    roots["supervisor (alone)"] = state.get("supervisor_pid")
    roots["soak client (this process)"] = os.getpid()
    tracked: set[int] = set()
    for name, pid in roots.items():
        if not pid:
            continue
        try:
            proc = psutil.Process(pid)
            procs = [proc] if name.endswith(")") else [proc, *proc.children(recursive=True)]
            members = []
            for p in procs:
                try:
                    members.append({"pid": p.pid, "name": p.name(), "rss_mib": p.memory_info().rss / 2**20})
                except psutil.Error:
                    continue
        except psutil.Error:
            continue
        tracked.update(m["pid"] for m in members)
        out[name] = {"rss_mib": round(sum(m["rss_mib"] for m in members), 1),
                     "processes": [{**m, "rss_mib": round(m["rss_mib"], 1)} for m in members]}
    prefix = state.get("shm_prefix") or str(state_dir)
    strays = []
    for p in psutil.process_iter(["pid", "name", "cmdline", "memory_info"]):
        cmdline = " ".join(p.info.get("cmdline") or [])
        if p.info["pid"] not in tracked and prefix in cmdline and "soak_faults" not in cmdline:
            rss = p.info["memory_info"].rss / 2**20 if p.info.get("memory_info") else 0.0
            strays.append({"pid": p.info["pid"], "name": p.info["name"], "rss_mib": round(rss, 1)})
    out["strays (stack processes outside every service tree)"] = {
        "rss_mib": round(sum(s["rss_mib"] for s in strays), 1), "processes": strays, "count": len(strays)}
    return out


def gateway_health(target: str) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.RpcError as exc:
            return exc.code().name


def wait_serving(target: str, timeout_s: float) -> float | None:
    """Seconds until the gateway reports SERVING (None: not within ``timeout_s``)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if gateway_health(target) == "SERVING":
            return time.monotonic() - t0
        gevent.sleep(0.25)
    return None


def scrape_generate_counts(port: int) -> dict[str, float]:
    """The gateway's ``edgediff_gateway_requests_total{method="Generate"}`` by code ({} when unreachable)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {s.labels["code"]: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name == "edgediff_gateway_requests_total" and s.labels.get("method") == "Generate"}


def faults(state_dir: Path, target: str, duration_s: float, events: list[dict[str, Any]],
           metrics_seen: dict[int, dict[str, float]], metrics_port: int, stop: gevent.event.Event) -> None:
    """Kill Triton at 20 % and 70 %, restart the gateway at 45 %; record when each happened and the recovery."""
    t_start = time.monotonic()
    plan = [(0.20, "kill tritonserver"), (0.45, "restart gateway"), (0.70, "kill tritonserver")]

    def watch_metrics() -> None:
        while not stop.is_set():
            pid = service_pid(state_dir, "gateway")
            counts = scrape_generate_counts(metrics_port)
            if pid and counts:
                metrics_seen[pid] = counts
            stop.wait(2.0)

    gevent.spawn(watch_metrics)
    for fraction, action in plan:
        if stop.wait(max(0.0, t_start + fraction * duration_s - time.monotonic())):
            return
        name = "triton" if "triton" in action else "gateway"
        pid = service_pid(state_dir, name)
        event: dict[str, Any] = {"at_s": round(time.monotonic() - t_start, 1), "action": action, "pid": pid}
        if pid is None:
            event["error"] = f"no {name} pid in the state file"
            events.append(event)
            continue
        if name == "gateway":
            counts = scrape_generate_counts(metrics_port)
            if counts:
                metrics_seen[pid] = counts
        os.kill(pid, signal.SIGKILL if name == "triton" else signal.SIGTERM)
        t_fault = time.monotonic()
        while service_pid(state_dir, name) == pid and time.monotonic() - t_fault < 120:
            gevent.sleep(0.25)
        new_pid = service_pid(state_dir, name)
        recovered = wait_serving(target, 300.0)
        event.update({"new_pid": new_pid, "serving_again_after_s": None if recovered is None else
                      round(time.monotonic() - t_fault, 1)})
        events.append(event)
        print(f"[soak] {event}", flush=True)


def run(args: argparse.Namespace) -> int:
    state_dir = Path(tempfile.mkdtemp(prefix="edgediff-soak-"))
    ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
    target = f"127.0.0.1:{ports['gateway']}"
    python = sys.executable
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    port_spec = ",".join(f"{k}={v}" for k, v in ports.items())
    up = [python, "-m", "cli", "up", "--runtime", "local", "--profile", "cpu", "--model", args.model,
          "--repo", str(state_dir / "model_repository"), "--state-dir", str(state_dir), "--ports", port_spec,
          "--detach", "--timeout", str(args.startup_timeout_s)]
    report: dict[str, Any] = {"command": " ".join(sys.argv), "settings": vars(args), "state_dir": str(state_dir),
                              "ports": ports, "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    print(f"[soak] starting the stack: {' '.join(up)}", flush=True)
    t0 = time.monotonic()
    started = subprocess.run(up, cwd=REPO_ROOT, env=env, timeout=args.startup_timeout_s + 60)
    report["startup_s"] = round(time.monotonic() - t0, 1)
    try:
        if started.returncode != 0:
            print(f"[soak] edgediff up failed with code {started.returncode}", file=sys.stderr)
            return 1
        if wait_serving(target, 120.0) is None:
            print("[soak] the gateway is not SERVING", file=sys.stderr)
            return 1
        return soak(args, state_dir, target, ports, report)
    finally:
        subprocess.run([python, "-m", "cli", "down", "--state-dir", str(state_dir)], cwd=REPO_ROOT, env=env,
                       timeout=120, check=False)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=str))
        tmp.replace(out)
        print(f"[soak] report: {out}", flush=True)


def soak(args: argparse.Namespace, state_dir: Path, target: str, ports: dict[str, int],
         report: dict[str, Any]) -> int:
    SETTINGS.update(steps=args.steps, deadline_s=args.deadline_s)
    environment = Environment(user_classes=[SoakUser], host=target)
    runner = environment.create_local_runner()
    runner.start(args.users, spawn_rate=args.users)
    gevent.sleep(args.warmup_s)
    report["rss_start"] = rss_snapshot(state_dir)
    stop = gevent.event.Event()
    events: list[dict[str, Any]] = []
    metrics_seen: dict[int, dict[str, float]] = {}
    t_load = time.monotonic()
    jobs = [gevent.spawn(malformed_calls, target, stop),
            gevent.spawn(faults, state_dir, target, args.duration_s, events, metrics_seen,
                         ports["gateway-metrics"], stop)]
    while time.monotonic() - t_load < args.duration_s:
        gevent.sleep(5.0)
        if int(time.monotonic() - t_load) % 60 < 5:
            print(f"[soak] {time.monotonic() - t_load:5.0f} s: {dict(TALLY.outcomes)} in flight {TALLY.in_flight}",
                  flush=True)
    TALLY.sending = False
    stop.set()
    drain_deadline = time.monotonic() + args.deadline_s + 30
    while TALLY.in_flight > 0 and time.monotonic() < drain_deadline:
        gevent.sleep(0.5)
    gevent.joinall(jobs, timeout=60)
    runner.quit()
    load_s = time.monotonic() - t_load
    serving_at_end = gateway_health(target) == "SERVING"
    final_pid = service_pid(state_dir, "gateway")
    final_counts = scrape_generate_counts(ports["gateway-metrics"])
    if final_pid and final_counts:
        metrics_seen[final_pid] = final_counts
    report["rss_end"] = rss_snapshot(state_dir)

    outcomes = dict(TALLY.outcomes)
    accepted = TALLY.sent - outcomes.get("not_accepted", 0)
    rss_rows, rss_ok = [], True
    for name, start in report["rss_start"].items():
        end = report["rss_end"].get(name)
        if end is None:
            rss_rows.append({"process": name, "start_mib": start["rss_mib"], "end_mib": None, "ok": False})
            rss_ok = False
            continue
        growth = end["rss_mib"] - start["rss_mib"]
        ok = growth <= max(args.rss_bound_mib, args.rss_bound_frac * start["rss_mib"])
        rss_ok &= ok
        rss_rows.append({"process": name, "start_mib": start["rss_mib"], "end_mib": end["rss_mib"],
                         "growth_mib": round(growth, 1), "ok": ok})
    server_counted = {str(pid): counts for pid, counts in metrics_seen.items()}
    summary = {
        "load_s": round(load_s, 1), "users": args.users, "steps": args.steps,
        "sent": TALLY.sent, "accepted": accepted, "completed": outcomes.get("completed", 0),
        "failed_by_code": dict(TALLY.failed_by_code), "failed_reasons": dict(TALLY.failed_reasons),
        "lost": outcomes.get("lost", 0), "lost_details": TALLY.lost_details[:50],
        "not_accepted": outcomes.get("not_accepted", 0), "in_flight_at_end": TALLY.in_flight,
        "held_then_completed": sum(1 for w in TALLY.backend_wait_ms if w > 0),
        "max_backend_wait_ms": round(max(TALLY.backend_wait_ms, default=0.0), 1),
        "latency_p50_s": round(sorted(TALLY.latency_s)[len(TALLY.latency_s) // 2], 3) if TALLY.latency_s else None,
        "malformed": {k: dict(v) for k, v in TALLY.malformed.items()}, "malformed_bad": TALLY.malformed_bad,
        "faults": events, "gateway_metrics_generate_by_pid": server_counted,
        "rss": rss_rows, "rss_bound": f"growth <= max({args.rss_bound_mib} MiB, {args.rss_bound_frac:.0%} of start)",
        "serving_at_end": serving_at_end,
        "locust_requests": environment.stats.total.num_requests,
        "locust_failures": environment.stats.total.num_failures,
    }
    checks = {
        "lost == 0": summary["lost"] == 0 and TALLY.in_flight == 0,
        "no INTERNAL/UNKNOWN to malformed calls": not TALLY.malformed_bad,
        "RSS within the bound": rss_ok,
        "faults injected (2 Triton kills, 1 gateway restart) and recovered": len(events) == 3 and all(
            e.get("serving_again_after_s") is not None for e in events),
        "serving at the end": serving_at_end,
        "requests completed": summary["completed"] > 0,
        "no INTERNAL/UNKNOWN to well-formed requests": not any(
            code in BAD_CODES for code in TALLY.failed_by_code),
    }
    report["summary"], report["checks"] = summary, checks
    print_markdown(summary, checks)
    return 0 if all(checks.values()) else 1


def print_markdown(summary: dict[str, Any], checks: dict[str, bool]) -> None:
    print("\n| measure | value |\n|---|---|")
    for key in ("load_s", "users", "steps", "sent", "accepted", "completed", "failed_by_code", "lost",
                "not_accepted", "held_then_completed", "max_backend_wait_ms", "latency_p50_s"):
        print(f"| {key} | {summary[key]} |")
    print("\n| fault | at (s) | serving again after (s) |\n|---|---|---|")
    for event in summary["faults"]:
        print(f"| {event['action']} | {event['at_s']} | {event.get('serving_again_after_s')} |")
    print("\n| malformed kind | outcomes |\n|---|---|")
    for kind, counts in summary["malformed"].items():
        print(f"| {kind} | {counts} |")
    print("\n| process | RSS start (MiB) | RSS end (MiB) | growth | within bound |\n|---|---|---|---|---|")
    for row in summary["rss"]:
        print(f"| {row['process']} | {row['start_mib']} | {row['end_mib']} | {row.get('growth_mib')} | {row['ok']} |")
    print(f"\nRSS bound: {summary['rss_bound']}")
    for name, ok in checks.items():
        print(f"- [{'x' if ok else ' '}] {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=660.0, help="load duration (default: %(default)s)")
    parser.add_argument("--users", type=int, default=3, help="Locust users (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=4, help="DDIM steps per request (default: %(default)s)")
    parser.add_argument("--model", default="tiny", help="model preset (default: %(default)s)")
    parser.add_argument("--deadline-s", type=float, default=200.0,
                        help="client deadline of each call; longer than the gateway's --max-backend-wait (120 s) "
                             "so a missing answer is a loss, not a timeout (default: %(default)s)")
    parser.add_argument("--warmup-s", type=float, default=20.0,
                        help="load before the first RSS reading (default: %(default)s)")
    parser.add_argument("--rss-bound-mib", type=float, default=64.0, help="allowed RSS growth (default: %(default)s)")
    parser.add_argument("--rss-bound-frac", type=float, default=0.25,
                        help="allowed RSS growth as a fraction of the start value (default: %(default)s)")
    parser.add_argument("--startup-timeout-s", type=float, default=900.0, help="stack startup limit")
    parser.add_argument("--out", default=str(REPO_ROOT / "reports" / "soak_faults.json"), help="JSON report")
    args = parser.parse_args(argv)
    if args.duration_s < 60 or args.users < 1 or args.steps < 1:
        print("soak_faults: --duration-s >= 60, --users >= 1 and --steps >= 1 required", file=sys.stderr)
        return 2
    limit_s = args.duration_s + args.startup_timeout_s + args.deadline_s + 300
    watchdog = gevent.spawn_later(limit_s, lambda: os.kill(os.getpid(), signal.SIGTERM))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        return run(args)
    finally:
        watchdog.kill()


if __name__ == "__main__":
    locust.log.setup_logging("WARNING")
    sys.exit(main())
