"""Choose the default variant: the fastest one on the target model that passed the quality gate on ``digits``.

Speed and quality come from two bench reports: one on the model that will be served (e.g. ``celebahq-256``, where
synthetic weights make quality meaningless) and one on the trained ``digits`` preset, where the gate ran. A variant
is eligible only with evidence: measured in the speed report, and gated and PASSED in the quality report.

    python -m edgediff.bench.select --speed reports/bench/report.json --quality reports/quality/report.json \
        [--allowed onnx-fp32,openvino-bf16]        # prints the variant's name
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from edgediff.errors import EdgediffError
from edgediff.quality.bench_hook import default_candidates


def gate_passed(report: dict[str, Any]) -> set[str]:
    """Variants of a report whose quality gate ran and passed (the baseline passes against itself)."""
    return {
        e["name"] for e in report.get("variants", [])
        if e.get("status") == "ok" and ((e.get("quality") or {}).get("gate") or {}).get("passed") is True
    }


def fastest_passing(speed: dict[str, Any], quality: dict[str, Any], allowed: Iterable[str] | None = None) -> str:
    """The fastest variant of ``speed`` (total p50) that passed the gate in ``quality`` and is in ``allowed``.

    Raises:
        EdgediffError: no variant qualifies.
    """
    passed = gate_passed(quality)
    allow = set(allowed) if allowed is not None else None
    for name in default_candidates(speed):
        if name in passed and (allow is None or name in allow):
            return name
    raise EdgediffError(
        f"no variant is both measured in the speed report and PASSED in the quality report "
        f"(passed: {', '.join(sorted(passed)) or 'none'}; allowed: {', '.join(sorted(allow)) if allow else 'any'})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Print the chosen variant; exit 2 with one line when none qualifies."""
    parser = argparse.ArgumentParser(prog="python -m edgediff.bench.select", description=__doc__.splitlines()[0])
    parser.add_argument("--speed", required=True, type=Path, help="bench report.json of the served model")
    parser.add_argument("--quality", required=True, type=Path, help="bench report.json of the digits preset")
    parser.add_argument("--allowed", default=None, help="comma-separated variants that may be chosen")
    args = parser.parse_args(argv)
    try:
        speed = json.loads(args.speed.read_text(encoding="utf-8"))
        quality = json.loads(args.quality.read_text(encoding="utf-8"))
        allowed = [a for a in args.allowed.split(",") if a] if args.allowed else None
        print(fastest_passing(speed, quality, allowed))
    except (OSError, json.JSONDecodeError, EdgediffError) as exc:
        print(f"select: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
