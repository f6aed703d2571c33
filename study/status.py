"""Where a study stands, in lines for people: trials by state, the best so far, failures by
cause, each trial in flight (its executor's description and its heartbeat), compute spent and
projected, the stage cache. `study status` prints them (`--watch` redraws them in place); the
launcher logs the one-line count.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from study import conclusions, failures, progress, results, storage
from study.cache import StageCache
from study.executors import make_executor

__all__ = ["CONFIRM_ATTR", "Counts", "Tally", "count", "is_confirmation", "search_trials",
           "status_lines", "summary_lines", "told_summary", "watch"]

# The user attribute that tags a `study confirm` re-run: {"of": trial, "seed": seed}.
CONFIRM_ATTR = "confirm"


def is_confirmation(t: FrozenTrial) -> bool:
    return CONFIRM_ATTR in t.user_attrs


def search_trials(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials of the search itself: `study confirm`'s re-runs left out (the sampler did
    not pick them, and one lucky seed of a re-run is not a new best of the search)."""
    return [t for t in trials if not is_confirmation(t)]


def best_of_search(study: optuna.Study, trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """The best completed trial of the search (single objective), confirmation left out."""
    done = [t for t in search_trials(trials) if t.state == TrialState.COMPLETE]
    if not done or len(study.directions) != 1:
        return None
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    return pick(done, key=lambda t: float(t.values[0]))


@dataclass
class Counts:
    """A study's trials by state; a FAIL that was retried counts as `retried`, not failed."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    retried: int = 0
    best: float | None = None
    best_trial: int | None = None

    @property
    def done(self) -> int:
        return self.complete + self.pruned + self.failed

    def line(self, n_trials: int) -> str:
        best = (f", best {self.best:.4f} (trial {self.best_trial})" if self.best is not None
                else "")
        retried = f", {self.retried} retried" if self.retried else ""
        target = max(n_trials, self.done)   # a study topped up past its file's n_trials
        return (f"[{time.strftime('%H:%M:%S')}] {self.done}/{target} done (complete "
                f"{self.complete}, pruned {self.pruned}, failed {self.failed}{retried}), "
                f"running {self.running}{best}")


class Tally:
    """A study's trials by state, counted trial by trial as they finish: a finished trial never
    changes again, so the launcher's poll counts each once and then reads only the trials in
    flight (its poll once listed all 10,000 trials of a large study several times a second)."""

    def __init__(self, study: optuna.Study):
        self.single = len(study.directions) == 1
        self.maximize = self.single and study.direction == optuna.study.StudyDirection.MAXIMIZE
        self.counts = Counts()
        self.numbers: set[int] = set()

    def add(self, t: FrozenTrial) -> bool:
        """Count a finished trial once; False for one counted before or not finished."""
        if t.number in self.numbers or not t.state.is_finished():
            return False
        self.numbers.add(t.number)
        c = self.counts
        if t.state == TrialState.FAIL and t.user_attrs.get("retried"):
            c.retried += 1
        elif t.state == TrialState.COMPLETE:
            c.complete += 1
        elif t.state == TrialState.PRUNED:
            c.pruned += 1
        elif t.state == TrialState.FAIL:
            c.failed += 1
        if (self.single and t.state == TrialState.COMPLETE and not is_confirmation(t)
                and t.values is not None):
            v = float(t.values[0])
            # as best_of_search: the better value, the earlier trial on a tie
            if (c.best is None or (v > c.best if self.maximize else v < c.best)
                    or (v == c.best and t.number < (c.best_trial or 0))):
                c.best, c.best_trial = v, t.number
        return True

    def now(self, running: int) -> Counts:
        return dataclasses.replace(self.counts, running=running)


def count(study: optuna.Study, trials: list[FrozenTrial]) -> Counts:
    tally = Tally(study)
    for t in trials:
        tally.add(t)
    # WAITING = an enqueued retry, not yet asked
    return tally.now(sum(t.state == TrialState.RUNNING for t in trials))


def status_lines(stored: storage.StoredStudy, cache_dir: str, *, n_trials: int | None = None,
                 stale_after: float | None = None) -> list[str]:
    """What `study status` prints, as lines (--watch redraws them in place)."""
    ld, st = stored.ld, stored.study
    out: list[str] = []
    trials = st.get_trials(deepcopy=False)
    c = count(st, trials)
    target = n_trials or st.user_attrs.get("n_trials") or ld.sf.study.n_trials
    out.append(f"study '{ld.sf.study.name}' ({storage.masked(stored.url)})")
    out.append(c.line(target))
    halted = st.user_attrs.get("halted")
    if halted:
        out.append(f"halted: {halted['reason']}; `study launch` resumes it")
    out += failures.failure_lines([(t.number, t.user_attrs) for t in trials
                                   if t.state == TrialState.FAIL])
    best = best_of_search(st, trials)
    if best is not None:
        out.append(f"best trial {best.number}: value {best.values[0]:.4f}; parameters:")
        for k, v in best.user_attrs.get("values", {}).items():
            out.append(f"  {k} = {v}")
    elif len(st.directions) > 1:
        out.append(f"Pareto front: trials {[t.number for t in st.best_trials]}")
    driver = st.user_attrs.get("driver")
    running = [t for t in trials if t.state == TrialState.RUNNING]
    handles = [driver] if driver else []
    handles += [t.user_attrs.get("job") or {} for t in running]
    # one status query for the driver and every job in flight, never one per job
    where = make_executor(ld.sf, stored.study_dir).describe(handles) if handles else []
    if driver:
        out.append(f"launcher: {where.pop(0)}")
    summary = results.compute_summary(told_summary(trials), max(target - c.done, 0))
    if running:
        out += _in_flight(stored, running, where, summary, stale_after)
    files = sum(1 for _ in results.summary_dir(stored.study_dir).glob("trial-*.parquet"))
    out.append(f"Parquet: {files} trial files")
    out += _compute_lines(summary, ld.sf.executor.parallel)
    out.append(f"stage cache {cache_dir}: " + ", ".join(
        f"{k} {v}" for k, v in StageCache(cache_dir).summary().items()))
    return out


def told_summary(trials: Sequence[FrozenTrial]) -> pd.DataFrame:
    """What compute_summary reads, from what each worker told its trial (user attributes
    `wall_s` and `stages`, the numbers its Parquet summary holds too): status reads no Parquet,
    which at 1,000 trials took it 32-39 s and 3.3 GB."""
    told = [t for t in trials if t.state.is_finished() and "wall_s" in t.user_attrs]
    cols: dict[str, list[Any]] = {"trial": [t.number for t in told],
                                  "wall_s": [t.user_attrs["wall_s"] for t in told]}
    for st in results.STAGES:
        info = [(t.user_attrs.get("stages") or {}).get(st) or {} for t in told]
        cols[f"hit_{st}"] = [i.get("hit") for i in info]
        cols[f"build_s_{st}"] = [i.get("build_s") for i in info]
    return pd.DataFrame({c: pd.array(v, dtype="boolean" if c.startswith("hit_") else
                                     "int64" if c == "trial" else "Float64")
                         for c, v in cols.items()})


def _in_flight(stored: storage.StoredStudy, running: list[FrozenTrial], where: list[str],
               summary: Mapping[str, Any], stale_after: float | None) -> list[str]:
    """Each running trial: where its executor says it runs, then its heartbeat."""
    now = time.time()
    stale = 0
    out = ["in flight:"]
    for t, place in zip(running, where, strict=True):
        registered = t.user_attrs.get("worker") or {}
        gpu = registered.get("gpu")
        out.append(f"  trial {t.number} (attempt {t.user_attrs.get('attempt', 1)}): {place}"
                   + (f", gpu {gpu}" if gpu and "gpu" not in place else ""))
        hb = progress.read_heartbeat(progress.heartbeat_path(stored.study_dir, t.number))
        started = (hb or {}).get("started_at") or registered.get("started")
        eta = (summary["mean_trial_s"] - (now - float(started))
               if summary["mean_trial_s"] is not None and started else None)
        if eta is not None and eta <= 0:
            eta = None   # past the mean trial time: no honest guess
        text, is_stale = progress.describe_heartbeat(hb, now, stale_after, eta)
        stale += is_stale
        out.append(f"    {text}")
    if stale:
        out.append(f"{stale} trial(s) with a stale heartbeat: `study launch` again "
                   "reconciles them (a dead worker's trial is retried)")
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


def summary_lines(stored: storage.StoredStudy, study_file: str) -> list[str]:
    """How a launch ended, for its last lines: trials by outcome (failures by cause), best
    against the baseline with its uncertainty (conclusions.compare) on the objective's metric
    and on test, and where the results and the report are."""
    ld, st = stored.ld, stored.study
    trials = st.get_trials(deepcopy=False)
    c = count(st, trials)
    kinds: dict[str, int] = {}
    for t in trials:
        if t.state == TrialState.FAIL and not t.user_attrs.get("retried"):
            kind = t.user_attrs.get("fail_kind") or "unknown"
            kinds[kind] = kinds.get(kind, 0) + 1
    why = f" ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})" if kinds else ""
    out = [f"study '{ld.sf.study.name}' ended with {c.done} finished trials: {c.complete} "
           f"complete, {c.pruned} pruned, {c.failed} failed{why}"
           + (f", {c.retried} retried" if c.retried else "")]
    out += _best_against_baseline(stored, trials)
    out.append(f"results: {stored.study_dir}/summary (a row per trial) and "
               f"{stored.study_dir}/trials (its rows); the report: `study report --space "
               f"{study_file}` writes {stored.study_dir}/report.html")
    return out


def _best_against_baseline(stored: storage.StoredStudy, trials: list[FrozenTrial]
                           ) -> list[str]:
    st, objectives = stored.study, stored.ld.sf.study.objectives
    if len(objectives) > 1:
        return [f"Pareto front: trials {[t.number for t in st.best_trials]}"]
    done = [t for t in search_trials(trials) if t.state == TrialState.COMPLETE]
    best = best_of_search(st, trials)
    if best is None:
        return []
    baseline = next((t for t in done if t.user_attrs.get("baseline")), None)
    if baseline is None:
        return [f"best trial {best.number}: {objectives[0].method} {objectives[0].metric} "
                f"{best.value:.4f}; no completed baseline trial to compare it with"]
    if baseline.number == best.number:
        return [f"the baseline (trial {best.number}) is the best trial: the search found "
                "nothing better"]
    rows = {}
    for t in (best, baseline):
        df = results.read_trial(stored.study_dir, t.number)
        rows[t.number] = ([] if df is None else
                          df.dropna(subset=["accuracy"]).to_dict("records"))
    o = objectives[0]
    metrics = [o.metric] + ([f"test.{o.metric.partition('.')[2]}"]
                            if o.metric.startswith("val.") else [])
    out = [f"best trial {best.number} against the baseline (trial {baseline.number}):"]
    for metric in metrics:
        verdict = conclusions.compare(rows[best.number], rows[baseline.number], o.method,
                                      metric)
        out.append("  " + verdict.sentence())
    return out


def watch(stored: storage.StoredStudy, cache_dir: str, every_s: float, *,
          n_trials: int | None = None, stale_after: float | None = None) -> None:
    """Redraw the status every `every_s` seconds until Ctrl-C: in place on a terminal, as
    separated pages in a log."""
    tty = sys.stdout.isatty()
    try:
        while True:
            lines = status_lines(stored, cache_dir, n_trials=n_trials, stale_after=stale_after)
            stamp = f"every {every_s:g}s, Ctrl-C stops; {time.strftime('%H:%M:%S')}"
            if tty:   # home, the page, then clear what an older, longer page left below it
                sys.stdout.write("\x1b[H" + "\n".join(f"{ln}\x1b[K" for ln in [stamp, *lines])
                                 + "\n\x1b[J")
            else:
                sys.stdout.write("\n".join(["", f"--- {stamp}", *lines]) + "\n")
            sys.stdout.flush()
            time.sleep(every_s)
    except KeyboardInterrupt:
        print()
