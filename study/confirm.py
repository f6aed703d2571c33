"""`study confirm`: the protocol for claiming that a searched configuration beats the baseline.

A search picks its best trials on validation, one seed each, so the best one's lead over the
baseline mixes the configuration's merit with the luck of its seed and of the images it was
picked on (the winner's curse). The confirmation:

1. takes the top K completed trials by the objective (on validation) and the baseline;
2. re-runs each configuration with R new seeds, seeds no trial of the study used, as ordinary
   trials of the same study (tagged `confirm`, on any executor, sharing the stage cache: the
   K + 1 configurations of a seed share its base and experts), never pruned;
3. picks the configuration with the best mean validation over the new seeds (test plays no
   part in the choice), and reports it against the baseline on test, paired seed by seed
   (replicate r of both has the same seed: data split, initialisations, degraded copies),
   with a 95% t-interval. The claim stands when that interval lies above zero.

The plan (which trials, which seeds) is kept in the study (user attribute `confirm`), so
`study confirm` again resumes it rather than drawing new seeds. This module decides and
summarizes, without torch (the report shows the confirmation); study/commands/confirm.py
runs the re-runs through the launcher.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from scipy import stats

from study import conclusions, results, status, studyfile
from study.errors import StudyError

__all__ = ["SEEDS", "TOP_K", "ConfigResult", "Confirmation", "enqueue", "plan", "summarize"]

TOP_K = 3    # configurations besides the baseline
SEEDS = 3    # new seeds each: the fewest with a t-interval (2 degrees of freedom, t = 4.30)
ATTR = status.CONFIRM_ATTR
is_confirmation = status.is_confirmation
search_trials = status.search_trials


def plan(st: optuna.Study, ld: studyfile.LoadedStudy, top_k: int, seeds: int
         ) -> dict[str, Any]:
    """Which trials to confirm and with which seeds: the study's stored plan when there is one
    (a second `study confirm` resumes it), else a new one, stored."""
    stored = st.user_attrs.get(ATTR)
    if stored:
        return dict(stored)
    trials = search_trials(st.get_trials(deepcopy=False))
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    baseline = next((t for t in done if t.user_attrs.get("baseline")), None)
    if baseline is None:
        raise StudyError(f"{ld.source}: study '{ld.sf.study.name}' has no completed baseline "
                         "trial (trial 0, the study file's own pipeline): the confirmation "
                         "compares against it. Launch the study (study.baseline: true) first")
    sign = 1 if ld.sf.study.objectives[0].direction == "maximize" else -1
    ranked = sorted((t for t in done if t.number != baseline.number),
                    key=lambda t: -sign * float(t.values[0]))
    if not ranked:
        raise StudyError(f"{ld.source}: study '{ld.sf.study.name}' has no completed trial "
                         "besides the baseline: nothing to confirm yet")
    # new seeds: above every pipeline seed a trial ran (its own and its replicates')
    used = [int(t.user_attrs.get("values", {}).get("seed", ld.sf.pipeline.seed))
            + ld.sf.study.replicates - 1 for t in trials]
    first = max(used, default=ld.sf.pipeline.seed) + 1
    chosen = {"baseline": baseline.number, "candidates": [t.number for t in ranked[:top_k]],
              "seeds": list(range(first, first + seeds))}
    st.set_user_attr(ATTR, chosen)
    return chosen


def enqueue(st: optuna.Study, chosen: Mapping[str, Any]) -> int:
    """Enqueue the (configuration, seed) re-runs not enqueued yet; returns how many of the
    plan's re-runs have not finished."""
    trials = st.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    have = {(t.user_attrs[ATTR]["of"], t.user_attrs[ATTR]["seed"]) for t in trials
            if is_confirmation(t) and not t.user_attrs.get("retried")}
    finished = {(t.user_attrs[ATTR]["of"], t.user_attrs[ATTR]["seed"]) for t in trials
                if is_confirmation(t) and t.state.is_finished()
                and not t.user_attrs.get("retried")}
    pending = 0
    for number in [chosen["baseline"], *chosen["candidates"]]:
        source = by_number[number]
        for seed in chosen["seeds"]:
            if (number, seed) not in finished:
                pending += 1
            if (number, seed) in have:
                continue
            attrs: dict[str, Any] = {ATTR: {"of": number, "seed": seed}, "attempt": 1}
            if source.user_attrs.get("baseline"):   # the file's values exactly, as trial 0
                # a baseline enqueued by release 0.3 kept only its sampled values
                attrs |= {"baseline": True,
                          "baseline_values": source.user_attrs.get(
                              "baseline_values", source.user_attrs.get("values", {}))}
            st.enqueue_trial(source.params, user_attrs=attrs)
    return pending


# ---------------------------------------------------------------- the summary
@dataclass(frozen=True)
class ConfigResult:
    """One configuration over the confirmation's seeds: points per seed on val and test."""

    trial: int                        # the search trial whose configuration it is
    role: str                         # baseline | candidate
    val: dict[int, float]             # seed -> the objective's metric on validation (points)
    test: dict[int, float]            # seed -> the same aggregate on test (points)
    rows: dict[int, list[dict[str, Any]]] = field(repr=False)   # seed -> evaluation rows

    def interval(self, split: str) -> tuple[float, float]:
        """Mean and 95% t half-width over the seeds (NaN with fewer than 2)."""
        xs = list((self.val if split == "val" else self.test).values())
        return _mean_half(xs)


@dataclass(frozen=True)
class Confirmation:
    metric: str                       # the objective's metric (val.<aggregate>)
    test_metric: str
    method: str
    seeds: list[int]
    configs: list[ConfigResult]
    chosen: int | None                # the candidate with the best mean validation
    verdict: conclusions.Verdict | None   # chosen minus baseline on test, paired by seed

    @property
    def claim(self) -> bool:
        """The chosen configuration beats the baseline on test beyond the interval."""
        return (self.verdict is not None and self.verdict.how == "t"
                and self.verdict.diff - self.verdict.half > 0)

    def lines(self) -> list[str]:
        out = [f"confirmation over seeds {self.seeds}: {self.method} {self.metric} (picks) and "
               f"{self.test_metric} (reports), mean +- 95% half-width over the seeds, points"]
        out.append(f"  {'configuration':<22} {'seeds':>5} {self.metric:>16} "
                   f"{self.test_metric:>16}")
        for c in self.configs:
            name = f"baseline (trial {c.trial})" if c.role == "baseline" else f"trial {c.trial}"
            if c.trial == self.chosen:
                name += " *"
            cells = [_cell(*c.interval(s)) for s in ("val", "test")]
            out.append(f"  {name:<22} {len(c.test):>5} {cells[0]:>16} {cells[1]:>16}")
        if self.chosen is None or self.verdict is None:
            out.append("  not enough finished re-runs to compare yet")
            return out
        out.append(f"  * chosen on validation: trial {self.chosen}")
        out.append("  " + self.verdict.sentence())
        out.append("  verdict: " + (
            f"trial {self.chosen}'s configuration beats the baseline on test." if self.claim
            else f"no claim: trial {self.chosen}'s configuration is not shown to beat the "
                 "baseline on test."))
        return out


def summarize(trials: Sequence[FrozenTrial], study_dir: Any, ld: studyfile.LoadedStudy
              ) -> Confirmation:
    """The confirmation as it stands: each configuration's re-runs that completed."""
    o = ld.sf.study.objectives[0]
    aggregate = o.metric.partition(".")[2]
    test_metric = f"test.{aggregate}"
    sign = 1 if o.direction == "maximize" else -1
    runs: dict[int, dict[int, list[dict[str, Any]]]] = {}
    roles: dict[int, str] = {}
    for t in trials:
        if not is_confirmation(t) or t.state != TrialState.COMPLETE:
            continue
        of, seed = t.user_attrs[ATTR]["of"], t.user_attrs[ATTR]["seed"]
        df = results.read_trial(study_dir, t.number)
        if df is None:
            continue
        runs.setdefault(of, {})[seed] = df.dropna(subset=["accuracy"]).to_dict("records")
        roles[of] = "baseline" if t.user_attrs.get("baseline") else "candidate"
    configs = [ConfigResult(of, roles[of],
                            {s: 100 * results.metric_value(r, o.method, o.metric)
                             for s, r in rows.items()},
                            {s: 100 * results.metric_value(r, o.method, test_metric)
                             for s, r in rows.items()}, rows)
               for of, rows in sorted(runs.items(), key=lambda kv: roles[kv[0]] != "baseline")]
    seeds = sorted({s for c in configs for s in c.test})
    baseline = next((c for c in configs if c.role == "baseline"), None)
    candidates = [c for c in configs if c.role == "candidate" and len(c.val) >= 2]
    chosen = (max(candidates, key=lambda c: sign * c.interval("val")[0])
              if candidates else None)
    verdict = None
    if chosen is not None and baseline is not None:
        shared = sorted(set(chosen.rows) & set(baseline.rows))
        if len(shared) >= 2:
            verdict = conclusions.compare([r for s in shared for r in chosen.rows[s]],
                                          [r for s in shared for r in baseline.rows[s]],
                                          o.method, test_metric)
    return Confirmation(o.metric, test_metric, o.method, seeds, configs,
                        chosen.trial if chosen else None, verdict)


def _mean_half(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, math.nan
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    return mean, float(stats.t.ppf(0.975, len(xs) - 1)) * sd / math.sqrt(len(xs))


def _cell(mean: float, half: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f}" + ("" if math.isnan(half) else f" +- {half:.2f}")
