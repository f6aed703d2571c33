"""`study confirm`: re-run the top trials and the baseline with new seeds and say, on test,
whether the chosen configuration beats the baseline (study/confirm.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from study import confirm, executors, launcher, status, storage, studyfile
from study.commands.options import apply_verbosity, positive, results_and_cache
from study.errors import StudyError, StudyHalted
from study.jobs import LaunchRequest


def main(args: argparse.Namespace) -> int:
    positive(top=args.top, seeds=args.seeds, parallel=args.parallel)
    if args.seeds < 2:
        raise StudyError(f"--seeds {args.seeds}: an interval needs at least 2 seeds per "
                         "configuration (3 by default)")
    apply_verbosity(args)
    overrides = list(args.overrides)
    if args.executor:
        if args.executor not in executors.EXECUTORS:
            raise StudyError(f"--executor: invalid choice {args.executor!r} (choose from "
                             f"{', '.join(repr(n) for n in executors.EXECUTORS)})")
        overrides.append(f"executor.backend={args.executor}")
    if args.parallel:
        overrides.append(f"executor.parallel={args.parallel}")
    results_dir, cache_dir = results_and_cache(args, write=True)
    outcome = run(LaunchRequest(args.space, overrides, results_dir, cache_dir),
                          args.top, args.seeds, detach=args.detach,
                          log=lambda m: print(m, flush=True))
    if outcome is not None and outcome.verdict is None:
        raise StudyHalted("the confirmation has too few finished re-runs to compare (see the "
                          "failures above); `study confirm` again resumes it")
    return 0


def run(request: LaunchRequest, top_k: int, seeds: int, *, detach: bool = False,
        log: Callable[[str], None] = print) -> confirm.Confirmation | None:
    """Plan, enqueue and run the confirmation of a launched study, then summarize it (None
    when detached: `study confirm` again prints the summary once it has run)."""
    ld = studyfile.load(request.study_file, request.overrides)
    stored = storage.open_study(ld, request.results_dir)
    st = stored.study
    if len(ld.sf.study.objectives) > 1:
        raise StudyError(f"{ld.source}: `study confirm` ranks trials by one objective; this "
                         f"study has {len(ld.sf.study.objectives)} (a Pareto front has no "
                         "single best to confirm)")
    chosen = confirm.plan(st, ld, top_k, seeds)
    pending = confirm.enqueue(st, chosen)
    log(f"confirmation of '{ld.sf.study.name}': baseline (trial {chosen['baseline']}) and "
        f"trials {chosen['candidates']} (the top {len(chosen['candidates'])} by "
        f"{ld.sf.study.objectives[0].metric}), seeds {chosen['seeds']}; {pending} re-runs "
        "to go")
    if pending:
        done = status.count(st, st.get_trials(deepcopy=False)).done
        counts = launcher.launch(
            LaunchRequest(request.study_file, request.overrides, request.results_dir,
                          request.cache_dir, done + pending), detach=detach, log=log)
        if counts is None:
            return None
    confirmation = confirm.summarize(st.get_trials(deepcopy=False), stored.study_dir, ld)
    for line in confirmation.lines():
        log(line)
    return confirmation
