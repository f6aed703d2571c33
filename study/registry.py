"""Where degradations, models, datasets and fusion methods come from: Python entry points.

    group                an entry point names                       its contract
    study.degradations   a degradations.Degradation                 levels, CPU (+ device) op
    study.models         a builder, num_classes -> nn.Module        forward -> (logits, feats)
    study.datasets       a loader, keywords -> arrays or a folder   data.load_dataset reads it
    study.fusion         a fusion.FusionMethod                      arguments, key fields, math

Each contract in full: docs/plugins.md.

One path for all: the built-ins are entry points too, declared in pyproject.toml's
`[project.entry-points."study.*"]` tables with the targets of BUILTIN below
(tests/test_plugins.py checks that the two agree). BUILTIN exists because a checkout run with
PYTHONPATH (the tests, a cluster job on a shared checkout) has no installed metadata of its own:
the built-ins then come from this table, and only the built-ins; an installed `study` finds the
same `module:attribute` targets, so the same objects, through its entry points. Every other entry
point of a group is a plugin, versioned by the distribution that declares it: that name and
version enter the cache keys of whatever uses the plugin (stages.py) and every result file's
provenance (results.provenance), so upgrading a plugin never reuses a network it trained.

Names and versions come from the installed metadata without importing anything: validating a
study file (on a login node, in `study status`) imports no plugin code and no torch. `load`
imports a component's module when it is used.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from dataclasses import dataclass
from typing import Any

from study.errors import StudyError

__all__ = ["BUILTIN", "DATASETS", "DEGRADATIONS", "FUSION", "GROUPS", "MODELS", "Component",
           "PluginError", "components", "find", "installed_plugins", "load", "names",
           "plugin_versions", "refresh"]

DEGRADATIONS = "study.degradations"
MODELS = "study.models"
DATASETS = "study.datasets"
FUSION = "study.fusion"
GROUPS = (DEGRADATIONS, MODELS, DATASETS, FUSION)
# what one component of a group is called in messages
NOUNS = {DEGRADATIONS: "degradation", MODELS: "model", DATASETS: "dataset",
         FUSION: "fusion method"}

# The built-ins in their canonical order (the paper's degradation order: an expert's place
# decides copy_first's BN and the copies' seeds). pyproject.toml declares the same targets.
BUILTIN: dict[str, dict[str, str]] = {
    DEGRADATIONS: {"jpeg": "study.degradations:JPEG", "blur": "study.degradations:BLUR",
                   "awgn": "study.degradations:AWGN",
                   "saltpepper": "study.degradations:SALTPEPPER"},
    MODELS: {"resnet56": "study.models:resnet56", "tiny": "study.models:tiny"},
    DATASETS: {"cifar10": "study.data:load_cifar10", "cifar100": "study.data:load_cifar100",
               "tinyimagenet": "study.data:load_tiny_imagenet",
               "imagefolder": "study.data:load_image_folder",
               "synthetic": "study.data:load_synthetic"},
    FUSION: {"uniform": "study.fusion.uniform:METHOD", "weighted": "study.fusion.weighted:METHOD",
             "task_arithmetic": "study.fusion.task_arithmetic:METHOD",
             "ties": "study.fusion.ties:METHOD", "dare": "study.fusion.dare:METHOD"},
}


class PluginError(StudyError, ValueError):
    """An unknown name, two distributions claiming one name, or a plugin breaking its group's
    contract: a user error (one paragraph, exit 2), and a ValueError, so config validation
    reports it against the key that named it."""


@dataclass(frozen=True)
class Component:
    group: str
    name: str
    target: str                      # "module:attribute", as an entry point's value
    distribution: str | None = None  # None: a built-in of `study`
    version: str | None = None       # the distribution's version

    @property
    def builtin(self) -> bool:
        return self.distribution is None

    @property
    def label(self) -> str:
        """Where it comes from, for keys, provenance and messages: "study-extra 0.1.0"."""
        return "study (built-in)" if self.builtin else f"{self.distribution} {self.version}"

    def load(self) -> Any:
        module, _, attribute = self.target.partition(":")
        try:
            obj: Any = importlib.import_module(module)
            for part in attribute.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            raise PluginError(f"{NOUNS[self.group]} {self.name!r} ({self.label}, entry point "
                              f"{self.group}: {self.target}) cannot be loaded: {e}") from e
        return obj


@functools.cache
def components(group: str) -> dict[str, Component]:
    """Every component of `group`: the built-ins in BUILTIN's order, then the plugins by name.
    PluginError when a plugin reuses a built-in's name or two distributions declare one name."""
    out = {name: Component(group, name, target) for name, target in BUILTIN[group].items()}
    plugins: dict[str, Component] = {}
    for ep in importlib.metadata.entry_points(group=group):
        dist = ep.dist.metadata["Name"] if ep.dist is not None else "unknown"
        found = Component(group, ep.name, ep.value, dist,
                          ep.dist.version if ep.dist is not None else "unknown")
        if ep.name in out:
            if ep.value == out[ep.name].target:   # an installed study declaring its own
                continue
            raise PluginError(f"{found.label} declares {NOUNS[group]} {ep.name!r} "
                              f"({group}: {ep.value}), the name of a built-in; rename it")
        other = plugins.get(ep.name)
        if other is not None and other.target != found.target:
            raise PluginError(f"two distributions declare {NOUNS[group]} {ep.name!r} in "
                              f"{group}: {other.label} ({other.target}) and {found.label} "
                              f"({found.target}); uninstall one")
        plugins[ep.name] = found
    return out | dict(sorted(plugins.items()))


def names(group: str) -> tuple[str, ...]:
    """The installed names of `group` in canonical order (built-ins first)."""
    return tuple(components(group))


def find(group: str, name: str) -> Component:
    """The component `name` of `group`; PluginError listing the installed names otherwise."""
    found = components(group).get(name)
    if found is None:
        raise PluginError(f"unknown {NOUNS[group]} {name!r}; valid names: "
                          f"{', '.join(names(group))} (the installed ones: plugins add more "
                          f"through the {group!r} entry points, docs/plugins.md)")
    return found


def load(group: str, name: str) -> Any:
    return find(group, name).load()


def plugin_versions(group: str, used: list[str] | tuple[str, ...] | str) -> dict[str, str]:
    """{name: "distribution version"} of the plugins among `used` (built-ins add nothing, so
    the keys of a study of built-ins stay as they were)."""
    wanted = [used] if isinstance(used, str) else used
    return {n: c.label for n in wanted if not (c := find(group, n)).builtin}


def installed_plugins() -> dict[str, str]:
    """Every installed plugin, "group:name" -> "distribution version": the provenance of a
    result (it may have shaped the run through any of them)."""
    return {f"{g}:{c.name}": c.label for g in GROUPS for c in components(g).values()
            if not c.builtin}


def refresh() -> None:
    """Forget what was found (after installing a distribution, or a test putting one on
    sys.path): the next lookup reads the metadata again."""
    components.cache_clear()
