"""The study-file tree: every shipped YAML validates; bad input names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from study import studyfile
from study.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "search_spaces").glob("*.yaml"))
PRESETS = sorted((ROOT / "study" / "presets").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_study_file_validates(path: Path) -> None:
    sf = studyfile.load(path).sf
    assert sf.study.name == path.stem
    assert sf.pipeline.methods


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_validates(path: Path) -> None:
    tree = studyfile.resolve_tree({"study": {"name": "x"}, "pipeline": {"preset": path.stem,
                                "data": {"root": "data"}}}, "test")
    sf = studyfile.validate(tree, "test")
    assert sf.pipeline.base.epochs >= 1


def test_paper_preset_is_the_reference_recipe() -> None:
    sf = studyfile.load(ROOT / "search_spaces" / "paper_cifar100.yaml").sf
    p = sf.pipeline
    assert p.model == "resnet56" and p.salt_value == 1
    assert (p.base.optimizer, p.base.lr, p.base.epochs, p.base.milestones) == ("sgd", 0.1, 200,
                                                                               [60, 120, 160])
    assert p.base.weight_decay == 5e-4 and p.base.cutout_on == "clean"
    assert (p.expert.optimizer, p.expert.schedule, p.expert.t_max, p.expert.epochs) == (
        "radam", "cosine", 100, 100)
    assert p.expert.cutout_on == "degraded" and p.expert.feature_layers == {"stage3": 1.0}
    assert (p.fusion.method, p.fusion.bn) == ("uniform", "copy_first")
    d = p.distill
    assert (d.ce_weight, d.feature_weight, d.batch_size, d.milestones) == (0.1, 1.0, 128,
                                                                           [30, 70, 90])
    assert d.teacher_input == "clean" and d.same_images_per_degradation and d.loss == "feature"
    assert p.scratch.milestones == [60, 140, 180] and p.scratch.epochs == 200
    assert p.eval.test_level_step == 1
    tiny = studyfile.load(ROOT / "search_spaces" / "paper_tinyimagenet.yaml").sf
    assert tiny.pipeline.base.cutout == 32
    c10 = studyfile.load(ROOT / "search_spaces" / "paper_cifar10.yaml").sf
    assert c10.pipeline.base.weight_decay == 1e-4


def test_space_name_is_found_in_search_spaces() -> None:
    for name in ("smoke.yaml", "smoke"):
        assert studyfile.load(name).source == str(ROOT / "search_spaces" / "smoke.yaml")


def test_overrides_are_typed_and_default_to_pipeline() -> None:
    sf = studyfile.load("smoke.yaml", ["distill.temperature=2", "study.n_trials=3",
                                       "degradations=[jpeg, blur]"]).sf
    assert sf.pipeline.distill.temperature == 2.0
    assert sf.study.n_trials == 3
    assert sf.pipeline.degradations == ["jpeg", "blur"]


def test_all_errors_reported_together_with_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("study: {name: t}\npipeline:\n  preset: smoke\n  distil: {x: 1}\n"
                 "  base: {epochs: -1}\n  degradations: [jpeg, fog]\n")
    with pytest.raises(ConfigError) as e:
        studyfile.load(f)
    msg = str(e.value)
    assert str(f) in msg and "3 error(s)" in msg
    assert "pipeline.distil" in msg and "did you mean 'distill'" in msg
    assert "pipeline.base.epochs" in msg and "greater than or equal to 1" in msg
    assert "unknown degradation ['fog']" in msg and "saltpepper" in msg


@pytest.mark.parametrize("text, needle", [
    ("study: {name: t}\npipeline: {preset: nope}\n", "unknown preset 'nope'"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("study: {name: t}\npipeline: [1]\n", "'pipeline' must be a mapping"),
    ("study: {name: t}\npipeline: {preset: smoke, fusion: {method: weighted}}\n",
     "needs fusion.weights"),
    ("study: {name: t}\npipeline: {preset: smoke, fusion: {method: weighted, weights: "
     "{jpeg: 0.5, blur: 0.5, awgn: 0.5, saltpepper: 0.5}}}\n", "sum to 1"),
    ("study: {name: t}\npipeline: {preset: smoke, data: {dataset: cifar10}}\n",
     "data.root is required"),
    ("study: {name: t}\npipeline: {preset: smoke, methods: []}\n", "at least one method"),
    ("study: {name: t}\npipeline: {preset: smoke, fusion: {experts: [fog]}}\n",
     "unknown fusion expert"),
    ("a: [\n", "not valid YAML"),
])
def test_bad_files(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=None) as e:
        studyfile.load(f)
    assert needle in str(e.value) and str(f) in str(e.value)


def test_yaml_bomb_is_refused(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    f = tmp_path / "bomb.yaml"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="expands to over"):
        studyfile.load(f)


def test_missing_file_lists_shipped_files() -> None:
    with pytest.raises(ConfigError, match="smoke.yaml"):
        studyfile.load("does_not_exist.yaml")


def test_bad_override() -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        studyfile.load("smoke.yaml", ["distill.temperature"])
