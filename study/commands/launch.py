"""`study launch`: create or resume the study and run it to N trials (or `--dry-run`: every
check of a launch and what it would run, nothing written)."""

from __future__ import annotations

import argparse

import yaml

from study import executors, launcher, storage, studyfile
from study.commands.options import apply_verbosity, positive, results_and_cache
from study.errors import StudyError
from study.executors import make_executor
from study.jobs import LaunchRequest


def main(args: argparse.Namespace) -> int:
    positive(n_trials=args.n_trials, parallel=args.parallel)
    apply_verbosity(args)
    overrides = list(args.overrides)
    if args.executor:
        if args.executor not in executors.EXECUTORS:   # checked here: the parser imports none
            raise StudyError(f"--executor: invalid choice {args.executor!r} (choose from "
                             f"{', '.join(repr(n) for n in executors.EXECUTORS)})")
        overrides.append(f"executor.backend={args.executor}")
    if args.parallel:
        overrides.append(f"executor.parallel={args.parallel}")
    results_dir, cache_dir = results_and_cache(args, write=True)
    if args.dry_run:
        ld = studyfile.load(args.space, overrides)
        launcher.preflight(ld, results_dir)
        print_dry_run(ld, results_dir, cache_dir, args.n_trials or ld.sf.study.n_trials)
        return 0
    request = LaunchRequest(args.space, overrides, results_dir, cache_dir, args.n_trials)
    launcher.launch(request, detach=args.detach, log=lambda m: print(m, flush=True))
    return 0


def print_dry_run(ld: studyfile.LoadedStudy, results_dir: str, cache_dir: str,
                  n_trials: int) -> None:
    sf = ld.sf
    sdir = storage.study_dir(results_dir, sf.study.name)
    print(f"study '{sf.study.name}' from {ld.source}")
    print(f"storage {storage.masked(storage.storage_url(sf, results_dir))}; results {sdir}; "
          f"cache {cache_dir}")
    print(f"executor {sf.executor.backend}, parallel {sf.executor.parallel}; "
          f"{n_trials} trials; sampler {sf.study.sampler}; pruner {sf.study.pruner}; "
          f"replicates {sf.study.replicates}")
    print("placement: " + make_executor(sf, sdir).describe_placement(sf.executor.parallel))
    print("objectives: " + ", ".join(f"{o.direction} {o.method} {o.metric}"
                                     for o in sf.study.objectives))
    print("\nsearch space:\n" + ld.space.describe())
    print("\nfixed pipeline (what every trial runs before the searched values):")
    print(yaml.safe_dump(sf.pipeline.model_dump(), sort_keys=False, width=100))
    print(f"each trial runs methods {sf.pipeline.methods} on "
          f"{sf.pipeline.data.dataset} with model {sf.pipeline.model}")
