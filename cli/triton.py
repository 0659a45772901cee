"""``edgediff triton``: run a Triton server over a model repository in the foreground until Ctrl-C or SIGTERM.

A stop signal (SIGTERM, SIGINT, SIGHUP) stops the server and its Python stubs, removes its temporary log and exits 0;
a server that died on its own exits 1 (its log is kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

from cli.args import check_positive
from cli.export import DEFAULT_REPO
from edgediff.constants import DEFAULT_HOST, TRITON_GRPC_PORT, TRITON_HTTP_PORT, TRITON_METRICS_PORT
from services.triton.launcher import MODEL_CONTROL_MODES, TritonServer, error_lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``edgediff triton``."""
    parser.add_argument("--repo", default=DEFAULT_REPO, metavar="DIR",
                        help="model repository written by 'edgediff export' (default: %(default)s)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default: %(default)s)")
    parser.add_argument("--metrics-host", default=None, metavar="ADDRESS",
                        help="address the metrics port binds instead (default: --host)")
    parser.add_argument("--http-port", type=int, default=TRITON_HTTP_PORT, help="HTTP port (default: %(default)s)")
    parser.add_argument("--grpc-port", type=int, default=TRITON_GRPC_PORT, help="gRPC port (default: %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=TRITON_METRICS_PORT,
                        help="Prometheus metrics port (default: %(default)s)")
    parser.add_argument("--model-control-mode", default="none", choices=MODEL_CONTROL_MODES,
                        help="none: load every model at start; explicit: load/unload through the API (default: "
                             "%(default)s)")
    parser.add_argument("--load-model", action="append", default=[], metavar="NAME",
                        help="with --model-control-mode explicit: a model to load at start (repeatable)")
    parser.add_argument("--startup-timeout", type=float, default=300.0, metavar="S",
                        help="seconds to wait for readiness before giving up (default: %(default)s)")
    parser.add_argument("--log-file", default=None, metavar="PATH",
                        help="where the server's output goes (default: a temporary file, printed)")


def repository_index(http_url: str) -> list[dict]:
    """``POST /v2/repository/index``: the repository's models with their state."""
    request = urllib.request.Request(f"{http_url}/v2/repository/index", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5.0) as response:
        return json.loads(response.read())


def run_from_args(args: argparse.Namespace) -> int:
    """Start the server, print where it listens, wait; exit non-zero with Triton's errors when it fails."""
    for name in ("http_port", "grpc_port", "metrics_port"):
        check_positive(name.replace("_", "-"), getattr(args, name))
    server = TritonServer(
        args.repo, http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
        host=args.host, metrics_host=args.metrics_host, model_control=args.model_control_mode,
        load_models=args.load_model,
        startup_timeout_s=args.startup_timeout, log_file=Path(args.log_file) if args.log_file else None,
    )
    died = False
    try:  # a stop signal (cli.main's stop_on_signals) raises Interrupted here: the server is stopped, exit 0
        server.start()
        models = [f"{m['name']} ({m['state']})" for m in repository_index(server.http_url) if m.get("state")]
        print(f"tritonserver ({server.binary}) ready, pid {server.pid}, repository {server.repo}")
        print(f"  HTTP    {server.http_url}\n  gRPC    {server.grpc_url}\n  metrics {server.metrics_url}")
        print(f"  models  {', '.join(models) or 'none loaded'}")
        print(f"  log     {server.log_path}\nCtrl-C to stop.", flush=True)
        while True:
            code = server.wait(0.5)
            if code is not None:
                details = "\n".join(error_lines(server.logs()))
                print(f"edgediff triton: error: tritonserver exited with code {code} (log {server.log_path}):\n"
                      f"{details}", file=sys.stderr)
                died = True
                return 1
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP: a service's normal end (edgediff.processes)
        pass
    finally:
        server.stop(keep_log=died)
    return 0
