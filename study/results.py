"""Parquet results: one file per finished trial, long format, written atomically.

One row per (trial, model, split, degradation, level); a trial without evaluation rows (pruned,
failed) still gets one row carrying its state and error. Searched parameters appear as
`param_<name>` columns (lists and dicts as JSON text), stage cache keys as `key_<stage>`, hits as
`hit_<stage>`, and provenance (git commit, host, device, versions) as plain columns.
`pandas.read_parquet("results/<study>/trials")` loads a whole study.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

import study

ROW_COLUMNS = ["model", "split", "degradation", "level", "level_step", "accuracy", "n_images"]


def trials_dir(study_dir: str | Path) -> Path:
    return Path(study_dir) / "trials"


def trial_path(study_dir: str | Path, number: int) -> Path:
    return trials_dir(study_dir) / f"trial-{number:06d}.parquet"


@lru_cache(maxsize=1)
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, cwd=Path(study.__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance() -> dict[str, str]:
    import optuna
    import torch

    return {"git_commit": git_commit(), "host": platform.node(),
            "study_version": study.__version__, "optuna_version": optuna.__version__,
            "torch_version": torch.__version__, "python_version": platform.python_version()}


STAGES = ["base", "expert_jpeg", "expert_blur", "expert_awgn", "expert_saltpepper", "scratch",
          "vanilla_ft", "modelsoups", "fusing", "fusiondistill"]
# Every file of a study carries the same columns with the same types, so that
# pd.read_parquet(<dir>) (which takes the schema of one file) loads them all.
EXTRA_COLUMNS = {"wall_s": "Float64", "error": "string", "fail_kind": "string",
                 "device": "string", "git_commit": "string", "host": "string",
                 "study_version": "string", "optuna_version": "string",
                 "torch_version": "string", "python_version": "string", "config_json": "string"}


def _cell(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict, tuple)) else v


def trial_frame(*, study_name: str, trial: int, attempt: int, state: str,
                seed_rows: Sequence[tuple[int, Sequence[Mapping[str, Any]]]],
                params: Mapping[str, Any], param_kinds: Mapping[str, str],
                stages: Mapping[str, Mapping[str, Any]], values: Sequence[float | None],
                extra: Mapping[str, Any]) -> pd.DataFrame:
    """Long table for one trial.

    seed_rows: (seed, evaluation rows) per replicate; stages: stage -> {key, hit, build_s};
    param_kinds: every searched parameter -> float | int | other (JSON text); values: the
    objective values (None where not reached).
    """
    rows: list[dict[str, Any]] = []
    for seed, evals in seed_rows:
        rows += [{"seed": seed, **r} for r in evals]
    if not rows:
        rows = [{"seed": seed_rows[0][0] if seed_rows else None}]
    df = pd.DataFrame(rows)
    df.insert(0, "study", study_name)
    df.insert(1, "trial", trial)
    df.insert(2, "attempt", attempt)
    df.insert(3, "state", state)
    typed: dict[str, str] = {"study": "string", "trial": "int64", "attempt": "int64",
                             "state": "string", "seed": "Int64", "model": "string",
                             "split": "string", "degradation": "string", "level": "Int64",
                             "level_step": "Int64", "accuracy": "Float64", "n_images": "Int64"}
    for i, v in enumerate(values):
        df[f"value_{i}"] = v
        typed[f"value_{i}"] = "Float64"
    for k, dtype in EXTRA_COLUMNS.items():
        df[k] = _cell(extra.get(k))
        typed[k] = dtype
    for st in STAGES:
        info = stages.get(st, {})
        df[f"key_{st}"], typed[f"key_{st}"] = info.get("key"), "string"
        df[f"hit_{st}"], typed[f"hit_{st}"] = info.get("hit"), "boolean"
        df[f"build_s_{st}"], typed[f"build_s_{st}"] = info.get("build_s"), "Float64"
    for name, kind in param_kinds.items():
        v = params.get(name)
        col = f"param_{name}"
        if kind in ("float", "int"):
            df[col], typed[col] = v, ("Float64" if kind == "float" else "Int64")
        else:
            df[col], typed[col] = (None if v is None else json.dumps(v, sort_keys=True)), "string"
    for col in typed:
        if col not in df:
            df[col] = None
    return df[list(typed)].astype(typed)


def write_trial(study_dir: str | Path, number: int, df: pd.DataFrame) -> Path:
    """temp file + fsync + rename: a reader sees the whole file or none."""
    dest = trial_path(study_dir, number)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    df.to_parquet(tmp, index=False)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dest)
    return dest


def has_trial(study_dir: str | Path, number: int) -> bool:
    return trial_path(study_dir, number).exists()


def read_trial(study_dir: str | Path, number: int) -> pd.DataFrame:
    return pd.read_parquet(trial_path(study_dir, number))


def load(study_dir: str | Path) -> pd.DataFrame:
    d = trials_dir(study_dir)
    files = sorted(d.glob("trial-*.parquet")) if d.exists() else []
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
