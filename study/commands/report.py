"""`study report`: results/<study>/report.html, and its figures pushed to the dashboard."""

from __future__ import annotations

import argparse
from pathlib import Path

from study import report
from study.commands.options import results_and_cache


def main(args: argparse.Namespace) -> int:
    results_and_cache(args)
    report.build_report(args.space, args.overrides, Path(args.results).resolve(), png=args.png,
                        push=not args.no_push)
    return 0
