"""SearchSpace: the parsed parameters in dependency order, and what is done with them.

Sampling for a trial (each active parameter drawn after those it depends on), replay of stored
values, the study file's own values as a sample (the baseline), setting a sample into the study
tree, the views (distributions, grid, describe, fingerprint), and the probe samples that check
the space as a whole. A parameter whose `when` is false (or whose `over` parameter is inactive)
is not suggested at all and is absent from the sample, so conditional spaces stay conditional
for Optuna too.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from optuna.distributions import BaseDistribution

from study.config import set_path
from study.errors import ConfigError
from study.space.param import Param
from study.space.suggest import ProbeDraws, Replay
from study.space.values import same_value

__all__ = ["GRID_LIMIT", "SearchSpace", "report"]

# A grid sampler enumerates every point, and grid() is computed at every launch whatever the
# sampler: past this many points in the product of all raw parameters there is no grid.
GRID_LIMIT = 100_000


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]  # dependency order: a param after those in its `when` and `inputs`
    source: str = "<space>"
    _by_name: dict[str, Param] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {p.name: p for p in self.params})

    # ------------------------------------------------------------ sampling
    def list_items_at(self, path: tuple[str, ...]) -> list[Any]:
        """Every item a trial's list setting at `path` (e.g. ("pipeline", "degradations"))
        may hold, over the parameters searching it; [] when none does."""
        return [i for p in self.params if p.path == path for i in p.list_items()]

    def sample(self, trial: Any) -> dict[str, Any]:
        """Suggest every active parameter; also stored as the trial's user attributes."""
        values: dict[str, Any] = {}
        for p in self.params:
            if self._active(p, values):
                values[p.name] = p.draw(trial, values)
        if hasattr(trial, "set_user_attr"):
            for k, v in values.items():
                trial.set_user_attr(k, v)
        return values

    def from_params(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The sample that `values` stands for: canonical values (a sample, trial.user_attrs)
        or raw suggestions (trial.params, flags and simplex coordinates), checked."""
        errors: list[str] = []
        out: dict[str, Any] = {}
        raw = Replay(values)
        known: set[str] = set()
        for p in self.params:
            known.add(p.name)
            known.update(p.raw_names())
            if not self._active(p, out):
                given = [k for k in (p.name, *p.raw_names()) if k in values]
                if given:
                    errors.append(
                        f"'{given[0]}' is given but '{p.name}' is inactive here "
                        f"(needs {_show_when(p)})"
                    )
                continue
            try:
                if p.name in values:
                    out[p.name] = p.check(values[p.name], out)
                else:  # a fixed parameter draws its value without asking the replay
                    out[p.name] = p.draw(raw, out)
            except ValueError as e:
                errors.append(f"'{p.name}': {e}")
        for k in values:
            if k not in known:
                near = difflib.get_close_matches(str(k), sorted(known), n=1)
                hint = f" (did you mean '{near[0]}'?)" if near else ""
                errors.append(
                    f"'{k}' is not a parameter of this space{hint}; "
                    f"parameters: {[p.name for p in self.params]}"
                )
        if errors:
            raise ConfigError(report(self.source, "the given parameter values", errors))
        return out

    def baseline(self, tree: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """The sample that stands for the study file's own pipeline: each active parameter's
        value read at its path in the (validated, defaults filled) `tree`. (None, why) when a
        value lies outside the space or is missing."""
        values, misses = self.translate(tree)
        if not misses:
            return values, ""
        name, node, why = misses[0]
        if node is None:
            return None, f"'{name}' has no value in the study file's pipeline"
        return None, f"the study file's '{name}' ({node!r}) is outside the space: {why}"

    def translate(self, tree: Mapping[str, Any]
                  ) -> tuple[dict[str, Any], list[tuple[str, Any, str]]]:
        """A configuration (a validated study tree) read into this space: each active
        parameter's value at its path, checked against its range or choices. Returns the
        values inside the space and, for each one outside it or missing (value None), (name,
        value, why); a caller leaves those to the sampler or refuses the configuration."""
        values: dict[str, Any] = {}
        misses: list[tuple[str, Any, str]] = []
        for p in self.params:
            if not self._active(p, values):
                continue
            node: Any = tree
            for k in p.path:
                node = node.get(k) if isinstance(node, Mapping) else None
            if node is None:
                misses.append((p.name, None, "no value at its path"))
                continue
            try:
                values[p.name] = p.check(node, values)
            except ValueError as e:
                misses.append((p.name, node, str(e)))
        return values, misses

    def raw_params(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The raw Optuna suggestions of a sample (see Param.raw_params)."""
        out: dict[str, Any] = {}
        for p in self.params:
            if p.name in values:
                out.update(p.raw_params(values[p.name], values))
        return out

    def apply(self, tree: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
        """A deep copy of the resolved study tree with each value set at its parameter's path."""
        unknown = [k for k in values if k not in self._by_name]
        if unknown:
            raise ConfigError(
                f"{self.source}: {unknown} are not parameters of the space; "
                f"parameters: {list(self._by_name)}"
            )
        out = copy.deepcopy(tree)
        for k, v in values.items():
            set_path(out, list(self._by_name[k].path), copy.deepcopy(v))
        return out

    # ------------------------------------------------------------ views
    def distributions(self) -> dict[str, BaseDistribution]:
        """Every raw suggest name -> its distribution, conditional ones included."""
        out: dict[str, BaseDistribution] = {}
        for p in self.params:
            out.update(p.distributions())
        return out

    def raw_width(self) -> int:
        """How many raw values a sample draws at most: len(distributions()), without building
        them (a subset has a flag per item, a simplex a coordinate per possible item)."""
        return sum(len(p.raw_names()) for p in self.params)

    def grid_size(self) -> int | None:
        """Points in the full grid (the product over every raw parameter, conditional ones
        included); None if some parameter is continuous. Nothing is enumerated."""
        total = 1
        for p in self.params:
            n = p.grid_size()
            if n is None:
                return None
            total *= n
        return total

    def grid(self) -> dict[str, list[Any]] | None:
        """Raw name -> every value (for GridSampler); None if some parameter is continuous or
        the grid has more than GRID_LIMIT points (a single parameter that large included)."""
        size = self.grid_size()
        if size is None or size > GRID_LIMIT:
            return None
        out: dict[str, list[Any]] = {}
        for p in self.params:
            out.update(p.grid() or {})
        return out

    def describe(self) -> str:
        searched = sum(p.searched for p in self.params)
        lines = [
            f"search space of {self.source}: {searched} searched, "
            f"{len(self.params) - searched} fixed, {len(self.distributions())} raw "
            f"Optuna parameters"
        ]
        width = max((len(p.name) for p in self.params), default=0)
        for p in self.params:
            cond = f"  when {_show_when(p)}" if p.when else ""
            lines.append(f"  {p.name:<{width}}  {p.display()}{cond}")
        return "\n".join(lines)

    def fingerprint(self) -> str:
        """sha256 of the normalised space: YAML key order does not matter, any range does."""
        items = [
            {
                "name": p.name,
                "path": list(p.path),
                "kind": p.kind,
                "spec": p.spec,
                "when": {k: sorted(p.when[k], key=repr) for k in sorted(p.when)},
            }
            for p in sorted(self.params, key=lambda p: p.name)
        ]
        text = json.dumps({"space-format": 1, "params": items}, sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()

    def probe_samples(self, n_random: int, seed: int, corner_limit: int) -> Iterator[
            dict[str, Any]]:
        """Distinct samples to validate as whole trials: first the corners of each parameter
        (at most `corner_limit`; see Param.corners), each with the parameters its `when`
        tests set so that it is active, the others random; then `n_random` random draws. All
        from random.Random(seed): the same samples at every load, whatever the machine. Never
        enumerates a grid, so a huge space costs the same."""
        rng = random.Random(seed)
        plans: list[dict[str, Any]] = []
        for p in self.params:
            if len(plans) >= corner_limit:
                break
            for corner in itertools.islice(p.corners(), corner_limit - len(plans)):
                plans.append({**self._activation(p), **corner})
        plans += [{} for _ in range(n_random)]
        # a digest per sample, not its text: a sample of a 20,000-item subset is 200 KB of JSON
        seen: set[bytes] = set()
        for forced in plans:
            values = self.sample(ProbeDraws(rng, forced))
            text = json.dumps(values, sort_keys=True, default=repr)
            key = hashlib.blake2b(text.encode(), digest_size=16).digest()
            if key not in seen:
                seen.add(key)
                yield values

    # ------------------------------------------------------------ internals
    def _activation(self, p: Param, _depth: int = 0) -> dict[str, Any]:
        """Raw suggestions that make `p` active: each parameter its `when` tests (and those
        that parameter's own `when` tests...) set to its first accepted value."""
        out: dict[str, Any] = {}
        if _depth > len(self.params):   # parse_space refuses cycles; a guard all the same
            return out
        refs: list[tuple[str, list[Any] | None]] = [*p.when.items()]
        refs += [(name, None) for name in p.inputs]
        for name, accepted in refs:
            q = self._by_name.get(name)
            if q is None:
                continue
            out.update(self._activation(q, _depth + 1))
            if accepted is not None:
                value = next((a for a in accepted if q.can_take(a)), None)
                if value is not None:
                    out.update(q.raw_params(value))
        return out

    def _active(self, p: Param, values: Mapping[str, Any]) -> bool:
        for name, accepted in p.when.items():
            if name not in values or not any(same_value(values[name], a) for a in accepted):
                return False
        return all(name in values for name in p.inputs)


def report(source: str, what: str, errors: list[str]) -> str:
    """One ConfigError message: the file, how many problems, one line each."""
    lines = [f"{source}: {len(errors)} problem(s) in {what}:"]
    lines += [f"  - {e}" for e in errors]
    return "\n".join(lines)


def _show_when(p: Param) -> str:
    return ", ".join(f"{k} in {v}" for k, v in p.when.items())
