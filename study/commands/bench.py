"""`study bench`: the pipeline's throughput ratios, measured in one run (study/bench.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from study import bench, executors, worker
from study.commands.options import check_dir, positive
from study.errors import StudyError


def main(args: argparse.Namespace) -> int:
    positive(steps=args.steps, n_train=args.n_train, batch_size=args.batch_size,
             eval_images=args.eval_images, eval_batch=args.eval_batch, procs=args.procs,
             jpeg_bank_step=args.jpeg_bank_step)
    for flag, value in (("warmup", args.warmup), ("workers", args.workers)):
        if value is not None and value < 0:
            raise StudyError(f"--{flag} must be >= 0, got {value}")
    if args.cache:
        check_dir("--cache", args.cache, write=True)
    if args.json:   # written at the end: a bad path must not cost the whole bench
        json_path = Path(args.json)
        if json_path.is_dir():
            raise StudyError(f"--json {args.json} is a directory; give a file name, e.g. "
                             f"{json_path / 'bench.json'}")
        check_dir(f"the folder of --json {args.json}:", json_path.absolute().parent,
                  write=True)
    worker.use_allotted_cpus(executors.allotted_cpus())
    return bench.main(args)
