"""The schema of a study file: the validated, frozen config tree (pydantic, extra="forbid").

A study file has four sections: `study` (name, objectives, sampler...), `executor` (where trials
run), `pipeline` (the fixed settings: a preset plus overrides) and `space` (what is searched).
Reading a file into this tree is study/studyfile.py's job; this module only says what is valid.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from study import fusion, registry
from study.schema import takes_number

# The paper's four, the default of every degradation list; a study may name any installed one
# (degradation_names(): these, then the plugins of the study.degradations entry points).
DEGRADATION_NAMES = ("jpeg", "blur", "awgn", "saltpepper")
METHOD_NAMES = (
    "oracle", "ensemble", "scratch", "vanilla_ft", "modelsoups", "fusing", "fusiondistill",
)
# The oracle picks, for each image, the expert of its degradation: a clean image has none, so
# it has no clean accuracy (stages.METHODS checks this against its combiners at import).
METHODS_WITHOUT_CLEAN = ("oracle",)
METRIC_SPLITS = ("val", "test")
# The cost objective: the device hours that producing the method's network takes, every stage it
# is built from counted at its build time (a cache hit at the time its build took), summed over
# the replicate seeds; evaluation left out. A property of the configuration, not of what the
# cache held when the trial ran, so a search can weigh accuracy against it.
COST_METRIC = "cost.hours"
STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql")   # `+driver` suffixes allowed
# Optuna's samplers seed numpy's RandomState, which takes 0..2**32-1 and raises ValueError
# outside it; every seed of the config keeps to that range, replicate seeds included.
SEED_MAX = 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
# Names a study may not take: results/<name> is its folder, and next to the studies lie the
# shared stage cache (the CLI's default --cache is <results>/cache) and the tracked
# results/README.md. Compared ignoring case, as macOS and Windows file systems do.
RESERVED_STUDY_NAMES = ("cache", "README.md")
# Synthetic data has 10 classes named class0..class9 (data.make_synthetic); a study can keep
# some of them with data.classes.
SYNTHETIC_CLASSES = tuple(f"class{i}" for i in range(10))
# Training images of the datasets with a fixed train split (CIFAR 50,000; Tiny ImageNet
# 100,000): a validation hold-out needs fewer than that.
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "tinyimagenet": 100_000}


def degradation_names() -> tuple[str, ...]:
    """Every installed degradation in canonical order: the paper's four, then plugins by name."""
    return registry.names(registry.DEGRADATIONS)


def _installed(group: str, v: str) -> str:
    if v not in registry.names(group):
        raise ValueError(f"unknown {registry.NOUNS[group]} {v!r}; installed: "
                         f"{list(registry.names(group))} (plugins add more through the "
                         f"{group!r} entry points, docs/plugins.md)")
    return v


def _has_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return True
    if isinstance(v, (list, tuple)):
        return any(_has_bool(x) for x in v)
    if isinstance(v, dict):
        return any(_has_bool(x) for x in v.values())
    return False


@functools.cache
def _numeric_fields(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(k for k, f in model.model_fields.items() if takes_number(f.annotation))


class Strict(BaseModel):
    # inf/nan are never a sensible lr, weight or temperature: a typo'd `.inf` fails here.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        # YAML 1.1 reads on/off/yes/no/true/false as booleans and pydantic turns True into 1:
        # `--set study.n_trials=on` would run 1 trial, `distill.epochs=yes` train 1 epoch
        if info.field_name in _numeric_fields(cls) and _has_bool(v):
            raise ValueError("a number is needed, got a boolean (YAML reads yes/no/on/off/"
                             "true/false as booleans); write the number")
        return v


# ---------------------------------------------------------------- pipeline
class DataConfig(Strict):
    dataset: str   # an installed dataset: cifar10, cifar100, tinyimagenet, imagefolder, ...
    root: str | None = None
    val_size: int = Field(5000, ge=0)
    seed: Seed = 0                      # the validation split and the synthetic images
    # a million 32x32 RGB images are 3 GB in memory; more is a typo, not a smoke test
    synthetic_train: int = Field(2500, ge=10, le=1_000_000)
    synthetic_test: int = Field(500, ge=10, le=1_000_000)
    train_subset: int | None = Field(None, ge=10)   # first N of the shuffled train set
    # imagefolder: class order; others: keep these classes, relabelled in this order
    classes: list[str] | None = Field(None, min_length=1)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        return _installed(registry.DATASETS, v)

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"repeated class in {v}")
        return v

    @model_validator(mode="after")
    def _classes_exist(self) -> DataConfig:
        if self.dataset == "synthetic" and self.classes is not None:
            unknown = [c for c in self.classes if c not in SYNTHETIC_CLASSES]
            if unknown:
                raise ValueError(f"data.classes {unknown} are not classes of the synthetic "
                                 f"dataset; allowed: {list(SYNTHETIC_CLASSES)}")
        return self

    def train_images(self) -> int | None:
        """How many training images the validation split is held out of, when the config alone
        says it (None for folders and kept classes: only the files know)."""
        n = None
        if self.dataset == "synthetic":
            n = self.synthetic_train
        elif self.classes is None:
            n = TRAIN_IMAGES.get(self.dataset)
        if self.train_subset is not None:
            n = self.train_subset if n is None else min(n, self.train_subset)
        return n


class TrainSpec(Strict):
    """One training stage: optimiser, schedule (stepped per epoch), batch and Cutout."""

    optimizer: Literal["sgd", "radam", "adam", "adamw"]
    lr: float = Field(gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)        # sgd only
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["multistep", "cosine", "constant"]
    milestones: list[int] = []
    gamma: float = Field(0.2, gt=0, le=1)
    t_max: int | None = Field(None, ge=1)           # cosine period in epochs; None = epochs
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)                   # per degradation
    cutout: int = Field(16, ge=0)                   # side of the square hole; 0 = off
    cutout_on: Literal["clean", "degraded", "both", "none"] = "degraded"

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(v, v[1:])) or any(m < 1 for m in v):
            raise ValueError(f"milestones must be increasing positive epochs, got {v}")
        return v


# Feature-cosine weights per ResNet stage: at least one layer (the loss of none is undefined),
# none negative (a negative weight rewards pulling the features apart).
FeatureLayers = Annotated[
    dict[Literal["stage1", "stage2", "stage3"], Annotated[float, Field(ge=0)]],
    Field(min_length=1),
]


class ExpertSpec(TrainSpec):
    ce_weight: float = Field(1.0, ge=0)
    feature_weight: float = Field(1.0, ge=0)
    feature_layers: FeatureLayers = {"stage3": 1.0}


class FusionSettings(Strict):
    """The `fusion` settings of every method. Each method's own arguments (weights, lambdas,
    density, drop_rate...) are declared beside its code in study/fusion/ and join these in
    FusionConfig below, so a new method with a new argument is one module."""

    method: str = "uniform"                  # a name of fusion.METHODS
    bn: Literal["copy_first", "average", "recompute"] = "copy_first"   # fusion.BN_MODES
    experts: list[str] | None = None      # which experts to fuse; None = all of `degradations`
    bn_batches: int = Field(20, ge=1)     # recompute: training batches to re-estimate BN stats

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        return _installed(registry.FUSION, v)

    @field_validator("experts")
    @classmethod
    def _known_experts(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _canonical_subset(v, degradation_names(), "fusion expert")


if TYPE_CHECKING:   # the methods' arguments are read by name (FusionMethod), not as attributes
    FusionConfig = FusionSettings
else:
    FusionConfig = create_model("FusionConfig", __base__=FusionSettings, __module__=__name__,
                                **fusion.argument_fields())


class DistillSpec(TrainSpec):
    loss: Literal["feature", "logit", "both"] = "feature"
    ce_weight: float = Field(0.1, ge=0)
    feature_weight: float = Field(1.0, ge=0)
    feature_layers: FeatureLayers = {"stage3": 1.0}
    kd_weight: float = Field(1.0, ge=0)
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1)
    teacher_input: Literal["clean", "degraded"] = "clean"
    same_images_per_degradation: bool = True


class EvalConfig(Strict):
    test_level_step: int = Field(1, ge=1)   # 1 = the paper protocol, every integer level
    val_level_step: int = Field(1, ge=1)
    batch_size: int = Field(1000, ge=1)
    seed: Seed = 0                          # the degraded copies, identical for every model
    degradations: list[str] = list(DEGRADATION_NAMES)

    @field_validator("degradations")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        return _canonical_subset(v, degradation_names(), "eval degradation")


class ValidationConfig(Strict):
    """How a trained stage scores each epoch for `selection: best_val` (the checkpoint kept).
    The reference code's validation loaders (batch 128, two persistent workers) draw a new
    random level and new noise for every image at every epoch, and its accuracy is the mean of
    its per-batch accuracies (MetricTracker.update(acc, n=1)): the last batch of a 10,000-image
    test set, 10,000 - 78 x 128 = 16 images, weighs as much as a full one, 1/79."""

    # fixed: one random level (and its noise) per image, drawn once from eval.seed: every epoch
    # scores the same images, so epochs differ by their weights only. per_epoch: drawn anew at
    # every epoch from (eval.seed, epoch), as the reference's loaders do; a resumed stage sees
    # the same draws. auto: per_epoch under protocol reference, fixed under holdout.
    draw: Literal["auto", "fixed", "per_epoch"] = "auto"
    # images: the share of the split's images classified right. batches: the mean of the
    # accuracies of consecutive batches of `batch_size` images, each weighing the same (the
    # reference's). auto: batches under protocol reference, images under holdout.
    accuracy: Literal["auto", "images", "batches"] = "auto"
    batch_size: int = Field(128, ge=1)   # accuracy: batches only; the reference's val loaders


class ComputeConfig(Strict):
    """How a pipeline runs, not what it computes: none of it changes the method's semantics."""

    # reference: the CPU TrainStream (bit-exact to the reference code's operators, numpy RNG);
    # device: DeviceTrainStream, the training set resident on the device and the augmentation
    # and degradations there in batches (same semantics, torch RNG, so other draws);
    # auto: device on CUDA, reference on CPU.
    data_path: Literal["auto", "reference", "device"] = "auto"
    # device path, JPEG: 1 banks all 100 qualities (exact); k banks every k-th and rounds the
    # level to the nearest banked one (45k CIFAR images x 200 copies = 28 GB at k=1, 3 GB at 10)
    jpeg_bank_step: int = Field(1, ge=1, le=99)
    # PIL processes for a missing bank; None = CPUs. No node has over 1024 CPUs to use.
    bank_workers: int | None = Field(None, ge=1, le=1024)
    channels_last: bool = False                     # device path: NHWC batches for cuDNN
    # torch.compile of the trained network ("reduce-overhead" = CUDA graphs): fewer launches
    # for a narrow ResNet56 at batch 128-512; the first epoch pays the compile.
    compile: Literal["none", "default", "reduce-overhead", "max-autotune"] = "none"
    # Mixed precision of the training forward passes: bf16 autocast (on CUDA where the GPU has
    # bf16, i.e. Ampere or newer; on CPU through CPU autocast). It changes the numbers, so it is
    # part of every trained stage's cache key and of each trial's provenance; the paper setting
    # trains in fp32 ("none").
    amp: Literal["none", "bf16"] = "none"


class PipelineConfig(Strict):
    data: DataConfig
    model: str   # an installed model: resnet56, tiny, ...
    degradations: list[str]
    salt_value: Literal[1, 255] = 1
    methods: list[str]
    selection: Literal["best_val", "last"] = "best_val"
    # holdout: data.val_size training images are the validation split that picks checkpoints
    # and trials; test is reported apart (honest). reference: the reference code's protocol, to
    # compare with the paper's tables: every training image trains, the "validation" is the
    # test set (one random level per image), ties go to the later epoch. Optimistic: every
    # place that shows its numbers says so.
    protocol: Literal["holdout", "reference"] = "holdout"
    # What the per-degradation chunks of a multi-degradation step share (Scratch, Vanilla FT,
    # Fusing, FusionDistill, BN re-estimation), when they hold the same images: "images" only
    # (each chunk its own flips, crops, levels, Cutout); "geometry" (and the same flip and crop
    # per image in every chunk); "reference" (as the reference code's identically seeded
    # loaders: geometry, plus blur and awgn at the same level per image, plus its Cutout
    # sharing). distill.same_images_per_degradation false: no sharing at all.
    chunk_sharing: Literal["images", "geometry", "reference"] = "reference"
    seed: Seed = 0                      # replicate r runs seed + r (study.replicates)
    # Under protocol holdout the defaults keep the estimate of each epoch as sharp as the split
    # allows: a fixed draw compares epochs on the same images (a redraw adds draw noise to every
    # epoch's score, and best_val then keeps the luckiest draw), and the share of images right
    # is the accuracy itself. Under reference they follow the reference code (ValidationConfig).
    validation: ValidationConfig = ValidationConfig()
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compute: ComputeConfig = ComputeConfig()
    eval: EvalConfig = EvalConfig()
    base: TrainSpec
    expert: ExpertSpec
    fusion: FusionConfig = FusionConfig()
    distill: DistillSpec
    scratch: TrainSpec
    vanilla_ft: TrainSpec
    fusing: TrainSpec

    @field_validator("degradations")
    @classmethod
    def _known_degradations(cls, v: list[str]) -> list[str]:
        return _canonical_subset(v, degradation_names(), "degradation")

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        return _installed(registry.MODELS, v)

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        return _canonical_subset(v, METHOD_NAMES, "method")

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        chosen = self.fused_experts
        if not set(chosen) <= set(self.degradations):
            raise ValueError(
                f"fusion.experts {chosen} must be a subset of degradations {self.degradations}"
            )
        # the method's own rules on the arguments it reads (study/fusion/<method>.py)
        method = fusion.get(self.fusion.method)
        problems = method.check(method.plain_arguments(self.fusion.model_dump(), chosen),
                                len(chosen))
        if problems:
            raise ValueError("; ".join(problems))
        if self.data.dataset in ("cifar10", "cifar100", "tinyimagenet", "imagefolder") and (
            not self.data.root
        ):
            raise ValueError(
                f"data.root is required for dataset '{self.data.dataset}' (the folder that holds "
                "the files; see `study data download --help`)"
            )
        n = self.data.train_images()
        if self.protocol == "holdout" and n is not None and self.data.val_size >= n:
            raise ValueError(
                f"data.val_size {self.data.val_size} leaves no training images: the training "
                f"split has {n} (data.synthetic_train, data.train_subset or the dataset's own); "
                "need val_size < that"
            )
        return self

    def cannot_measure(self, method: str, metric: str) -> str | None:
        """Why the rows of a run of this pipeline hold no `metric` for `method`, or None."""
        split, _, aggregate = metric.partition(".")
        if split == "val" and self.protocol == "holdout" and self.data.val_size == 0:
            return ("data.val_size is 0, so nothing is held out for validation: give "
                    "data.val_size > 0, or measure on test")
        if aggregate in degradation_names() and aggregate not in self.eval.degradations:
            return (f"eval.degradations {self.eval.degradations} does not evaluate "
                    f"{aggregate!r}; add it there, or measure avg or clean")
        if aggregate == "clean" and method in METHODS_WITHOUT_CLEAN:
            return (f"{method} has no clean accuracy (it picks the expert of an image's "
                    "degradation; a clean image has none); measure a degradation or avg")
        return None

    @property
    def validation_draw(self) -> Literal["fixed", "per_epoch"]:
        """validation.draw with `auto` resolved by the protocol."""
        draw = self.validation.draw
        if draw == "auto":
            return "per_epoch" if self.protocol == "reference" else "fixed"
        return draw

    @property
    def validation_accuracy(self) -> Literal["images", "batches"]:
        """validation.accuracy with `auto` resolved by the protocol."""
        accuracy = self.validation.accuracy
        if accuracy == "auto":
            return "batches" if self.protocol == "reference" else "images"
        return accuracy

    @property
    def fused_experts(self) -> list[str]:
        chosen = self.fusion.experts if self.fusion.experts is not None else self.degradations
        return [d for d in degradation_names() if d in chosen]


def _canonical_subset(v: Iterable[str], allowed: tuple[str, ...], what: str) -> list[str]:
    """Unknown names are errors; order is canonical (the paper's copy_first keeps jpeg's BN)."""
    v = list(v)
    unknown = [x for x in v if x not in allowed]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; allowed: {list(allowed)}")
    if not v:
        raise ValueError(f"at least one {what} is needed; allowed: {list(allowed)}")
    if len(set(v)) != len(v):
        raise ValueError(f"repeated {what} in {v}")
    return [x for x in allowed if x in v]


# ---------------------------------------------------------------- study, executor
class ObjectiveConfig(Strict):
    metric: str = "val.avg"         # <split>.<avg|clean|jpeg|blur|awgn|saltpepper|a plugin's>
    #                                 or cost.hours (COST_METRIC)
    method: str = "fusiondistill"   # whose accuracy
    direction: Literal["maximize", "minimize"] = "maximize"

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        split, _, agg = v.partition(".")
        aggregates = ["avg", "clean", *degradation_names()]
        if v != COST_METRIC and (split not in METRIC_SPLITS or agg not in aggregates):
            raise ValueError(f"metric is <split>.<aggregate> with split in {list(METRIC_SPLITS)} "
                             f"and aggregate in {aggregates}, e.g. val.avg; or {COST_METRIC}")
        return v

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in METHOD_NAMES:
            raise ValueError(f"unknown method {v!r}; allowed: {list(METHOD_NAMES)}")
        return v


class WarmStartConfig(Strict):
    """`study.warm_start`: start from an earlier study's best configurations (warm_start.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False,
                              populate_by_name=True)
    # the earlier study's file: relative to this study file's folder, else as `--space` finds
    # it (the working directory, then the shipped search spaces)
    source: str = Field(alias="from", min_length=1)
    top_k: int = Field(3, ge=1)


class StudySection(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    objectives: list[ObjectiveConfig] = Field([ObjectiveConfig()], min_length=1)
    n_trials: int = Field(20, ge=1)
    sampler: Literal["tpe", "random", "cmaes", "gp", "nsga2", "bruteforce"] = "tpe"
    pruner: Literal["median", "successive_halving", "hyperband", "none"] = "median"
    # Optuna's min_resource for successive_halving and hyperband: the epochs of the pruned
    # stage every trial trains before its first rung. 1 keeps a CPU study's 4-10 epoch
    # distillation at two rungs or more; on the paper's 100 epochs 5-10 is the usual choice.
    pruner_min_epochs: int = Field(1, ge=1)
    seed: Seed = 0                  # the sampler's
    replicates: int = Field(1, ge=1)
    # Trial 0 of a new study runs the study file's own pipeline exactly (enqueued), when those
    # values lie inside the space: the reference every paired difference of the report uses.
    baseline: bool = True
    # The circuit breaker: a launch stops (exit 3) when its first K finished trials, or K in a
    # row, fail with a code or configuration error; such a study would burn every GPU-hour of
    # its budget producing tracebacks. 0 turns it off.
    stop_after_failures: int = Field(3, ge=0)
    storage: str | None = None      # None = JournalStorage at results/<study>/optuna.journal
    warm_start: WarmStartConfig | None = None

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v.lower() in (r.lower() for r in RESERVED_STUDY_NAMES):
            raise ValueError(f"{v!r} is reserved: results/{v} holds something else than a "
                             f"study; reserved names: {list(RESERVED_STUDY_NAMES)}")
        return v

    @field_validator("storage")
    @classmethod
    def _known_scheme(cls, v: str | None) -> str | None:
        # anything else with a scheme would silently become a journal file named 'redis:/...'
        scheme = v.split("://", 1)[0] if v and "://" in v else None
        if scheme is not None and scheme.split("+")[0] not in STORAGE_SCHEMES:
            raise ValueError(f"unknown storage scheme {scheme!r}; allowed: a journal file path "
                             f"or a URL {[x + '://...' for x in STORAGE_SCHEMES]}")
        return v


class SlurmSettings(Strict):
    """Site settings for SLURM jobs; `preset` names slurm/presets/<name>.yaml, merged under."""

    preset: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gres: str | None = None                  # e.g. gpu:1
    gpus_per_node: int | None = Field(None, ge=0)
    cpus_per_task: int = Field(1, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    time_min: int = Field(60, ge=1)          # per trial job; a timeout requeues and resumes
    stage_time_min: int | None = Field(None, ge=1)   # base/expert jobs; None = time_min
    driver_time_min: int = Field(7 * 24 * 60, ge=1)  # the --detach driver job
    constraint: str | None = None
    setup: list[str] = []                    # lines before the job, e.g. `module load cuda`
    additional: dict[str, str | int] = {}    # any other sbatch option, e.g. {reservation: x}
    signal_delay_s: int = Field(90, ge=10)   # USR2 this long before the limit: checkpoint
    # requeues per job after a time limit or a preemption, each resuming from checkpoints;
    # past it the trial fails with fail_kind "timeout" and is retried (executor.retries)
    max_requeues: int = Field(10, ge=0, le=1000)
    # trials run side by side in one job, as processes sharing its GPU: one ResNet56 step-4
    # trial leaves an H200 mostly idle (12,300 images/s alone, 18,800 summed over 4 processes)
    trials_per_job: int = Field(1, ge=1, le=64)

    @field_validator("partition", "account", "qos", "gres", "constraint", "additional")
    @classmethod
    def _one_line(cls, v: Any) -> Any:
        # each becomes one `#SBATCH --key=value` line: a newline would start a shell line
        for x in (v.items() if isinstance(v, dict) else [v]):
            if any(isinstance(y, str) and re.search(r"[\x00-\x1f]", y)
                   for y in (x if isinstance(x, tuple) else (x,))):
                raise ValueError(f"must be one line without control characters, got {x!r}")
        return v


class ExecutorSection(Strict):
    backend: Literal["debug", "local", "slurm"] = "debug"
    parallel: int = Field(1, ge=1)
    retries: int = Field(2, ge=0)    # infrastructure failures retried per configuration
    # GPUs the local executor hands out, one per worker (CUDA_VISIBLE_DEVICES): "auto" = every
    # device this machine shows, "none" = none (workers run on CPU), or a list of device
    # indices; K trials in flight spread over G GPUs, K/G each. SLURM jobs use the GPUs of
    # their allocation (a packed job spreads its trials over executor.slurm.gpus_per_node).
    gpus: Literal["auto", "none"] | list[Annotated[int, Field(ge=0)]] = "auto"
    slurm: SlurmSettings = SlurmSettings()

    @field_validator("gpus")
    @classmethod
    def _distinct(cls, v: Any) -> Any:
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError(f"a list of distinct device indices, e.g. [0, 1], got {v}")
        return v

    @model_validator(mode="after")
    def _packs_fit(self) -> ExecutorSection:
        # a pack starts only when all of its trials fit in the free slots: a bigger one than
        # `parallel` would never start, and the launcher (or a --detach driver) would sit idle
        if self.backend == "slurm" and self.slurm.trials_per_job > self.parallel:
            raise ValueError(f"executor.slurm.trials_per_job ({self.slurm.trials_per_job}) "
                             f"exceeds executor.parallel ({self.parallel}): a pack would never "
                             "fit in the free slots; raise parallel (--parallel) or lower "
                             "trials_per_job")
        return self


class StudyFile(Strict):
    study: StudySection
    executor: ExecutorSection = ExecutorSection()
    pipeline: PipelineConfig
    space: dict[str, Any] = {}

    @model_validator(mode="after")
    def _objectives_are_run(self) -> StudyFile:
        missing = [o.method for o in self.study.objectives
                   if o.method not in self.pipeline.methods]
        if missing:
            # caught here, not as a FAIL of every trial
            raise ValueError(f"study.objectives use {missing}, which pipeline.methods "
                             f"{self.pipeline.methods} does not run")
        named = [(o.method, o.metric) for o in self.study.objectives]
        if len(set(named)) != len(named):   # each has its results column, named after it
            raise ValueError(f"study.objectives name {named}: each (method, metric) at most "
                             "once")
        if len(self.study.objectives) > 1 and "pruner" in self.study.model_fields_set \
                and self.study.pruner != "none":
            # Optuna's trial.report and should_prune serve single-objective studies only
            raise ValueError(f"study.pruner {self.study.pruner!r} with "
                             f"{len(self.study.objectives)} objectives: Optuna prunes "
                             "single-objective studies only; set study.pruner: none (a "
                             "multi-objective study without the key runs unpruned)")
        costs = [o for o in self.study.objectives if o.metric == COST_METRIC]
        if costs and (self.study.objectives[0].metric == COST_METRIC
                      or any(o.direction != "minimize" for o in costs)):
            # status, confirm and the noise statements read the first objective as an accuracy
            raise ValueError(f"study.objectives: {COST_METRIC} is minimized and comes after an "
                             "accuracy objective, e.g. [{metric: val.avg}, {metric: "
                             f"{COST_METRIC}, direction: minimize}}]")
        for o in self.study.objectives:
            why = self.pipeline.cannot_measure(o.method, o.metric)
            if why:   # else every trial trains fully, then fails on a number that is not there
                raise ValueError(f"study.objectives: {o.method} {o.metric} cannot be measured: "
                                 f"{why}")
        last = self.pipeline.seed + self.study.replicates - 1
        if last > SEED_MAX:
            raise ValueError(f"pipeline.seed {self.pipeline.seed} + study.replicates "
                             f"{self.study.replicates} - 1 = {last} exceeds the largest seed "
                             f"{SEED_MAX} (2**32 - 1); lower one of them")
        return self


# ---------------------------------------------------------------- tree helpers
def set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for k in path[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[path[-1]] = value
