"""`study cancel`: stop a study's launcher and the trials in flight (resumable later)."""

from __future__ import annotations

import argparse

from study import launcher, storage, studyfile
from study.commands.options import results_and_cache


def main(args: argparse.Namespace) -> int:
    results_dir, cache_dir = results_and_cache(args)
    ld = studyfile.load(args.space, args.overrides, check_space=False)
    n = launcher.cancel(ld, results_dir, cache_dir, log=lambda m: print(m, flush=True))
    print(f"study '{ld.sf.study.name}': cancelled {n} trials in flight and its launcher; "
          f"results so far stay in {storage.study_dir(results_dir, ld.sf.study.name)}")
    return 0
