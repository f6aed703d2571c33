"""`study run`: one pipeline at the study file's own values, no Optuna, and its paper-style
table on validation and test."""

from __future__ import annotations

import argparse
import time

import pandas as pd

from study import executors, published, results, studyfile, worker
from study.cache import StageCache
from study.commands.options import apply_verbosity, results_and_cache
from study.errors import DataError
from study.pipeline import Pipeline


def main(args: argparse.Namespace) -> int:
    level = apply_verbosity(args)
    # nothing is launched: the whole-space check of a launch is not needed here
    ld = studyfile.load(args.space, args.overrides, check_space=False)
    sf = ld.sf
    _, cache_dir = results_and_cache(args, write=True, results=False)
    print(f"study run: {ld.source} (pipeline of '{sf.study.name}', methods "
          f"{sf.pipeline.methods})")
    worker.use_allotted_cpus(executors.allotted_cpus())
    t0 = time.perf_counter()
    pipe = Pipeline(sf.pipeline, StageCache(cache_dir),
                    log=(lambda _: None) if level == "warning" else print)
    try:
        # the dataset and its validation split first: an unreadable file or a split that
        # leaves nothing to train on is refused before a stage trains (or takes a lock)
        _ = pipe.train
        result = pipe.run()
    except DataError as e:
        raise DataError(f"{ld.source}: key 'pipeline.data.{getattr(e, 'field', 'root')}': "
                        f"{e}") from None
    hits = [s for s in result.stages if s.hit]
    print(f"\nstages: {len(result.stages)} ({len(hits)} cache hits: "
          f"{', '.join(s.stage for s in hits) or 'none'}); device {result.device}")
    df = pd.DataFrame(result.rows)
    with pd.option_context("display.float_format", "{:.1f}".format, "display.width", 120):
        for split in ("val", "test"):
            part = df[df.split == split] if len(df) else df
            if len(part):
                steps = sorted(set(part.level_step))
                note = "every level" if steps == [1] else f"every {steps[0]}th level"
                print(f"\n{split} accuracy (%), mean over levels ({note}):")
                if sf.pipeline.protocol == "reference":
                    print(published.OPTIMISTIC)
                # "-": a cell that does not exist (the oracle has no clean accuracy)
                print(results.paper_table(part, sf.pipeline.methods).to_string(na_rep="-"))
    print(f"\nwall time {time.perf_counter() - t0:.1f}s")
    return 0
