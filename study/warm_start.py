"""Studies that build on studies: `study.warm_start: {from: EARLIER.yaml, top_k: N}` starts a
new study from the earlier study's N best configurations.

A configuration is carried over as a whole pipeline, not as parameter names: the earlier
trial's values are set into the earlier study file (what its worker ran), and this study's
space reads its parameters off that tree at their paths, as it reads the baseline off this
file. So a parameter the earlier study held fixed comes over with its fixed value, and a
renamed or re-ranged parameter is matched by where it acts, not by what it was called. A value
outside this space (a learning rate above the new range, a fusion method no longer offered) is
reported on the launch's terminal and left to the sampler; the rest of that configuration is
still enqueued. Configurations that translate to the same values are enqueued once.

The plan is read before the new study is created, so a warm start that cannot be read (no such
file, a study never launched in these results) is refused with exit 2 and nothing written. It
is enqueued once, when the study is new: a resumed study keeps its own history.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from study import status, storage, studyfile
from study.errors import ConfigError, StudyError
from study.studyfile import LoadedStudy

__all__ = ["ATTR", "Plan", "enqueue", "plan"]

# The user attribute of an enqueued configuration: {"from": study name, "trial": number}.
ATTR = "warm_start"


@dataclass
class Plan:
    """What a warm start enqueues: each configuration's values in this space and the earlier
    trial it came from, and a line for each value left to the sampler or duplicate skipped."""

    source: str = ""                     # the earlier study's name
    configurations: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def plan(ld: LoadedStudy, results_dir: str | Path) -> Plan | None:
    """The warm start of `ld`'s study file, read from the earlier study in `results_dir`;
    None without `study.warm_start`. ConfigError (exit 2) when the earlier study cannot be
    read."""
    ws = ld.sf.study.warm_start
    if ws is None:
        return None
    key = f"{ld.source}: study.warm_start.from {ws.source!r}"
    beside = Path(ld.source).parent / ws.source
    try:
        earlier = studyfile.load(beside if beside.is_file() else ws.source, check_space=False)
        stored = storage.open_study(earlier, results_dir)
    except StudyError as e:
        raise ConfigError(f"{key}: {e}") from e
    best = _best(stored.study, stored.study.get_trials(deepcopy=False))
    if not best:
        raise ConfigError(f"{key}: study '{earlier.sf.study.name}' in {results_dir} has no "
                          "completed trial to start from")
    out = Plan(source=earlier.sf.study.name)
    seen: list[dict[str, Any]] = []
    for t in best[:ws.top_k]:
        tree = earlier.trial_config(t.user_attrs.get("values", {})).model_dump()
        values, misses = ld.space.translate(tree)
        for name, then, now in _held_fixed(earlier, ld, tree):
            out.notes.append(f"warm start: trial {t.number} of '{out.source}': {name}={then!r} "
                             f"is not searched here; this study holds it at {now!r}")
        for name, value, why in misses:
            shown = "no value" if value is None else f"{name}={value!r}"
            out.notes.append(f"warm start: trial {t.number} of '{out.source}': {shown} is "
                             f"outside this space ({why}); the sampler draws {name}")
        if values in seen:
            out.notes.append(f"warm start: trial {t.number} of '{out.source}' is the same "
                             "configuration in this space as one already enqueued; skipped")
            continue
        seen.append(values)
        out.configurations.append((t.number, values))
    return out


def enqueue(ld: LoadedStudy, st: optuna.Study, warm: Plan, log: Callable[[str], None]) -> None:
    """Enqueue the plan's configurations after whatever is already queued (the baseline)."""
    for note in warm.notes:
        log(note)
    for number, values in warm.configurations:
        st.enqueue_trial(ld.space.raw_params(values),
                         user_attrs={ATTR: {"from": warm.source, "trial": number}})
    log(f"warm start: {len(warm.configurations)} configuration(s) of study '{warm.source}' "
        "enqueued")


def _held_fixed(earlier: LoadedStudy, ld: LoadedStudy, tree: dict[str, Any]
                ) -> list[tuple[str, Any, Any]]:
    """The earlier study's searched parameters this space does not search, where the earlier
    trial's value differs from this study's fixed one: (name, then, now)."""
    searched_here = {p.path for p in ld.space.params}
    here = ld.sf.model_dump()
    out = []
    for p in earlier.space.params:
        then, now = _at(tree, p.path), _at(here, p.path)
        if p.path not in searched_here and then != now:
            out.append((p.name, then, now))
    return out


def _at(tree: Any, path: tuple[str, ...]) -> Any:
    for k in path:
        tree = tree.get(k) if isinstance(tree, dict) else None
    return tree


def _best(st: optuna.Study, trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The earlier study's completed search trials, best first: by its objective with one, its
    Pareto front (by trial number) with several."""
    done = [t for t in status.search_trials(trials) if t.state == TrialState.COMPLETE]
    if len(st.directions) > 1:
        front = {t.number for t in st.best_trials}
        return [t for t in done if t.number in front]
    sign = -1.0 if st.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return sorted(done, key=lambda t: (sign * float(t.values[0]), t.number))
