"""The `study` command: exit 0 on success, 2 on a user error (one paragraph, no traceback), 1 on
an internal error."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from study.config import ConfigError, load_study_file

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Anything the user can fix: printed without a traceback, exit code 2."""


def _threads() -> None:
    # SLURM without cgroups does not pin CPUs: take what the job was given, not every core.
    n = os.environ.get("SLURM_CPUS_PER_TASK")
    if n and n.isdigit():
        import torch

        torch.set_num_threads(int(n))


def _add_space(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", required=True, metavar="FILE",
                   help="study file (YAML); a bare name is also looked up in search_spaces/")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. distill.temperature=4 (repeatable)")
    p.add_argument("--results", default="results", metavar="DIR",
                   help="results root (default: ./results)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="stage cache shared across studies (default: <results>/cache)")


def cmd_run(args: argparse.Namespace) -> int:
    import pandas as pd

    from study import evaluation
    from study.data import DataNotFoundError
    from study.pipeline import run_pipeline

    path, sf = load_study_file(args.space, args.overrides)
    cache_root = Path(args.cache or Path(args.results) / "cache")
    print(f"study run: {path} (pipeline of '{sf.study.name}', methods {sf.pipeline.methods})")
    _threads()
    t0 = time.perf_counter()
    try:
        result = run_pipeline(sf.pipeline, cache_root)
    except DataNotFoundError as e:
        raise UserError(f"{path}: key 'pipeline.data.root': {e}") from None
    wall = time.perf_counter() - t0
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
                print(evaluation.table(part, sf.pipeline.methods).to_string())
    print(f"\nwall time {wall:.1f}s")
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    """For a machine with internet (a login node): compute nodes never download."""
    from torchvision import datasets
    from torchvision.datasets.utils import download_and_extract_archive

    from study.data import TINYIMAGENET_URL

    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    if args.dataset == "cifar10":
        datasets.CIFAR10(str(root), download=True)
    elif args.dataset == "cifar100":
        datasets.CIFAR100(str(root), download=True)
    else:
        download_and_extract_archive(TINYIMAGENET_URL, str(root))
    print(f"{args.dataset} is under {root}; point pipeline.data.root at it")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="study", description="Hyperparameter and ablation harness for FusionDistill.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run one pipeline at the space's defaults, no Optuna",
                       description="Run one pipeline (all methods asked for) and print the "
                       "paper-style table for validation and test.")
    _add_space(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("data", help="dataset helpers")
    dsub = p.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("download", help="download a dataset (needs internet: run it on a "
                        "login node, never on a compute node)")
    d.add_argument("--dataset", required=True, choices=["cifar10", "cifar100", "tinyimagenet"])
    d.add_argument("--root", required=True, metavar="DIR")
    d.set_defaults(func=cmd_data_download)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, UserError) as e:
        print(f"study: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("study: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
