"""The fleet router measured: three local gateways of different speed behind ``edgediff serve --backend fleet``.

Loopback only, bounded in time. Each upstream is ``edgediff serve --backend local --model tiny`` with its own default
variant and thread count, so their speeds differ for real; their speed alone is measured first. Then Locust
(``edgediff loadtest``) drives, with the same users and duration:

1. the fastest upstream alone (the single-gateway baseline);
2. the router with ``--policy fastest``;
3. the router with ``--policy edge-first`` (upstreams listed slowest first, as edge devices would be), while one
   upstream is killed (SIGKILL) mid-run: every request Locust sent must be answered (failures counted by status).

The share of each upstream comes from the router's ``edgediff_fleet_requests_total``; latency percentiles and
images/s from the load-test reports. Run it alone (``flock /tmp/edgediff-heavy.lock``)::

    flock /tmp/edgediff-heavy.lock .venv/bin/python benchmarks/fleet_routing.py --duration 60 --out reports/fleet
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from services.gateway.client import GeneratorClient
from services.healthcheck import free_port

UPSTREAMS = (  # name, default variant, intra-op threads (which is slower is measured, not assumed)
    ("torch-1t", "torch-fp32", 1),
    ("torch-2t", "torch-fp32", 2),
    ("onnx-2t", "onnx-fp32", 2),
)


def start(argv: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli", *argv], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_serving(target: str, timeout_s: float = 300.0) -> None:
    with GeneratorClient(target) as client:
        client.wait_serving(timeout_s=timeout_s)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def shares(before: dict, after: dict) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for (name, labels), value in after.items():
        if name == "edgediff_fleet_requests_total":
            label = dict(labels)
            delta = value - before.get((name, labels), 0.0)
            out.setdefault(label["upstream"], {})[label["outcome"]] = delta
    return out


def loadtest(target: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "cli", "loadtest", "--target", target, "--users", str(args.users), "--duration",
           f"{args.duration}s", "--steps", str(args.steps), "--out", str(out), "--timeout", "120"]
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=args.duration + 600)
    report = json.loads((out / "loadtest.json").read_text())
    req = report["requests"]
    return {"requests": req["requests"], "succeeded": req["succeeded"], "failed": req["failed"],
            "failures_by_status": req["failures_by_status"], "images_per_s": req["images_per_s"],
            "p50_s": req["latency"]["p50_s"], "p99_s": req["latency"]["p99_s"]}


def solo_speed(target: str, steps: int, calls: int = 5) -> float:
    with GeneratorClient(target, timeout_s=120.0) as client:
        client.generate(seed=0, steps=steps)  # warm-up
        t0 = time.perf_counter()
        for seed in range(calls):
            client.generate(seed=seed, steps=steps)
        return (time.perf_counter() - t0) / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=60, help="seconds of load per run")
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default="reports/fleet")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    processes: dict[str, subprocess.Popen] = {}
    upstreams: dict[str, dict[str, Any]] = {}
    try:
        for name, variant, threads in UPSTREAMS:
            port, metrics = free_port(), free_port()
            processes[name] = start(["serve", "--backend", "local", "--model", "tiny", "--variant", variant,
                                     "--threads", str(threads), "--port", str(port), "--metrics-port", str(metrics),
                                     "--max-concurrency", "1", "--max-queue", "16"], out / f"upstream-{name}.log")
            upstreams[name] = {"target": f"127.0.0.1:{port}", "metrics": f"http://127.0.0.1:{metrics}/metrics",
                               "variant": variant, "threads": threads}
        for name, up in upstreams.items():
            wait_serving(up["target"])
            up["solo_s_per_image"] = solo_speed(up["target"], args.steps)
            print(f"{name}: {up['variant']} threads {up['threads']}: {up['solo_s_per_image']:.3f} s/image alone",
                  flush=True)
        fastest = min(upstreams, key=lambda n: upstreams[n]["solo_s_per_image"])
        results: dict[str, Any] = {"upstreams": upstreams, "args": vars(args)}
        results["single"] = loadtest(upstreams[fastest]["target"], args, out / "single")
        results["single"]["gateway"] = fastest
        print("single:", results["single"], flush=True)

        order = sorted(upstreams, key=lambda n: -upstreams[n]["solo_s_per_image"])  # slowest (the "edge") first
        for policy, kill in (("fastest", None), ("edge-first", order[0])):  # kill the first choice of edge-first
            port, metrics = free_port(), free_port()
            specs = [f"{upstreams[n]['target']};metrics={upstreams[n]['metrics']};exporter=none;name={n}"
                     for n in order]
            argv = ["serve", "--backend", "fleet", "--policy", policy, "--port", str(port), "--metrics-port",
                    str(metrics), "--max-concurrency", "32", "--max-queue", "64", "--fleet-refresh", "1",
                    "--latency-target", "3"]
            for spec in specs:
                argv += ["--upstream", spec]
            router = start(argv, out / f"router-{policy}.log")
            try:
                wait_serving(f"127.0.0.1:{port}", timeout_s=60)
                before = scrape(f"http://127.0.0.1:{metrics}/metrics")
                killer = None
                if kill:
                    victim = processes[kill]

                    def kill_mid_run(victim: subprocess.Popen = victim) -> None:
                        time.sleep(args.duration / 2)
                        os.killpg(victim.pid, signal.SIGKILL)

                    killer = threading.Thread(target=kill_mid_run, daemon=True)
                    killer.start()
                run = loadtest(f"127.0.0.1:{port}", args, out / f"router-{policy}")
                run["shares"] = shares(before, scrape(f"http://127.0.0.1:{metrics}/metrics"))
                run["killed"] = kill
                results[f"router-{policy}"] = run
                print(f"router {policy}:", run, flush=True)
            finally:
                router.send_signal(signal.SIGTERM)
                router.wait(timeout=60)
        (out / "fleet.json").write_text(json.dumps(results, indent=2))
        print(f"wrote {out / 'fleet.json'}")
    finally:
        for proc in processes.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
