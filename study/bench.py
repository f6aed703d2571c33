"""`study bench`: the throughput figures of the speed issue, all measured in one run.

For each stage kind (base: clean CE; expert_<d>: one degradation + a frozen teacher on the clean
images; distill: 4 x batch + 4 frozen teachers, FusionDistill's step) it trains the same model
three ways and reports images/s (student images; a distill step is 4 x 128 = 512):
- reference: the CPU `TrainStream` (numpy/PIL/scipy, then a copy to the device), as pipeline.py
  runs today;
- device: `DeviceTrainStream` (training set resident, augmentation and degradations on device);
- resident: the same steps on a few pre-made batches already on the device, i.e. no data path.
ratio = path / resident, so 1 - ratio is the share of a step the data path costs. The data paths
alone (no training) are timed too. Then: the level-wise evaluation of one model
(`evaluation.evaluate` over the 230-entry plan: clean + 229 levels) from precomputed banks; the
orchestration overhead of a cached-stage trial (Optuna ask, job file, worker set-up, Parquet,
tell) against its run time; optionally K processes training distill at once on one device; and,
optionally, how `study status`, `study report` and reading the rows scale with a study's trials
(the `results` part: study/bench_results.py).

A training step is the pipeline's own: `train.train_step` (zero_grad, backward, step) on the
stage objective of `study.losses` (`clean_cross_entropy`, `expert_objective`,
`distill_objective`), with the loss weights, optimiser and Cutout of the paper preset
(`paper_config`), so what is timed is what a trial runs. `sync_loss=True` adds a loss.item() per
step, to measure what that sync costs (train.fit sums the loss on the device instead).

The figures carry no pass/fail targets: those, and how to compare a run with them, are in
docs/benchmarks.md. Only ratios within one run are meant to be quoted; no test asserts a time.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from queue import Empty
from typing import Any

import numpy as np
import torch
from torch import nn

from study import (
    atomic,
    augment,
    bench_results,
    degradations,
    device_degrade,
    evaluation,
    losses,
    stages,
    train,
)
from study.augment import Batch
from study.cache import StageCache
from study.config import DEGRADATION_NAMES, DistillSpec, PipelineConfig, TrainSpec
from study.data import Dataset, make_synthetic
from study.degradations import CLEAN
from study.errors import ConfigError
from study.models import build_model
from study.pipeline import Pipeline
from study.studyfile import load_preset

__all__ = ["PARTS", "STAGE_KINDS", "BenchSettings", "StageKind", "format_table", "get",
           "make_objective", "make_step", "paper_config", "run_bench", "summary"]


@dataclass(frozen=True)
class StageKind:
    degradations: tuple[str, ...]   # one chunk of batch_size images per entry
    teachers: int                   # frozen teachers: 0 base, 1 expert, 4 distill
    section: str                    # the pipeline config section of its optimiser, Cutout, loss


def _stage_kind(name: str) -> StageKind:
    """The step of a registry stage: base (clean, no teacher), an expert (its degradation, the
    base as teacher), fusiondistill (every degradation, every expert as a teacher)."""
    stage, degradation = stages.parse_instance(name)
    if degradation is not None:
        return StageKind((degradation,), 1, stage.name)
    if stage.name == "base":
        return StageKind((CLEAN,), 0, "base")
    return StageKind(tuple(DEGRADATION_NAMES), len(DEGRADATION_NAMES), "distill")


# The registry's stages whose steps a study's GPU time is made of: the shared ones, trained once,
# and FusionDistill's, trained by every trial. Bench calls the latter "distill" (the paper's
# step 4), as its JSON records and `--stages` always have.
_TIMED = (*stages.SHARED, "fusiondistill")
STAGE_KINDS: dict[str, StageKind] = {
    ("distill" if n == "fusiondistill" else n): _stage_kind(n)
    for n in stages.instance_names(stages=_TIMED)}
# what `--stages` accepts; "expert" is all four experts; "packed" runs distill in K processes
PARTS = [*STAGE_KINDS, "eval", "trial", "packed", "results"]
DEFAULT_PARTS = [*STAGE_KINDS, "eval", "trial"]


@functools.cache
def paper_config() -> PipelineConfig:
    """The paper preset, validated as a pipeline runs it: the bench's loss weights, optimisers
    and Cutout come from here, so a change to the preset changes what is timed. Its dataset is
    swapped for synthetic data (the bench makes its own images; a real dataset would need
    data.root), which changes nothing a training step computes; it is CIFAR's 50,000 images, so
    the preset's 5,000 held out for validation still leave a training split."""
    tree = load_preset("paper")
    tree["data"] = {**tree.get("data", {}), "dataset": "synthetic", "root": None,
                    "synthetic_train": 50_000}
    return PipelineConfig.model_validate(tree)


def stage_spec(kind: StageKind) -> TrainSpec:
    spec: TrainSpec = getattr(paper_config(), kind.section)
    return spec


def get(name: str) -> StageKind:
    if name not in STAGE_KINDS:
        raise ConfigError(f"unknown stage kind {name!r}; valid names: "
                          f"{', '.join(STAGE_KINDS)}")
    return STAGE_KINDS[name]


def expand_parts(parts: Iterable[str]) -> list[str]:
    """Validated, ordered, with "expert" expanded to the four experts."""
    out: list[str] = []
    for p in parts:
        names = stages.instance_names(stages=("expert",)) if p == "expert" else [p]
        for n in names:
            if n not in PARTS:
                raise ConfigError(f"--stages: unknown bench part {p!r}; valid names: expert, "
                                 f"{', '.join(PARTS)}")
            if n not in out:
                out.append(n)
    return [p for p in PARTS if p in out]


@dataclass(frozen=True)
class BenchSettings:
    device: str = "cpu"
    model: str = "resnet56"
    batch_size: int = 128            # per degradation, the paper's
    n_train: int = 10240             # resident training images (a multiple of 128: no ragged
    #                                  last batch, so a compiled model keeps one shape)
    steps: int = 30                  # timed steps per measurement
    warmup: int = 5
    resident_batches: int = 8        # distinct pre-made batches cycled by "resident"
    jpeg_bank_levels: tuple[int, ...] | None = None   # None: all 100 qualities
    eval_images: int = 10000
    eval_batch: int = 1000           # the paper preset's eval.batch_size
    channels_last: bool = False      # CUDA only
    bf16: bool = False               # autocast bf16, CUDA only
    compile: str = "none"            # none | default | reduce-overhead (CUDA graphs) | max-autotune
    sync_loss: bool = False          # loss.item() every step (train.fit sums on the device)
    procs: int = 4                   # packed: processes sharing the device
    workers: int = 0                 # bank-building processes; 0 = the CPUs we may use
    seed: int = 0
    results_trials: tuple[int, ...] = (1000,)   # results: the synthetic studies' sizes
    results_repeats: int = 3                    # results: runs of each command, median kept

    def __post_init__(self) -> None:
        low = {"batch_size": 1, "n_train": 1, "steps": 1, "warmup": 0, "resident_batches": 1,
               "eval_images": 1, "eval_batch": 1, "procs": 1, "workers": 0,
               "results_repeats": 1}
        bad = [f"{k} must be >= {v}, got {getattr(self, k)}" for k, v in low.items()
               if getattr(self, k) < v]
        if self.compile not in ("none", "default", "reduce-overhead", "max-autotune"):
            bad.append(f"compile must be none, default, reduce-overhead or max-autotune, got "
                       f"{self.compile!r}")
        if not self.results_trials or min(self.results_trials) < 1:
            bad.append(f"results_trials must be >= 1, got {list(self.results_trials)}")
        if bad:
            raise ValueError("bench settings: " + "; ".join(bad))

    @classmethod
    def for_device(cls, device: str, model: str, **kw: Any) -> BenchSettings:
        """Defaults sized for the device: the CPU ones keep `study bench --device cpu --model
        tiny` near a minute on 2 cores."""
        if device == "cpu":
            base: dict[str, Any] = dict(
                n_train=256, steps=6, warmup=1, resident_batches=2, eval_images=48,
                jpeg_bank_levels=device_degrade.bank_qualities(25), eval_batch=500, procs=2)
            if model != "tiny":
                base |= dict(steps=2)
            return cls(device=device, model=model, **(base | kw))
        return cls(device=device, model=model, **kw)


# ------------------------------------------------------------------ training stages


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _amp(s: BenchSettings) -> contextlib.AbstractContextManager[Any]:
    if s.bf16 and s.device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _prepare(net: nn.Module, s: BenchSettings) -> nn.Module:
    if s.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if s.compile != "none":
        # an OptimizedModule: calls go through the compiled graph, parameters are shared
        net = torch.compile(net, mode=None if s.compile == "default" else s.compile)  # type: ignore[assignment]
    return net


def _models(kind: StageKind, s: BenchSettings, num_classes: int
            ) -> tuple[nn.Module, dict[str, nn.Module]]:
    """The student and its frozen teachers, keyed by the degradation each one teaches: four for
    distill, one for an expert (where it stands for the base), none for the base."""
    torch.manual_seed(s.seed)
    dev = torch.device(s.device)
    student = _prepare(build_model(s.model, num_classes).to(dev), s)
    teachers: dict[str, nn.Module] = {}
    for d in kind.degradations[:kind.teachers]:
        t = build_model(s.model, num_classes).to(dev).eval().requires_grad_(False)
        teachers[d] = _prepare(t, s)
    return student, teachers


def _layers(weights: Mapping[Any, float]) -> dict[str, float]:
    # the config keys are Literal stage names; the objectives take any layer name
    return {str(k): float(w) for k, w in weights.items()}


def make_objective(kind: StageKind, teachers: Mapping[str, nn.Module]) -> losses.Objective:
    """The stage objective the pipeline trains with, weighted as the paper preset says."""
    if kind.section == "base":
        return losses.clean_cross_entropy
    if kind.section == "expert":
        e = paper_config().expert
        (teacher,) = teachers.values()
        return losses.expert_objective(teacher, e.ce_weight, e.feature_weight,
                                       _layers(e.feature_layers))
    d = paper_config().distill
    return losses.distill_objective(
        teachers, loss=d.loss, ce_weight=d.ce_weight, feature_weight=d.feature_weight,
        feature_layers=_layers(d.feature_layers), kd_weight=d.kd_weight, temperature=d.temperature,
        alpha=d.alpha, teacher_input=d.teacher_input)


def make_step(kind: StageKind, student: nn.Module, teachers: Mapping[str, nn.Module],
              s: BenchSettings) -> Callable[[Batch], torch.Tensor]:
    """One training step as a trial runs it: `train.train_step` on the stage objective, with the
    stage's optimiser from the paper preset. Returns the step's loss, detached."""
    spec = stage_spec(kind)
    opt = train.make_optimizer(student.parameters(), spec.optimizer, spec.lr, spec.momentum,
                               spec.weight_decay)
    objective = make_objective(kind, teachers)
    autocast = torch.bfloat16 if s.bf16 and s.device.startswith("cuda") else None
    student.train()   # train.fit sets it once an epoch; nothing in a step switches it back

    def step(b: Batch) -> torch.Tensor:
        loss = train.train_step(student, opt, objective, b, autocast=autocast)
        if s.sync_loss:
            # a wait for the GPU every step, ~350 a CIFAR epoch (45k / 128): what train.fit
            # avoids by summing the loss on the device
            loss.item()
        return loss
    return step


def _forever(stream: augment.TrainStream | augment.DeviceTrainStream) -> Iterator[Batch]:
    for e in itertools.count():
        yield from stream.epoch(e)


def _rate(step: Callable[[Batch], object], batches: Iterator[Batch], steps: int, warmup: int,
          device: torch.device) -> float:
    """Student images per second over `steps` steps after `warmup` untimed ones."""
    for _ in range(warmup):
        step(next(batches))
    _sync(device)
    images, t0 = 0, time.perf_counter()
    for _ in range(steps):
        b = next(batches)
        step(b)
        images += len(b.labels)
    _sync(device)
    return images / (time.perf_counter() - t0)


def _streams(kind: StageKind, ds: Dataset, s: BenchSettings, bank: device_degrade.JpegBank | None
             ) -> tuple[augment.TrainStream, augment.DeviceTrainStream]:
    spec, cfg = stage_spec(kind), paper_config()
    same = spec.same_images_per_degradation if isinstance(spec, DistillSpec) else True
    args: dict[str, Any] = dict(degradations=list(kind.degradations), batch_size=s.batch_size,
                                cutout=spec.cutout, cutout_on=spec.cutout_on,
                                share=cfg.chunk_sharing if same else "nothing",
                                salt_value=cfg.salt_value, seed=s.seed, device=s.device)
    ref = augment.TrainStream(ds.train, ds.mean, ds.std, **args)
    dev = augment.DeviceTrainStream(ds.train, ds.mean, ds.std, **args,
                                    jpeg_bank=bank if "jpeg" in kind.degradations else None,
                                    channels_last=s.channels_last)
    return ref, dev


def bench_stage(name: str, ds: Dataset, s: BenchSettings,
                bank: device_degrade.JpegBank | None) -> dict[str, float]:
    kind = get(name)
    dev = torch.device(s.device)
    ref, dstream = _streams(kind, ds, s, bank)
    student, teachers = _models(kind, s, ds.num_classes)
    step = make_step(kind, student, teachers, s)
    resident = list(itertools.islice(_forever(dstream), s.resident_batches))
    out: dict[str, float] = {"images_per_step": s.batch_size * len(kind.degradations)}
    # resident first: it also pays the warm-up of cuDNN autotuning and torch.compile
    out["resident_ips"] = _rate(step, itertools.cycle(resident), s.steps, s.warmup, dev)
    out["device_ips"] = _rate(step, _forever(dstream), s.steps, s.warmup, dev)
    out["reference_ips"] = _rate(step, _forever(ref), s.steps, s.warmup, dev)

    def nothing(b: Batch) -> None:
        pass
    out["device_data_ips"] = _rate(nothing, _forever(dstream), s.steps, 1, dev)
    out["reference_data_ips"] = _rate(nothing, _forever(ref), s.steps, 1, dev)
    out["device_ratio"] = out["device_ips"] / out["resident_ips"]
    out["reference_ratio"] = out["reference_ips"] / out["resident_ips"]
    return out


# ------------------------------------------------------------------ evaluation


def eval_copies(images: np.ndarray, *, seed: int, salt_value: int, device: str,
                cache: StageCache | None, workers: int) -> dict[tuple[str, int], np.ndarray]:
    """Every (degradation, level) copy of the test protocol, equal to evaluation.degraded_copy:
    jpeg from a bank (no flips), blur on the device (bit-exact), noise with numpy in threads."""
    copies: dict[tuple[str, int], np.ndarray] = {}
    bank = device_degrade.build_jpeg_bank(images, flips=False, cache=cache, device="cpu",
                                          workers=workers)
    for qi, q in enumerate(bank.qualities):
        copies["jpeg", q] = bank.data[0, qi].permute(0, 2, 3, 1).numpy()
    copies["jpeg", 101] = images
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    for level in range(0, 51):
        parts = []
        for i in range(0, len(x), 2048):   # float64 intermediates: 50 MB per 1k images
            chunk = x[i:i + 2048].to(device)
            lv = torch.full((len(chunk),), level, device=chunk.device)
            parts.append(device_degrade.blur(chunk, lv).cpu())
        copies["blur", level] = torch.cat(parts).permute(0, 2, 3, 1).numpy()
    noisy = [(n, lv) for n in ("awgn", "saltpepper")
             for lv in degradations.get(n).levels()]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        done = pool.map(lambda k: evaluation.degraded_copy(images, k[0], k[1], seed, salt_value),
                        noisy)
        copies.update(zip(noisy, done))
    return copies


def bench_eval(s: BenchSettings, cache: StageCache | None) -> dict[str, float]:
    ds = make_synthetic(10, s.eval_images, seed=s.seed)
    images, labels = ds.test.images, ds.test.labels
    t0 = time.perf_counter()
    copies = eval_copies(images, seed=0, salt_value=1, device=s.device, cache=cache,
                         workers=_workers(s))
    bank_s = time.perf_counter() - t0
    torch.manual_seed(s.seed)
    net = _prepare(build_model(s.model, ds.num_classes).to(s.device), s).eval()
    plan = evaluation.level_plan(DEGRADATION_NAMES, 1)
    dev = torch.device(s.device)

    def run(entries: list[tuple[str, int]]) -> float:
        _sync(dev)
        t = time.perf_counter()
        with _amp(s):
            evaluation.evaluate({"m": net}, {"m": lambda lg, d: lg["m"].argmax(1)}, images,
                                labels, entries, lambda n, lv: copies[n, lv], ds.mean, ds.std,
                                s.eval_batch, s.device)
        _sync(dev)
        return time.perf_counter() - t

    run(plan[:2])   # warm-up: cuDNN autotuning, compile
    eval_s = run(plan)
    n = len(plan) * len(images)
    out = {"test_images": len(images), "copies": len(plan), "images": n,
           "bank_build_s": bank_s, "eval_s": eval_s, "images_per_s": n / eval_s,
           "eval_s_per_10k_images": eval_s * 10000 / len(images)}
    return out | noise_copies_built_and_cached(images)


def noise_copies_built_and_cached(images: np.ndarray) -> dict[str, float]:
    """The awgn and salt-and-pepper copies of the protocol (77 of the 229) through the
    pipeline's own copy function, in a fresh cache: built (what the first evaluation of a test
    set pays) and then read back from their banks (what every later evaluation pays)."""
    noisy = [(n, lv) for n, lv in evaluation.level_plan(DEGRADATION_NAMES, 1)
             if n in ("awgn", "saltpepper")]
    with tempfile.TemporaryDirectory(prefix="study-bench-banks-") as tmp:
        pipe = Pipeline(paper_config(), StageCache(tmp), log=lambda m: None)
        timings = []
        for _ in range(2):
            copy = pipe.degraded_copies("test", images)
            t = time.perf_counter()
            for name, level in noisy:
                copy(name, level)
            timings.append(time.perf_counter() - t)
    scale = 10000 / len(images)
    return {"noise_copies": len(noisy), "noise_rebuilt_s": timings[0],
            "noise_cached_s": timings[1], "noise_rebuilt_s_per_10k": timings[0] * scale,
            "noise_cached_s_per_10k": timings[1] * scale}


# ------------------------------------------------------------------ a cached-stage trial

# The smoke study shrunk to seconds: every stage one epoch, then a trial whose base and experts
# come from the cache (it only fuses, distils and evaluates), as most trials of a study do.
TRIAL_OVERRIDES = ["data.synthetic_train=400", "data.synthetic_test=100", "data.val_size=100",
                   "methods=[fusiondistill]", "base.epochs=1", "base.milestones=[]",
                   "expert.epochs=1", "distill.epochs=2", "distill.milestones=[1]",
                   "eval.test_level_step=10", "eval.val_level_step=25"]


def bench_trial(s: BenchSettings, workdir: Path, overrides: Sequence[str] = ()
                ) -> dict[str, float]:
    """Wall time of `Launcher.start_trial` (ask, job file, in-process worker: study file,
    storage, pipeline, Parquet, tell) minus the trial's own run time (`wall_s` in its Parquet
    file); plus the start-up of a worker process (interpreter + imports), which the local and
    SLURM executors add."""
    import optuna

    from study import launcher as launch
    from study import results, storage, studyfile
    from study.executors import DebugExecutor

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ov = [f"device={s.device}", f"model={s.model}", *TRIAL_OVERRIDES, *overrides,
          "study.name=bench"]
    ld = studyfile.load("smoke.yaml", ov)
    results_dir, cache_dir = workdir / "results", workdir / "cache"
    url = storage.storage_url(ld.sf, results_dir)
    store = storage.open_storage(url)
    st = storage.load_or_create(ld.sf, store, optuna.samplers.TPESampler(seed=s.seed),
                                optuna.pruners.NopPruner(), print_=False)
    sdir = storage.study_dir(results_dir, ld.sf.study.name)
    sdir.mkdir(parents=True, exist_ok=True)
    launcher = launch.Launcher(storage.StoredStudy(ld, st, store, url, sdir), DebugExecutor(),
                               cache_dir=str(cache_dir), parallel=1, log=lambda m: None)
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        t0 = time.perf_counter()
        launcher.start_trial()                       # cold: builds base and the experts
        cold_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        number = launcher.start_trial()              # cached stages: fuse, distil, evaluate
        total_s = time.perf_counter() - t0
    df = results.read_trial(sdir, number)
    if df is None or str(df.state.iloc[0]) != "COMPLETE":
        raise RuntimeError(f"bench trial {number} did not complete: "
                           + ("no result file" if df is None else
                              f"{df.state.iloc[0]}: {df.error.iloc[0]}"))
    run_s = float(df.wall_s.iloc[0])
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import study.worker"], check=True)
    worker_start_s = time.perf_counter() - t0
    overhead = total_s - run_s
    return {"cold_trial_s": cold_s, "trial_run_s": run_s, "orchestration_s": overhead,
            "overhead_ratio": overhead / run_s, "worker_start_s": worker_start_s,
            "overhead_ratio_with_worker_start": (overhead + worker_start_s) / run_s}


# ------------------------------------------------------------------ packed trials


def _packed_worker(s: BenchSettings, cache_root: str, barrier: Any, queue: Any) -> None:
    try:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // s.procs))
        ds = make_synthetic(s.n_train, 10, seed=s.seed)
        bank = _bank(ds, s, StageCache(cache_root))
        kind = get("distill")
        _, stream = _streams(kind, ds, s, bank)
        student, teachers = _models(kind, s, ds.num_classes)
        step = make_step(kind, student, teachers, s)
        batches = _forever(stream)
        dev = torch.device(s.device)
        for _ in range(s.warmup):
            step(next(batches))
        _sync(dev)
        barrier.wait()
        t0, images = time.monotonic(), 0
        for _ in range(s.steps):
            b = next(batches)
            step(b)
            images += len(b.labels)
        _sync(dev)
        queue.put({"start": t0, "end": time.monotonic(), "images": images})
    except BaseException as e:   # the parent reports it instead of hanging on the barrier
        barrier.abort()
        queue.put({"error": repr(e)})


def bench_packed(s: BenchSettings, cache: StageCache) -> dict[str, Any]:
    """distill with the device data path in `procs` processes at once on one device (spawned,
    synchronised on a barrier): summed images/s over the span from first start to last end."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(s.procs), ctx.Queue()
    procs = [ctx.Process(target=_packed_worker, args=(s, str(cache.root), barrier, queue))
             for _ in range(s.procs)]
    for p in procs:
        p.start()
    got: list[dict[str, Any]] = []
    while len(got) < len(procs):
        try:
            got.append(queue.get(timeout=5))
        except Empty:   # a worker killed outright (OOM, segfault) never reports
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"packed bench worker died (exit codes {dead})") from None
    for p in procs:
        p.join()
    errors = [g["error"] for g in got if "error" in g]
    if errors:
        raise RuntimeError(f"packed bench worker failed: {errors[0]}")
    span = max(g["end"] for g in got) - min(g["start"] for g in got)
    per = [g["images"] / (g["end"] - g["start"]) for g in got]
    return {"procs": s.procs, "images_per_s_total": sum(g["images"] for g in got) / span,
            "images_per_s_per_proc": per}


# ------------------------------------------------------------------ the whole run


def _workers(s: BenchSettings) -> int:
    return s.workers or device_degrade.default_workers()


def _bank(ds: Dataset, s: BenchSettings, cache: StageCache | None
          ) -> device_degrade.JpegBank:
    return device_degrade.build_jpeg_bank(ds.train.images, qualities=s.jpeg_bank_levels,
                                          flips=True, cache=cache, device=s.device,
                                          workers=_workers(s))


def environment(s: BenchSettings) -> dict[str, Any]:
    dev = torch.device(s.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
    return {"device_name": name or platform.machine(), "host": platform.node(),
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else
            os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


def run_bench(s: BenchSettings, parts: Iterable[str] = DEFAULT_PARTS, *,
              cache_dir: str | Path | None = None, trial_overrides: Sequence[str] = (),
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every figure asked for in `parts`; returns the JSON-ready record of what ran.
    `trial_overrides` go on top of TRIAL_OVERRIDES (e.g. a longer distillation)."""
    if s.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no GPU on this machine; use --device cpu")
    if not s.device.startswith("cuda") and (s.bf16 or s.channels_last or s.compile != "none"):
        raise ConfigError("--bf16, --channels-last and --compile are CUDA-only in the bench (on "
                         "the CPU they are slower or unsupported here)")
    parts = expand_parts(parts)
    if s.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    record: dict[str, Any] = {"settings": asdict(s), "parts": parts, "env": environment(s),
                              "stages": {}}
    with contextlib.ExitStack() as stack:
        if cache_dir is None:
            cache_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="study-bench-"))
        cache = StageCache(Path(cache_dir) / "cache")
        stages = [p for p in parts if p in STAGE_KINDS]
        ds = make_synthetic(s.n_train, 10, seed=s.seed) if stages or "packed" in parts else None
        bank = None
        if ds is not None and (any("jpeg" in get(p).degradations for p in stages)
                               or "packed" in parts):
            t0 = time.perf_counter()
            bank = _bank(ds, s, cache)
            record["jpeg_bank"] = {"build_s": time.perf_counter() - t0,
                                   "levels": len(bank.qualities), "flips": bank.flips,
                                   "bytes": bank.nbytes}
        for name in stages:
            assert ds is not None
            t0 = time.perf_counter()
            record["stages"][name] = bench_stage(name, ds, s, bank)
            log(f"  {name:<18} {time.perf_counter() - t0:5.1f}s  " + _stage_line(
                record["stages"][name]))
        if "eval" in parts:
            record["eval"] = bench_eval(s, cache)
            log(f"  eval               {record['eval']['eval_s']:5.1f}s")
        if "trial" in parts:
            record["trial"] = bench_trial(s, Path(cache_dir) / "trial", trial_overrides)
            record["trial"]["overrides"] = [*TRIAL_OVERRIDES, *trial_overrides]
            log(f"  trial              {record['trial']['trial_run_s']:5.1f}s")
        if "packed" in parts:
            del bank   # each process loads its own copy from the cache
            if s.device.startswith("cuda"):
                torch.cuda.empty_cache()
            record["packed"] = bench_packed(s, cache)
            log(f"  packed             x{s.procs}")
        if "results" in parts:
            record["results"] = bench_results.run(s.results_trials, s.results_repeats,
                                                  Path(cache_dir) / "results", log=log)
    return record


def _stage_line(r: dict[str, float]) -> str:
    return (f"ref {r['reference_ips']:.0f}  device {r['device_ips']:.0f}  resident "
            f"{r['resident_ips']:.0f} img/s")


def _flags(s: dict[str, Any]) -> list[str]:
    """The settings a run departs from fp32 eager with, as the tables name them."""
    return ([k for k in ("channels_last", "bf16") if s[k]]
            + ([f"compile={s['compile']}"] if s["compile"] != "none" else [])
            + (["loss_sync"] if s["sync_loss"] else []))


def format_table(record: dict[str, Any]) -> str:
    s, env = record["settings"], record["env"]
    flags = _flags(s)
    lines = [f"study bench: {s['model']} on {s['device']} ({env['device_name']}, "
             f"{env['cpus']} CPUs, {env['torch_threads']} torch threads, torch {env['torch']}); "
             f"batch {s['batch_size']} per degradation, {s['n_train']} resident train images, "
             f"{s['steps']} timed steps"
             + (f"; {', '.join(flags)}" if flags else "")]
    if record["stages"]:
        lines.append("")
        lines.append(f"{'stage':<18} {'img/step':>8} {'reference':>10} {'device':>10} "
                     f"{'resident':>10} {'ratio ref':>9} {'ratio dev':>9} "
                     f"{'data ref':>9} {'data dev':>9}")
        lines.append(f"{'':<18} {'':>8} {'img/s':>10} {'img/s':>10} {'img/s':>10} {'':>9} "
                     f"{'':>9} {'ms/step':>9} {'ms/step':>9}")
        for name, r in record["stages"].items():
            per = r["images_per_step"]
            lines.append(
                f"{name:<18} {per:>8.0f} {r['reference_ips']:>10.0f} {r['device_ips']:>10.0f} "
                f"{r['resident_ips']:>10.0f} {r['reference_ratio']:>9.2f} "
                f"{r['device_ratio']:>9.2f} {1e3 * per / r['reference_data_ips']:>9.1f} "
                f"{1e3 * per / r['device_data_ips']:>9.1f}")
    if "jpeg_bank" in record:
        b = record["jpeg_bank"]
        lines.append(f"jpeg bank: {b['levels']} qualities x {2 if b['flips'] else 1} "
                     f"orientations, {b['bytes'] / 2**20:.0f} MiB, built/loaded in "
                     f"{b['build_s']:.1f}s")
    if "eval" in record:
        e = record["eval"]
        lines.append(f"\nlevel-wise evaluation: {e['copies']} copies x {e['test_images']} test "
                     f"images = {e['images']} images in {e['eval_s']:.1f}s "
                     f"({e['images_per_s']:.0f} img/s; {e['eval_s_per_10k_images']:.1f}s per "
                     f"10k-image test set); banks built in {e['bank_build_s']:.1f}s")
        if "noise_copies" in e:
            lines.append(f"  its {e['noise_copies']} noise and salt-and-pepper copies per "
                         f"10k images: built {e['noise_rebuilt_s_per_10k']:.1f}s (the first "
                         f"evaluation), cached {e['noise_cached_s_per_10k']:.1f}s (every "
                         "later one)")
    if "trial" in record:
        t = record["trial"]
        lines.append(f"cached-stage trial: run {t['trial_run_s']:.2f}s, orchestration "
                     f"{t['orchestration_s'] * 1e3:.0f} ms ({100 * t['overhead_ratio']:.2f}%); "
                     f"+ worker start {t['worker_start_s']:.2f}s = "
                     f"{100 * t['overhead_ratio_with_worker_start']:.1f}% (local/SLURM); "
                     f"cold trial {t['cold_trial_s']:.1f}s")
    if "packed" in record:
        p = record["packed"]
        lines.append(f"packed distill: {p['procs']} processes, "
                     f"{p['images_per_s_total']:.0f} img/s together ("
                     + ", ".join(f"{x:.0f}" for x in p["images_per_s_per_proc"]) + " each)")
    if "results" in record:
        lines += ["", "results of a smoke-shaped study (median of the repeats, each its own "
                  "process):", bench_results.format_table(record["results"])]
    return "\n".join(lines)


def write_json(record: dict[str, Any], path: str | Path) -> Path:
    atomic.write_text(path, json.dumps(record, indent=1, default=str))
    return Path(path)


def _dig(record: dict[str, Any], path: Sequence[str]) -> float | None:
    node: Any = record
    for k in path:
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return float(node)


# The figures docs/benchmarks.md compares with its targets: (what, where in a record, which way
# is better, format). The comparison itself is left to a person: the targets are per GPU model
# and per preset, and a threshold here would pass or fail runs it was never set for.
SUMMARY_FIGURES: list[tuple[str, tuple[str, ...], str, str]] = [
    ("step 4 (distill) images/s per trial", ("stages", "distill", "device_ips"), "max", ".0f"),
    ("step 4 images/s summed, trials packed", ("packed", "images_per_s_total"), "max", ".0f"),
    ("step 1 (base) images/s per trial", ("stages", "base", "device_ips"), "max", ".0f"),
    ("data path share of a distill step", ("stages", "distill", "device_ratio"), "share", ".1%"),
    ("data path share of a base step", ("stages", "base", "device_ratio"), "share", ".1%"),
    ("level-wise evaluation s per 10k test images", ("eval", "eval_s_per_10k_images"), "min",
     ".1f"),
    ("cached-stage trial orchestration / run time", ("trial", "overhead_ratio"), "min", ".2%"),
]


def summary(out_dir: str | Path) -> str:
    """The measured figures of every bench JSON in `out_dir`, one row per run, then the best
    value of each figure over the runs and which run gave it. No targets: see
    docs/benchmarks.md."""
    runs = {p.stem: json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("*.json"))}
    if not runs:
        return f"no bench JSON files in {out_dir}"
    lines = [f"{'run':<16} {'flags':<34} {'distill':>8} {'resident':>9} {'base':>7} "
             f"{'ratio d':>7} {'ratio b':>7} {'eval/10k':>9} {'packed':>8} {'trial %':>8}"]
    for name, r in runs.items():
        s = r["settings"]
        flags = " ".join(_flags(s) + ([f"procs={s['procs']}"] if "packed" in r else [])
                         ) or "fp32 eager"

        def fmt(path: Sequence[str], spec: str, rec: dict[str, Any] = r,
                scale: float = 1.0) -> str:
            v = _dig(rec, path)
            return "-" if v is None else format(v * scale, spec)
        lines.append(f"{name:<16} {flags:<34} "
                     f"{fmt(('stages', 'distill', 'device_ips'), '8.0f'):>8} "
                     f"{fmt(('stages', 'distill', 'resident_ips'), '9.0f'):>9} "
                     f"{fmt(('stages', 'base', 'device_ips'), '7.0f'):>7} "
                     f"{fmt(('stages', 'distill', 'device_ratio'), '7.2f'):>7} "
                     f"{fmt(('stages', 'base', 'device_ratio'), '7.2f'):>7} "
                     f"{fmt(('eval', 'eval_s_per_10k_images'), '9.1f'):>9} "
                     f"{fmt(('packed', 'images_per_s_total'), '8.0f'):>8} "
                     f"{fmt(('trial', 'overhead_ratio'), '8.2f', scale=100):>8}")
    devices = sorted({r["env"].get("device_name") or r["settings"]["device"]
                      for r in runs.values()})
    lines.append(f"\nbest of {len(runs)} run(s) on {', '.join(devices)} (targets: "
                 "docs/benchmarks.md):")
    for what, path, best, spec in SUMMARY_FIGURES:
        vals = {n: v for n, r in runs.items() if (v := _dig(r, path)) is not None}
        if not vals:
            lines.append(f"  {what}: not measured")
            continue
        # a share is 1 - ratio (path / resident): the highest ratio is the smallest share
        pick = (min if best == "min" else max)(vals, key=lambda n: vals[n])
        value = 1 - vals[pick] if best == "share" else vals[pick]
        s = runs[pick]["settings"]
        flags = " ".join(_flags(s) + ([f"procs={s['procs']}"] if path[0] == "packed" else [])
                         ) or "fp32 eager"
        lines.append(f"  {what}: {format(value, spec)} (run {pick}, {flags})")
    return "\n".join(lines)


def main(args: Any) -> int:
    """`study bench` (arguments in cli.py): print the table, optionally write the JSON."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    given = {k: v for k, v in dict(
        steps=args.steps, warmup=args.warmup, n_train=args.n_train, batch_size=args.batch_size,
        eval_images=args.eval_images, eval_batch=args.eval_batch, procs=args.procs,
        workers=args.workers, channels_last=args.channels_last or None,
        bf16=args.bf16 or None, compile=args.compile,
        sync_loss=args.loss_sync or None, results_repeats=args.results_repeats,
        results_trials=tuple(args.results_trials) if args.results_trials else None
    ).items() if v is not None}
    if args.jpeg_bank_step is not None:
        given["jpeg_bank_levels"] = device_degrade.bank_qualities(args.jpeg_bank_step)
    s = BenchSettings.for_device(device, args.model, **given)
    parts = expand_parts(args.stages or DEFAULT_PARTS)
    print(f"study bench: {', '.join(parts)} on {device}", flush=True)
    record = run_bench(s, parts, cache_dir=args.cache, log=lambda m: print(m, flush=True),
                       trial_overrides=args.trial_overrides)
    print()
    print(format_table(record))
    if args.json:
        print(f"\nwritten {write_json(record, args.json)}")
    return 0
