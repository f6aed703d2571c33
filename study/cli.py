"""The `study` command: exit 0 on success, 2 on a user error (one paragraph, no traceback), 1 on
an internal error."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

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


@contextlib.contextmanager
def _about(source: str) -> Iterator[None]:
    """Storage errors name the study file too: the URL may come from it or from --set."""
    try:
        yield
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _study_paths(args: argparse.Namespace, ld: object) -> tuple[str, str, str]:
    from study import storage

    sf = ld.sf  # type: ignore[attr-defined]
    results_dir = str(Path(args.results).resolve())
    cache_dir = str(Path(args.cache).resolve() if args.cache else Path(results_dir) / "cache")
    return results_dir, cache_dir, storage.storage_url(sf, results_dir)


def _open_study(args: argparse.Namespace) -> tuple[Any, str, str, str, Any]:
    """The study of an already launched study file: (loaded file, results, cache, storage URL,
    optuna.Study); a study never launched is a user error."""
    from study import objective, storage

    ld = objective.load(args.space, args.overrides)
    results_dir, cache_dir, url = _study_paths(args, ld)
    with _about(ld.source):
        st = storage.open_existing(ld.sf, results_dir)
    return ld, results_dir, cache_dir, url, st


def cmd_launch(args: argparse.Namespace) -> int:
    from study import dispatch, objective, storage

    for flag, value in (("--n-trials", args.n_trials), ("--parallel", args.parallel)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    overrides = list(args.overrides)
    if args.executor:
        overrides.append(f"executor.backend={args.executor}")
    if args.parallel:
        overrides.append(f"executor.parallel={args.parallel}")
    ld = objective.load(args.space, overrides)
    sf = ld.sf
    n_trials = args.n_trials or sf.study.n_trials
    results_dir, cache_dir, url = _study_paths(args, ld)
    # every check before the storage exists: a refused launch leaves no journal behind
    max_epochs = max(sf.pipeline.distill.epochs, sf.pipeline.fusing.epochs)
    with _about(ld.source):
        sampler = storage.make_sampler(sf, ld.space.grid(), sf.executor.parallel)
    pruner = storage.make_pruner(sf, max_epochs)
    if args.dry_run:
        print(f"study '{sf.study.name}' from {ld.source}")
        print(f"storage {url}; results {storage.study_dir(results_dir, sf.study.name)}; "
              f"cache {cache_dir}")
        print(f"executor {sf.executor.backend}, parallel {sf.executor.parallel}; "
              f"{n_trials} trials; sampler {sf.study.sampler}; pruner {sf.study.pruner}; "
              f"replicates {sf.study.replicates}")
        print("objectives: " + ", ".join(f"{o.direction} {o.method} {o.metric}"
                                         for o in sf.study.objectives))
        print("\nsearch space:\n" + ld.space.describe())
        print("\nfixed pipeline (what every trial runs before the searched values):")
        import yaml

        print(yaml.safe_dump(sf.pipeline.model_dump(), sort_keys=False, width=100))
        print(f"each trial runs methods {sf.pipeline.methods} on "
              f"{sf.pipeline.data.dataset} with model {sf.pipeline.model}")
        return 0
    with _about(ld.source):
        st = storage.load_or_create(sf, storage.open_storage(url), sampler, pruner,
                                    fp=storage.fingerprint(ld.tree, ld.space.fingerprint()))
    if st.trials:
        st.sampler = storage.make_sampler(sf, ld.space.grid(), sf.executor.parallel,
                                          resumed_at=len(st.trials))
    sdir = storage.study_dir(results_dir, sf.study.name)
    sdir.mkdir(parents=True, exist_ok=True)
    st.set_user_attr("n_trials", n_trials)   # the target `study status` reports against
    st.set_user_attr("cancelled", False)
    with _launcher_lock(sdir) as held:
        if not held:
            raise UserError(f"another launcher is running study '{sf.study.name}' (lock "
                            f"{sdir / 'launcher.lock'}: {(sdir / 'launcher.lock').read_text()})"
                            "; `study status` follows it, `study cancel` stops it")
        if args.detach:
            return _detach(args, ld, st, sdir, results_dir, cache_dir, overrides, n_trials)
        (sdir / "launcher.lock").write_text(f"pid {os.getpid()} on {platform.node()}")
        print(f"study '{sf.study.name}': {len(st.trials)} trials in storage {url}; "
              f"topping up to {n_trials} finished ({sf.executor.backend}, parallel "
              f"{sf.executor.parallel})", flush=True)
        _threads()
        launcher = dispatch.Launcher(
            ld, st, dispatch.make_executor(sf.executor.backend, ld, sdir),
            results_dir=results_dir, cache_dir=cache_dir, storage_url=url,
            study_file=ld.source, overrides=overrides, parallel=sf.executor.parallel,
            retries=sf.executor.retries, log=lambda m: print(m, flush=True))
        counts = launcher.run(n_trials)
    print(f"results: {sdir}/trials ({counts.done} finished trials)")
    return 0


@contextlib.contextmanager
def _launcher_lock(sdir: Path) -> Iterator[bool]:
    """One launcher per study: two would both top the study up and overshoot n_trials."""
    with open(sdir / "launcher.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _detach(args: argparse.Namespace, ld: Any, st: Any, sdir: Path, results_dir: str,
            cache_dir: str, overrides: list[str], n_trials: int) -> int:
    """Hand the launcher loop to a process that does not need this one: a driver job on
    SLURM, a new session on a laptop. The launcher is resumable, so either may be killed."""
    argv = ["launch", "--space", ld.source, "--results", results_dir, "--cache", cache_dir,
            "--n-trials", str(n_trials), *[x for o in overrides for x in ("--set", o)]]
    if ld.sf.executor.backend == "slurm":
        from study.slurm import SlurmExecutor

        ex = SlurmExecutor(ld.sf.executor.slurm, sdir / "jobs" / "slurm", ld.sf.study.name)
        jid = ex.submit_driver(argv, os.getcwd())
        st.set_user_attr("driver", {"kind": "slurm", "job_id": jid})
        where = f"SLURM job {jid}"
    else:
        log = open(sdir / "launcher.log", "ab")  # noqa: SIM115 - handed to the child
        p = subprocess.Popen([sys.executable, "-m", "study.cli", *argv], stdout=log,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        st.set_user_attr("driver", {"kind": "local", "pid": p.pid, "host": platform.node()})
        where = f"process {p.pid} (log {sdir / 'launcher.log'})"
    print(f"study '{ld.sf.study.name}' detached: the launcher runs as {where}; "
          f"`study status --space {args.space}` follows it, `study cancel` stops it")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from study import dispatch, results, storage
    from study.cache import StageCache

    if args.n_trials is not None and args.n_trials < 1:
        raise UserError(f"--n-trials must be >= 1, got {args.n_trials}")
    ld, results_dir, cache_dir, url, st = _open_study(args)
    trials = st.get_trials(deepcopy=False)
    c = dispatch.count(st, trials)
    print(f"study '{ld.sf.study.name}' ({url})")
    print(c.line(args.n_trials or st.user_attrs.get("n_trials") or ld.sf.study.n_trials))
    if c.best_trial is not None:
        print(f"best trial {c.best_trial}: value {c.best:.4f}; parameters:")
        for k, v in st.best_trial.user_attrs.get("values", {}).items():
            print(f"  {k} = {v}")
    elif len(st.directions) > 1:
        print(f"Pareto front: trials {[t.number for t in st.best_trials]}")
    driver = st.user_attrs.get("driver")
    if driver:
        print(f"launcher: {driver.get('kind')} {driver.get('job_id') or driver.get('pid')}")
    running = [t for t in trials if t.state.name == "RUNNING"]
    if running:
        from study.slurm import sacct_states

        # one sacct call for every job in flight, never one per job
        ids = [t.user_attrs.get("job", {}).get("job_id") for t in running]
        states = sacct_states([i for i in ids if i]) if any(ids) else {}
        print("in flight:")
        for t in running:
            job = t.user_attrs.get("job", {})
            where = job.get("job_id") or job.get("pid") or "-"
            state = states.get(str(job.get("job_id")), "")
            print(f"  trial {t.number} (attempt {t.user_attrs.get('attempt', 1)}): "
                  f"{job.get('kind', '?')} {where} {state}".rstrip())
    df = results.load(storage.study_dir(results_dir, ld.sf.study.name))
    print(f"Parquet: {df.trial.nunique() if len(df) else 0} trial files")
    print(f"stage cache {cache_dir}: " + ", ".join(
        f"{k} {v}" for k, v in StageCache(cache_dir).summary().items()))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """Stop a study: its driver first (so nothing is resubmitted), then its jobs; the trials
    in flight FAIL as cancelled (not retried) and `study launch` later resumes the study."""
    import signal

    from study import dispatch, slurm, storage

    ld, results_dir, cache_dir, url, st = _open_study(args)
    # First the launcher: it checks this flag every loop, and its job or process is stopped and
    # awaited, so it cannot start a trial after the ones below are stopped.
    st.set_user_attr("cancelled", True)
    driver = st.user_attrs.get("driver") or {}
    if driver.get("kind") == "slurm":
        slurm.cancel([driver["job_id"]])
        deadline = time.time() + 120
        while time.time() < deadline and slurm.sacct_states([driver["job_id"]]).get(
                str(driver["job_id"]), "PENDING") in slurm.ALIVE:
            time.sleep(1)
    elif driver.get("pid") and driver.get("host") == platform.node():
        with contextlib.suppress(OSError):
            os.killpg(int(driver["pid"]), signal.SIGTERM)
        deadline = time.time() + 60
        while time.time() < deadline and dispatch._pid_alive(int(driver["pid"]), "study.cli"):
            time.sleep(0.5)
    running = [t for t in st.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
    handles = [t.user_attrs.get("job") or {} for t in running]
    handles += [{"kind": "slurm", "job_id": j} for j in
                (st.user_attrs.get("stage_jobs") or {}).values()]
    slurm.cancel([h["job_id"] for h in handles if h.get("kind") == "slurm" and h.get("job_id")])
    for h in [*handles, *[t.user_attrs.get("worker") or {} for t in running]]:
        if h.get("pid") and h.get("host", platform.node()) == platform.node():
            with contextlib.suppress(OSError):
                os.killpg(int(h["pid"]), signal.SIGTERM)   # workers lead their own session
    sdir = storage.study_dir(results_dir, ld.sf.study.name)
    launcher = dispatch.Launcher(
        ld, st, dispatch.DebugExecutor(), results_dir=results_dir, cache_dir=cache_dir,
        storage_url=url, study_file=ld.source, overrides=args.overrides, parallel=1,
        log=lambda m: print(m, flush=True))
    for t in running:
        launcher.fail(t, "cancelled by `study cancel`", "cancelled", retry=False)
    print(f"study '{ld.sf.study.name}': cancelled {len(running)} trials in flight "
          f"and its launcher; results so far stay in {sdir}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    import optuna_dashboard

    from study import storage

    ld, results_dir, _, url, _ = _open_study(args)   # a clear error before the server starts
    print(f"optuna-dashboard for '{ld.sf.study.name}' at http://{args.host}:{args.port}/ "
          f"(storage {url}); Ctrl-C stops it", flush=True)
    optuna_dashboard.run_server(storage.open_storage(url), host=args.host, port=args.port)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from study import report

    report.build_report(args.space, args.overrides, Path(args.results).resolve(), png=args.png,
                        push=not args.no_push)
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


def cmd_bench(args: argparse.Namespace) -> int:
    from study import bench

    _threads()
    try:
        return bench.main(args)
    except ValueError as e:
        raise UserError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="study", description="Hyperparameter and ablation harness for FusionDistill.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run one pipeline at the space's defaults, no Optuna",
                       description="Run one pipeline (all methods asked for) and print the "
                       "paper-style table for validation and test.")
    _add_space(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("launch", help="create or resume the study and run it to N trials",
                       description="Create or resume the Optuna study of a study file and run "
                       "trials until N have finished (COMPLETE, PRUNED or FAILED).")
    _add_space(p)
    p.add_argument("--n-trials", type=int, default=None, metavar="N",
                   help="finished trials to reach (default: study.n_trials)")
    p.add_argument("--executor", choices=["debug", "local", "slurm"], default=None,
                   help="where trials run (default: executor.backend)")
    p.add_argument("--parallel", type=int, default=None, metavar="K",
                   help="trials in flight (default: executor.parallel)")
    p.add_argument("--detach", action="store_true",
                   help="submit and return; the study goes on without this process")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved space, the fixed pipeline and what a trial runs")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("status", help="trials by state, best so far, jobs in flight, cache")
    _add_space(p)
    p.add_argument("--n-trials", type=int, default=None, metavar="N")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cancel", help="stop a study's launcher and jobs (resumable later)")
    _add_space(p)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("dashboard", help="serve optuna-dashboard on the study's storage")
    _add_space(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address (default 127.0.0.1: reach it through an SSH tunnel)")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("report", help="write results/<study>/report.html and push its figures "
                       "to the dashboard", description="The ablation report of a study: "
                       "paper-style tables, accuracy against level, ablations, parameter "
                       "effects, budget, paired differences; one self-contained HTML file.")
    _add_space(p)
    p.add_argument("--png", action="store_true",
                   help="also write PNG files of the figures (needs kaleido and chromium)")
    p.add_argument("--no-push", action="store_true",
                   help="do not push figures and the summary note to optuna-dashboard")
    p.set_defaults(func=cmd_report)

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
                   "(or expert) distill eval trial packed (default: all but packed)")
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
    p.add_argument("--channels-last", action="store_true", help="CUDA only")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast, CUDA only")
    p.add_argument("--compile", choices=["none", "default", "reduce-overhead", "max-autotune"],
                   default=None, help="torch.compile the models (CUDA only)")
    p.add_argument("--loss-sync", action="store_true",
                   help="loss.item() every step, as train.fit did before it summed on the "
                   "device (measures what that sync costs)")
    p.add_argument("--cache", metavar="DIR", default=None,
                   help="keep JPEG banks here between runs (default: a temporary directory)")
    p.add_argument("--trial-set", dest="trial_overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override the bench trial's smoke-sized pipeline "
                   "(repeatable), e.g. distill.epochs=10 for a longer trial")
    p.set_defaults(func=cmd_bench)

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
