"""What a fusion method is: its arguments, its rules on them and its arithmetic, in one
declaration (`FusionMethod`) that config validation, the stage keys and the merge all read.

A method fuses one parameter tensor at a time: it gets the experts' values of that tensor
stacked, `(n_experts, *shape)` in float32, the base's value for task-vector methods, and its
arguments as plain values (a per-expert setting as a list in expert order). It uses tensor
methods only, so declaring a method costs no torch import: the declarations are read where
nothing trains (config validation in `study status` and the report on a login node); the
arithmetic runs in `merge.fuse`, which feeds it tensors.

An argument is a `fusion.<name>` setting of the study file. Its pydantic type and default are
declared here with the method that reads it (`Argument`); the config schema is assembled from
these declarations, so a new method is one module plus a test. Several methods may read one
argument (`LAMBDAS`), declared once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import Field

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["LAMBDAS", "Argument", "Draw", "FusionMethod", "per_expert_scale"]

# uniform [0, 1) draws of a given shape from the merge's seeded stream (DARE's masks)
Draw = Callable[[tuple[int, ...]], "Tensor"]


@dataclass(frozen=True)
class Argument:
    """One `fusion.<name>` setting: its pydantic type and Field (default, bounds), what it
    means, and whether it may name one value per fused expert (a mapping expert -> number,
    handed to the method as a list in expert order)."""

    annotation: Any
    field: Any            # pydantic.Field(...) with the default
    help: str
    per_expert: bool = False
    noun: str = "value"   # what one per-expert value is, for messages ("one weight per ...")


# task_arithmetic, ties and dare scale task vectors: one number, or one per fused expert
LAMBDAS = Argument(float | dict[str, float], Field(1.0), "scale of the task vectors",
                   per_expert=True, noun="lambda")

Rule = Callable[[Mapping[str, Any], int], list[str]]


def _no_rules(arguments: Mapping[str, Any], n_experts: int) -> list[str]:
    return []


@dataclass(frozen=True)
class FusionMethod:
    name: str
    # (experts (n, *shape) float32, base (*shape) or None, arguments, draw) -> fused (*shape)
    fuse_tensor: Callable[[Tensor, Tensor | None, Mapping[str, Any], Draw], Tensor]
    arguments: Mapping[str, Argument] = field(default_factory=dict)   # the fusion.* it reads
    needs_base: bool = False   # fuses task vectors (expert - base): the base network is a parent
    uses_seed: bool = False    # draws random numbers: the pipeline seed enters its key
    # problems with the arguments (plain values, per-expert settings as lists) for n experts
    rules: Rule = _no_rules

    def plain_arguments(self, settings: Mapping[str, Any], experts: Sequence[str]
                        ) -> dict[str, Any]:
        """The arguments the method reads, out of the `fusion` settings: a per-expert mapping
        becomes a list in `experts` order (the one place that conversion is written).
        ValueError when such a mapping does not name exactly the fused experts."""
        out = {}
        for name, arg in self.arguments.items():
            value = settings.get(name, arg.field.default)
            if arg.per_expert and isinstance(value, Mapping):
                if set(value) != set(experts):
                    raise ValueError(f"fusion.{name} keys must be the fused experts "
                                     f"{list(experts)} (one {arg.noun} per fused expert), got "
                                     f"{sorted(value)}")
                value = [value[e] for e in experts]
            out[name] = value
        return out

    def check(self, arguments: Mapping[str, Any], n_experts: int) -> list[str]:
        """The rules' complaints about plain arguments for `n_experts` (empty: valid); a
        per-expert list must hold one value per expert."""
        problems = [f"{len(v)} values of fusion.{k} for {n_experts} experts"
                    for k, v in arguments.items()
                    if self.arguments[k].per_expert and isinstance(v, (list, tuple))
                    and len(v) != n_experts]
        return problems or self.rules(arguments, n_experts)

    def key_fields(self, settings: Mapping[str, Any], seed: int) -> dict[str, Any]:
        """What the fused model's cache key covers for this method: the settings it reads as
        written (a per-expert mapping stays a mapping: JSON sorts its keys) and the seed of a
        method that draws. Arguments it ignores stay out, so `uniform` under any lambdas is
        one cache entry."""
        out = {f"fusion.{k}": settings.get(k, a.field.default)
               for k, a in self.arguments.items()}
        if self.uses_seed:
            out["seed"] = seed
        return out


def per_expert_scale(lambdas: float | Sequence[float] | None, n: int) -> list[float]:
    """A task-vector scale per expert: one number for all, a list as given, None for 1/n
    each (the experts' mean)."""
    if lambdas is None:
        return [1.0 / n] * n
    if isinstance(lambdas, (int, float)):
        return [float(lambdas)] * n
    return [float(x) for x in lambdas]
