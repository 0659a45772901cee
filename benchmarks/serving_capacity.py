"""Serving capacity: in-process images/s vs the served stack's saturation, and the latency at 80 % of it, in ONE run.

    flock /tmp/edgediff-heavy.lock .venv/bin/python benchmarks/serving_capacity.py --model celebahq-256 \
        --variant openvino-int8 --scheduler unipc --steps 5 --out reports/serving-capacity

Without ``--variant``/``--scheduler``/``--steps`` the machine's tune profile (``edgediff tune``) decides; without a
profile they are required. In order, each step a plain ``edgediff`` command (its own report kept under ``--out``):

1. **in-process**: ``edgediff bench`` of the variant at batch 1 and batch 2 (the baseline ``torch-fp32`` that bench
   always adds runs one DDIM step only: it is not what is measured here); the best images/s of the two;
2. **the local stack**: ``edgediff export`` of the variant (the artifact cache makes a second run quick),
   ``edgediff triton`` over that repository and ``edgediff serve --backend triton`` with the variant, sampler and
   steps as the server's defaults (the load test sends none);
3. ``edgediff loadtest --sweep users=...``: closed loops of growing concurrency; the saturation throughput (the
   knee);
4. the gateway restarted with ``--max-concurrency`` = the knee's users (the way the README sizes a gateway from a
   sweep; ``--open-loop-concurrency`` overrides it), then ``edgediff loadtest --rate`` at ``--rate-fraction`` (80 %)
   of the saturation: Poisson arrivals, open loop;
5. the queueing floor of that open loop (``loadtest.queueing``): the p50/p99 a FIFO queue with the same arrivals,
   the same concurrency and the knee's median latency as a constant service time would have with no server
   overhead at all. An open loop's p99/p50 can only be read against it: for one slot at 80 % load it is about 5.

It prints and writes (``serving_capacity.json``) the served / in-process ratio at saturation, p99 / p50 at 80 %
(and the floor's), the failed requests below saturation, the GPU's name when there is one, and which targets were
met (>= 0.95; <= 1.5; 0). Every process it starts is stopped before it returns.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from edgediff.processes import ChildProcess  # noqa: E402
from loadtest.queueing import fifo_sojourn  # noqa: E402
from services.healthcheck import free_port  # noqa: E402

TARGET_RATIO = 0.95
TARGET_TAIL = 1.5
CLI = [sys.executable, "-m", "cli"]


def log(message: str) -> None:
    """One progress line on stderr, with the time."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def gpu_name() -> str | None:
    """The GPU's name (``nvidia-smi``), or ``None`` on a machine without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                          text=True, timeout=30, check=False)
    names = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return ", ".join(names) if done.returncode == 0 and names else None


def cpu_flags() -> str:
    """The CPU model and the flags that decide the fast paths (AVX-512, bf16, VNNI, AMX, AVX2)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8") if f in flags]
    return f"{model}, {os.cpu_count()} logical CPUs, flags: {' '.join(wanted) or 'none of avx2/avx512/amx'}"


def run(command: list[str], what: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run an ``edgediff`` command; fail with its output's tail when it fails."""
    log(f"{what}: {' '.join(command[2:])}")
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=REPO_ROOT, check=False)
    if done.returncode not in (0, 1):  # 1: a load test whose verdict failed still wrote its report
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise SystemExit(f"serving_capacity: {what} failed (exit {done.returncode}):\n{tail}")
    return done


def resolve_default(args: argparse.Namespace) -> tuple[str, str, int, str]:
    """``(variant, scheduler, steps, where from)``: the flags, else the machine's tune profile."""
    if args.variant and args.scheduler and args.steps:
        return args.variant, args.scheduler, int(args.steps), "flags"
    from edgediff.bench.tune import profile_defaults

    profile = profile_defaults(args.model, warn=log)
    if profile is None:
        raise SystemExit("serving_capacity: no tune profile for this machine: pass --variant, --scheduler and --steps "
                         "(or run 'edgediff tune')")
    return (args.variant or profile["variant"], args.scheduler or profile["scheduler"] or "ddim",
            int(args.steps or profile["steps"]), "tune profile")


def in_process(args: argparse.Namespace, variant: str, scheduler: str, steps: int, out: Path) -> dict[str, Any]:
    """``edgediff bench`` of the variant at batch 1 and 2: images/s of each (batch / median latency per call)."""
    rows = {}
    for batch in (1, 2):
        folder = out / f"bench-batch{batch}"
        run([*CLI, "bench", "--model", args.model, "--variants", f"{variant}@{scheduler}:{steps}",
             "--scheduler", "ddim", "--steps", "1", "--batch", str(batch), "--runs", str(args.runs), "--warmup", "1",
             "--no-energy", "--no-plots", "--out", str(folder)], f"in-process bench, batch {batch}", 3600)
        report = json.loads((folder / "report.json").read_text())
        (row,) = [v for v in report["variants"] if v.get("requested") and v["name"].split("@")[0] == variant]
        if row["status"] != "ok":
            raise SystemExit(f"serving_capacity: bench of {variant}: {row['status']}: {row.get('reason')}")
        total = row["latency"]["total"]
        rows[batch] = {"batch": batch, "p50_s": total["p50_s"], "mean_s": total["mean_s"], "n": total["n"],
                       "images_per_s": batch / total["p50_s"], "report": str(folder / "report.json")}
        log(f"in-process batch {batch}: {rows[batch]['images_per_s']:.4f} images/s (p50 {total['p50_s']:.3f} s)")
    best = max(rows.values(), key=lambda r: r["images_per_s"])
    return {"by_batch": rows, "best_images_per_s": best["images_per_s"], "best_batch": best["batch"]}


def wait_ready(url: str, process: ChildProcess, what: str, timeout_s: float) -> None:
    """Poll ``url`` until it answers 200; fail when the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"serving_capacity: {what} exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    raise SystemExit(f"serving_capacity: {what} not ready after {timeout_s:.0f} s")


def queueing_floor(rate: float, service_s: float | None, servers: int) -> dict[str, Any]:
    """The open loop's latency with no server overhead (``loadtest.queueing``), or why there is none."""
    if not service_s:
        return {"why_not": "the knee level has no latency"}
    try:
        floor = fifo_sojourn(rate, [service_s], servers=servers)
    except ValueError as exc:
        return {"why_not": str(exc)}
    return {**floor, "service_s": service_s, "servers": servers, "p99_over_p50": floor["p99_s"] / floor["p50_s"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="celebahq-256")
    parser.add_argument("--variant", default=None, help="default: the tune profile's")
    parser.add_argument("--scheduler", default=None, choices=("ddim", "dpmpp", "unipc"))
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--target", default=None, choices=("cpu", "rtx", "jetson"),
                        help="export target (default: rtx when a GPU is found, else cpu)")
    parser.add_argument("--runs", type=int, default=5, help="timed bench runs per batch size")
    parser.add_argument("--levels", default="1,2,4,6", help="users of the sweep's closed loops")
    parser.add_argument("--level-duration", default="60s", help="duration of each sweep level")
    parser.add_argument("--rate-duration", default="120s", help="duration of the open loop at the rate fraction")
    parser.add_argument("--rate-fraction", type=float, default=0.8)
    parser.add_argument("--open-loop-concurrency", type=int, default=None, metavar="N",
                        help="the gateway's --max-concurrency in the open loop (default: the knee's users)")
    parser.add_argument("--timeout", type=float, default=300.0, help="deadline of one Generate call, seconds")
    parser.add_argument("--out", type=Path, default=Path("reports/serving-capacity"))
    args = parser.parse_args(argv)
    if not 0 < args.rate_fraction < 1:
        parser.error("--rate-fraction must be in (0, 1)")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    gpu = gpu_name()
    target = args.target or ("rtx" if gpu else "cpu")
    variant, scheduler, steps, source = resolve_default(args)
    log(f"{args.model}: {variant} + {scheduler} {steps} steps (from the {source}); {cpu_flags()}"
        + (f"; GPU {gpu}" if gpu else "; no GPU"))
    result: dict[str, Any] = {"model": args.model, "variant": variant, "scheduler": scheduler, "steps": steps,
                              "default_from": source, "cpu": cpu_flags(), "gpu": gpu, "target": target,
                              "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    result["in_process"] = in_process(args, variant, scheduler, steps, out)

    repo = out / "model_repository"
    run([*CLI, "export", "--target", target, "--model", args.model, "--variants", variant, "--scheduler", scheduler,
         "--repo", str(repo)], "export", 7200)
    ports = {name: free_port() for name in ("http", "grpc", "metrics", "gateway", "gateway_metrics")}
    processes: list[ChildProcess] = []
    try:
        with (out / "triton.log").open("wb") as triton_log:
            triton = ChildProcess([*CLI, "triton", "--repo", str(repo), "--http-port", str(ports["http"]),
                                   "--grpc-port", str(ports["grpc"]), "--metrics-port", str(ports["metrics"]),
                                   "--log-file", str(out / "tritonserver.log")],
                                  name="edgediff triton", stdout=triton_log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                  grace_s=60.0)  # Triton unloads its models before it exits
        processes.append(triton)
        wait_ready(f"http://127.0.0.1:{ports['http']}/v2/health/ready", triton, "triton", 900)
        def start_gateway(max_concurrency: int | None) -> ChildProcess:
            limit = [] if max_concurrency is None else ["--max-concurrency", str(max_concurrency)]
            with (out / "gateway.log").open("ab") as gateway_log:
                gateway = ChildProcess([*CLI, "serve", "--backend", "triton", "--model", args.model, "--variant",
                                        variant, "--scheduler", scheduler, "--steps", str(steps), "--triton-url",
                                        f"127.0.0.1:{ports['grpc']}", "--port", str(ports["gateway"]),
                                        "--metrics-port", str(ports["gateway_metrics"]), "--max-queue", "64", *limit],
                                       name="edgediff serve", stdout=gateway_log, stderr=subprocess.STDOUT,
                                       cwd=REPO_ROOT)
            processes.append(gateway)
            wait_ready(f"http://127.0.0.1:{ports['gateway_metrics']}/metrics", gateway, "gateway", 300)
            return gateway

        gateway = start_gateway(None)  # the sweep: the gateway's default concurrency (the backend's capacity)
        target_addr = f"127.0.0.1:{ports['gateway']}"
        common = ["--target", target_addr, "--gateway-metrics", f"127.0.0.1:{ports['gateway_metrics']}",
                  "--timeout", f"{args.timeout:g}"]
        # one request first: Triton's first call of each model pays its warm-up
        run([*CLI, "loadtest", *common, "--users", "1", "--duration", "1s", "--out", str(out / "warmup")],
            "warm-up", 900)
        sweep_dir = out / "sweep"
        run([*CLI, "loadtest", *common, "--sweep", f"users={args.levels}", "--duration", args.level_duration,
             "--out", str(sweep_dir)], "sweep", 7200)
        sweep = json.loads((sweep_dir / "sweep.json").read_text())
        saturation = sweep["knee"]["saturation_images_per_s"]
        if not saturation:
            raise SystemExit(f"serving_capacity: the sweep reached no level; see {sweep_dir / 'sweep.md'}")
        rate = round(args.rate_fraction * saturation, 4)
        knee_row = next(r for r in sweep["levels"] if r["level"] == sweep["knee"]["knee_level"])
        concurrency = args.open_loop_concurrency or int(knee_row["level"])
        gateway.stop()
        processes.remove(gateway)
        gateway = start_gateway(concurrency)
        rate_dir = out / f"rate-{rate:g}"
        run([*CLI, "loadtest", *common, "--rate", f"{rate:g}", "--duration", args.rate_duration,
             "--out", str(rate_dir)], f"open loop at {args.rate_fraction:.0%} of saturation", 7200)
        open_loop = json.loads((rate_dir / "loadtest.json").read_text())
    finally:
        for process in reversed(processes):
            process.stop()

    best = result["in_process"]["best_images_per_s"]
    lat = open_loop["requests"]["latency"] or {}
    knee_level = sweep["knee"]["knee_level"]
    below = [r for r in sweep["levels"] if r["level"] <= knee_level]
    failed_below = sum(int(r.get("failed") or 0) for r in below) + int(open_loop["requests"]["failed"])
    arrivals = open_loop["load"]["arrivals"]
    result.update({
        "sweep": {"levels": [{k: r.get(k) for k in ("label", "images_per_s", "steady_images_per_s", "p50_s", "p90_s",
                                                     "p99_s", "failed", "reached", "why_not")}
                             for r in sweep["levels"]],
                  "knee": sweep["knee"], "report": str(sweep_dir / "sweep.md")},
        "open_loop": {"rate_per_s": rate, "images_per_s": open_loop["requests"]["images_per_s"],
                      "p50_s": lat.get("p50_s"), "p90_s": lat.get("p90_s"), "p99_s": lat.get("p99_s"),
                      "requests": open_loop["requests"]["requests"], "failed": open_loop["requests"]["failed"],
                      "arrivals": arrivals, "report": str(rate_dir / "loadtest.md")},
        "served_over_in_process": saturation / best,
        "p99_over_p50_at_rate": (lat["p99_s"] / lat["p50_s"]) if lat.get("p50_s") else None,
        "open_loop_concurrency": concurrency,
        "queueing_floor": queueing_floor(rate, knee_row.get("p50_s"), concurrency),
        "failed_below_saturation": failed_below,
        "wall_s": time.time() - started,
    })  # fmt: skip
    tail = result["p99_over_p50_at_rate"]
    result["targets_met"] = {
        f"served/in-process >= {TARGET_RATIO}": result["served_over_in_process"] >= TARGET_RATIO,
        f"p99 <= {TARGET_TAIL} x p50 at {args.rate_fraction:.0%}": tail is not None and tail <= TARGET_TAIL,
        "0 failures below saturation": failed_below == 0 and not arrivals["missed"],
    }
    (out / "serving_capacity.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"GPU: {gpu}" if gpu else "GPU: none (CPU only)")
    print(f"CPU: {result['cpu']}")
    print(f"default: {variant} + {scheduler} {steps} steps ({source}); export target {target}")
    for batch, row in result["in_process"]["by_batch"].items():
        print(f"in-process batch {batch}: {row['images_per_s']:.4f} images/s (p50 {row['p50_s']:.3f} s/call, "
              f"n={row['n']})")
    for row in result["sweep"]["levels"]:
        print(f"served {row['label']}: {row['steady_images_per_s'] or 0:.4f} images/s steady "
              f"({row['images_per_s'] or 0:.4f} over the window), p50 {row['p50_s'] or 0:.2f} s, "
              f"p99 {row['p99_s'] or 0:.2f} s, failed {row['failed']}"
              + ("" if row["reached"] else f" (NOT REACHED: {row['why_not']})"))
    print(f"saturation: {saturation:.4f} images/s (knee {sweep['knee']['knee_label']}); served/in-process "
          f"{result['served_over_in_process']:.3f}")
    ol = result["open_loop"]
    print(f"open loop at {rate:g}/s ({args.rate_fraction:.0%}): {ol['images_per_s']:.4f} images/s, p50 "
          f"{ol['p50_s'] or 0:.2f} s, p90 {ol['p90_s'] or 0:.2f} s, p99 {ol['p99_s'] or 0:.2f} s, p99/p50 "
          f"{result['p99_over_p50_at_rate'] or float('nan'):.2f}, {ol['requests']} requests, failed {ol['failed']}, "
          f"missed arrivals {arrivals['missed']}")
    floor = result["queueing_floor"]
    if "p99_over_p50" in floor:
        print(f"queueing floor (FIFO, {concurrency} slot(s), Poisson {rate:g}/s, constant {floor['service_s']:.2f} s "
              f"service, no overhead): p50 {floor['p50_s']:.2f} s, p99 {floor['p99_s']:.2f} s, p99/p50 "
              f"{floor['p99_over_p50']:.2f}")
    else:
        print(f"queueing floor: {floor['why_not']}")
    print(f"failed requests below saturation: {failed_below}")
    for name, met in result["targets_met"].items():
        print(f"target {name}: {'met' if met else 'NOT met'}")
    print(f"written: {out / 'serving_capacity.json'} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
