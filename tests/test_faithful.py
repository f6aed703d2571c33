"""Where `study` follows the reference code's behaviour: the ensemble's tie rule, Tiny ImageNet's
Cutout per stage, what the four chunks of a multi-degradation step share (`share`), and how
validation scores the epochs (`validation`: redrawn per epoch, per-batch accuracy)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from study import augment, evaluation, studyfile, train
from study import device_degrade as dd
from study.augment import DeviceTrainStream, TrainStream
from study.cache import StageCache
from study.config import PipelineConfig
from study.data import Split, make_synthetic
from study.errors import ConfigError
from study.pipeline import Pipeline
from study.studyfile import load

NAMES = ["jpeg", "blur", "awgn", "saltpepper"]

# --- ensemble tie rule ------------------------------------------------------------------------


def test_vote_tie_takes_the_argmax_of_summed_logits_over_all_classes() -> None:
    # 4 experts, 3 classes. Row 0: votes 0, 0, 1, 1 (a 2-2 tie); summed logits [4, 5, 7.6]:
    # the reference picks class 2, which no expert voted for; among the tied classes {0, 1}
    # the old rule picks 1. Row 1: votes 2, 2, 2, 0: no tie, both rules say 2.
    a = torch.tensor([[2.0, 0.0, 1.9], [0.0, 0.0, 1.0]])
    b = torch.tensor([[2.0, 0.0, 1.9], [0.0, 0.0, 1.0]])
    c = torch.tensor([[0.0, 2.5, 1.9], [0.0, 0.0, 1.0]])
    d = torch.tensor([[0.0, 2.5, 1.9], [9.0, 0.0, 1.0]])
    assert evaluation.vote([a, b, c, d]).tolist() == [2, 2]
    assert evaluation.vote([a, b, c, d], tie="all_classes").tolist() == [2, 2]
    assert evaluation.vote([a, b, c, d], tie="tied_classes").tolist() == [1, 2]
    # row 1's summed logits favour class 0 (9 vs 4): without a tie the vote still wins
    with pytest.raises(ValueError, match="all_classes, tied_classes"):
        evaluation.vote([a, b], tie="first")


@pytest.mark.parametrize(("n_classes", "signal", "tie_rate", "disagree"),
                         [(10, 2.0, (0.15, 0.23), (0.03, 0.08)),
                          (100, 3.0, (0.31, 0.41), (0.15, 0.26))])
def test_vote_tie_rules_disagree_on_simulated_experts(
        n_classes: int, signal: float, tie_rate: tuple[float, float],
        disagree: tuple[float, float]) -> None:
    # Four experts whose logits share a per-image component (they start from one base) plus
    # their own noise, each right on 47-48% (10 classes) / 36% (100 classes) of 4,000 images.
    # Measured (seed 0): 10 classes: 18.4% of images tied, the rules disagree on 5.2% of those
    # (38 images); 100 classes: 35.9% tied, disagreement 21.6% of those (310 images), and the
    # reference rule is 0.8 points more accurate. Outside ties they never disagree.
    g = torch.Generator().manual_seed(0)
    n = 4000
    y = torch.randint(0, n_classes, (n,), generator=g)
    shared = torch.randn(n, n_classes, generator=g)
    onehot = torch.nn.functional.one_hot(y, n_classes)
    logits = [shared + torch.randn(n, n_classes, generator=g) + signal * onehot
              for _ in range(4)]
    votes = torch.nn.functional.one_hot(torch.stack(logits).argmax(-1), n_classes).sum(0)
    tied = (votes == votes.max(1, keepdim=True).values).sum(1) > 1
    ref, old = evaluation.vote(logits), evaluation.vote(logits, tie="tied_classes")
    differ = ref != old
    assert not differ[~tied].any()
    rate = tied.float().mean().item()
    share = differ[tied].float().mean().item()
    assert tie_rate[0] < rate < tie_rate[1] and disagree[0] < share < disagree[1]


# --- Tiny ImageNet Cutout per stage -------------------------------------------------------------


def test_paper_tinyimagenet_cutout_per_stage() -> None:
    # the reference's Tiny ImageNet configs: 32 for base, experts, Scratch and Vanilla FT; 16
    # for Fusing and FusionDistill
    sf = load("paper_tinyimagenet.yaml", check_space=False).sf
    p = sf.pipeline
    assert {k: getattr(p, k).cutout for k in
            ("base", "expert", "scratch", "vanilla_ft", "fusing", "distill")} == {
        "base": 32, "expert": 32, "scratch": 32, "vanilla_ft": 32, "fusing": 16, "distill": 16}
    assert p.base.cutout_on == "clean" and p.expert.cutout_on == "degraded"


STAGE_NAMES = ("base", "expert", "scratch", "vanilla_ft", "fusing", "distill")
TINY_CUTOUT = {"base": 32, "expert": 32, "scratch": 32, "vanilla_ft": 32, "fusing": 16,
               "distill": 16}


def _study(tmp_path: Path, pipeline: str, *overrides: str) -> PipelineConfig:
    f = tmp_path / "s.yaml"
    f.write_text(f"study: {{name: s}}\npipeline:\n  preset: paper\n{pipeline}")
    return load(f, list(overrides), check_space=False).sf.pipeline


def test_paper_preset_chooses_the_values_of_its_dataset(tmp_path: Path) -> None:
    """`preset: paper` with another dataset gets that dataset's paper values, not CIFAR-10's
    (Cutout 16 everywhere, the base's weight decay 1e-4)."""
    tiny = _study(tmp_path, "  data: {dataset: tinyimagenet, root: data}\n")
    assert {k: getattr(tiny, k).cutout for k in STAGE_NAMES} == TINY_CUTOUT
    assert tiny.base.weight_decay == 5e-4 and tiny.scratch.weight_decay == 1e-4
    c100 = _study(tmp_path, "  data: {dataset: cifar100, root: data}\n")
    assert c100.base.weight_decay == 5e-4 and c100.expert.weight_decay == 1e-4
    assert {getattr(c100, k).cutout for k in STAGE_NAMES} == {16}
    c10 = _study(tmp_path, "  data: {dataset: cifar10, root: data}\n")
    assert c10.base.weight_decay == 1e-4 and {getattr(c10, k).cutout for k in STAGE_NAMES} == {16}
    # --set of the dataset chooses as the file does
    moved = _study(tmp_path, "  data: {dataset: cifar10, root: data}\n",
                   "data.dataset=tinyimagenet")
    assert {k: getattr(moved, k).cutout for k in STAGE_NAMES} == TINY_CUTOUT


def test_explicit_values_win_over_the_dataset_values(tmp_path: Path) -> None:
    own = _study(tmp_path, "  data: {dataset: tinyimagenet, root: data}\n"
                           "  expert: {cutout: 24}\n  base: {weight_decay: 1.0e-4}\n",
                 "scratch.cutout=8")
    assert (own.expert.cutout, own.base.weight_decay, own.scratch.cutout) == (24, 1e-4, 8)
    assert own.base.cutout == 32 and own.vanilla_ft.cutout == 32   # the rest still follows
    # a preset that extends paper keeps its own values over paper's per-dataset ones
    smoke = load("smoke.yaml", ["data.dataset=tinyimagenet", "data.root=data"],
                 check_space=False)
    assert {getattr(smoke.sf.pipeline, k).cutout for k in STAGE_NAMES} == {8}
    assert "per_dataset" not in smoke.tree["pipeline"]


def test_per_dataset_block_names_known_datasets(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "odd.yaml").write_text("extends: paper\nper_dataset:\n  tinyimagenett: "
                                       "{base: {cutout: 32}}\n")
    (tmp_path / "paper.yaml").write_text(
        (Path(studyfile.__file__).parent / "presets" / "paper.yaml").read_text())
    monkeypatch.setattr(studyfile, "PRESET_DIR", tmp_path)
    with pytest.raises(ConfigError, match="unknown dataset.*tinyimagenett"):
        studyfile.load_preset("odd", dataset="cifar10")


# --- what the chunks of a step share ------------------------------------------------------------


def _split(n: int = 40) -> tuple[Split, tuple, tuple]:
    ds = make_synthetic(n, 10, seed=0)
    return ds.train, ds.mean, ds.std


@pytest.fixture(scope="module")
def bank() -> dd.JpegBank:
    return dd.build_jpeg_bank(_split()[0].images, qualities=(30, 90))


def _streams(share: str, bank: dd.JpegBank, cutout_on: str = "degraded",
             names: list[str] = NAMES) -> tuple[TrainStream, DeviceTrainStream]:
    split, mean, std = _split()
    args = dict(degradations=names, batch_size=16, cutout=8, cutout_on=cutout_on, share=share,
                salt_value=1, seed=3, device="cpu")
    return (TrainStream(split, mean, std, **args),
            DeviceTrainStream(split, mean, std, **args, jpeg_bank=bank))


def _chunks(t: torch.Tensor, b: augment.Batch) -> dict[str, torch.Tensor]:
    return {d: t[rows] for d, rows in b.chunks}


class _Recorder:
    """Wraps augment.flip_degrade to record the CPU stream's flips and levels per chunk."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, np.ndarray, np.ndarray]] = []
        self.inner = augment.flip_degrade

    def __call__(self, images, flip, degradation, levels, rng, salt_value):  # noqa: ANN001, ANN204
        self.calls.append((degradation, np.array(flip), np.array(levels)))
        return self.inner(images, flip, degradation, levels, rng, salt_value)

    def steps(self) -> Iterator[dict[str, tuple[np.ndarray, np.ndarray]]]:
        for i in range(0, len(self.calls), len(NAMES)):
            yield {d: (f, lv) for d, f, lv in self.calls[i:i + len(NAMES)]}


@pytest.mark.parametrize("share", ["geometry", "reference"])
def test_geometry_and_reference_share_flips_and_crops(share: str, bank: dd.JpegBank,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, dev = _streams(share, bank)
    rec = _Recorder()
    monkeypatch.setattr(augment, "flip_degrade", rec)
    for stream in (cpu, dev):
        for b in stream.epoch(0):
            clean = _chunks(b.clean, b)            # Cutout on degraded: the clean crops are bare
            labels = _chunks(b.labels, b)
            for d in NAMES[1:]:
                assert torch.equal(clean[d], clean["jpeg"]) and torch.equal(labels[d],
                                                                            labels["jpeg"])
    for step in rec.steps():
        assert all(np.array_equal(step[d][0], step["jpeg"][0]) for d in NAMES)
    for p in dev.plan(0):
        for _, rows in p.chunks[1:]:
            assert torch.equal(p.flip[rows], p.flip[p.chunks[0][1]])
            assert torch.equal(p.crop[rows], p.crop[p.chunks[0][1]])
            assert torch.equal(p.index[rows], p.index[p.chunks[0][1]])


def test_reference_shares_blur_and_awgn_levels(bank: dd.JpegBank,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, dev = _streams("reference", bank)
    rec = _Recorder()
    monkeypatch.setattr(augment, "flip_degrade", rec)
    list(cpu.epoch(0))
    steps = list(rec.steps())
    assert len(steps) == cpu.steps_per_epoch == 3
    for s in steps:
        assert np.array_equal(s["blur"][1], s["awgn"][1])
        assert not np.array_equal(s["blur"][1], s["saltpepper"][1])
    for p in dev.plan(0):
        lv = dict((d, p.levels[rows]) for d, rows in p.chunks)
        assert torch.equal(lv["blur"], lv["awgn"])
        assert lv["blur"].max() <= 50


def test_reference_shares_cutout_masks_between_jpeg_and_blur(bank: dd.JpegBank) -> None:
    # Cutout on the clean copies: the clean chunks then differ only by their holes
    for share, same in (("reference", True), ("geometry", False)):
        for stream in _streams(share, bank, cutout_on="clean"):
            b = next(iter(stream.epoch(0)))
            clean = _chunks(b.clean, b)
            assert torch.equal(clean["jpeg"], clean["blur"]) is same
            assert not torch.equal(clean["jpeg"], clean["awgn"])
            assert not torch.equal(clean["awgn"], clean["saltpepper"])
    p = next(iter(_streams("reference", bank)[1].plan(0)))
    centre = {d: p.centre[rows] for d, rows in p.chunks}
    assert torch.equal(centre["jpeg"], centre["blur"])
    assert not torch.equal(centre["jpeg"], centre["awgn"])


def test_images_shares_the_images_only(bank: dd.JpegBank,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, dev = _streams("images", bank)
    rec = _Recorder()
    monkeypatch.setattr(augment, "flip_degrade", rec)
    for stream in (cpu, dev):
        b = next(iter(stream.epoch(0)))
        clean, labels = _chunks(b.clean, b), _chunks(b.labels, b)
        assert all(torch.equal(labels[d], labels["jpeg"]) for d in NAMES)
        assert not any(torch.equal(clean[d], clean["jpeg"]) for d in NAMES[1:])
    s = next(rec.steps())
    assert not np.array_equal(s["jpeg"][0], s["blur"][0])         # own flips
    assert not np.array_equal(s["blur"][1], s["awgn"][1])         # own levels
    p = next(iter(dev.plan(0)))
    rows = dict(p.chunks)
    assert not torch.equal(p.flip[rows["jpeg"]], p.flip[rows["blur"]])
    assert not torch.equal(p.levels[rows["blur"]], p.levels[rows["awgn"]])
    nothing = next(iter(_streams("nothing", bank)[0].epoch(0)))
    lab = _chunks(nothing.labels, nothing)
    assert not torch.equal(lab["jpeg"], lab["blur"])              # other images


@pytest.mark.parametrize("share", augment.SHARE)
def test_epochs_are_pure_functions_of_seed_and_epoch(share: str, bank: dd.JpegBank) -> None:
    for a, fresh in zip(_streams(share, bank), _streams(share, bank)):
        e1 = list(a.epoch(1))
        assert len(e1) == a.steps_per_epoch == 3
        for x, y, z in zip(e1, a.epoch(1), fresh.epoch(1)):   # again, and a resumed stream
            for t in ("clean", "degraded", "labels"):
                assert torch.equal(getattr(x, t), getattr(y, t))
                assert torch.equal(getattr(x, t), getattr(z, t))
        assert not torch.equal(next(iter(a.epoch(0))).degraded, e1[0].degraded)


def test_share_must_be_known(bank: dd.JpegBank) -> None:
    with pytest.raises(ValueError, match="nothing, images, geometry, reference"):
        _streams("all", bank)


def test_reference_without_twins_is_geometry(bank: dd.JpegBank) -> None:
    # the couplings need both chunks of a pair; jpeg + saltpepper has none, so "reference"
    # draws exactly what "geometry" draws
    for g, r in zip(_streams("geometry", bank, names=["jpeg", "saltpepper"]),
                    _streams("reference", bank, names=["jpeg", "saltpepper"])):
        for x, y in zip(g.epoch(0), r.epoch(0)):
            assert torch.equal(x.degraded, y.degraded) and torch.equal(x.clean, y.clean)


# --- validation during training, as the reference scores its epochs ---------------------------


class _Fixed(torch.nn.Module):
    """Returns given logits row by row, whatever the input (the features are unused)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = x[:, 0, 0, 0].long()          # each image carries its row number
        return self.logits[rows], self.logits[rows]


def test_per_batch_accuracy_weighs_every_batch_the_same() -> None:
    # 5 images, right: 1 1 0 0 1. Share of images: 3/5. Batches of 2: [1, 1], [0, 0], [1]:
    # (1 + 0 + 1) / 3 = 2/3, the last one-image batch weighing as much as the full ones
    y = torch.tensor([0, 0, 0, 0, 0])
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    x = torch.arange(5.0).reshape(5, 1, 1, 1)
    model = _Fixed(logits)
    assert train.accuracy(model, x, y, batch_size=2) == pytest.approx(3 / 5)
    assert train.accuracy(model, x, y, batch_size=3, per_batch=2) == pytest.approx(2 / 3)
    assert train.accuracy(model, x, y, per_batch=5) == pytest.approx(3 / 5)   # one batch


def _validation_pipeline(tmp_path: Path, *overrides: str) -> Pipeline:
    sf = load("smoke.yaml", ["device=cpu", "data.synthetic_train=120", "data.val_size=40",
                             "data.synthetic_test=40", *overrides], check_space=False).sf
    return Pipeline(sf.pipeline, StageCache(tmp_path / "cache"), log=lambda s: None)


@pytest.mark.parametrize(("protocol", "draw", "accuracy"),
                         [("holdout", "fixed", "images"), ("reference", "per_epoch", "batches")])
def test_validation_defaults_follow_the_protocol(protocol: str, draw: str, accuracy: str,
                                                 tmp_path: Path) -> None:
    cfg = _validation_pipeline(tmp_path, f"protocol={protocol}").cfg
    assert (cfg.validation_draw, cfg.validation_accuracy) == (draw, accuracy)
    other = _validation_pipeline(tmp_path, f"protocol={protocol}", "validation.draw=fixed",
                                 "validation.accuracy=images").cfg   # today's, kept as options
    assert (other.validation_draw, other.validation_accuracy) == ("fixed", "images")


def test_per_epoch_validation_draws_are_functions_of_seed_and_epoch(tmp_path: Path) -> None:
    a = _validation_pipeline(tmp_path, "protocol=reference")
    fresh = _validation_pipeline(tmp_path, "protocol=reference")   # a resumed stage's process
    for name in ("awgn", "jpeg"):
        e3 = a._val_view(name, 3)
        assert torch.equal(e3, fresh._val_view(name, 3))
        assert not torch.equal(e3, a._val_view(name, 4))         # new levels and noise
        assert torch.equal(e3, a._val_view(name, 3))             # drawn again, the same
    assert torch.equal(a._val_view("clean", 1), a._val_view("clean", 2))   # nothing to draw
    seed = _validation_pipeline(tmp_path, "protocol=reference", "eval.seed=1")
    assert not torch.equal(seed._val_view("awgn", 3), a._val_view("awgn", 3))
    assert len(a._val_views) == 3          # one copy per degradation in memory, not per epoch


def test_fixed_validation_draw_is_the_same_every_epoch(tmp_path: Path) -> None:
    p = _validation_pipeline(tmp_path)
    e1 = p._val_view("saltpepper", 1)
    assert torch.equal(e1, p._val_view("saltpepper", 7))
    # the draw of every earlier release: its cache entries keep their meaning
    old = augment.normalise(evaluation.random_level_copy(p.val.images, "saltpepper", 0, 1),
                            p.dataset.mean, p.dataset.std)
    assert torch.equal(e1, old)


def test_resumed_stage_scores_its_epochs_on_the_same_redraws(tmp_path: Path) -> None:
    """An expert validated with per-epoch redraws, killed after epoch 1 and resumed, ends with
    the history and the weights of an uninterrupted one."""
    quick = ["protocol=reference", "base.epochs=1", "base.milestones=[1]", "expert.epochs=3",
             "expert.t_max=3"]
    straight = _validation_pipeline(tmp_path / "a", *quick)
    whole = straight.network("expert_awgn").state_dict()

    def stop(epoch: int, val: float | None) -> None:
        if epoch == 1:
            raise KeyboardInterrupt          # stands in for a kill between epochs

    killed = Pipeline(straight.cfg, StageCache(tmp_path / "b" / "cache"), log=lambda s: None,
                      on_epoch=stop, final_stage="expert_awgn")
    with pytest.raises(KeyboardInterrupt):
        killed.network("expert_awgn")
    resumed = _validation_pipeline(tmp_path / "b", *quick)
    again = resumed.network("expert_awgn").state_dict()
    assert resumed.histories["expert_awgn"][0]["epoch"] == 1
    vals = [[r["val"] for r in p.histories["expert_awgn"]] for p in (straight, resumed)]
    assert vals[0] == vals[1] and len(vals[0]) == 3
    assert all(torch.equal(whole[k], again[k]) for k in whole)


# --- the reference's transient level coupling (study/augment.py's docstring) -----------------


def test_reference_level_coupling_lasts_about_a_hundred_images_per_worker() -> None:
    # Python's randint(1, 101), randint(0, 50) and randint(0, 25) take the top 7, 6 and 5 bits
    # of the same 32-bit words from equal states; they fall out of step at the first word only
    # one of them rejects. For jpeg and blur that is top-7 value 101 (1 word in 128), while 101
    # in 128 give both an image: 101 coupled images on average; blur and salt-and-pepper 51.
    import random

    def coupled(seed: int, lo: tuple[int, int], hi: tuple[int, int], rule: Callable) -> int:
        a, b = random.Random(seed), random.Random(seed)
        n = 0
        while rule(a.randint(*lo), b.randint(*hi)):
            n += 1
        return n

    jb = [coupled(s, (1, 101), (0, 50), lambda j, b: b == (j - 1) // 2) for s in range(2000)]
    bs = [coupled(s, (0, 50), (0, 25), lambda b, p: p == b // 2) for s in range(2000)]
    assert 92 < np.mean(jb) < 110 and 46 < np.mean(bs) < 56
