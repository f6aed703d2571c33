"""The stage registry: every trained (or fused) network of a pipeline, declared once.

    base ──> expert_<d> (one per degradation) ──> modelsoups (fusion) ──> fusing
      │                   └───────────────────────────────────────────> fusiondistill
      └──> vanilla_ft                     scratch (from random init)

A declaration says what a stage is: its parents (a function of the config), the config fields
its cache key covers (`key_fields`, a function of the config: a field the stage ignores under
this config, such as `fusion.lambdas` under `fusion.method: uniform`, is left out), whether it
is shared across the trials of a study (trained once), whether the pruner watches its epochs,
and how it is built. The pipeline runs these declarations; results, worker, launcher, SLURM
planning and bench take their stage lists from here (`instance_names`, `SHARED`, `METHODS`).

A key is `sha256(folder, key_fields, parents' keys, CODE_VERSION)`: two configurations share a
network exactly when every field it reads and every ancestor agree. A plugin component (a
degradation, model, dataset or fusion method of another distribution, study/registry.py) adds
its distribution and version as a field (`plugin:<group>:<name>`) to what it shapes; the
built-ins add none, so their keys are those of the releases before plugins. The test
tests/test_stage_keys.py changes each leaf of the config one at a time and checks the set of
stages whose key moves.

To add a stage: declare it in STAGES below with its build function (plain code over the
`Runner` primitives), then add its row to the key test's table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from study import fusion, registry
from study.config import (
    DEGRADATION_NAMES,
    METHOD_NAMES,
    METHODS_WITHOUT_CLEAN,
    PipelineConfig,
    TrainSpec,
    degradation_names,
)
from study.degradations import CLEAN

if TYPE_CHECKING:
    from torch import nn

    from study import losses

__all__ = ["METHODS", "SHARED", "STAGES", "Built", "KeyEnv", "Method", "Runner", "Stage",
           "copy_fields", "evaluation_fields", "instance", "instance_names", "parse_instance",
           "shared_instances", "split_fields"]

# The key field naming a per-degradation instance's degradation: not a config path.
INSTANCE = "instance"
# (state dict of the selected weights, metadata such as best_val and the epoch history)
Built = tuple[dict[str, Any], dict[str, Any]]


@dataclass(frozen=True)
class KeyEnv:
    """What a key needs beyond the config: the data path the run resolves to. The device data
    path draws from torch generators (CPU and CUDA are different streams), so its weights
    differ from the reference path's and get their own entries; the reference path adds no
    field, so its keys do not depend on the machine."""

    device_path: bool = False
    device_type: str = "cpu"


class Runner(Protocol):
    """What a build function may use; the pipeline provides it (study/pipeline.py)."""

    cfg: PipelineConfig

    def network(self, name: str) -> nn.Module: ...   # a parent, from memory, cache or built

    def new_model(self) -> nn.Module: ...            # a fresh network, seeded with cfg.seed

    def copy_of(self, name: str) -> nn.Module: ...   # a trainable copy of a stage's network

    def fit(self, name: str, spec: TrainSpec, model: nn.Module, degradations: list[str],
            objective: losses.Objective, *, same_images: bool = True) -> Built: ...

    def fuse(self) -> dict[str, Any]: ...            # the fused weights of cfg.fusion


@dataclass(frozen=True)
class Stage:
    name: str            # the family: "expert" stands for expert_jpeg, expert_blur, ...
    folder: str          # cache folder (results/cache/<folder>/<key>/)
    shared: bool         # trained once per study, reused by every trial
    watched: bool        # its epochs go to the pruner when it is the objective's network
    # config paths (prefixes) the stage may ever read, whatever the config: a space parameter
    # under one of them makes the stage per-trial (no longer shared, never prebuilt)
    reads: tuple[str, ...]
    key_fields: Callable[[PipelineConfig, str | None, KeyEnv], dict[str, Any]]
    parents: Callable[[PipelineConfig, str | None], list[str]]
    build: Callable[[Runner, str, str | None], Built]
    per_degradation: bool = False   # one instance per degradation: <name>_<degradation>


# ---------------------------------------------------------------- key fields
def _plugin_fields(group: str, used: str | list[str]) -> dict[str, Any]:
    """The distribution and version of each plugin among `used` (none for a built-in): a new
    release of a plugin retrains and re-evaluates whatever it shaped."""
    return {f"plugin:{group}:{name}": label
            for name, label in registry.plugin_versions(group, used).items()}


def _spec_fields(prefix: str, spec: TrainSpec) -> dict[str, Any]:
    """A training spec's fields, less those its optimiser and schedule ignore."""
    values = spec.model_dump()
    ignored = set()
    if spec.optimizer != "sgd":
        ignored.add("momentum")
    if spec.schedule != "multistep":
        ignored |= {"milestones", "gamma"}
    if spec.schedule != "cosine":
        ignored.add("t_max")
    if spec.cutout == 0 or spec.cutout_on == "none":   # both spell "no Cutout"
        values["cutout"] = 0
        ignored.add("cutout_on")
    return {f"{prefix}.{k}": v for k, v in values.items() if k not in ignored}


def _data_fields(cfg: PipelineConfig) -> dict[str, Any]:
    """The training split and the network: what a stage trained from scratch reads."""
    d = cfg.data
    out: dict[str, Any] = {"data.dataset": d.dataset, "data.seed": d.seed,
                           "data.train_subset": d.train_subset, "model": cfg.model}
    if cfg.protocol == "holdout":
        out["data.val_size"] = d.val_size   # how many training images are held out
    else:                                   # every training image trains; test selects
        out["protocol"] = cfg.protocol
    if d.dataset == "synthetic":
        # synthetic_test draws from its own stream: the training images do not depend on it
        out["data.synthetic_train"] = d.synthetic_train
    else:
        out["data.root"] = d.root
    if d.classes is not None or d.dataset == "imagefolder":   # kept classes, their order
        out["data.classes"] = d.classes
    if cfg.protocol == "reference" and cfg.selection == "best_val" and d.dataset == "synthetic":
        # the test set picks the checkpoints, and a synthetic one is drawn to this size
        out["data.synthetic_test"] = d.synthetic_test
    return out | _plugin_fields(registry.DATASETS, d.dataset) | _plugin_fields(
        registry.MODELS, cfg.model)


def split_fields(cfg: PipelineConfig, split: str) -> dict[str, Any]:
    """What decides the images of an evaluation split, "val" or "test": the keys of its
    degraded copies and of its evaluation cover these (with the networks' keys), no other field
    of the data section. Under protocol: holdout the validation images are held out of the
    training images with data.seed; under reference they are the test set, whose copies are
    then keyed apart from the holdout ones."""
    d = cfg.data
    out: dict[str, Any] = {"data.dataset": d.dataset,
                           **_plugin_fields(registry.DATASETS, d.dataset)}
    if d.dataset != "synthetic":
        out["data.root"] = d.root
    if d.classes is not None or d.dataset == "imagefolder":
        out["data.classes"] = d.classes
    if split == "val" and cfg.protocol == "holdout":
        out |= {"data.seed": d.seed, "data.train_subset": d.train_subset,
                "data.val_size": d.val_size}
        if d.dataset == "synthetic":
            out["data.synthetic_train"] = d.synthetic_train
        return out
    if d.dataset == "synthetic":   # the synthetic test set is drawn from data.seed's stream
        out |= {"data.seed": d.seed, "data.synthetic_test": d.synthetic_test}
    if split == "val":
        out["protocol"] = cfg.protocol
    return out


def evaluation_fields(cfg: PipelineConfig, split: str, step: int) -> dict[str, Any]:
    """What an evaluation of a split reads besides its networks (whose keys are its parents):
    the split's images, the level grid, the copies' seed and degradations, the salt value
    where salt-and-pepper is among them. Not eval.batch_size: it changes no number."""
    e = cfg.eval
    out = {"split": split, "step": step, "seed": e.seed, "degradations": e.degradations,
           **split_fields(cfg, split), **_plugin_fields(registry.DEGRADATIONS, e.degradations)}
    if "saltpepper" in e.degradations:
        out["salt_value"] = cfg.salt_value
    return out


def copy_fields(cfg: PipelineConfig, split: str, degradation: str, level: int
                ) -> dict[str, Any]:
    """What one degraded copy of a split depends on: its images, the degradation and level,
    the copies' seed, and the salt value of a salt-and-pepper copy."""
    out = {**split_fields(cfg, split), "split": split, "degradation": degradation,
           "level": level, "seed": cfg.eval.seed,
           **_plugin_fields(registry.DEGRADATIONS, degradation)}
    if degradation == "saltpepper":
        out["salt_value"] = cfg.salt_value
    return out


def _stream_fields(cfg: PipelineConfig, names: list[str], env: KeyEnv) -> dict[str, Any]:
    """What a training stream over `names` draws from besides its spec."""
    out: dict[str, Any] = {"seed": cfg.seed}
    if cfg.compute.amp != "none":   # another precision, other weights (fp32 adds no field)
        out["compute.amp"] = cfg.compute.amp
    if len(names) > 1:   # several chunks: what they share shapes every step
        out["chunk_sharing"] = cfg.chunk_sharing
    if "saltpepper" in names:
        out["salt_value"] = cfg.salt_value
    out |= _plugin_fields(registry.DEGRADATIONS, [n for n in names if n != CLEAN])
    if env.device_path:
        out["compute.data_path"] = "device"
        out["device"] = env.device_type
        if "jpeg" in names:
            out["compute.jpeg_bank_step"] = cfg.compute.jpeg_bank_step
    return out


def _trained_fields(cfg: PipelineConfig, spec_name: str, env: KeyEnv,
                    instance_of: str | None = None) -> dict[str, Any]:
    """A trained stage: its spec, its stream, and how its checkpoint is selected. It trains on
    the clean images (base), on its own degradation (`instance_of`, an expert) or on the
    config's degradations. With best_val selection its validation picks the checkpoint
    (`_validation_fields`); with `last` no validation setting does."""
    if spec_name == "base":
        names = [CLEAN]
    elif instance_of is not None:
        names = [instance_of]
    else:
        names = cfg.degradations
    out = {**_spec_fields(spec_name, getattr(cfg, spec_name)), "selection": cfg.selection,
           **_stream_fields(cfg, names, env)}
    if instance_of is not None:
        out[INSTANCE] = instance_of
    elif spec_name != "base":
        out["degradations"] = names
    if cfg.selection == "best_val":
        out |= _validation_fields(cfg, names)
    return out


def _validation_fields(cfg: PipelineConfig, names: list[str]) -> dict[str, Any]:
    """What scores the epochs of a best_val stage validating on `names`, besides its images.
    Degraded validation copies are drawn from eval.seed, once or per epoch (validation.draw,
    `auto` resolved by the protocol); clean ones draw nothing. The fixed draw and the share of
    images right add no field, so the keys of the releases before these settings stand."""
    out: dict[str, Any] = {}
    if names != [CLEAN]:
        out["eval.seed"] = cfg.eval.seed
        if cfg.validation_draw != "fixed":
            out["validation.draw"] = cfg.validation_draw
    if cfg.validation_accuracy != "images":   # each batch of batch_size images weighs the same
        out |= {"validation.accuracy": cfg.validation_accuracy,
                "validation.batch_size": cfg.validation.batch_size}
    return out


def _distill_fields(cfg: PipelineConfig, env: KeyEnv) -> dict[str, Any]:
    s = cfg.distill
    out = _trained_fields(cfg, "distill", env)
    if not s.same_images_per_degradation:   # each chunk its own images: nothing shared
        out.pop("chunk_sharing", None)
    used = {"feature": ("ce_weight", "feature_weight", "feature_layers"),
            "logit": ("kd_weight", "temperature", "alpha")}
    for loss, fields in used.items():
        if s.loss not in (loss, "both"):
            for f in fields:
                out.pop(f"distill.{f}")
    return out


def _fusion_fields(cfg: PipelineConfig, env: KeyEnv) -> dict[str, Any]:
    f = cfg.fusion
    out: dict[str, Any] = {"fusion.method": f.method, "fusion.bn": f.bn,
                           "fusion.experts": cfg.fused_experts}
    out |= fusion.get(f.method).key_fields(f.model_dump(), cfg.seed)   # what the method reads
    out |= _plugin_fields(registry.FUSION, f.method)
    if f.bn == "recompute":   # statistics re-estimated on degraded training batches
        out |= {"fusion.bn_batches": f.bn_batches, "degradations": cfg.degradations,
                "expert.batch_size": cfg.expert.batch_size,
                **{k: v for k, v in _spec_fields("expert", cfg.expert).items()
                   if k in ("expert.cutout", "expert.cutout_on")},
                **_stream_fields(cfg, cfg.degradations, env)}
    return out


# ---------------------------------------------------------------- builds
def _layers(weights: Mapping[Any, float]) -> dict[str, float]:
    """A spec's feature-layer weights as the losses take them (layer name -> weight)."""
    return {str(k): float(v) for k, v in weights.items()}


# The builders import the losses (torch) when they run: the declarations below are read where
# nothing trains (stage names and shared stages for the results schema, `study status` and the
# report; keys on a login node), and torch's import costs ~1.3 s and ~300 MB there.
def _build_base(run: Runner, name: str, _: str | None) -> Built:
    from study import losses

    return run.fit(name, run.cfg.base, run.new_model(), [CLEAN], losses.clean_cross_entropy)


def _build_expert(run: Runner, name: str, degradation: str | None) -> Built:
    from study import losses

    assert degradation is not None
    e = run.cfg.expert
    objective = losses.expert_objective(run.network("base"), e.ce_weight, e.feature_weight,
                                        _layers(e.feature_layers))
    return run.fit(name, e, run.copy_of("base"), [degradation], objective)


def _build_modelsoups(run: Runner, name: str, _: str | None) -> Built:
    return run.fuse(), {}


def _build_fusing(run: Runner, name: str, _: str | None) -> Built:
    from study import losses

    c = run.cfg
    return run.fit(name, c.fusing, run.copy_of("modelsoups"), c.degradations,
                   losses.degraded_cross_entropy)


def _build_fusiondistill(run: Runner, name: str, _: str | None) -> Built:
    from study import losses

    c, s = run.cfg, run.cfg.distill
    teachers = {d: run.network(instance("expert", d)) for d in c.degradations}
    objective = losses.distill_objective(
        teachers, loss=s.loss, ce_weight=s.ce_weight, feature_weight=s.feature_weight,
        feature_layers=_layers(s.feature_layers), kd_weight=s.kd_weight,
        temperature=s.temperature,
        alpha=s.alpha, teacher_input=s.teacher_input)
    return run.fit(name, s, run.copy_of("modelsoups"), c.degradations, objective,
                   same_images=s.same_images_per_degradation)


def _build_scratch(run: Runner, name: str, _: str | None) -> Built:
    from study import losses

    c = run.cfg
    return run.fit(name, c.scratch, run.new_model(), c.degradations,
                   losses.degraded_cross_entropy)


def _build_vanilla_ft(run: Runner, name: str, _: str | None) -> Built:
    from study import losses

    c = run.cfg
    return run.fit(name, c.vanilla_ft, run.copy_of("base"), c.degradations,
                   losses.degraded_cross_entropy)


# ---------------------------------------------------------------- the registry
def _experts(names: list[str]) -> list[str]:
    return [instance("expert", d) for d in names]


_TRAINING = ("seed", "selection", "validation", "salt_value", "device", "compute.data_path",
             "compute.jpeg_bank_step", "compute.amp", "chunk_sharing")
_DATA = ("data", "model", "protocol")

STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("base", "base", shared=True, watched=False,
          reads=("base", *_DATA, *_TRAINING),
          key_fields=lambda c, _, env: _trained_fields(c, "base", env)
          | _data_fields(c),
          parents=lambda c, _: [], build=_build_base),
    Stage("expert", "expert", shared=True, watched=False, per_degradation=True,
          reads=("expert", "eval.seed", *_TRAINING),
          key_fields=lambda c, d, env: _trained_fields(c, "expert", env, instance_of=d),
          parents=lambda c, _: ["base"], build=_build_expert),
    Stage("modelsoups", "fuse", shared=False, watched=False,
          reads=("fusion", "degradations", "expert.batch_size", "expert.cutout",
                 "expert.cutout_on", *_TRAINING),
          key_fields=lambda c, _, env: _fusion_fields(c, env),
          parents=lambda c, _: _experts(c.fused_experts)
          + (["base"] if fusion.get(c.fusion.method).needs_base else []),
          build=_build_modelsoups),
    Stage("fusing", "fusing", shared=False, watched=True,
          reads=("fusing", "degradations", "eval.seed", *_TRAINING),
          key_fields=lambda c, _, env: _trained_fields(c, "fusing", env),
          parents=lambda c, _: ["modelsoups"], build=_build_fusing),
    Stage("fusiondistill", "fusiondistill", shared=False, watched=True,
          reads=("distill", "degradations", "eval.seed", *_TRAINING),
          key_fields=lambda c, _, env: _distill_fields(c, env),
          parents=lambda c, _: ["modelsoups", *_experts(c.degradations)],
          build=_build_fusiondistill),
    Stage("scratch", "scratch", shared=False, watched=True,
          reads=("scratch", "degradations", "eval.seed", *_DATA, *_TRAINING),
          key_fields=lambda c, _, env: _trained_fields(c, "scratch", env)
          | _data_fields(c),
          parents=lambda c, _: [], build=_build_scratch),
    Stage("vanilla_ft", "vanilla_ft", shared=False, watched=True,
          reads=("vanilla_ft", "degradations", "eval.seed", *_TRAINING),
          key_fields=lambda c, _, env: _trained_fields(c, "vanilla_ft", env),
          parents=lambda c, _: ["base"], build=_build_vanilla_ft),
]}
SHARED = tuple(name for name, s in STAGES.items() if s.shared)


def instance(stage: str, degradation: str | None = None) -> str:
    """The name of one network: `base`, or `expert_jpeg` for a per-degradation stage."""
    return stage if degradation is None else f"{stage}_{degradation}"


def parse_instance(name: str) -> tuple[Stage, str | None]:
    """`expert_blur` -> (the expert stage, "blur"); `base` -> (the base stage, None)."""
    if name in STAGES and not STAGES[name].per_degradation:
        return STAGES[name], None
    family, _, degradation = name.rpartition("_")
    stage = STAGES.get(family)
    if stage is None or not stage.per_degradation or degradation not in degradation_names():
        raise ValueError(f"unknown stage {name!r}; stages: {instance_names()}")
    return stage, degradation


def instance_names(degradations: tuple[str, ...] | list[str] = DEGRADATION_NAMES,
                   stages: tuple[str, ...] | None = None) -> list[str]:
    """Every network name in registry order (per-degradation stages expanded over
    `degradations`, by default the paper's four: the Parquet columns key_<stage>); `stages`
    restricts to some families (e.g. SHARED)."""
    out: list[str] = []
    for s in STAGES.values():
        if stages is None or s.name in stages:
            out += ([instance(s.name, d) for d in degradation_names() if d in degradations]
                    if s.per_degradation else [s.name])
    return out


def shared_instances(cfg: PipelineConfig, searched: Iterable[tuple[str, ...]],
                     degradations: Iterable[str]) -> list[str]:
    """The shared networks every trial of a study needs, in build order: the base and the
    experts of `degradations` (every degradation a trial may choose). Empty when the space
    searches a field one of them reads (`searched`: config paths, "pipeline" first): then
    each trial builds its own and nothing is worth building ahead."""
    reads = [("pipeline", *r.split(".")) for name in SHARED for r in STAGES[name].reads]
    for path in searched:
        if any(path[:len(r)] == r or r[:len(path)] == path for r in reads):
            return []
    return instance_names(sorted({*cfg.degradations, *degradations}), stages=SHARED)


def lineage(cfg: PipelineConfig, networks: Iterable[str]) -> set[str]:
    """Every stage instance `networks` are built from, themselves included: what producing
    them costs (config.COST_METRIC)."""
    out: set[str] = set()
    todo = list(networks)
    while todo:
        name = todo.pop()
        if name not in out:
            out.add(name)
            stage, degradation = parse_instance(name)
            todo.extend(stage.parents(cfg, degradation))
    return out


# ---------------------------------------------------------------- methods of the paper's tables
@dataclass(frozen=True)
class Method:
    name: str
    networks: Callable[[PipelineConfig], list[str]]   # the stages it evaluates
    combine: str = "own"    # own: the network's argmax; oracle; ensemble (see evaluation)

    def watched_stage(self, cfg: PipelineConfig) -> str | None:
        """The stage whose epochs the pruner sees when this method is the objective."""
        nets = self.networks(cfg)
        if len(nets) == 1 and parse_instance(nets[0])[0].watched:
            return nets[0]
        return None


METHODS: Mapping[str, Method] = {m.name: m for m in [
    Method("oracle", lambda c: _experts(c.degradations), combine="oracle"),
    Method("ensemble", lambda c: _experts(c.degradations), combine="ensemble"),
    *[Method(name, lambda c, name=name: [name])    # type: ignore[misc]
      for name in ("scratch", "vanilla_ft", "modelsoups", "fusing", "fusiondistill")],
]}
assert tuple(METHODS) == METHOD_NAMES, "config.METHOD_NAMES and METHODS disagree"
assert {m.name for m in METHODS.values() if m.combine == "oracle"} == set(
    METHODS_WITHOUT_CLEAN), "config.METHODS_WITHOUT_CLEAN and the oracle combiners disagree"
