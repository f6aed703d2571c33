"""The `study` command: a parser and a dispatch. Exit 0 on success, 2 on a user error (a
StudyError: one paragraph, no traceback), 3 when a study stopped because it cannot make
progress, 1 on an internal error (a bug: its traceback).

Each command lives in study/commands/<name>.py and is imported only once its arguments parse:
`study --help` and `study <cmd> --help` load argparse and this package's settings, not torch
(~1.3 s), plotly or optuna-dashboard. Nothing in the package imports this module.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from study import progress
from study.errors import StudyError

EXIT_USER_ERROR = 2


def _add_space(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", required=True, metavar="FILE",
                   help="study file (YAML); a bare name (smoke, fusion.yaml) is also looked up "
                   "among the shipped study files")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. distill.temperature=4 (repeatable)")
    p.add_argument("--results", default="results", metavar="DIR",
                   help="results root (default: ./results)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="stage cache shared across studies (default: <results>/cache)")


def _add_verbosity(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true",
                   help="no progress and no per-stage lines (same as --log-level warning)")
    p.add_argument("--log-level", choices=progress.LEVELS, default=None,
                   help=f"debug: a line every epoch and level; info: a live bar on a terminal, "
                   f"else lines; warning: results only (default: ${progress.ENV_LEVEL} or info)")
    p.add_argument("--progress-interval", type=float, default=None, metavar="SECONDS",
                   help="log lines within a long epoch every SECONDS (default: "
                   f"${progress.ENV_LINE_S} or {progress.LINE_S:g})")


class _AtLeastTwo(argparse.Action):
    """`study compare`'s study files: one is a report (`study report`), not a comparison."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if len(values) < 2:
            parser.error(f"give at least 2 study files to compare, got {len(values)} "
                         "(one study's report is `study report --space FILE`)")
        setattr(namespace, self.dest, values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="study", description="Hyperparameter and ablation harness for FusionDistill.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run one pipeline at the space's defaults, no Optuna",
                       description="Run one pipeline (all methods asked for) and print the "
                       "paper-style table for validation and test.")
    _add_space(p)
    _add_verbosity(p)

    p = sub.add_parser("launch", help="create or resume the study and run it to N trials",
                       description="Create or resume the Optuna study of a study file and run "
                       "trials until N have finished (COMPLETE, PRUNED or FAILED).")
    _add_space(p)
    p.add_argument("--n-trials", type=int, default=None, metavar="N",
                   help="finished trials to reach (default: study.n_trials)")
    p.add_argument("--executor", default=None, metavar="BACKEND",
                   help="where trials run, an executor.backend: debug, local or slurm "
                   "(default: the study file's executor.backend)")
    p.add_argument("--parallel", type=int, default=None, metavar="K",
                   help="trials in flight (default: executor.parallel)")
    p.add_argument("--detach", action="store_true",
                   help="submit and return; the study goes on without this process")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved space, the fixed pipeline, where trials run and "
                   "what a trial runs; write nothing")
    _add_verbosity(p)

    p = sub.add_parser("confirm", help="re-run the top trials and the baseline with new seeds; "
                       "say on test whether the best beats the baseline",
                       description="The protocol for claiming a searched configuration beats "
                       "the baseline: the top K trials by validation and the baseline, each "
                       "re-run with R new seeds as trials of the same study; the one best on "
                       "validation is compared with the baseline on test, paired by seed, with "
                       "a 95% interval. Run again, it resumes.")
    _add_space(p)
    p.add_argument("--top", type=int, default=3, metavar="K",
                   help="configurations to confirm besides the baseline (default 3)")
    p.add_argument("--seeds", type=int, default=3, metavar="R",
                   help="new seeds per configuration (default 3, at least 2)")
    p.add_argument("--executor", default=None, metavar="BACKEND",
                   help="where the re-runs run (default: the study file's executor.backend)")
    p.add_argument("--parallel", type=int, default=None, metavar="K",
                   help="re-runs in flight (default: executor.parallel)")
    p.add_argument("--detach", action="store_true",
                   help="submit and return; `study confirm` again prints the verdict")
    _add_verbosity(p)

    p = sub.add_parser("status", help="trials by state, best so far, where each running trial "
                       "is (from its heartbeat), compute spent and projected, cache")
    _add_space(p)
    p.add_argument("--n-trials", type=int, default=None, metavar="N")
    p.add_argument("--watch", type=float, nargs="?", const=5.0, default=None, metavar="SECONDS",
                   help="redraw every SECONDS (default 5) until Ctrl-C")
    p.add_argument("--stale-after", type=float, default=None, metavar="SECONDS",
                   help="call a heartbeat older than this stale (default: "
                   f"{progress.STALE_BEATS} missed beats of the trial's own interval)")

    p = sub.add_parser("cancel", help="stop a study's launcher and jobs (resumable later)")
    _add_space(p)

    p = sub.add_parser("dashboard", help="serve optuna-dashboard on the study's storage")
    _add_space(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address (default 127.0.0.1: reach it through an SSH tunnel)")
    p.add_argument("--port", type=int, default=8080)

    p = sub.add_parser("report", help="write results/<study>/report.html and push its figures "
                       "to the dashboard", description="The ablation report of a study: "
                       "paper-style tables, accuracy against level, ablations, parameter "
                       "effects, budget, paired differences; one self-contained HTML file.")
    _add_space(p)
    p.add_argument("--png", action="store_true",
                   help="also write PNG files of the figures (needs kaleido and chromium)")
    p.add_argument("--no-push", action="store_true",
                   help="do not push figures and the summary note to optuna-dashboard")

    p = sub.add_parser("compare", help="one page putting several studies side by side: best "
                       "against baseline for each, the shared parameters' effects",
                       description="Write one HTML page comparing launched studies: per "
                       "study its objective, trials, best trial and baseline with what the "
                       "noise allows; then every parameter (by config path) searched in two or "
                       "more of them, against each study's objective.")
    p.add_argument("spaces", nargs="+", action=_AtLeastTwo, metavar="SPACE",
                   help="study files (YAML, or shipped names), at least 2, each launched in "
                   "--results")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override applied to every study file (repeatable)")
    p.add_argument("--results", default="results", metavar="DIR",
                   help="results root where the studies were launched (default: ./results)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="the page to write (default: <results>/compare-<nameA>-<nameB>....html)")

    p = sub.add_parser("bench", help="images/s of each stage with and without the data path, "
                       "evaluation time, trial overhead", description="Measure in one run, for "
                       "each stage kind, training images/s with the CPU reference data path, the "
                       "device data path and pre-made resident batches; the level-wise "
                       "evaluation of one model; the orchestration overhead of a cached-stage "
                       "trial; optionally K trials packed on one device. Quote ratios, not "
                       "absolute times across runs.")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default: cuda when torch sees a GPU, else cpu")
    p.add_argument("--model", choices=["tiny", "resnet56"], default="resnet56")
    p.add_argument("--stages", nargs="+", metavar="PART", default=None,
                   help="any of base expert_jpeg expert_blur expert_awgn expert_saltpepper "
                   "(or expert) distill eval trial packed results (default: all but packed "
                   "and results)")
    p.add_argument("--json", metavar="FILE", help="also write every figure and setting here")
    for flag, what in [("--steps", "timed steps per measurement"),
                       ("--warmup", "untimed steps first"),
                       ("--n-train", "resident training images"),
                       ("--batch-size", "images per degradation and step (paper: 128)"),
                       ("--eval-images", "test images per evaluated copy"),
                       ("--eval-batch", "inference batch size"),
                       ("--procs", "processes sharing the device for 'packed'"),
                       ("--workers", "JPEG bank building processes (default: all CPUs)"),
                       ("--jpeg-bank-step", "bank every k-th JPEG quality (1: all 100)")]:
        p.add_argument(flag, type=int, default=None, metavar="N", help=what)
    p.add_argument("--results-trials", type=int, nargs="+", default=None, metavar="N",
                   help="results: the synthetic studies' trial counts (default: 1000)")
    p.add_argument("--results-repeats", type=int, default=None, metavar="N",
                   help="results: runs of each timed command, the median kept (default: 3)")
    p.add_argument("--channels-last", action="store_true", help="CUDA only")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast, CUDA only")
    p.add_argument("--compile", choices=["none", "default", "reduce-overhead", "max-autotune"],
                   default=None, help="torch.compile the models (CUDA only)")
    p.add_argument("--loss-sync", action="store_true",
                   help="loss.item() every step, to measure what a per-step host sync costs "
                   "(train.fit sums the loss on the device)")
    p.add_argument("--cache", metavar="DIR", default=None,
                   help="keep JPEG banks here between runs (default: a temporary directory)")
    p.add_argument("--trial-set", dest="trial_overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override the bench trial's smoke-sized pipeline "
                   "(repeatable), e.g. distill.epochs=10 for a longer trial")

    p = sub.add_parser("data", help="dataset helpers")
    dsub = p.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("download", help="download a dataset (needs internet: run it on a "
                        "login node, never on a compute node)")
    d.add_argument("--dataset", required=True, choices=["cifar10", "cifar100", "tinyimagenet"])
    d.add_argument("--root", required=True, metavar="DIR")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        command = importlib.import_module(f"study.commands.{args.command}")
        return int(command.main(args))
    except StudyError as e:
        print(f"study: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("study: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
