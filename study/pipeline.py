"""Stages and methods of the paper's tables: the only module that reads the pipeline config tree.

Stages: base (clean) -> one expert per degradation (ILIAC: frozen base teacher on clean images,
student on degraded, CE + feature cosine) -> fuse (a fusion method over the experts' weights) ->
distill (FusionDistill: student from the fused model, every expert teaches its own degradation).
Methods on top: oracle, ensemble, scratch, vanilla_ft, modelsoups, fusing, fusiondistill.
Every trained stage goes through the content-keyed StageCache, so a study that varies only fusion
and distillation trains the base and the experts once.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from study import augment, data, device_degrade, evaluation, fusion, losses, models, train
from study.augment import CLEAN, Batch, DeviceTrainStream, TrainStream
from study.cache import StageCache, content_key
from study.config import PipelineConfig, TrainSpec

# Which trained networks each method needs; "expert" means all experts of `degradations`.
NEEDS = {
    "oracle": ["expert"], "ensemble": ["expert"], "scratch": ["scratch"],
    "vanilla_ft": ["vanilla_ft"], "modelsoups": ["modelsoups"], "fusing": ["fusing"],
    "fusiondistill": ["fusiondistill"],
}
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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for but torch sees no GPU")
    return torch.device(name)


class Pipeline:
    """One configuration's stages and evaluation; `run()` executes the methods asked for."""

    def __init__(self, cfg: PipelineConfig, cache: StageCache, *,
                 log: Callable[[str], None] = print,
                 on_epoch: EpochHook | None = None, final_stage: str | None = None):
        self.cfg, self.cache, self.log = cfg, cache, log
        self.on_epoch, self.final_stage = on_epoch, final_stage
        self.device = resolve_device(cfg.device)
        self.stages: list[StageRecord] = []
        self.histories: dict[str, list[dict[str, float]]] = {}
        self._nets: dict[str, nn.Module] = {}
        self._val_views: dict[str, torch.Tensor] = {}

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

    def cached(self, stage: str) -> bool:
        return (self.cache.entry(self._cache_stage(stage), self.key(stage)) / "meta.json").exists()

    # ------------------------------------------------------------ keys
    def _salt(self, names: list[str]) -> dict[str, int]:
        return {"salt_value": self.cfg.salt_value} if "saltpepper" in names else {}

    @property
    def device_path(self) -> bool:
        """Training batches from DeviceTrainStream (see ComputeConfig.data_path)."""
        path = self.cfg.compute.data_path
        return path == "device" or (path == "auto" and self.device.type == "cuda")

    def _data_path_slice(self, names: list[str]) -> dict[str, Any]:
        # The device path draws from torch generators (CPU and CUDA ones are different streams),
        # so its weights differ from the reference path's: another cache entry. The reference
        # path adds nothing, so its keys are those of every earlier release.
        if not self.device_path:
            return {}
        out: dict[str, Any] = {"data_path": "device", "device_type": self.device.type}
        if "jpeg" in names:
            out["jpeg_bank_step"] = self.cfg.compute.jpeg_bank_step
        return out

    def _stage_slice(self, spec: TrainSpec, names: list[str]) -> dict[str, Any]:
        return {"spec": spec.model_dump(), "degradations": names, "seed": self.cfg.seed,
                "selection": self.cfg.selection, **self._salt(names),
                **self._data_path_slice(names)}

    def data_slice(self) -> dict[str, Any]:
        return self.cfg.data.model_dump() | {"model": self.cfg.model}

    def key(self, stage: str) -> str:
        """Content key: the config slice this stage reads plus its parents' keys."""
        return content_key(self._cache_stage(stage), self._slice(stage),
                           [self.key(p) for p in self._parents(stage)])

    @staticmethod
    def _cache_stage(stage: str) -> str:
        return "expert" if stage.startswith("expert_") else {"modelsoups": "fuse"}.get(stage, stage)

    def _slice(self, stage: str) -> dict[str, Any]:
        c = self.cfg
        if stage == "base":
            return self._stage_slice(c.base, [CLEAN]) | self.data_slice()
        if stage.startswith("expert_"):
            return self._stage_slice(c.expert, [stage.removeprefix("expert_")])
        if stage == "modelsoups":
            f = c.fusion.model_dump() | {"experts": c.fused_experts}
            if f["bn"] == "recompute":   # re-estimated on degraded training batches
                f |= {"degradations": c.degradations, "seed": c.seed, **self._salt(c.degradations),
                      **self._data_path_slice(c.degradations)}
            return f
        if stage == "scratch":
            return self._stage_slice(c.scratch, c.degradations) | self.data_slice()
        specs = {"fusiondistill": c.distill, "vanilla_ft": c.vanilla_ft, "fusing": c.fusing}
        if stage not in specs:
            raise ValueError(f"unknown stage '{stage}'")
        return self._stage_slice(specs[stage], c.degradations)

    # ------------------------------------------------------------ networks
    def new_model(self) -> nn.Module:
        torch.manual_seed(self.cfg.seed)
        return models.build_model(self.cfg.model, self.dataset.num_classes).to(self.device)

    def network(self, stage: str) -> nn.Module:
        """The trained network of a stage: from memory, from the cache, or built now."""
        if stage in self._nets:
            return self._nets[stage]
        key = self.key(stage)
        cache_stage = self._cache_stage(stage)
        t0 = time.perf_counter()
        with self.cache.lock(cache_stage, key):
            state = self.cache.load_state(cache_stage, key)
            hit = state is not None
            if hit:
                build_s = float(self.cache.meta(cache_stage, key).get("build_s", 0.0))
                self.log(f"  {stage:<17} cache hit {key} (saves {build_s:.1f}s)")
            else:
                for parent in self._parents(stage):   # built first, so build_s is this stage's own
                    self.network(parent)
                t0 = time.perf_counter()
                state, meta = self._build(stage, key)
                build_s = time.perf_counter() - t0
                self.cache.save_state(cache_stage, key, state,
                                      meta | {"build_s": build_s, "stage_name": stage})
                (self.cache.root / ".work" / f"{stage}-{key}.pt").unlink(missing_ok=True)
                best = meta.get("best_val")
                self.log(f"  {stage:<17} built     {key} in {build_s:.1f}s"
                         + (f", val {best:.3f}" if best is not None else ""))
        net = self.new_model()
        net.load_state_dict(state)
        net.eval()
        self._nets[stage] = net
        self.stages.append(StageRecord(stage, key, hit, time.perf_counter() - t0, build_s))
        return net

    def _parents(self, stage: str) -> list[str]:
        c = self.cfg
        if stage.startswith("expert_") or stage == "vanilla_ft":
            return ["base"]
        if stage == "modelsoups":
            needs_base = c.fusion.method in ("task_arithmetic", "ties", "dare")
            return [f"expert_{d}" for d in c.fused_experts] + (["base"] if needs_base else [])
        if stage == "fusing":
            return ["modelsoups"]
        if stage == "fusiondistill":
            return ["modelsoups"] + [f"expert_{d}" for d in c.degradations]
        return []

    def _build(self, stage: str, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        c = self.cfg
        if stage == "base":
            return self._fit(stage, key, c.base, self.new_model(), [CLEAN], self._ce_clean,
                             self._val_clean)
        if stage.startswith("expert_"):
            d = stage.removeprefix("expert_")
            base = self.network("base")
            student = self.new_model()
            student.load_state_dict(base.state_dict())
            loss = self._expert_loss(base, c.expert.ce_weight, c.expert.feature_weight,
                                     c.expert.feature_layers)
            return self._fit(stage, key, c.expert, student, [d], loss, self._val_degraded([d]))
        if stage == "modelsoups":
            return self._fuse(), {}
        if stage == "fusiondistill":
            student = self._init_from("modelsoups")
            teachers = {d: self.network(f"expert_{d}") for d in c.degradations}
            return self._fit(stage, key, c.distill, student, c.degradations,
                             self._distill_loss(teachers), self._val_degraded(c.degradations),
                             same_images=c.distill.same_images_per_degradation)
        init = {"scratch": None, "vanilla_ft": "base", "fusing": "modelsoups"}[stage]
        student = self.new_model() if init is None else self._init_from(init)
        spec = getattr(c, stage)
        return self._fit(stage, key, spec, student, c.degradations, self._ce_degraded,
                         self._val_degraded(c.degradations))

    def _init_from(self, stage: str) -> nn.Module:
        net = self.new_model()
        net.load_state_dict(self.network(stage).state_dict())
        return net

    def _fuse(self) -> dict[str, torch.Tensor]:
        c, f = self.cfg, self.cfg.fusion
        names = c.fused_experts
        states = [self.network(f"expert_{d}").state_dict() for d in names]
        needs_base = f.method in ("task_arithmetic", "ties", "dare")
        lambdas = [f.lambdas[d] for d in names] if isinstance(f.lambdas, dict) else f.lambdas
        fused = fusion.fuse(
            states, f.method, base=self.network("base").state_dict() if needs_base else None,
            weights=[f.weights[d] for d in names] if f.weights else None, lambdas=lambdas,
            density=f.density, drop_rate=f.drop_rate, seed=c.seed, bn=f.bn)
        if f.bn == "recompute":
            net = self.new_model()
            net.load_state_dict(fused)
            stream = self._stream(c.expert, c.degradations, same_images=True)
            batches = (b.degraded for _, b in zip(range(f.bn_batches), stream.epoch(0)))
            fusion.recompute_bn_statistics(net, batches, self.device)
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
            cutout_on=spec.cutout_on, same_images=same_images, salt_value=self.cfg.salt_value,
            seed=self.cfg.seed, device=self.device)
        if not self.device_path:
            return TrainStream(self.train, self.dataset.mean, self.dataset.std, **common)
        return DeviceTrainStream(self.train, self.dataset.mean, self.dataset.std, **common,
                                 jpeg_bank=self._jpeg_bank if "jpeg" in names else None,
                                 channels_last=self.cfg.compute.channels_last)

    def _fit(self, stage: str, key: str, spec: TrainSpec, model: nn.Module, names: list[str],
             loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
             validate: Callable[[nn.Module], float], same_images: bool = True
             ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        stream = self._stream(spec, names, same_images)
        opt = train.make_optimizer(model.parameters(), spec.optimizer, spec.lr, spec.momentum,
                                   spec.weight_decay)
        sched = train.make_scheduler(opt, spec.schedule, spec.epochs, spec.milestones,
                                     spec.gamma, spec.t_max)
        work = self.cache.root / ".work"
        work.mkdir(parents=True, exist_ok=True)
        hook = self.on_epoch if stage == self.final_stage else None
        if self.cfg.compute.channels_last:
            model = model.to(memory_format=torch.channels_last)
        mode = self.cfg.compute.compile
        # the compiled module runs the steps; `model` keeps the plain state dict keys
        forward = None if mode == "none" else cast(nn.Module, torch.compile(
            model, mode=None if mode == "default" else mode))   # an OptimizedModule
        result = train.fit(model, epochs=spec.epochs, optimizer=opt, scheduler=sched,
                           batches=stream.epoch, loss_fn=loss_fn, validate=validate,
                           select=self.cfg.selection, checkpoint=work / f"{stage}-{key}.pt",
                           on_epoch=hook, forward=forward)
        if result.resumed_from:
            self.log(f"  {stage:<17} resumed   from epoch {result.resumed_from}")
        self.histories[stage] = result.history
        return result.state, {"best_val": result.best_val, "history": result.history}

    @staticmethod
    def _ce_clean(model: nn.Module, b: Batch) -> torch.Tensor:
        return losses.cross_entropy(model(b.clean)[0], b.labels)

    @staticmethod
    def _ce_degraded(model: nn.Module, b: Batch) -> torch.Tensor:
        return losses.cross_entropy(model(b.degraded)[0], b.labels)

    @staticmethod
    def _expert_loss(teacher: nn.Module, ce_w: float, feat_w: float,
                     layers: Mapping[str, float]) -> Callable[[nn.Module, Batch], torch.Tensor]:
        teacher.eval()

        def loss(model: nn.Module, b: Batch) -> torch.Tensor:
            logits, feats = model(b.degraded)
            with torch.no_grad():
                _, t_feats = teacher(b.clean)
            return (ce_w * losses.cross_entropy(logits, b.labels)
                    + feat_w * losses.cosine_feature_loss(feats, t_feats, dict(layers)))
        return loss

    def _distill_loss(self, teachers: Mapping[str, nn.Module]
                      ) -> Callable[[nn.Module, Batch], torch.Tensor]:
        s = self.cfg.distill
        for t in teachers.values():
            t.eval()

        def loss(model: nn.Module, b: Batch) -> torch.Tensor:
            logits, feats = model(b.degraded)
            t_input = b.clean if s.teacher_input == "clean" else b.degraded
            total = logits.new_zeros(())
            t_logits = []
            for d, rows in b.chunks:
                with torch.no_grad():
                    tl, tf = teachers[d](t_input[rows])
                t_logits.append(tl)
                if s.loss in ("feature", "both"):
                    total = total + s.feature_weight * losses.cosine_feature_loss(
                        {k: v[rows] for k, v in feats.items()}, tf, dict(s.feature_layers))
            if s.loss in ("feature", "both"):
                total = total + s.ce_weight * losses.cross_entropy(logits, b.labels)
            if s.loss in ("logit", "both"):
                total = total + s.kd_weight * losses.logit_distillation(
                    logits, torch.cat(t_logits), b.labels, s.temperature, s.alpha)
            return total
        return loss

    # ------------------------------------------------------------ validation during training
    def _val_view(self, name: str) -> torch.Tensor:
        if name not in self._val_views:
            imgs = self.val.images if name == CLEAN else evaluation.random_level_copy(
                self.val.images, name, self.cfg.eval.seed, self.cfg.salt_value)
            self._val_views[name] = augment.normalise(imgs, self.dataset.mean,
                                                      self.dataset.std, self.device)
        return self._val_views[name]

    def _val_clean(self, model: nn.Module) -> float:
        return self._val_accuracy(model, [CLEAN])

    def _val_degraded(self, names: list[str]) -> Callable[[nn.Module], float]:
        return lambda model: self._val_accuracy(model, names)

    def _val_accuracy(self, model: nn.Module, names: list[str]) -> float:
        if len(self.val) == 0:
            return float("nan")
        y = torch.from_numpy(self.val.labels).to(self.device)
        bs = self.cfg.eval.batch_size
        return float(np.mean([train.accuracy(model, self._val_view(n), y, bs) for n in names]))

    # ------------------------------------------------------------ evaluation
    def _method_networks(self, method: str) -> list[str]:
        out: list[str] = []
        for need in NEEDS[method]:
            out += [f"expert_{d}" for d in self.cfg.degradations] if need == "expert" else [need]
        return out

    def _combiner(self, method: str) -> evaluation.Combiner:
        experts = [f"expert_{d}" for d in self.cfg.degradations]
        if method == "oracle":
            return lambda lg, d: lg[f"expert_{d}"].argmax(1) if f"expert_{d}" in lg else None
        if method == "ensemble":
            return lambda lg, d: evaluation.vote([lg[e] for e in experts])
        return lambda lg, d: lg[method].argmax(1)

    def _copy_fn(self, split: str, images: np.ndarray) -> Callable[[str, int], np.ndarray]:
        """Degraded copies; jpeg and blur (deterministic, costly) are cached as banks."""
        e = self.cfg.eval

        def copy(name: str, level: int) -> np.ndarray:
            if name not in ("jpeg", "blur"):
                return evaluation.degraded_copy(images, name, level, e.seed, self.cfg.salt_value)
            key = content_key("bank", {"data": self.cfg.data.model_dump(), "split": split,
                                       "degradation": name, "level": level, "seed": e.seed})
            bank = self.cache.load_array("bank", key)
            if bank is None:
                bank = evaluation.degraded_copy(images, name, level, e.seed, self.cfg.salt_value)
                self.cache.save_array("bank", key, bank, {"split": split, "level": level})
            return bank
        return copy

    def evaluate(self, split: str) -> list[dict[str, Any]]:
        c, e = self.cfg, self.cfg.eval
        sp = self.val if split == "val" else self.test
        if len(sp) == 0:
            return []
        step = e.val_level_step if split == "val" else e.test_level_step
        eval_slice = {"split": split, "step": step, "seed": e.seed,
                      "degradations": e.degradations, "data": c.data.model_dump(),
                      "salt_value": c.salt_value}
        rows: list[dict[str, Any]] = []
        todo: dict[str, str] = {}
        for m in c.methods:
            parents = [self.key(n) for n in self._method_networks(m)]
            k = content_key("eval", eval_slice | {"method": m}, parents)
            cached = self.cache.load_json("eval", k)
            if cached is None:
                todo[m] = k
            else:
                rows += cached
        if todo:
            nets = {n: self.network(n) for m in todo for n in self._method_networks(m)}
            t0 = time.perf_counter()
            new = evaluation.evaluate(
                nets, {m: self._combiner(m) for m in todo}, sp.images, sp.labels,
                evaluation.level_plan(e.degradations, step), self._copy_fn(split, sp.images),
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


def run_pipeline(cfg: PipelineConfig, cache_root: str | Path, **kwargs: Any) -> PipelineResult:
    return Pipeline(cfg, StageCache(cache_root), **kwargs).run()
