"""``edgediff compare``: bench reports of several devices side by side (the study's Table 4), as Markdown + PNG."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgediff.bench.compare import SELECT_FASTEST, compare_reports, load_report, plot_comparison, render_markdown
from edgediff.io import atomic_write_json, atomic_write_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``edgediff compare``."""
    parser.add_argument("reports", nargs="+", metavar="REPORT", help="report.json files written by 'edgediff bench'")
    parser.add_argument("--reference", default=None, metavar="NAME",
                        help="the device the relative columns divide by (its label; default: the first report's)")
    parser.add_argument("--variant", default=SELECT_FASTEST, metavar="fastest|baseline|NAME",
                        help="which variant of each report: the fastest measured (default), the baseline, or a name")
    parser.add_argument("--force", action="store_true",
                        help="compare reports of different model presets or step counts anyway (noted in the output)")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="accept reports of benches cut short by a signal (marked incomplete; noted in the output)")
    parser.add_argument("--out", default="reports/compare", metavar="DIR", help="output folder (default: %(default)s)")


def run_from_args(args: argparse.Namespace) -> int:
    """Load, check, compare; write compare.md, compare.png and compare.json; print the table."""
    reports = [(str(path), load_report(path, allow_incomplete=args.allow_incomplete)) for path in args.reports]
    comparison = compare_reports(reports, reference=args.reference, variant=args.variant, force=args.force)
    for source, report in reports:
        if report.get("incomplete"):
            print(f"WARNING: {source} is incomplete: {report['incomplete']['reason']}", file=sys.stderr)
    out = Path(args.out)
    markdown = render_markdown(comparison)
    atomic_write_json(out / "compare.json", comparison)
    atomic_write_text(out / "compare.md", markdown)
    plot_comparison(comparison, out / "compare.png")
    if comparison["domains_differ"]:
        print("WARNING: power domains differ between devices (see the notes)", file=sys.stderr)
    print(markdown)
    print(f"wrote {out / 'compare.md'}, {out / 'compare.png'}, {out / 'compare.json'}")
    return 0
