"""`study bench` at toy scale: every figure present and consistent, the CLI, the GPU script.

No timing is asserted: figures vary with the machine and its load.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

from study import bench, cli
from study import device_degrade as dd

ROOT = Path(__file__).resolve().parents[1]
STAGE_FIGURES = {"images_per_step", "reference_ips", "device_ips", "resident_ips",
                 "reference_data_ips", "device_data_ips", "reference_ratio", "device_ratio"}


def _toy(**kw: object) -> bench.BenchSettings:
    args = dict(device="cpu", model="tiny", batch_size=8, n_train=32, steps=2, warmup=1,
                resident_batches=2, jpeg_bank_levels=(10, 90), eval_images=6, eval_batch=64,
                procs=2, workers=1)
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
        if cmd[-1:] == ["import study.objective"]:
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
                                                    "import study.objective"]]
    p = rec["packed"]
    assert p["procs"] == 2 and len(p["images_per_s_per_proc"]) == 2
    assert p["images_per_s_total"] > 0
    assert rec["jpeg_bank"]["levels"] == 2 and rec["jpeg_bank"]["flips"] is True
    assert rec["settings"]["bf16"] is False and rec["env"]["torch"] == torch.__version__
    # what the table and the JSON carry
    table = bench.format_table(rec)
    for word in [*bench.STAGE_KINDS, "level-wise evaluation", "cached-stage trial", "packed"]:
        assert word in table
    path = bench.write_json(rec, tmp_path / "out" / "toy.json")
    assert json.loads(path.read_text())["stages"].keys() == rec["stages"].keys()
    summary = bench.summary(path.parent)
    assert "targets (CPU, toy scale)" in summary and "trial orchestration" in summary
    assert summary.count("PASS") + summary.count("MISS") == len(bench.CPU_TARGETS)


def test_parts_and_flags_are_validated() -> None:
    assert bench.expand_parts(["distill", "expert", "base"]) == [
        "base", "expert_jpeg", "expert_blur", "expert_awgn", "expert_saltpepper", "distill"]
    with pytest.raises(ValueError, match="valid names"):
        bench.expand_parts(["fog"])
    with pytest.raises(ValueError, match="valid names"):
        bench.get("expert")
    with pytest.raises(ValueError, match="CUDA-only"):
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
