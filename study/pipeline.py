"""Runs the stage registry (study/stages.py) for one pipeline config: the only module that reads
the pipeline config tree besides the registry's declarations.

`Pipeline.network(name)` returns a stage's network from memory, from the content-keyed cache, or
builds it (parents first) with the stage's declared build function; `key(name)` hashes exactly
the declared key fields plus the parents' keys. `run()` trains what the configured methods need
and evaluates them (level-wise, on validation and test). So a study that varies only fusion and
distillation trains the base and the experts once.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from study import (
    augment,
    data,
    degradations,
    device_degrade,
    evaluation,
    fusion,
    losses,
    models,
    stages,
    train,
)
from study.augment import DeviceTrainStream, TrainStream
from study.cache import StageCache, content_key
from study.config import PipelineConfig, TrainSpec
from study.degradations import CLEAN
from study.errors import ConfigError
from study.fusion import merge
from study.progress import Progress

EpochHook = Callable[[int, "float | None"], None]


@dataclass
class StageRecord:
    stage: str
    key: str
    hit: bool
    wall_s: float          # this run's time for the stage (load time on a hit)
    build_s: float         # what building it cost when it was built (the time a hit saves)


@dataclass
class PipelineResult:
    rows: list[dict[str, Any]]                 # one per (model, split, degradation, level)
    stages: list[StageRecord] = field(default_factory=list)
    histories: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    device: str = "cpu"


def _kept(meta: dict[str, Any], selection: str) -> str:
    """Which epoch's weights a built stage keeps, and why: its progress bar ends on the last
    epoch's val, which best_val selection need not keep."""
    kept, history = meta.get("kept_epoch"), meta.get("history") or []
    if kept is None:
        return ""
    val = next((r.get("val") for r in history if r.get("epoch") == kept), None)
    why = ("best validation" if selection == "best_val" and val is not None
           else "the last epoch")
    return (f", kept epoch {kept}/{len(history)} ({why}"
            + (f", val {val:.3f})" if val is not None else ")"))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("key 'pipeline.device': 'cuda' asked for, but torch sees no GPU on "
                          "this machine; allowed here: auto, cpu")
    return torch.device(name)


class Pipeline:
    """One configuration's stages and evaluation; `run()` executes the methods asked for."""

    def __init__(self, cfg: PipelineConfig, cache: StageCache, *,
                 log: Callable[[str], None] = print,
                 on_epoch: EpochHook | None = None, final_stage: str | None = None,
                 progress: Progress | None = None):
        self.cfg, self.cache, self.log = cfg, cache, log
        # bars or lines while stages train (study/progress.py); a worker adds its heartbeat
        self.progress = progress or Progress.from_env(log)
        self.on_epoch, self.final_stage = on_epoch, final_stage
        self.device = resolve_device(cfg.device)
        self.stages: list[StageRecord] = []
        self.histories: dict[str, list[dict[str, float]]] = {}
        self.kept_epochs: dict[str, int | None] = {}   # stages built here: whose weights kept
        self._nets: dict[str, nn.Module] = {}
        # validation copies: (degradation, draw) -> normalised images; draw 0 is the fixed one
        self._val_views: dict[tuple[str, int], torch.Tensor] = {}

    # ------------------------------------------------------------ data (loaded on first use:
    # computing keys, e.g. on a login node, needs none)
    @functools.cached_property
    def dataset(self) -> data.Dataset:
        d = self.cfg.data
        return data.load_dataset(d.dataset, d.root, seed=d.seed,
                                 synthetic_train=d.synthetic_train,
                                 synthetic_test=d.synthetic_test, classes=d.classes)

    @functools.cached_property
    def _splits(self) -> tuple[data.Split, data.Split]:
        d, tr = self.cfg.data, self.dataset.train
        if d.train_subset is not None and d.train_subset < len(tr):
            tr = tr.subset(np.random.default_rng(d.seed).permutation(len(tr))[:d.train_subset])
        if self.cfg.protocol == "reference":   # all of train trains; test picks checkpoints
            return tr, self.dataset.test
        return data.split_validation(tr, d.val_size, d.seed)

    @property
    def train(self) -> data.Split:
        return self._splits[0]

    @property
    def val(self) -> data.Split:
        return self._splits[1]

    @property
    def test(self) -> data.Split:
        return self.dataset.test

    def cached(self, name: str) -> bool:
        return (self.cache.entry(self._folder(name), self.key(name)) / "meta.json").exists()

    # ------------------------------------------------------------ keys
    @property
    def device_path(self) -> bool:
        """Training batches from DeviceTrainStream (see ComputeConfig.data_path). A plugin
        degradation without a device operator keeps `auto` on the reference path and makes
        `device` a ConfigError naming it."""
        path = self.cfg.compute.data_path
        wanted = path == "device" or (path == "auto" and self.device.type == "cuda")
        missing = [d for d in self.cfg.degradations if not device_degrade.has_operator(d)]
        if wanted and missing and path == "device":
            raise ConfigError(f"key 'pipeline.compute.data_path': 'device', but degradation "
                              f"{missing} has no device operator (its plugin declares none); "
                              "use 'reference' or 'auto'")
        return wanted and not missing

    def build_seconds(self, name: str) -> float:
        """What building stage `name` took: this run's record, else its cache entry's (a
        stage the run never needed to load, e.g. the base behind cached experts); 0 where
        neither knows."""
        for record in self.stages:
            if record.stage == name:
                return record.build_s
        meta = self.cache.entry(self._folder(name), self.key(name)) / "meta.json"
        if not meta.exists():
            return 0.0
        return float(self.cache.meta(self._folder(name), self.key(name)).get("build_s", 0.0))

    @functools.cached_property
    def key_env(self) -> stages.KeyEnv:
        return stages.KeyEnv(self.device_path, self.device.type)

    def key_fields(self, name: str) -> dict[str, Any]:
        """The config fields (dotted path -> value) the stage's key covers under this config."""
        stage, degradation = stages.parse_instance(name)
        return stage.key_fields(self.cfg, degradation, self.key_env)

    def parents(self, name: str) -> list[str]:
        stage, degradation = stages.parse_instance(name)
        return stage.parents(self.cfg, degradation)

    def key(self, name: str) -> str:
        """Content key: the declared key fields plus the parents' keys."""
        return content_key(self._folder(name), self.key_fields(name),
                           [self.key(p) for p in self.parents(name)])

    @staticmethod
    def _folder(name: str) -> str:
        return stages.parse_instance(name)[0].folder

    # ------------------------------------------------------------ networks
    def new_model(self) -> nn.Module:
        torch.manual_seed(self.cfg.seed)
        return models.build_model(self.cfg.model, self.dataset.num_classes).to(self.device)

    def copy_of(self, name: str) -> nn.Module:
        net = self.new_model()
        net.load_state_dict(self.network(name).state_dict())
        return net

    def network(self, name: str) -> nn.Module:
        """The trained network of a stage: from memory, from the cache, or built now."""
        if name in self._nets:
            return self._nets[name]
        stage, degradation = stages.parse_instance(name)
        key, folder = self.key(name), stage.folder
        t0 = time.perf_counter()
        with self.cache.lock(folder, key):
            state = self.cache.load_state(folder, key)
            hit = state is not None
            if hit:
                build_s = float(self.cache.meta(folder, key).get("build_s", 0.0))
                self.log(f"  {name:<17} cache hit {key} (saves {build_s:.1f}s)")
            else:
                for parent in self.parents(name):   # built first, so build_s is this stage's own
                    self.network(parent)
                t0 = time.perf_counter()
                state, meta = stage.build(self, name, degradation)
                build_s = time.perf_counter() - t0
                self.cache.save_state(folder, key, state,
                                      meta | {"build_s": build_s, "stage_name": name,
                                              "key_fields": self.key_fields(name)})
                self.checkpoint_path(name, key).unlink(missing_ok=True)
                self.log(f"  {name:<17} built     {key} in {build_s:.1f}s"
                         + _kept(meta, self.cfg.selection))
        assert state is not None   # loaded, or built just now
        net = self.new_model()
        net.load_state_dict(state)
        net.eval()
        self._nets[name] = net
        self.stages.append(StageRecord(name, key, hit, time.perf_counter() - t0, build_s))
        return net

    def checkpoint_path(self, name: str, key: str) -> Path:
        return self.cache.root / ".work" / f"{name}-{key}.pt"

    def fuse(self) -> dict[str, torch.Tensor]:
        c, f = self.cfg, self.cfg.fusion
        names = c.fused_experts
        method = fusion.get(f.method)
        fused = merge.fuse(
            [self.network(stages.instance("expert", d)).state_dict() for d in names], f.method,
            base=self.network("base").state_dict() if method.needs_base else None, bn=f.bn,
            seed=c.seed, **method.plain_arguments(f.model_dump(), names))
        if f.bn == "recompute":
            net = self.new_model()
            net.load_state_dict(fused)
            stream = self._stream(c.expert, c.degradations, same_images=True)
            batches = (b.degraded for _, b in zip(range(f.bn_batches), stream.epoch(0)))
            merge.recompute_bn_statistics(net, batches, self.device)
            fused = net.state_dict()
        return {k: v.detach().cpu() for k, v in fused.items()}

    # ------------------------------------------------------------ training
    @functools.cached_property
    def _jpeg_bank(self) -> device_degrade.JpegBank:
        """PIL's JPEG of every training image at every banked quality and both orientations,
        resident on the device; cached per (images, quality, orientation), so one study builds
        it once for all its stages and trials."""
        c = self.cfg.compute
        return device_degrade.build_jpeg_bank(
            self.train.images, qualities=device_degrade.bank_qualities(c.jpeg_bank_step),
            cache=self.cache, device=self.device,
            workers=c.bank_workers or device_degrade.default_workers(), log=self.log)

    def _stream(self, spec: TrainSpec, names: list[str], same_images: bool
                ) -> TrainStream | DeviceTrainStream:
        common: dict[str, Any] = dict(
            degradations=names, batch_size=spec.batch_size, cutout=spec.cutout,
            cutout_on=spec.cutout_on,
            share=self.cfg.chunk_sharing if same_images else "nothing",
            salt_value=self.cfg.salt_value,
            seed=self.cfg.seed, device=self.device)
        if not self.device_path:
            return TrainStream(self.train, self.dataset.mean, self.dataset.std, **common)
        return DeviceTrainStream(self.train, self.dataset.mean, self.dataset.std, **common,
                                 jpeg_bank=self._jpeg_bank if "jpeg" in names else None,
                                 channels_last=self.cfg.compute.channels_last)

    def fit(self, name: str, spec: TrainSpec, model: nn.Module, degradations: list[str],
            objective: losses.Objective, *, same_images: bool = True) -> stages.Built:
        """Train `model` with `spec` on batches of `degradations`, validating on the same
        degradations, with epoch checkpoints (a killed stage resumes)."""
        stream = self._stream(spec, degradations, same_images)
        opt = train.make_optimizer(model.parameters(), spec.optimizer, spec.lr, spec.momentum,
                                   spec.weight_decay)
        sched = train.make_scheduler(opt, spec.schedule, spec.epochs, spec.milestones,
                                     spec.gamma, spec.t_max)
        (self.cache.root / ".work").mkdir(parents=True, exist_ok=True)
        hook = self.on_epoch if name == self.final_stage else None
        if self.cfg.compute.channels_last:
            model = model.to(memory_format=torch.channels_last)
        mode = self.cfg.compute.compile
        # the compiled module runs the steps; `model` keeps the plain state dict keys
        forward = None if mode == "none" else cast(nn.Module, torch.compile(
            model, mode=None if mode == "default" else mode))   # an OptimizedModule
        with self.progress.stage(name, stream.steps_per_epoch) as watch:
            result = train.fit(model, epochs=spec.epochs, optimizer=opt, scheduler=sched,
                               batches=stream.epoch, loss_fn=objective,
                               validate=lambda m, e: self._val_accuracy(m, degradations, e),
                               select=self.cfg.selection,
                               checkpoint=self.checkpoint_path(name, self.key(name)),
                               on_epoch=hook, forward=forward, progress=watch,
                               autocast=torch.bfloat16 if self.cfg.compute.amp == "bf16"
                               else None,
                               # the reference code keeps the later of equally scored epochs
                               ties="later" if self.cfg.protocol == "reference" else "earlier")
        if result.resumed_from:
            self.log(f"  {name:<17} resumed   from epoch {result.resumed_from}")
        self.histories[name] = result.history
        self.kept_epochs[name] = result.kept_epoch
        return result.state, {"best_val": result.best_val, "history": result.history,
                              "kept_epoch": result.kept_epoch}

    # ------------------------------------------------------------ validation during training
    def _val_view(self, name: str, epoch: int) -> torch.Tensor:
        """The validation images of `name` scored after `epoch` (1-based), normalised on the
        device: one random level per image, drawn once (validation draw `fixed`, the same images
        every epoch) or per epoch (`per_epoch`). Clean images draw nothing."""
        draw = epoch if name != CLEAN and self.cfg.validation_draw == "per_epoch" else 0
        if (name, draw) not in self._val_views:
            # a redraw replaces the previous epoch's copy: one per degradation in memory
            for old in [k for k in self._val_views if k[0] == name]:
                del self._val_views[old]
            self._val_views[name, draw] = augment.normalise(
                self._val_copy(name, draw), self.dataset.mean, self.dataset.std, self.device)
        return self._val_views[name, draw]

    def _val_copy(self, name: str, draw: int) -> np.ndarray:
        """The validation images at one random level each. Draw 0, the fixed draw, is
        evaluation.random_level_copy (the stream of every earlier release, so fixed keys keep
        their cache entries); draw e > 0 adds the epoch to that stream's seed: a pure function
        of (eval.seed, degradation, epoch), whoever computes it and whenever. A redraw runs
        the CPU operators: 0.8 (blur) to 3.3 s (JPEG) per 10,000 32x32 images on a busy
        2-core box, so ~7 s an epoch for four degradations of CIFAR's test set."""
        e, images = self.cfg.eval, self.val.images
        if name == CLEAN:
            return images
        if draw == 0:
            return evaluation.random_level_copy(images, name, e.seed, self.cfg.salt_value)
        index = degradations.stream_index(name)   # as the evaluation's copies
        rng = np.random.default_rng([e.seed, index, 10_000, draw])
        return degradations.degrade_batch(
            images, name, degradations.random_levels(name, len(images), rng), rng,
            self.cfg.salt_value)

    def _val_accuracy(self, model: nn.Module, names: list[str], epoch: int) -> float:
        """The mean over `names` of each one's validation accuracy after `epoch`. With
        validation accuracy `batches`, each is the mean over batches of validation.batch_size
        images in split order: the reference concatenates the four degradations' batches of the
        same 128 images into one of 512, whose accuracy is the mean of the four chunks', so
        the mean over its batches is this mean over degradations of per-batch means."""
        if len(self.val) == 0:
            return float("nan")
        y = torch.from_numpy(self.val.labels).to(self.device)
        per_batch = (self.cfg.validation.batch_size
                     if self.cfg.validation_accuracy == "batches" else None)
        return float(np.mean([train.accuracy(model, self._val_view(n, epoch), y,
                                             self.cfg.eval.batch_size, per_batch=per_batch)
                              for n in names]))

    # ------------------------------------------------------------ evaluation
    def _method_networks(self, method: str) -> list[str]:
        return stages.METHODS[method].networks(self.cfg)

    def _combiner(self, method: str) -> evaluation.Combiner:
        combine = stages.METHODS[method].combine
        experts = {d: stages.instance("expert", d) for d in self.cfg.degradations}
        if combine == "oracle":
            return lambda lg, d: lg[experts[d]].argmax(1) if d in experts else None
        if combine == "ensemble":
            return lambda lg, d: evaluation.vote([lg[e] for e in experts.values()])
        return lambda lg, d: lg[method].argmax(1)

    def degraded_copies(self, split: str, images: np.ndarray
                        ) -> Callable[[str, int], np.ndarray]:
        """The test protocol's degraded copies of a split, each cached as a bank: they are
        deterministic (seeded per degradation and level) and the same for every model and trial.
        Building one costs ~1 s per noise or salt-and-pepper level on 10,000 CIFAR images (77
        such levels: over a minute per split); reading its 30 MB bank back ~0.07 s. About 7 GB
        of banks per 10k-image test set, all 229 copies."""
        e = self.cfg.eval

        def copy(name: str, level: int) -> np.ndarray:
            key = self.bank_key(split, name, level)
            bank = self.cache.load_array("bank", key)
            if bank is None:
                bank = evaluation.degraded_copy(images, name, level, e.seed, self.cfg.salt_value)
                self.cache.save_array("bank", key, bank, {"split": split, "level": level})
            return bank
        return copy

    def bank_key(self, split: str, degradation: str, level: int) -> str:
        """The key of one degraded copy of a split (see stages.copy_fields)."""
        return content_key("bank", stages.copy_fields(self.cfg, split, degradation, level))

    def evaluation_key(self, method: str, split: str) -> str:
        """The key of one method's evaluation rows on a split: what evaluation reads
        (stages.evaluation_fields) and the keys of the networks it evaluates."""
        e = self.cfg.eval
        step = e.val_level_step if split == "val" else e.test_level_step
        return content_key("eval", stages.evaluation_fields(self.cfg, split, step)
                           | {"method": method},
                           [self.key(n) for n in self._method_networks(method)])

    def evaluate(self, split: str) -> list[dict[str, Any]]:
        c, e = self.cfg, self.cfg.eval
        sp = self.val if split == "val" else self.test
        if len(sp) == 0:
            return []
        step = e.val_level_step if split == "val" else e.test_level_step
        rows: list[dict[str, Any]] = []
        todo: dict[str, str] = {}
        for m in c.methods:
            k = self.evaluation_key(m, split)
            cached = self.cache.load_json("eval", k)
            if cached is None:
                todo[m] = k
            else:
                rows += cached
        if todo:
            nets = {n: self.network(n) for m in todo for n in self._method_networks(m)}
            t0 = time.perf_counter()
            plan = evaluation.level_plan(e.degradations, step)
            with self.progress.evaluation(split, len(plan)) as watched:   # levels done of all
                new = evaluation.evaluate(
                    nets, {m: self._combiner(m) for m in todo}, sp.images, sp.labels, plan,
                    watched(self.degraded_copies(split, sp.images)),
                    self.dataset.mean, self.dataset.std, e.batch_size, self.device)
            for r in new:
                r["split"] = split
                r["level_step"] = step
            self.log(f"  evaluated {split} ({len(new)} rows, {time.perf_counter() - t0:.1f}s)")
            for m, k in todo.items():
                self.cache.save_json("eval", k, [r for r in new if r["model"] == m],
                                     {"method": m, "split": split})
            rows += new
        return rows

    def run(self) -> PipelineResult:
        for m in self.cfg.methods:                 # train in the paper's order, reusing the cache
            for n in self._method_networks(m):
                self.network(n)
        rows = self.evaluate("val") + self.evaluate("test")
        return PipelineResult(rows, self.stages, self.histories, str(self.device))


