"""``edgediff variants``: the table of variants, available here or not, and why not."""

from __future__ import annotations

import argparse
import json

from edgediff.bench.tune import measured_peaks
from edgediff.models.presets import list_presets
from edgediff.variants import all_variants


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``edgediff variants``."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--model", default="celebahq-256", choices=list_presets(),
                        help="the model whose measured peak memory (from this machine's tune profiles) is shown "
                             "(default: %(default)s)")


def run_from_args(args: argparse.Namespace) -> int:
    """Print the registry, with each variant's peak RSS where this machine's tune profiles measured it."""
    peaks = measured_peaks(args.model)
    rows = [{**v.to_dict(), "measured_peak_mib": peaks.get(v.name)} for v in all_variants()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="edgediff variants")
    for column in ("variant", "backend", "precision", "device", "available", f"peak MiB ({args.model})",
                   "reason / description"):
        table.add_column(column)
    for row in rows:
        peak = row["measured_peak_mib"]
        table.add_row(row["name"], row["backend"], row["precision"], row["device"],
                      "yes" if row["available"] else "no", "-" if peak is None else f"{peak:,.0f}",
                      row["description"] if row["available"] else row["reason"])
    Console(width=160).print(table)
    return 0
