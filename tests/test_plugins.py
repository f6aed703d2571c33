"""Plugins through entry points (study/registry.py, docs/plugins.md): the built-ins found from
a checkout without installed metadata and declared alike in pyproject.toml; a plugin found
through a distribution on sys.path, its name validated (exit 2 listing what is installed), its
version in the keys of what it shapes and in the results' provenance; the example package's
four components holding to their contracts.

The distribution is faked as importlib.metadata finds one: a `<name>-<version>.dist-info`
folder (METADATA, entry_points.txt) first on sys.path, pointing at examples/study-extra's
modules. Named like the example, it shadows an installed copy of it (importlib.metadata keeps
the first distribution of a name on sys.path), so these tests run the same either way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch

from study import cli, data, degradations, device_degrade, fusion, models, registry, results
from study.cache import StageCache
from study.config import PipelineConfig
from study.errors import ConfigError
from study.pipeline import Pipeline
from study.studyfile import load

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "study-extra"
ENTRY_POINTS = {registry.DEGRADATIONS: {"contrast": "study_extra.degradations:CONTRAST"},
                registry.MODELS: {"resnet20": "study_extra.models:resnet20"},
                registry.DATASETS: {"npz": "study_extra.datasets:load_npz"},
                registry.FUSION: {"median": "study_extra.fusion:MEDIAN"}}


def fake_distribution(folder: Path, version: str,
                      entry_points: dict[str, dict[str, str]] = ENTRY_POINTS,
                      name: str = "study-extra") -> Path:
    """The metadata of an installed distribution, in `folder` (to put on sys.path)."""
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{n} = {t}\n" for n, t in eps.items()) + "\n"
        for group, eps in entry_points.items()))
    return folder


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The example's modules importable and its fake distribution, version 0.1.0, installed."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(fake_distribution(tmp_path / "v1", "0.1.0")))
    registry.refresh()
    yield tmp_path
    registry.refresh()


def _use(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    monkeypatch.syspath_prepend(str(folder))
    registry.refresh()


# ---------------------------------------------------------------- the built-ins: one path
def test_pyproject_declares_the_builtins_the_registry_falls_back_to() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert {g: declared[g] for g in registry.GROUPS} == registry.BUILTIN


def test_builtins_are_found_without_installed_metadata_as_the_same_objects() -> None:
    registry.refresh()
    assert registry.names(registry.DEGRADATIONS)[:4] == ("jpeg", "blur", "awgn", "saltpepper")
    for group, table in registry.BUILTIN.items():
        for name in table:
            c = registry.find(group, name)
            assert c.builtin and c.label == "study (built-in)"
    assert registry.load(registry.DEGRADATIONS, "jpeg") is degradations.get("jpeg")
    assert registry.load(registry.MODELS, "tiny") is models.get("tiny")
    assert registry.load(registry.DATASETS, "synthetic") is data.get("synthetic")
    assert registry.load(registry.FUSION, "ties") is fusion.get("ties")
    assert registry.plugin_versions(registry.DEGRADATIONS, list(degradations.DEGRADATIONS)) == {}
    assert [degradations.stream_index(d) for d in degradations.DEGRADATIONS] == [0, 1, 2, 3]


# ---------------------------------------------------------------- discovery and validation
def test_a_distribution_on_sys_path_adds_its_components(plugin_path: Path) -> None:
    assert registry.names(registry.DEGRADATIONS)[4:5] == ("contrast",)
    c = registry.find(registry.DEGRADATIONS, "contrast")
    assert (c.distribution, c.version, c.builtin) == ("study-extra", "0.1.0", False)
    d = degradations.get("contrast")
    assert (d.lo, d.hi, d.identity_level, d.stochastic, d.bit_exact) == (0, 50, 0, False, True)
    assert "resnet20" in registry.names(registry.MODELS)
    assert "npz" in registry.names(registry.DATASETS)
    assert fusion.get("median").name == "median" and "median" in fusion.installed()
    assert registry.installed_plugins()["study.degradations:contrast"] == "study-extra 0.1.0"


def test_a_plugin_claiming_a_builtin_name_or_two_claiming_one_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, fake_distribution(tmp_path / "a", "1.0", {
        registry.MODELS: {"tiny": "elsewhere:tiny"}}, name="thief"))
    with pytest.raises(registry.PluginError, match="thief 1.0 declares model 'tiny'.*built-in"):
        registry.names(registry.MODELS)
    _use(monkeypatch, fake_distribution(tmp_path / "b", "2.0", {
        registry.MODELS: {"tiny": "study.models:tiny", "wide": "one:wide"}}, name="one"))
    _use(monkeypatch, fake_distribution(tmp_path / "c", "3.0", {
        registry.MODELS: {"wide": "two:wide"}}, name="two"))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not p.endswith("/a")])
    registry.refresh()
    with pytest.raises(registry.PluginError, match="two distributions declare model 'wide'"):
        registry.names(registry.MODELS)
    registry.refresh()


@pytest.mark.parametrize(("setting", "key", "listed"), [
    ("degradations=[jpeg,fog]", "unknown degradation ['fog']", "'contrast'"),
    ("model=wideresnet", "unknown model 'wideresnet'", "'resnet20'"),
    ("data.dataset=svhn", "unknown dataset 'svhn'", "'npz'"),
    ("fusion.method=magic", "unknown fusion method 'magic'", "'median'"),
])
def test_an_unknown_name_exits_2_listing_the_installed_ones(
        plugin_path: Path, capsys: pytest.CaptureFixture[str], setting: str, key: str,
        listed: str) -> None:
    rc = cli.main(["run", "--space", "smoke.yaml", "--results", str(plugin_path / "r"),
                   "--set", setting])
    err = capsys.readouterr().err
    assert rc == 2 and key in err and listed in err and "Traceback" not in err, err


def test_a_plugin_that_cannot_be_imported_exits_2_naming_it(tmp_path: Path) -> None:
    """A fusion plugin is loaded when study.config is imported (its arguments join the schema):
    a fresh interpreter, as this one imported the config long ago."""
    fake_distribution(tmp_path, "1.0", {registry.FUSION: {"bad": "no_such_module:METHOD"}},
                      name="broken")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    r = subprocess.run([sys.executable, "-m", "study.cli", "run", "--space", "smoke.yaml",
                        "--results", str(tmp_path / "r")], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "fusion method 'bad' (broken 1.0" in r.stderr and "no_such_module" in r.stderr


# ---------------------------------------------------------------- versions in keys, provenance
def _cfg(**changes: object) -> PipelineConfig:
    tree = load("smoke.yaml", ["device=cpu"], check_space=False).sf.pipeline.model_dump()
    tree |= changes
    return PipelineConfig.model_validate(tree)


def _keys(cfg: PipelineConfig) -> dict[str, str]:
    pipe = Pipeline(cfg, StageCache("/nonexistent"), log=lambda s: None)
    return {n: pipe.key(n) for n in ["base", *(f"expert_{d}" for d in cfg.degradations),
                                      "modelsoups", "fusiondistill", "scratch"]}


def test_a_plugins_version_moves_the_keys_of_what_it_shapes_only(
        plugin_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builtin = _cfg(degradations=["jpeg", "blur"])
    before = _keys(builtin)
    cfg = _cfg(degradations=["jpeg", "contrast"])
    v1 = _keys(cfg)
    fields = Pipeline(cfg, StageCache("/nonexistent"), log=lambda s: None).key_fields(
        "expert_contrast")
    assert fields["plugin:study.degradations:contrast"] == "study-extra 0.1.0"
    _use(monkeypatch, fake_distribution(plugin_path / "v2", "0.2.0"))
    assert registry.find(registry.DEGRADATIONS, "contrast").version == "0.2.0"
    v2 = _keys(cfg)
    assert {n for n in v1 if v1[n] != v2[n]} == {"expert_contrast", "modelsoups",
                                                 "fusiondistill", "scratch"}
    assert _keys(builtin) == before          # a study of built-ins: keys as without plugins
    model = _keys(_cfg(model="resnet20"))
    assert model["base"] != before["base"]
    fields = Pipeline(_cfg(model="resnet20"), StageCache("/nonexistent"),
                      log=lambda s: None).key_fields("base")
    assert fields["plugin:study.models:resnet20"] == "study-extra 0.2.0"


def test_the_provenance_names_the_installed_plugins(plugin_path: Path) -> None:
    found = json.loads(results.provenance()["plugins"])
    assert found["study.degradations:contrast"] == "study-extra 0.1.0"
    assert found["study.fusion:median"] == "study-extra 0.1.0"


# A plugin degradation with a CPU operator only, and two that break the contract (entry points
# of the fake distribution "cpu-only" below).
FADE = degradations.Degradation("fade", 0, 10, identity_level=0, stochastic=False,
                                cpu=lambda x, lv, rng: x // (1 + lv[:, None, None, None] // 5))
MISNAMED = degradations.Degradation("blurry", 0, 10, identity_level=0, stochastic=False,
                                    cpu=FADE.cpu)
NO_OPERATOR = degradations.Degradation("nocpu", 0, 10, identity_level=0, stochastic=False)


@pytest.fixture
def cpu_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    _use(monkeypatch, fake_distribution(tmp_path / "cpu", "1.0", {registry.DEGRADATIONS: {
        "fade": f"{__name__}:FADE", "misnamed": f"{__name__}:MISNAMED",
        "nocpu": f"{__name__}:NO_OPERATOR", "gone": "no_such_module:X"}}, name="cpu-only"))
    yield
    registry.refresh()


def test_a_plugin_breaking_its_contract_is_refused_naming_it(cpu_only: None) -> None:
    assert degradations.get("fade") is FADE
    with pytest.raises(registry.PluginError, match=r"'misnamed' \(cpu-only 1.0\).*its name is"):
        degradations.get("misnamed")
    with pytest.raises(registry.PluginError, match="'nocpu'.*no cpu operator"):
        degradations.get("nocpu")
    with pytest.raises(registry.PluginError, match="'gone' .*cannot be loaded"):
        degradations.get("gone")


def test_without_a_device_operator_auto_keeps_the_cpu_path_and_device_is_refused(
        cpu_only: None) -> None:
    def pipe(path: str) -> Pipeline:
        cfg = _cfg(degradations=["jpeg", "fade"], compute={"data_path": path})
        return Pipeline(cfg, StageCache("/nonexistent"), log=lambda s: None)

    assert not pipe("auto").device_path and not device_degrade.has_operator("fade")
    with pytest.raises(ConfigError, match=r"\['fade'\] has no device operator"):
        _ = pipe("device").device_path


# ---------------------------------------------------------------- the example's contracts
def test_the_contrast_operators_agree_bit_for_bit_and_keep_level_0(plugin_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    levels = np.array([0, 1, 10, 25, 49, 50])
    cpu = degradations.degrade_batch(images, "contrast", levels, rng)
    assert np.array_equal(cpu[0], images[0])
    assert (cpu[5].std() < images[5].std() * 0.55) and cpu.dtype == np.uint8
    assert np.array_equal(degradations.degrade(images[3], "contrast", 25, rng), cpu[3])
    gen = torch.Generator().manual_seed(0)
    dev = device_degrade.degrade(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                                 "contrast", torch.from_numpy(levels), gen)
    assert np.array_equal(dev.permute(0, 2, 3, 1).numpy(), cpu)
    with pytest.raises(ValueError, match=r"contrast level must be in \[0, 50\]"):
        degradations.degrade_batch(images, "contrast", 51, rng)


def test_resnet20_returns_logits_and_features(plugin_path: Path) -> None:
    net = models.build_model("resnet20", 10)
    logits, feats = net(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, 10) and feats["stage3"].shape == (2, 64, 8, 8)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(0.27e6, rel=0.02)


def test_an_npz_file_loads_as_a_dataset(plugin_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = plugin_path / "toy.npz"
    np.savez(path, train_images=rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8),
             train_labels=np.arange(20) % 3, test_images=np.zeros((5, 8, 8, 3), np.uint8),
             test_labels=np.arange(5) % 3, classes=np.array(["a", "b", "c"]))
    ds = data.load_dataset("npz", str(path), classes=["c", "a"])
    assert ds.classes == ["c", "a"] and len(ds.train) == 13 and ds.image_size == 8
    assert ds.train.labels.dtype == np.int64 and set(ds.train.labels.tolist()) == {0, 1}
    with pytest.raises(data.DataError, match="no file at"):
        data.load_dataset("npz", str(plugin_path / "missing.npz"))


def test_the_median_fusion_fuses_elementwise(plugin_path: Path) -> None:
    from study.fusion import merge

    experts = [{"w": torch.tensor([1.0, 5.0])}, {"w": torch.tensor([2.0, -1.0])},
               {"w": torch.tensor([9.0, 0.0])}]
    fused = merge.fuse(experts, "median")
    assert fused["w"].tolist() == [2.0, 0.0]


# ---------------------------------------------------------------- a study with a plugin
# ~4.5 s on 2 busy cores: two experts and one distillation of one epoch on 160 images
def test_a_study_run_trains_and_evaluates_a_plugin_degradation(
        plugin_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = ["data.synthetic_train=200", "data.val_size=40", "data.synthetic_test=40",
            "degradations=[jpeg,contrast]", "eval.degradations=[contrast]", "base.epochs=1",
            "expert.epochs=1", "distill.epochs=1", "distill.milestones=[1]",
            "eval.test_level_step=25", "eval.val_level_step=50", "methods=[fusiondistill]",
            "fusion.method=median"]
    rc = cli.main(["run", "--space", str(EXAMPLE / "extra_smoke.yaml"),
                   "--results", str(plugin_path / "r"), *[x for s in tiny for x in ("--set", s)]])
    out = capsys.readouterr().out
    assert rc == 0 and "expert_contrast" in out and "fusiondistill" in out, out
    assert "contrast" in out.split("test accuracy")[1], out   # the table's column
