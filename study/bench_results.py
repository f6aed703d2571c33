"""`study bench --stages results`: how reading a study's results scales with its trials.

It makes a synthetic study of the smoke study's shape (its space, its seven methods, its level
grid: ~290 evaluation rows and ~30 learning-curve records a trial; a few trials pruned or
failed, trial 0 the baseline) with N trials: every trial's Parquet files through the real
writer (`results.write_trial`, `results.write_curves`) and an Optuna journal holding the trials
with the attributes a worker tells (values, result_id, wall_s, stages, provenance). Then it
times, each in its own process, `study status`, `study report --no-push` and a whole
`pandas.read_parquet("results/<study>/trials")`, and records the median wall time and peak
resident memory (GNU time's %M) over the repeats. A process past the memory or time cap
is killed and recorded as such. No targets here: docs/benchmarks.md has them.

No torch: the generator runs where the results are.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna

from study import degradations, results, storage, studyfile

__all__ = ["MEASURED", "generate", "measure", "run"]

# What is timed, each its own process: `study status`, `study report` (no dashboard push), and
# a whole read of the trials' rows as results/README.md shows it.
MEASURED = ("status", "report", "read_parquet")
# Past these a run is killed and recorded as killed: the machine is shared (2 cores, 23 GB).
MEMORY_CAP_BYTES = 6 * 2**30
TIME_CAP_S = 180.0
TIME = "/usr/bin/time"   # GNU time: the peak RSS (%M) of the command it runs
# One in PRUNED_EVERY trials is pruned, one in FAILED_EVERY fails (no rows, as the launcher
# writes a FAIL): a real study has both, and both take the paths without evaluation rows.
PRUNED_EVERY, FAILED_EVERY = 7, 23
# Learning-curve records per stage and trial: the smoke preset trains its stages 2 to 5 epochs.
CURVE_EPOCHS = 3
Log = Callable[[str], None]


def _overrides(name: str) -> list[str]:
    return [f"study.name={name}", "study.pruner=none", "study.sampler=random"]


def _evaluation_rows(ld: studyfile.LoadedStudy, rng: random.Random) -> list[dict[str, Any]]:
    """One trial's evaluation rows in the smoke study's shape: every method on the validation
    plan (level step 25) and the test plan (level step 10), clean first."""
    pipe = ld.sf.pipeline
    out = []
    for split, step in (("val", pipe.eval.val_level_step), ("test", pipe.eval.test_level_step)):
        plan = [("clean", 0)] + [(d, lv) for d in pipe.degradations
                                 for lv in degradations.get(d).levels(step)]
        for method in pipe.methods:
            out += [{"model": method, "split": split, "degradation": d, "level": lv,
                     "level_step": step, "accuracy": rng.uniform(0.1, 0.9), "n_images": 300}
                    for d, lv in plan]
    return out


def generate(root: Path, n_trials: int, *, seed: int = 0, log: Log = print) -> tuple[str, Path]:
    """A synthetic smoke-shaped study of `n_trials` trials under root/results; returns its
    name and results folder."""
    name = f"bench-results-{n_trials}"
    ld = studyfile.load("smoke", _overrides(name))
    results_dir = root / "results"
    url = storage.storage_url(ld.sf, results_dir)
    sdir = storage.study_dir(results_dir, name)
    sdir.mkdir(parents=True, exist_ok=True)
    st = storage.load_or_create(ld.sf, storage.open_storage(url),
                                optuna.samplers.RandomSampler(seed=seed),
                                optuna.pruners.NopPruner(), print_=False)
    st.set_user_attr("n_trials", n_trials)
    schema = results.Schema.of(ld.sf.study.objectives, ld.space.params)
    # the parameters as the space samples them, from an in-memory study (asks cost ~1 ms)
    sampler = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    rng = random.Random(seed)
    config = ld.sf.pipeline.model_dump()
    stage_keys = {s: f"{s}-{seed:04d}" for s in results.STAGES}
    frozen = []
    t0 = time.perf_counter()
    for n in range(n_trials):
        asked = sampler.ask()
        values = ld.space.sample(asked)
        state = ("FAIL" if n % FAILED_EVERY == FAILED_EVERY - 1 else
                 "PRUNED" if n % PRUNED_EVERY == PRUNED_EVERY - 1 else "COMPLETE")
        rows = _evaluation_rows(ld, rng) if state == "COMPLETE" else []
        objective = (results.metric_value(rows, "fusiondistill", "val.avg") if rows else None)
        shared_hit = n > 0   # trial 0 builds base and the experts, every later one finds them
        stages = {s: {"key": stage_keys[s], "hit": shared_hit if s in results.SHARED_STAGES
                      else False, "build_s": rng.uniform(1, 20)} for s in results.STAGES
                  } if state != "FAIL" else {}
        wall_s = rng.uniform(20, 60) if state != "FAIL" else None
        fail = ({"error": "RuntimeError: synthetic", "fail_kind": "code",
                 "fail_reason": "RuntimeError: synthetic"} if state == "FAIL" else {})
        result_id = results.new_result_id()
        extra = {"wall_s": wall_s, "device": "cpu", "amp": "none", "protocol": "holdout",
                 "config_json": config, **fail, **results.provenance()}
        df = results.trial_frame(
            study_name=name, trial=n, attempt=1, state=state, seed_rows=[(0, rows)],
            params=values, param_columns=schema.params, stages=stages,
            objectives={schema.objectives[0]: objective}, extra=extra)
        results.write_trial(sdir, n, df, result_id=result_id)
        if state != "FAIL":
            results.write_curves(sdir, n, results.curve_frame(
                study_name=name, trial=n, state=state, histories=[
                    (0, stage, shared_hit and stage in results.SHARED_STAGES,
                     [{"epoch": e, "loss": rng.uniform(0, 2), "val": rng.uniform(0, 1),
                       "lr": 0.01, "images_per_s": 2500.0, "wall_s": 1.0}
                      for e in range(1, CURVE_EPOCHS + 1)])
                    for stage in results.STAGES]))
        attrs: dict[str, Any] = {"values": values, "attempt": 1, "result_id": result_id,
                                 "provenance": results.provenance(), **fail}
        if state != "FAIL":
            attrs.update(stages=stages, wall_s=wall_s)
        if n == 0:
            attrs.update(baseline=True, baseline_values=values)
        frozen.append(optuna.trial.create_trial(
            state=optuna.trial.TrialState[state], params=asked.params,
            distributions=asked.distributions, user_attrs=attrs,
            value=objective if state == "COMPLETE" else None,
            intermediate_values={1: rng.uniform(0, 1)} if state == "PRUNED" else None))
        if (n + 1) % 1000 == 0:
            log(f"    {n + 1}/{n_trials} trials written ({time.perf_counter() - t0:.0f}s)")
    st.add_trials(frozen)   # one journal append per trial, in one pass
    results.compact_summary(sdir)   # as the launcher leaves it: every COMPACT_EVERY trials
    return name, results_dir


def _run_capped(argv: Sequence[str], env: dict[str, str]) -> dict[str, Any]:
    """Wall seconds and peak RSS of one process, killed past MEMORY_CAP_BYTES or TIME_CAP_S.
    It runs under /usr/bin/time, whose own child's peak is the command's alone: a child of
    this process would count this process's memory too (Linux keeps a process's peak RSS
    across fork and exec)."""
    t0 = time.perf_counter()
    with tempfile.NamedTemporaryFile(suffix=".peak") as peak, \
            tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([TIME, "-q", "-f", "%M", "-o", peak.name, *argv], env=env,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        killed, polled = None, 0
        while proc.poll() is None:
            rss = _rss_tree(proc.pid)
            polled = max(polled, rss)
            if rss > MEMORY_CAP_BYTES or time.perf_counter() - t0 > TIME_CAP_S:
                killed = (f"killed past {MEMORY_CAP_BYTES / 2**30:.0f} GiB"
                          if rss > MEMORY_CAP_BYTES else f"killed past {TIME_CAP_S:.0f} s")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        err.seek(0)
        text = err.read().decode(errors="replace")
        reported = Path(peak.name).read_text().strip().splitlines()
    out: dict[str, Any] = {"wall_s": wall, "peak_rss_bytes": (
        int(reported[-1]) * 1024 if not killed and reported else polled)}
    if killed:
        out["killed"] = killed
    elif proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {text[-2000:]}")
    return out


def _rss_tree(pid: int) -> int:
    """The resident memory of a process and its descendants, from /proc."""
    total = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total = int(line.split()[1]) * 1024
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        return total
    return total + sum(_rss_tree(c) for c in children)


def measure(name: str, results_dir: Path, what: str) -> dict[str, Any]:
    """One timed process of `what` (one of MEASURED) on the generated study."""
    cli = [sys.executable, "-m", "study.cli"]
    where = ["--space", "smoke", "--results", str(results_dir),
             *[x for o in _overrides(name) for x in ("--set", o)]]
    argv = {"status": [*cli, "status", *where],
            "report": [*cli, "report", "--no-push", *where],
            "read_parquet": [sys.executable, "-c", "import sys, pandas; "
                             "pandas.read_parquet(sys.argv[1])",
                             str(results.trials_dir(results_dir / name))]}[what]
    return _run_capped(argv, {**os.environ, "PYTHONWARNINGS": "ignore"})


def run(trial_counts: Sequence[int], repeats: int, workdir: Path, *,
        log: Log = print) -> dict[str, Any]:
    """For each N of `trial_counts`: generate, then each of MEASURED `repeats` times; the
    record has every run and the median of each (a killed run counts as killed)."""
    out: dict[str, Any] = {}
    for n in trial_counts:
        log(f"  results: generating a smoke-shaped study of {n} trials")
        t0 = time.perf_counter()
        name, results_dir = generate(workdir / f"n{n}", n, log=log)
        rec: dict[str, Any] = {"generate_s": time.perf_counter() - t0}
        for what in MEASURED:
            runs = []
            for _ in range(repeats):
                runs.append(measure(name, results_dir, what))
                if "killed" in runs[-1]:
                    break   # a repeat would be killed the same way
            killed = next((r["killed"] for r in runs if "killed" in r), None)
            rec[what] = {"runs": runs, "killed": killed,
                         "wall_s": statistics.median(r["wall_s"] for r in runs),
                         "peak_rss_bytes": statistics.median(r["peak_rss_bytes"]
                                                             for r in runs)}
            log(f"  results {n:>6} trials  {what:<12} " + format_measure(rec[what]))
        out[str(n)] = rec
    return out


def format_measure(m: dict[str, Any]) -> str:
    text = f"{m['wall_s']:6.1f} s  {m['peak_rss_bytes'] / 2**30:5.2f} GiB peak"
    return text + (f"  ({m['killed']})" if m.get("killed") else "")


def format_table(record: dict[str, Any]) -> str:
    lines = [f"{'trials':>7} {'what':<13} {'median s':>9} {'peak GiB':>8}  runs"]
    for n, rec in record.items():
        for what in MEASURED:
            m = rec[what]
            lines.append(f"{n:>7} {what:<13} {m['wall_s']:9.1f} "
                         f"{m['peak_rss_bytes'] / 2**30:8.2f}  {len(m['runs'])}"
                         + (f" ({m['killed']})" if m.get("killed") else ""))
    return "\n".join(lines)


if __name__ == "__main__":   # python -m study.bench_results N [REPEATS [WORKDIR]]
    args = sys.argv[1:]
    rec = run([int(args[0])], int(args[1]) if len(args) > 1 else 1,
              Path(args[2] if len(args) > 2 else "/tmp/bench-results"))
    print(format_table(rec))
    print(json.dumps(rec))
