"""Weight fusion of degradation experts: the methods, each declared once beside its code.

    uniform  weighted  task_arithmetic  ties  dare     one module each: a FusionMethod
    merge.fuse(experts, method, ...)                   state dicts in, a state dict out

The paper setting is `merge.fuse(experts, "uniform", bn="copy_first")`: the plain mean of the
experts, keeping the first expert's (jpeg's) BN running statistics, which is why that
"ModelSoups" model scores at chance until the statistics are re-estimated or it is trained.

Importing this package costs no torch (see method.py); `study.fusion.merge` does the tensors.
To add a method: a module here with its METHOD (arguments, rules, arithmetic), its entry in
METHODS below and in the registry's built-in table (study/registry.py, pyproject.toml), and a
hand-computed case in tests/test_fusion.py. Outside `study`, a plugin's FusionMethod declared
under the `study.fusion` entry points (docs/plugins.md) joins them: its arguments join the config
schema when study.config is imported, so a plugin method keeps its module free of torch too.
"""

from __future__ import annotations

from typing import Any

from study import registry
from study.fusion import dare, task_arithmetic, ties, uniform, weighted
from study.fusion.method import Argument, FusionMethod

__all__ = ["BN_MODES", "METHODS", "Argument", "FusionMethod", "argument_fields", "get",
           "installed"]

METHODS: dict[str, FusionMethod] = {m.name: m for m in (
    uniform.METHOD, weighted.METHOD, task_arithmetic.METHOD, ties.METHOD, dare.METHOD)}
# How BN running statistics are fused (merge.fuse): the first expert's (the paper), the
# experts' mean, or the first expert's re-estimated on training batches by the caller.
BN_MODES = ("copy_first", "average", "recompute")


def get(name: str) -> FusionMethod:
    """The method registered under `name`, built-in or plugin; ValueError listing the
    installed methods."""
    if name in METHODS:
        return METHODS[name]
    found = registry.load(registry.FUSION, name)
    if not isinstance(found, FusionMethod) or found.name != name:
        raise registry.PluginError(
            f"fusion plugin {name!r} ({registry.find(registry.FUSION, name).label}): the entry "
            f"point must name a study.fusion.FusionMethod called {name!r}, got {found!r:.80}")
    return found


def installed() -> dict[str, FusionMethod]:
    """Every installed method in registry order: the built-ins, then the plugins (loaded)."""
    return {name: get(name) for name in registry.names(registry.FUSION)}


def argument_fields() -> dict[str, tuple[Any, Any]]:
    """Every method's arguments as pydantic field definitions (annotation, Field), in
    registry order: the method-specific part of the `fusion` section of the config schema.
    An argument read by several methods is declared once (method.LAMBDAS)."""
    out: dict[str, tuple[Any, Any]] = {}
    declared: dict[str, Argument] = {}
    for m in installed().values():
        for name, arg in m.arguments.items():
            if name in declared and declared[name] is not arg:
                if m.name not in METHODS:
                    raise registry.PluginError(
                        f"fusion plugin {m.name!r} "
                        f"({registry.find(registry.FUSION, m.name).label}) declares the argument "
                        f"fusion.{name} anew; another method declares it already: import and "
                        "share that Argument (e.g. study.fusion.method.LAMBDAS) or rename it")
                raise TypeError(f"fusion argument {name!r} is declared twice, differently "
                                f"({m.name}); declare it once and share it")
            declared[name] = arg
            out[name] = (arg.annotation, arg.field)
    return out
