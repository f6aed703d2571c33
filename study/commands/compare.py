"""`study compare`: one page putting several launched studies side by side (study/compare.py
computes it, study/report/compare_page.py draws it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from study import atomic, compare
from study.commands.options import check_dir
from study.errors import DiskFullError, StudyError
from study.report.compare_page import render_comparison


def main(args: argparse.Namespace) -> int:
    results_dir = check_dir("--results", args.results, write=False)
    if args.out is not None:   # checked before any study is read: a wrong flag fails fast
        _check_out(Path(args.out))
    c = compare.compare_studies(args.spaces, args.overrides, str(results_dir))
    out = Path(args.out) if args.out else results_dir / compare.default_name(c.names)
    _check_out(out)
    page, figures = render_comparison(c)
    try:
        atomic.write_text(out, page)
    except DiskFullError:
        raise
    except OSError as e:
        raise StudyError(f"study compare: cannot write {out} ({e.strerror or e}); give a "
                         "writable file with --out") from None
    print(f"compare: {out} ({len(c.sides)} studies, {len(c.shared)} shared parameters, "
          f"{len(figures)} figures, {out.stat().st_size / 1e6:.1f} MB)")
    for note in c.notes:
        print(f"compare: note: {note}")
    return 0


def _check_out(out: Path) -> None:
    """--out (or the default in --results) names a file whose folder exists or can be made."""
    if out.is_dir():
        raise StudyError(f"--out {out} is a directory; give the path of the HTML file to "
                         "write (e.g. compare.html)")
    check_dir("--out", out.parent, write=True)
