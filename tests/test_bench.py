"""`study bench` at toy scale: every figure present and consistent, the CLI, the GPU script.

No timing is asserted: figures vary with the machine and its load.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from study import bench, cli, losses, train
from study import device_degrade as dd
from study.augment import Batch
from study.data import make_synthetic
from study.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
STAGE_FIGURES = {"images_per_step", "reference_ips", "device_ips", "resident_ips",
                 "reference_data_ips", "device_data_ips", "reference_ratio", "device_ratio"}


def _toy(**kw: object) -> bench.BenchSettings:
    args = dict(device="cpu", model="tiny", batch_size=8, n_train=32, steps=2, warmup=1,
                resident_batches=2, jpeg_bank_levels=(10, 90), eval_images=6, eval_batch=64,
                procs=2, workers=1, results_trials=(6,), results_repeats=1)
    return bench.BenchSettings(**(args | kw))


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_every_figure_at_toy_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    logged: list[str] = []
    started: list[list[str]] = []
    real_run = subprocess.run

    def worker_start(cmd: list[str], **kw: object) -> object:
        # the interpreter + imports of a worker process: 3-6 s here, so recorded, not run
        if cmd[-1:] == ["import study.worker"]:
            started.append(cmd)
            cmd = ["true"]
        return real_run(cmd, **kw)
    monkeypatch.setattr(bench.subprocess, "run", worker_start)
    small = ["data.synthetic_train=60", "data.synthetic_test=20", "data.val_size=20",
             "degradations=[awgn, saltpepper]", "eval.test_level_step=50",
             "eval.val_level_step=50", "distill.epochs=1", "distill.milestones=[]"]
    rec = bench.run_bench(_toy(), bench.PARTS, cache_dir=tmp_path, trial_overrides=small,
                          log=logged.append)
    assert list(rec["stages"]) == list(bench.STAGE_KINDS)
    for name, r in rec["stages"].items():
        assert set(r) == STAGE_FIGURES, name
        assert all(_positive(v) for v in r.values()), (name, r)
        assert r["device_ratio"] == pytest.approx(r["device_ips"] / r["resident_ips"])
        assert r["images_per_step"] == 8 * len(bench.get(name).degradations)
    assert rec["stages"]["distill"]["images_per_step"] == 32
    e = rec["eval"]
    assert e["copies"] == 230 and e["images"] == 230 * 6      # clean + the 229 paper levels
    assert all(_positive(float(e[k])) for k in ("eval_s", "bank_build_s", "images_per_s"))
    t = rec["trial"]
    assert t["overrides"][-len(small):] == small
    assert t["trial_run_s"] > 0 and 0 < t["orchestration_s"] < t["cold_trial_s"] + 60
    assert t["overhead_ratio"] == pytest.approx(t["orchestration_s"] / t["trial_run_s"])
    assert t["worker_start_s"] > 0 and started == [[bench.sys.executable, "-c",
                                                    "import study.worker"]]
    p = rec["packed"]
    assert p["procs"] == 2 and len(p["images_per_s_per_proc"]) == 2
    assert p["images_per_s_total"] > 0
    assert rec["jpeg_bank"]["levels"] == 2 and rec["jpeg_bank"]["flips"] is True
    r = rec["results"]["6"]
    for what in bench.bench_results.MEASURED:   # each its own process, measured, none killed
        assert _positive(r[what]["wall_s"]) and _positive(r[what]["peak_rss_bytes"])
        assert r[what]["killed"] is None and len(r[what]["runs"]) == 1
    assert rec["settings"]["bf16"] is False and rec["env"]["torch"] == torch.__version__
    # what the table and the JSON carry
    table = bench.format_table(rec)
    for word in [*bench.STAGE_KINDS, "level-wise evaluation", "cached-stage trial", "packed",
                 "results of a smoke-shaped study"]:
        assert word in table
    path = bench.write_json(rec, tmp_path / "out" / "toy.json")
    assert json.loads(path.read_text())["stages"].keys() == rec["stages"].keys()
    summary = bench.summary(path.parent)
    # measured figures only: every one named with the run it came from, no verdict
    for what, *_ in bench.SUMMARY_FIGURES:
        assert f"  {what}: " in summary and f"  {what}: not measured" not in summary
    assert "(run toy, fp32 eager)" in summary and "docs/benchmarks.md" in summary
    assert "PASS" not in summary and "MISS" not in summary


# The paper setting, written out here rather than read from the preset: a change to the preset
# that the pipeline picks up must show in the bench too, and this test says which values those are.
PAPER_DISTILL: dict[str, Any] = dict(loss="feature", ce_weight=0.1, feature_weight=1.0,
                     feature_layers={"stage3": 1.0}, kd_weight=1.0, temperature=4.0, alpha=0.9,
                     teacher_input="clean")
PAPER_EXPERT = (1.0, 1.0, {"stage3": 1.0})


def _batch(kind: bench.StageKind, s: bench.BenchSettings) -> Batch:
    ds = make_synthetic(s.n_train, 10, seed=s.seed)
    _, stream = bench._streams(kind, ds, s, dd.build_jpeg_bank(
        ds.train.images, qualities=s.jpeg_bank_levels, flips=True, cache=None, device="cpu",
        workers=1))
    return next(iter(stream.epoch(0)))


def test_paper_values_come_from_the_preset() -> None:
    cfg = bench.paper_config()
    d = cfg.distill
    assert {k: getattr(d, k) for k in PAPER_DISTILL} == PAPER_DISTILL
    e = cfg.expert
    assert (e.ce_weight, e.feature_weight, e.feature_layers) == PAPER_EXPERT
    assert (cfg.base.optimizer, cfg.base.lr, cfg.distill.optimizer) == ("sgd", 0.1, "radam")
    assert not hasattr(bench, "GPU_TARGETS") and not hasattr(bench, "CPU_TARGETS")


@pytest.mark.parametrize("name", ["base", "expert_blur", "distill"])
def test_step_is_the_pipelines_objective(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bench's step returns, on a fixed batch, the loss the pipeline's own objective gives for
    the same models and batch, through train.train_step with the preset's optimiser."""
    torch.set_num_threads(1)
    s, kind = _toy(), bench.get(name)
    student, teachers = bench._models(kind, s, 10)
    assert list(teachers) == list(kind.degradations[:kind.teachers])
    b = _batch(kind, s)
    if name == "base":
        ref: losses.Objective = losses.clean_cross_entropy
    elif name == "distill":
        ref = losses.distill_objective(teachers, **PAPER_DISTILL)
    else:
        ref = losses.expert_objective(teachers["blur"], *PAPER_EXPERT)
    with torch.no_grad():
        expected = ref(student, b)
    calls: list[str] = []
    real_step, real_expert, real_distill = (train.train_step, losses.expert_objective,
                                            losses.distill_objective)

    def step_spy(model, optimizer, loss_fn, batch, autocast=None):  # type: ignore[no-untyped-def]
        calls.append(f"train_step {type(optimizer).__name__} {optimizer.defaults['lr']} "
                     f"{autocast}")
        return real_step(model, optimizer, loss_fn, batch, autocast=autocast)

    def expert_spy(*a, **kw):  # type: ignore[no-untyped-def]
        calls.append("expert_objective")
        return real_expert(*a, **kw)

    def distill_spy(*a, **kw):  # type: ignore[no-untyped-def]
        calls.append("distill_objective")
        return real_distill(*a, **kw)
    monkeypatch.setattr(train, "train_step", step_spy)
    monkeypatch.setattr(losses, "expert_objective", expert_spy)
    monkeypatch.setattr(losses, "distill_objective", distill_spy)
    step = bench.make_step(kind, student, teachers, s)
    before = [p.detach().clone() for p in student.parameters()]
    got = step(b)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    assert got.item() > 0
    # the optimiser stepped: the student's weights moved, the frozen teachers' did not
    assert any(not torch.equal(p0, p) for p0, p in zip(before, student.parameters()))
    assert all(not p.requires_grad for t in teachers.values() for p in t.parameters())
    optim = {"base": "SGD 0.1", "expert_blur": "RAdam 0.001", "distill": "RAdam 0.001"}[name]
    built = {"base": [], "expert_blur": ["expert_objective"],
             "distill": ["distill_objective"]}[name]
    assert calls == [*built, f"train_step {optim} None"]
    # --loss-sync: the same step plus a .item()
    sync = bench.make_step(kind, student, teachers, dataclasses.replace(s, sync_loss=True))
    assert torch.isfinite(sync(b))


def test_targets_live_in_the_docs() -> None:
    """Every figure the summary reports is explained in docs/benchmarks.md, by its JSON key."""
    doc = (ROOT / "docs" / "benchmarks.md").read_text()
    for what, path, *_ in bench.SUMMARY_FIGURES:
        assert path[-1] in doc, (what, path)
    for number in ("24,000", "35,000", "20,000", "30 s", "20%", "1%"):
        assert number in doc


def test_parts_and_flags_are_validated() -> None:
    assert bench.expand_parts(["distill", "expert", "base"]) == [
        "base", "expert_jpeg", "expert_blur", "expert_awgn", "expert_saltpepper", "distill"]
    with pytest.raises(ConfigError, match="valid names"):
        bench.expand_parts(["fog"])
    with pytest.raises(ConfigError, match="valid names"):
        bench.get("expert")
    with pytest.raises(ConfigError, match="CUDA-only"):
        bench.run_bench(_toy(bf16=True), ["base"])
    assert dd.bank_qualities(1) is None and dd.bank_qualities(50) == (1, 51, 100)
    with pytest.raises(ValueError, match=">= 1"):
        dd.bank_qualities(0)
    with pytest.raises(ValueError, match="steps must be >= 1, got 0; procs must be >= 1"):
        bench.BenchSettings(steps=0, procs=0)
    cpu = bench.BenchSettings.for_device("cpu", "tiny", steps=9)
    assert cpu.steps == 9 and cpu.n_train < bench.BenchSettings().n_train


def test_cli_bench(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b.json"
    rc = cli.main(["bench", "--device", "cpu", "--model", "tiny", "--stages", "base",
                   "expert_blur", "--steps", "1", "--warmup", "0", "--n-train", "16",
                   "--batch-size", "8", "--json", str(out)])
    assert rc == 0
    rec = json.loads(out.read_text())
    assert list(rec["stages"]) == ["base", "expert_blur"] and "eval" not in rec
    assert rec["settings"]["steps"] == 1 and rec["settings"]["batch_size"] == 8
    assert "ratio ref" in capsys.readouterr().out
    assert cli.main(["bench", "--device", "cpu", "--stages", "fog"]) == 2
    assert cli.main(["bench", "--device", "cpu", "--bf16", "--stages", "base"]) == 2
    assert "CUDA-only" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli.main(["bench", "--device", "cuda", "--stages", "base"]) == 2
        assert "no GPU" in capsys.readouterr().err


def test_gpu_script_commands_parse() -> None:
    """The prepared GPU script: every `study bench` it would run is a valid command line,
    and together they cover every figure the issue asks for."""
    env = dict(os.environ, DRY_RUN="1", PYTHON="python")
    out = subprocess.run(["bash", str(ROOT / "slurm" / "bench_gpu.sh"), "/tmp/unused"],
                         capture_output=True, text=True, env=env, check=True).stdout
    commands = [line.split("study bench ", 1)[1].split() for line in out.splitlines()
                if line.startswith("== ") and "study bench " in line]
    assert len(commands) == 8
    parser = cli.build_parser()
    parsed = [parser.parse_args(["bench", *c]) for c in commands]
    assert all(a.device == "cuda" and a.model == "resnet56" for a in parsed)
    assert parsed[0].stages is None                       # main: every part but packed
    assert {a.procs for a in parsed if a.stages == ["packed"]} == {2, 4}
    assert any(a.channels_last and a.bf16 for a in parsed) and any(a.compile for a in parsed)
    assert any(a.loss_sync for a in parsed)
