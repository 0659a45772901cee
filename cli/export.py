"""``edgediff export``: build a Triton model repository (artifacts, configs, manifest) for a target."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cli.args import add_model_arguments, add_scheduler_argument
from edgediff.bench.tune import profile_defaults
from edgediff.models.weights import SYNTHETIC_WARNING
from edgediff.schedulers import DDIM
from exporters.repository import export_repository
from exporters.targets import TARGETS, get_target

DEFAULT_REPO = "model_repository"
FIGURE3_OPS = ("Constant", "Shape", "Gather", "Unsqueeze", "Concat", "Div", "Cast", "Reshape", "Identity", "Mul",
               "Add", "Conv")
"""Ops shown first in the op-count table (the study's Figure 3), then any other op whose count changed."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``edgediff export``."""
    defaults = "; ".join(f"{t.name}: {','.join(t.default_variants)}" for t in TARGETS.values())
    parser.add_argument("--target", required=True, choices=list(TARGETS),
                        help="where the repository is served: cpu (Python-backend models), rtx or jetson (native "
                             "GPU backends)")
    add_model_arguments(parser)
    parser.add_argument("--variants", default=None, metavar="LIST",
                        help=f"comma-separated variants, or 'all' the target serves (defaults: {defaults})")
    parser.add_argument("--repo", default=DEFAULT_REPO, metavar="DIR",
                        help="the Triton model repository to write (default: %(default)s)")
    parser.add_argument("--configs-only", action="store_true",
                        help="write configs and the manifest only, no artifact (e.g. rtx/jetson configs on a CPU box)")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON instead of tables")
    add_scheduler_argument(parser, default=None)


def _mb(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e6:.1f} MB"


def artifact_rows(manifest: dict[str, Any]) -> list[list[str]]:
    """One row per part model: variant, model, backend, artifact, size, export time or skip reason."""
    rows = []
    for variant, entry in manifest["variants"].items():
        for part in entry["parts"].values():
            if part.get("skipped"):
                rows.append([variant, part["model"], part["backend"], "-", "-", f"skipped: {part['skipped']}"])
                continue
            seconds = part.get("export_s")
            timing = "-" if seconds is None else f"{seconds:.1f} s" + (" (cached)" if part.get("cached") else "")
            rows.append([variant, part["model"], part["backend"], part["artifact"], _mb(part.get("size_bytes")),
                         timing])
    return rows


def op_count_rows(report: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(op, count before onnxsim, count after) from an export report: the study's Figure 3 ops, then changed ones."""
    onnx = report if "ops_before" in report else report.get("source_onnx") or {}
    before, after = onnx.get("ops_before") or {}, onnx.get("ops_after") or {}
    if not before:
        return []
    ops = [op for op in FIGURE3_OPS if op in before or op in after]
    ops += sorted((op for op in {*before, *after} if op not in ops and before.get(op, 0) != after.get(op, 0)),
                  key=lambda op: -before.get(op, 0))
    return [(op, before.get(op, 0), after.get(op, 0)) for op in ops]


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _print_op_counts(manifest: dict[str, Any], repo: str) -> None:
    """The op-count table before/after onnxsim, once per part (every ONNX-derived variant shares the graph)."""
    from pathlib import Path

    shown: set[str] = set()
    for entry in manifest["variants"].values():
        for part_name, part in entry["parts"].items():
            if part_name in shown or not part.get("report"):
                continue
            report = json.loads((Path(repo) / part["report"]).read_text(encoding="utf-8"))
            rows = op_count_rows(report)
            if not rows:
                continue
            shown.add(part_name)
            onnx = report if "ops_before" in report else report["source_onnx"]
            print(f"\nONNX ops of the {part_name} before/after onnxsim ({_mb(onnx.get('size_before_bytes'))} -> "
                  f"{_mb(onnx.get('size_bytes'))}; all ops in {part['report']}):")
            total = ("total", sum(onnx["ops_before"].values()), sum(onnx["ops_after"].values()))
            print(_table([[op, str(b), str(a)] for op, b, a in [*rows, total]], ["op", "before", "after"]))


def run_from_args(args: argparse.Namespace) -> int:
    """Export and print what was built."""
    target = get_target(args.target)
    spec = (args.variants or "").strip()
    variants = list(target.placements) if spec == "all" else [v for v in spec.split(",") if v.strip()]
    profile = None if target.gpu else profile_defaults(args.model, warn=lambda line: print(line, file=sys.stderr))
    if profile is not None and not variants and profile["variant"] in target.placements:
        variants = [profile["variant"]]  # this machine's tuned choice (edgediff tune) instead of the target's list
        print(f"variant from this machine's tune profile: {profile['variant']} ({profile['scheduler']} "
              f"{profile['steps']} steps)", file=sys.stderr)
    scheduler = args.scheduler or (profile["scheduler"] if profile is not None and variants == [profile["variant"]]
                                   else DDIM)
    manifest = export_repository(model=args.model, target=args.target, variants=variants, repo=args.repo,
                                 weights=args.weights, configs_only=args.configs_only, weights_seed=args.weights_seed,
                                 progress=lambda line: print(line, file=sys.stderr, flush=True), scheduler=scheduler)
    if manifest["weights"]["kind"] == "synthetic":
        print(SYNTHETIC_WARNING.format(preset=manifest["preset"]), file=sys.stderr)
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    print(f"{manifest['preset']} for target {args.target} (weights: {manifest['weights']['label']}):")
    print(_table(artifact_rows(manifest), ["variant", "model", "backend", "artifact", "size", "export"]))
    _print_op_counts(manifest, args.repo)
    print(f"\nwrote {args.repo}/manifest.json; serve it with: edgediff triton --repo {args.repo}")
    return 0
