"""The `study` command: exit 0 on success, 2 on a user error (one paragraph, no traceback), 1 on
an internal error. Nothing in the package imports this module: each command parses its arguments
and calls the part that does the work (launcher, pipeline, report, bench)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna_dashboard
import pandas as pd
import yaml

from study import (
    bench,
    data,
    evaluation,
    launcher,
    progress,
    report,
    results,
    storage,
    studyfile,
    worker,
)
from study.cache import StageCache
from study.errors import DataError, StudyError
from study.executors.slurm import sacct_states
from study.pipeline import Pipeline

EXIT_USER_ERROR = 2


def _add_space(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", required=True, metavar="FILE",
                   help="study file (YAML); a bare name is also looked up in search_spaces/")
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


def _apply_verbosity(args: argparse.Namespace) -> str:
    """Into the environment, so the workers this command starts (local processes, SLURM jobs:
    sbatch exports the environment) show the same."""
    if args.quiet:
        progress.set_log_level("warning")
    elif args.log_level:
        progress.set_log_level(args.log_level)
    if args.progress_interval is not None:
        if not args.progress_interval > 0:
            raise StudyError(f"--progress-interval must be > 0, got {args.progress_interval}")
        os.environ[progress.ENV_LINE_S] = str(args.progress_interval)
    progress.line_interval()   # a bad value in the environment: exit 2 here, not in a worker
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    return progress.log_level()


def _dirs(args: argparse.Namespace, *, write: bool = False, results: bool = True
          ) -> tuple[str, str]:
    """--results and --cache, resolved and checked before anything runs: a regular file, or a
    folder that cannot be made (/proc/x), is refused with the flag named. `write`: the command
    will create them, so they must be creatable (checked by making the missing folders and
    removing them again). `results`: the command uses --results itself (`study run` only
    through the default cache)."""
    results_dir = str(Path(args.results).resolve())
    cache_dir = str(Path(args.cache).resolve() if args.cache else Path(results_dir) / "cache")
    if results or not args.cache:
        check_dir("--results", args.results, write=write)
    check_dir("--cache" if args.cache else "--results", args.cache or cache_dir, write=write)
    return results_dir, cache_dir


def check_dir(flag: str, value: str | Path, *, write: bool) -> Path:
    """`value` names a directory, or a path where one can be made (write=True); else a
    StudyError naming `flag`. Writes nothing: folders made to prove it are removed again."""
    path = Path(os.path.abspath(os.path.expanduser(value)))   # '..' folded, as mkdir sees it
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent   # Path.exists is False below a regular file too
    if not existing.is_dir():
        where = f"{flag} {value}" if existing == path else f"{flag} {value}: {existing}"
        kind = "is a file, not a directory" if existing.is_file() else "is not a directory"
        raise StudyError(f"{where} {kind}; give a directory (it is created when missing)")
    if not write:
        return path
    if existing == path:
        if not os.access(path, os.W_OK | os.X_OK):
            raise StudyError(f"{flag} {value}: the directory is not writable by this user")
        return path
    missing = [d for d in [path, *path.parents] if d not in (existing, *existing.parents)]
    made: list[Path] = []
    try:
        for d in reversed(missing):
            try:
                os.mkdir(d)
                made.append(d)
            except FileExistsError:
                if not d.is_dir():
                    raise
                # another command made it meanwhile: it is theirs, not ours to remove
    except OSError as e:
        raise StudyError(f"{flag} {value}: cannot create the directory {d} ({e.strerror or e}); "
                         "give a directory on a writable file system") from None
    finally:
        for d in reversed(made):
            with contextlib.suppress(OSError):   # another process may have filled it meanwhile
                os.rmdir(d)
    return path


def _positive(**flags: int | None) -> None:
    for flag, value in flags.items():
        if value is not None and value < 1:
            raise StudyError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")


def cmd_run(args: argparse.Namespace) -> int:
    level = _apply_verbosity(args)
    path, sf = studyfile.load_study_file(args.space, args.overrides)
    _, cache_dir = _dirs(args, write=True, results=False)
    print(f"study run: {path} (pipeline of '{sf.study.name}', methods {sf.pipeline.methods})")
    worker.use_allotted_cpus()
    t0 = time.perf_counter()
    pipe = Pipeline(sf.pipeline, StageCache(cache_dir),
                    log=(lambda _: None) if level == "warning" else print)
    try:
        # the dataset and its validation split first: an unreadable file or a split that
        # leaves nothing to train on is refused before a stage trains (or takes a lock)
        _ = pipe.train
        result = pipe.run()
    except DataError as e:
        raise DataError(f"{path}: key 'pipeline.data.{getattr(e, 'field', 'root')}': {e}"
                        ) from None
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
                    print(f"{report.OPTIMISTIC}")
                print(evaluation.table(part, sf.pipeline.methods).to_string())
    print(f"\nwall time {time.perf_counter() - t0:.1f}s")
    return 0


def _print_dry_run(ld: studyfile.LoadedStudy, results_dir: str, cache_dir: str,
                   n_trials: int) -> None:
    sf = ld.sf
    print(f"study '{sf.study.name}' from {ld.source}")
    print(f"storage {storage.masked(storage.storage_url(sf, results_dir))}; results "
          f"{storage.study_dir(results_dir, sf.study.name)}; cache {cache_dir}")
    print(f"executor {sf.executor.backend}, parallel {sf.executor.parallel}; "
          f"{n_trials} trials; sampler {sf.study.sampler}; pruner {sf.study.pruner}; "
          f"replicates {sf.study.replicates}")
    print("objectives: " + ", ".join(f"{o.direction} {o.method} {o.metric}"
                                     for o in sf.study.objectives))
    print("\nsearch space:\n" + ld.space.describe())
    print("\nfixed pipeline (what every trial runs before the searched values):")
    print(yaml.safe_dump(sf.pipeline.model_dump(), sort_keys=False, width=100))
    print(f"each trial runs methods {sf.pipeline.methods} on "
          f"{sf.pipeline.data.dataset} with model {sf.pipeline.model}")


def cmd_launch(args: argparse.Namespace) -> int:
    _positive(n_trials=args.n_trials, parallel=args.parallel)
    _apply_verbosity(args)
    overrides = list(args.overrides)
    if args.executor:
        overrides.append(f"executor.backend={args.executor}")
    if args.parallel:
        overrides.append(f"executor.parallel={args.parallel}")
    results_dir, cache_dir = _dirs(args, write=True)
    request = launcher.LaunchRequest(args.space, overrides, results_dir, cache_dir,
                                     args.n_trials)
    if args.dry_run:   # every check of a launch, nothing written
        ld = studyfile.load(args.space, overrides)
        launcher.preflight(ld, results_dir)
        _print_dry_run(ld, results_dir, cache_dir, args.n_trials or ld.sf.study.n_trials)
        return 0
    log = lambda m: print(m, flush=True)  # noqa: E731
    launcher.launch(request, detach=args.detach, log=log)
    return 0


def _opened(args: argparse.Namespace) -> tuple[launcher.Opened, str, str]:
    results_dir, cache_dir = _dirs(args)
    ld = studyfile.load(args.space, args.overrides)
    return launcher.open_study(ld, results_dir), results_dir, cache_dir


def cmd_status(args: argparse.Namespace) -> int:
    _positive(n_trials=args.n_trials)
    if args.stale_after is not None and not args.stale_after > 0:
        raise StudyError(f"--stale-after must be > 0, got {args.stale_after}")
    opened, results_dir, cache_dir = _opened(args)
    if args.watch is None:
        print("\n".join(status_lines(opened, cache_dir, args)))
        return 0
    if not args.watch > 0:
        raise StudyError(f"--watch must be > 0 seconds, got {args.watch}")
    tty = sys.stdout.isatty()
    try:
        while True:
            lines = status_lines(opened, cache_dir, args)
            stamp = (f"every {args.watch:g}s, Ctrl-C stops; {time.strftime('%H:%M:%S')}")
            if tty:   # home, the page, then clear what an older, longer page left below it
                sys.stdout.write("\x1b[H" + "\n".join(f"{ln}\x1b[K" for ln in [stamp, *lines])
                                 + "\n\x1b[J")
            else:
                sys.stdout.write("\n".join(["", f"--- {stamp}", *lines]) + "\n")
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        print()
        return 0


def status_lines(opened: launcher.Opened, cache_dir: str, args: argparse.Namespace
                 ) -> list[str]:
    """What `study status` prints, as lines (--watch redraws them in place)."""
    ld, st = opened.ld, opened.study
    out: list[str] = []
    trials = st.get_trials(deepcopy=False)
    c = launcher.count(st, trials)
    target = args.n_trials or st.user_attrs.get("n_trials") or ld.sf.study.n_trials
    out.append(f"study '{ld.sf.study.name}' ({storage.masked(opened.url)})")
    out.append(c.line(target))
    halted = st.user_attrs.get("halted")
    if halted:
        out.append(f"halted: {halted['reason']}; `study launch` resumes it")
    out += launcher.failure_lines(trials)
    if c.best_trial is not None:
        out.append(f"best trial {c.best_trial}: value {c.best:.4f}; parameters:")
        for k, v in st.best_trial.user_attrs.get("values", {}).items():
            out.append(f"  {k} = {v}")
    elif len(st.directions) > 1:
        out.append(f"Pareto front: trials {[t.number for t in st.best_trials]}")
    driver = st.user_attrs.get("driver")
    if driver:
        out.append(f"launcher: {driver.get('kind')} {driver.get('job_id') or driver.get('pid')}")
    df = results.load(opened.study_dir)
    summary = results.compute_summary(df, max(target - c.done, 0))
    running = [t for t in trials if t.state.name == "RUNNING"]
    if running:
        # one sacct call for every job in flight, never one per job
        ids = [t.user_attrs.get("job", {}).get("job_id") for t in running]
        states = sacct_states([i for i in ids if i]) if any(ids) else {}
        now = time.time()
        stale = 0
        out.append("in flight:")
        for t in running:
            job = t.user_attrs.get("job", {})
            where = job.get("job_id") or job.get("pid") or "-"
            state = states.get(str(job.get("job_id")), "")
            gpu = (t.user_attrs.get("worker") or {}).get("gpu") or job.get("gpu")
            out.append(f"  trial {t.number} (attempt {t.user_attrs.get('attempt', 1)}): "
                       f"{job.get('kind', '?')} {where} {state}".rstrip()
                       + (f", gpu {gpu}" if gpu else ""))
            hb = progress.read_heartbeat(progress.heartbeat_path(opened.study_dir, t.number))
            started = (hb or {}).get("started_at") or (t.user_attrs.get("worker") or {}).get(
                "started")
            eta = (summary["mean_trial_s"] - (now - float(started))
                   if summary["mean_trial_s"] is not None and started else None)
            if eta is not None and eta <= 0:
                eta = None   # past the mean trial time: no honest guess
            text, is_stale = progress.describe_heartbeat(hb, now, args.stale_after, eta)
            stale += is_stale
            out.append(f"    {text}")
        if stale:
            out.append(f"{stale} trial(s) with a stale heartbeat: `study launch` again "
                       "reconciles them (a dead worker's trial is retried)")
    out.append(f"Parquet: {df.trial.nunique() if len(df) else 0} trial files")
    out += _compute_lines(summary, ld.sf.executor.parallel)
    out.append(f"stage cache {cache_dir}: " + ", ".join(
        f"{k} {v}" for k, v in StageCache(cache_dir).summary().items()))
    return out


def _compute_lines(summary: Mapping[str, Any], parallel: int) -> list[str]:
    """Device-hours (results.compute_summary): a trial holds one device for its wall time."""
    stages = summary["stages"]
    if not stages and not summary["spent_s"]:
        return []
    h = 3600.0
    out = [f"compute: {summary['spent_s'] / h:.3f} device-hours spent by "
           f"{summary['trials_timed']} trials; stages built {summary['built_s'] / h:.3f} h, "
           f"saved by the cache {summary['saved_s'] / h:.3f} h"]
    for name, st in stages.items():
        out.append(f"  {name:<17} built {st['built']} ({st['built_s'] / h:.3f} h), "
                   f"cache hits {st['hits']} (saved {st['saved_s'] / h:.3f} h)")
    mean, remaining = summary["mean_trial_s"], summary["remaining"]
    if mean is not None and remaining:
        proj = summary["projected_s"]
        out.append(f"projected: {remaining} trials to go x {progress.fmt_duration(mean)} "
                   f"(mean trial, shared stages left out) = {proj / h:.3f} device-hours, "
                   f"~{progress.fmt_duration(proj / max(parallel, 1))} at parallel {parallel}")
    return out


def cmd_cancel(args: argparse.Namespace) -> int:
    results_dir, cache_dir = _dirs(args)
    ld = studyfile.load(args.space, args.overrides)
    n = launcher.cancel(ld, results_dir, cache_dir, log=lambda m: print(m, flush=True))
    print(f"study '{ld.sf.study.name}': cancelled {n} trials in flight and its launcher; "
          f"results so far stay in {storage.study_dir(results_dir, ld.sf.study.name)}")
    return 0


def check_listen(host: str, port: int) -> None:
    """What the dashboard's server will bind, tried before it starts: a port outside 1..65535,
    a host that does not resolve or is not this machine's, a port taken; each one paragraph
    naming the flag instead of a traceback from deep inside the server."""
    if not 1 <= port <= 65535:
        raise StudyError(f"--port must be in 1..65535, got {port}")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as e:
        raise StudyError(f"--host {host!r} is not an address or a name this machine resolves "
                         f"({getattr(e, 'strerror', None) or e}); give an address of this "
                         "machine, e.g. 127.0.0.1 (the default, reached through an SSH "
                         "tunnel)") from None
    # what the server does (wsgiref under bottle): IPv6 when the host has a ':', and
    # SO_REUSEADDR, so a port whose last connections linger in TIME_WAIT is not called taken
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                       socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise StudyError(_bind_error(host, port, e)) from None


def _bind_error(host: str, port: int, e: OSError) -> str:
    if e.errno == errno.EADDRINUSE:
        return (f"--port {port} is already in use on {host} (another dashboard or server); "
                f"stop it or pick another port, e.g. --port {port + 1 if port < 65535 else 8080}")
    if e.errno == errno.EACCES:
        return f"--port {port}: not allowed to listen there (ports below 1024 need root)"
    return (f"--host {host!r} --port {port}: cannot listen there ({e.strerror or e}); --host "
            "must be an address of this machine, e.g. 127.0.0.1 (the default)")


def cmd_dashboard(args: argparse.Namespace) -> int:
    check_listen(args.host, args.port)
    opened, _, _ = _opened(args)   # a clear error before the server starts
    print(f"optuna-dashboard for '{opened.ld.sf.study.name}' at http://{args.host}:{args.port}/ "
          f"(storage {storage.masked(opened.url)}); Ctrl-C stops it", flush=True)
    try:
        optuna_dashboard.run_server(opened.store, host=args.host, port=args.port)
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise StudyError(_bind_error(args.host, args.port, e)) from None   # taken since
        raise
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    _dirs(args)
    report.build_report(args.space, args.overrides, Path(args.results).resolve(), png=args.png,
                        push=not args.no_push)
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    """For a machine with internet (a login node): compute nodes never download."""
    check_dir("--root", args.root, write=True)
    # torchvision's downloaders, only here: this runs on a login node with internet
    from torchvision import datasets
    from torchvision.datasets.utils import download_and_extract_archive

    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    if args.dataset == "cifar10":
        datasets.CIFAR10(str(root), download=True)
    elif args.dataset == "cifar100":
        datasets.CIFAR100(str(root), download=True)
    else:
        download_and_extract_archive(data.TINYIMAGENET_URL, str(root))
    print(f"{args.dataset} is under {root}; point pipeline.data.root at it")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    _positive(steps=args.steps, n_train=args.n_train, batch_size=args.batch_size,
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
    worker.use_allotted_cpus()
    try:
        return bench.main(args)
    except ValueError as e:
        raise StudyError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="study", description="Hyperparameter and ablation harness for FusionDistill.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run one pipeline at the space's defaults, no Optuna",
                       description="Run one pipeline (all methods asked for) and print the "
                       "paper-style table for validation and test.")
    _add_space(p)
    _add_verbosity(p)
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
    _add_verbosity(p)
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("status", help="trials by state, best so far, where each running trial "
                       "is (from its heartbeat), compute spent and projected, cache")
    _add_space(p)
    p.add_argument("--n-trials", type=int, default=None, metavar="N")
    p.add_argument("--watch", type=float, nargs="?", const=5.0, default=None, metavar="SECONDS",
                   help="redraw every SECONDS (default 5) until Ctrl-C")
    p.add_argument("--stale-after", type=float, default=None, metavar="SECONDS",
                   help="call a heartbeat older than this stale (default: "
                   f"{progress.STALE_BEATS} missed beats of the trial's own interval)")
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
    except StudyError as e:
        print(f"study: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("study: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
