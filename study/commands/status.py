"""`study status`: where a study stands (study/status.py), once or redrawn with --watch."""

from __future__ import annotations

import argparse
import math

from study import status, storage, studyfile
from study.commands.options import positive, results_and_cache
from study.errors import StudyError


def main(args: argparse.Namespace) -> int:
    positive(n_trials=args.n_trials)
    for flag, value in (("--stale-after", args.stale_after), ("--watch", args.watch)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise StudyError(f"{flag} must be a finite number of seconds > 0, got {value}")
    results_dir, cache_dir = results_and_cache(args)
    # nothing is launched: the whole-space check of a launch is not needed here
    ld = studyfile.load(args.space, args.overrides, check_space=False)
    stored = storage.open_study(ld, results_dir)
    if args.watch is None:
        print("\n".join(status.status_lines(stored, cache_dir, n_trials=args.n_trials,
                                            stale_after=args.stale_after)))
    else:
        status.watch(stored, cache_dir, args.watch, n_trials=args.n_trials,
                     stale_after=args.stale_after)
    return 0
