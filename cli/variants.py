"""``edgediff variants``: the table of variants, available here or not, and why not."""

from __future__ import annotations

import argparse
import json

from edgediff.variants import all_variants


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``edgediff variants``."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_from_args(args: argparse.Namespace) -> int:
    """Print the registry."""
    rows = [v.to_dict() for v in all_variants()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="edgediff variants")
    for column in ("variant", "backend", "precision", "device", "available", "reason / description"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["backend"], row["precision"], row["device"],
                      "yes" if row["available"] else "no",
                      row["description"] if row["available"] else row["reason"])
    Console(width=160).print(table)
    return 0
