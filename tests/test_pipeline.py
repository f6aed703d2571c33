"""Stages, cache keys, resume, evaluation protocol and the `study run` command at toy scale."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from study import augment, evaluation, results, train
from study.cache import StageCache
from study.data import make_synthetic
from study.pipeline import Pipeline
from study.studyfile import load

ROOT = Path(__file__).resolve().parents[1]
STUDY = [sys.executable, "-m", "study.cli"]


def _pipeline(tmp_path: Path, *overrides: str) -> Pipeline:
    sf = load("smoke.yaml", ["device=cpu", *overrides], check_space=False).sf
    return Pipeline(sf.pipeline, StageCache(tmp_path / "cache"), log=lambda s: None)


def test_keys_change_only_downstream_of_what_changed(tmp_path: Path) -> None:
    a = _pipeline(tmp_path)
    b = _pipeline(tmp_path, "distill.temperature=9", "distill.loss=logit")
    c = _pipeline(tmp_path, "fusion.method=task_arithmetic")
    shared = ["base", "expert_jpeg", "expert_blur", "expert_awgn", "expert_saltpepper",
              "scratch", "vanilla_ft"]
    for stage in shared:
        assert a.key(stage) == b.key(stage) == c.key(stage), stage
    assert a.key("modelsoups") == b.key("modelsoups") != c.key("modelsoups")
    assert a.key("fusiondistill") != b.key("fusiondistill")
    assert a.key("fusing") == b.key("fusing") != c.key("fusing")
    # Salt only matters where salt-and-pepper is involved.
    d = _pipeline(tmp_path, "salt_value=255")
    assert d.key("expert_jpeg") == a.key("expert_jpeg")
    assert d.key("expert_saltpepper") != a.key("expert_saltpepper")


def test_subset_of_degradations_reuses_experts(tmp_path: Path) -> None:
    a = _pipeline(tmp_path)
    b = _pipeline(tmp_path, "degradations=[jpeg, awgn]")
    assert a.key("expert_awgn") == b.key("expert_awgn")
    assert a.key("modelsoups") != b.key("modelsoups")


def _tiny_fit(tmp_path: Path, stop_after: int | None, ckpt: Path) -> train.FitResult:
    torch.manual_seed(0)
    ds = make_synthetic(200, 50, seed=0)
    from study.models import build_model

    model = build_model("tiny", 10)
    stream = augment.TrainStream(ds.train, ds.mean, ds.std, degradations=["jpeg", "awgn"],
                                 batch_size=32, cutout=8, cutout_on="degraded", share="images",
                                 salt_value=1, seed=0, device="cpu")
    opt = train.make_optimizer(model.parameters(), "radam", 1e-3, 0.9, 1e-4)
    sched = train.make_scheduler(opt, "multistep", 4, [2], 0.2, None)
    x = augment.normalise(ds.test.images, ds.mean, ds.std)
    y = torch.from_numpy(ds.test.labels)

    def hook(epoch: int, val: float | None) -> None:
        if stop_after is not None and epoch == stop_after:
            raise KeyboardInterrupt  # stands in for a kill between epochs

    def loss(m: torch.nn.Module, b: augment.Batch) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(m(b.degraded)[0], b.labels)

    return train.fit(model, epochs=4, optimizer=opt, scheduler=sched, batches=stream.epoch,
                     loss_fn=loss, validate=lambda m, _: train.accuracy(m, x, y), select="best_val",
                     checkpoint=ckpt, on_epoch=hook)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> train.FitResult:
    """The uninterrupted run the resumed ones must equal: fitted once for the three tests."""
    tmp = tmp_path_factory.mktemp("straight")
    return _tiny_fit(tmp, None, tmp / "a.pt")


def test_interrupted_stage_resumes_to_the_same_weights(tmp_path: Path,
                                                       straight: train.FitResult) -> None:
    with pytest.raises(KeyboardInterrupt):
        _tiny_fit(tmp_path, 2, tmp_path / "b.pt")
    resumed = _tiny_fit(tmp_path, None, tmp_path / "b.pt")
    assert resumed.resumed_from == 2 and straight.resumed_from == 0
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    for k, v in straight.state.items():
        assert torch.equal(v, resumed.state[k]), k
    assert resumed.best_val == straight.best_val


@pytest.mark.parametrize("damage", ["truncate", "flip_byte"])
def test_altered_epoch_checkpoint_restarts_the_stage(tmp_path: Path, damage: str,
                                                     straight: train.FitResult) -> None:
    """A checkpoint cut or altered on disk is never loaded: moved aside, the stage starts over
    from epoch 0 and ends with the weights of an uninterrupted run."""
    ckpt = tmp_path / "b.pt"
    with pytest.raises(KeyboardInterrupt):
        _tiny_fit(tmp_path, 2, ckpt)
    data = bytearray(ckpt.read_bytes())
    if damage == "truncate":
        del data[len(data) // 2:]
    else:
        data[-100] ^= 0x01           # one bit in torch.save's bytes: still a loadable file
    ckpt.write_bytes(bytes(data))
    again = _tiny_fit(tmp_path, None, ckpt)
    assert again.resumed_from == 0
    assert len(list(tmp_path.glob("b.pt.corrupt-*"))) == 1
    for k, v in straight.state.items():
        assert torch.equal(v, again.state[k]), k


def test_train_stream_pairs_and_chunks() -> None:
    ds = make_synthetic(100, 10, seed=0)
    s = augment.TrainStream(ds.train, ds.mean, ds.std, degradations=["jpeg", "blur", "clean"],
                            batch_size=16, cutout=8, cutout_on="degraded", share="images",
                            salt_value=1, seed=3, device="cpu")
    batches = list(s.epoch(0))
    assert len(batches) == s.steps_per_epoch == 7
    b = batches[0]
    assert b.clean.shape == b.degraded.shape == (48, 3, 32, 32)
    assert [name for name, _ in b.chunks] == ["jpeg", "blur", "clean"]
    (_, r0), (_, r1), (_, r2) = b.chunks
    assert torch.equal(b.labels[r0], b.labels[r1])          # same images under each degradation
    zero_deg = (b.degraded == 0).all(1)                     # the Cutout hole, degraded copies only
    assert zero_deg.sum() >= 48 * 8 * 4 // 2
    assert not (b.clean == 0).all(1).flatten(1).all(1).any()
    again = next(iter(s.epoch(0)))
    assert torch.equal(again.degraded, b.degraded)          # an epoch is a function of the seed
    assert not torch.equal(next(iter(s.epoch(1))).degraded, b.degraded)
    independent = augment.TrainStream(ds.train, ds.mean, ds.std, degradations=["jpeg", "blur"],
                                      batch_size=16, cutout=0, cutout_on="none",
                                      share="nothing", salt_value=1, seed=3, device="cpu")
    ib = next(iter(independent.epoch(0)))
    assert not torch.equal(ib.labels[:16], ib.labels[16:])


def test_pad_crop_and_cutout_geometry() -> None:
    img = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    out = augment.pad_crop(img, np.array([4, 0]), np.array([4, 8]))
    assert np.array_equal(out[0], img[0])                   # offset 4 = no shift
    assert (out[1][:, :, :] == 0).sum() > 0                 # zero padding came in
    assert np.array_equal(out[1][4:, :0], img[1][:0, 4:])
    mask = augment.cutout_mask(500, 32, 32, 16, np.random.default_rng(0))
    holes = (mask == 0).sum(axis=(1, 2, 3))
    assert holes.max() == 256 and holes.min() >= 64          # clipped at the border, never empty


def test_vote_breaks_ties_by_summed_logits() -> None:
    a = torch.tensor([[5.0, 0, 0], [0, 1, 0]])
    b = torch.tensor([[0.0, 1, 0], [0, 0, 1]])
    c = torch.tensor([[0.0, 2, 0], [3, 0, 0]])
    # row 0: votes 0,1,1 -> class 1; row 1: one vote each -> summed logits [3,1,1] -> class 0
    assert evaluation.vote([a, b, c]).tolist() == [1, 0]


def test_level_plan_is_the_paper_protocol() -> None:
    plan = evaluation.level_plan(["jpeg", "blur", "awgn", "saltpepper"], 1)
    assert len(plan) == 1 + 229
    assert ("jpeg", 101) in plan and ("blur", 50) in plan and ("saltpepper", 25) in plan


def test_table_means_over_levels() -> None:
    rows = [{"model": "m", "degradation": "jpeg", "level": lv, "accuracy": acc}
            for lv, acc in [(1, 0.2), (101, 0.6)]]
    rows += [{"model": "m", "degradation": "blur", "level": 0, "accuracy": 0.8},
             {"model": "m", "degradation": "clean", "level": 0, "accuracy": 0.9}]
    t = results.paper_table(rows)
    assert t.loc["m", "JPEG"] == pytest.approx(40.0)
    assert t.loc["m", "Avg"] == pytest.approx(60.0) and t.loc["m", "Clean"] == pytest.approx(90)


def test_degraded_copies_are_identical_for_every_caller() -> None:
    imgs = make_synthetic(20, 10, seed=1).test.images
    a = evaluation.degraded_copy(imgs, "awgn", 30, seed=0, salt_value=1)
    b = evaluation.degraded_copy(imgs, "awgn", 30, seed=0, salt_value=1)
    assert np.array_equal(a, b) and not np.array_equal(a, imgs)


def test_corrupt_cache_entry_is_rebuilt_not_loaded(tmp_path: Path) -> None:
    cache = StageCache(tmp_path)
    cache.save_state("base", "k1", {"w": torch.ones(3)}, {})
    assert torch.equal(cache.load_state("base", "k1")["w"], torch.ones(3))
    f = tmp_path / "base" / "k1" / "state.pt"
    f.write_bytes(f.read_bytes()[:-10])
    assert cache.load_state("base", "k1") is None
    assert cache.corrupt == ["base/k1"]
    assert any(p.name.startswith("k1.corrupt-") for p in (tmp_path / "base").iterdir())
    cache.save_state("base", "k1", {"w": torch.zeros(3)}, {})
    assert torch.equal(cache.load_state("base", "k1")["w"], torch.zeros(3))


@pytest.mark.slow
def test_study_run_smoke_then_cached(tmp_path: Path) -> None:
    """The issue's acceptance run: every method, the table, then a rerun from the cache."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [*STUDY, "run", "--space", "search_spaces/smoke.yaml", "--results", str(tmp_path)]
    t0 = time.perf_counter()
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    first_s = time.perf_counter() - t0
    assert first.returncode == 0, first.stderr
    out = first.stdout
    for method in ["oracle", "ensemble", "scratch", "vanilla_ft", "modelsoups", "fusing",
                   "fusiondistill"]:
        assert f"\n{method} " in out
    assert "JPEG  Blur  AWGN  SAPN" in out and "test accuracy" in out and "val accuracy" in out
    assert "0 cache hits" in out and "base              built" in out
    t0 = time.perf_counter()
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    second_s = time.perf_counter() - t0
    assert second.returncode == 0, second.stderr
    assert " built " not in second.stdout and "cache hit" in second.stdout
    assert "expert_jpeg       cache hit" in second.stdout
    # identical tables: the cached run reproduces the first
    assert first.stdout.split("val accuracy")[1].split("wall time")[0] == \
        second.stdout.split("val accuracy")[1].split("wall time")[0]
    print(f"first run {first_s:.1f}s, cached rerun {second_s:.1f}s")


def test_cli_user_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: {name: x}\npipeline: {preset: smoke, distill: {temprature: 3}}\n")
    r = subprocess.run([*STUDY, "run", "--space", str(bad)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert str(bad) in r.stderr and "pipeline.distill.temprature" in r.stderr
    r = subprocess.run([*STUDY, "run", "--space", "paper_cifar10.yaml", "--set",
                        f"data.root={tmp_path}/nodata", "--results", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "study data download --dataset cifar10" in r.stderr


def test_device_data_path_keys_and_auto_resolution(tmp_path: Path) -> None:
    ref = _pipeline(tmp_path)                                  # auto on CPU = reference
    forced = _pipeline(tmp_path, "compute.data_path=reference")
    dev = _pipeline(tmp_path, "compute.data_path=device")
    coarse = _pipeline(tmp_path, "compute.data_path=device", "compute.jpeg_bank_step=10")
    assert not ref.device_path and dev.device_path
    # the reference path's keys are those of a config without a compute section
    assert ref.key("base") == forced.key("base")
    for stage in ("base", "expert_awgn", "expert_jpeg", "fusiondistill"):
        assert ref.key(stage) != dev.key(stage), stage
    # the bank step only matters where JPEG is drawn
    assert dev.key("expert_awgn") == coarse.key("expert_awgn")
    assert dev.key("expert_jpeg") != coarse.key("expert_jpeg")
    # execution-only settings do not change what a stage computes, so they share its entry
    fast = _pipeline(tmp_path, "compute.data_path=device", "compute.channels_last=true")
    assert fast.key("fusiondistill") == dev.key("fusiondistill")


def _device_pipeline(root: Path, *extra: str) -> Pipeline:
    return _pipeline(root, "compute.data_path=device", "compute.jpeg_bank_step=25",
                     "compute.bank_workers=1", "degradations=[jpeg, blur]",
                     "data.synthetic_train=300", "data.val_size=60", "data.synthetic_test=60",
                     "base.epochs=1", "base.milestones=[1]", "expert.epochs=1",
                     "distill.epochs=1", "distill.milestones=[1]", "methods=[fusiondistill]",
                     "eval.test_level_step=50", "eval.val_level_step=50", *extra)


def test_device_data_path_runs_the_pipeline_deterministically(tmp_path: Path) -> None:
    """The GPU data path, run on CPU through the same code: a whole pipeline, JPEG from the
    bank (built once, through the cache), the same weights from the same seed."""
    a = _device_pipeline(tmp_path / "a").run()
    b_pipe = _device_pipeline(tmp_path / "b")
    b = b_pipe.run()
    assert [r["accuracy"] for r in a.rows] == [r["accuracy"] for r in b.rows]
    assert {s.stage for s in a.stages} >= {"base", "expert_jpeg", "expert_blur", "fusiondistill"}
    # 5 banked qualities (1, 26, 51, 76, 100) x 2 orientations, one cache entry each
    banks = list((tmp_path / "b" / "cache" / "jpeg_bank").glob("*/meta.json"))
    assert len(banks) == 10
    assert b_pipe._jpeg_bank.qualities == (1, 26, 51, 76, 100)
    # a rerun reads every stage from the cache
    again = _device_pipeline(tmp_path / "b").run()
    assert all(s.hit for s in again.stages)
    assert [r["accuracy"] for r in again.rows] == [r["accuracy"] for r in b.rows]


def test_evaluation_reuses_degraded_copies_and_results_across_trials(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every degraded copy (noise and salt-and-pepper too) is built once and cached; a second
    trial that shares the experts evaluates oracle from the cache and builds no copy."""
    quick = ["data.synthetic_train=200", "data.val_size=40", "data.synthetic_test=40",
             "degradations=[awgn, saltpepper]", "methods=[oracle, fusiondistill]",
             "base.epochs=1", "base.milestones=[1]", "expert.epochs=1", "expert.t_max=1",
             "distill.epochs=1", "distill.milestones=[1]", "eval.test_level_step=10",
             "eval.val_level_step=25", "eval.degradations=[awgn, saltpepper]"]
    built: list[tuple[str, int]] = []
    real = evaluation.degraded_copy

    def counting(images: np.ndarray, name: str, level: int, seed: int, salt: int) -> np.ndarray:
        built.append((name, level))
        return real(images, name, level, seed, salt)

    monkeypatch.setattr(evaluation, "degraded_copy", counting)
    first = _pipeline(tmp_path, *quick)
    first.run()
    # validation every 25th level, test every 10th: 15 noisy copies (identity levels need none)
    assert len(built) >= 10
    assert first.cache.summary()["bank"] == len(built)   # each one stored as a bank
    built.clear()
    second = _pipeline(tmp_path, *quick, "distill.lr=0.002")
    rows = second.run().rows
    assert built == []                                   # every copy came from a bank
    assert any(h.startswith("eval/") for h in second.cache.hits)   # oracle's rows reused
    assert {r["model"] for r in rows} == {"oracle", "fusiondistill"}


@pytest.mark.slow
def test_real_image_smoke_study_keeps_signal_under_every_degradation(tmp_path: Path) -> None:
    """The shipped CIFAR-10 sample through the imagefolder dataset, the whole pipeline on CPU:
    unlike the synthetic gratings (at chance under blur sigma 2), real images keep a signal
    under every degradation, so each degraded column says something."""
    sf = load(ROOT / "search_spaces" / "smoke_real.yaml", check_space=False).sf
    cwd = os.getcwd()
    os.chdir(ROOT)   # the file's data root is relative to the repository
    try:
        result = Pipeline(sf.pipeline, StageCache(tmp_path / "cache"), log=lambda s: None).run()
    finally:
        os.chdir(cwd)
    test = results.paper_table([r for r in result.rows if r["split"] == "test"],
                            sf.pipeline.methods)
    assert list(test.index) == sf.pipeline.methods
    chance = 10.0
    assert (test.loc["fusiondistill", ["JPEG", "Blur", "AWGN", "SAPN", "Clean"]] > chance + 5).all()
