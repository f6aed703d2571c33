"""Parquet results: two files per finished trial, written atomically, and their readers; and
what the rows add up to (the paper-style table, the objective values).

    summary/trial-NNNNNN.parquet   one row: the trial's state, objectives, wall time, errors,
                                   parameters, provenance, stage keys and config (written last:
                                   a trial has a result once this file exists)
    trials/trial-NNNNNN.parquet    its long rows, one per (seed, model, split, degradation,
                                   level), only the per-row columns (ROW_COLUMNS) and `trial`
    summary/_compact.parquet       every summary row in one file, a cache checked against the
                                   files' sizes and mtimes (the launcher refreshes it)

Searched parameters appear as `param_<name>` columns (lists and dicts as JSON text), stage cache
keys as `key_<stage>`, hits as `hit_<stage>`, the installed plugins and their versions as JSON
text (`plugins`, "{}" without any). `pandas.read_parquet("results/<study>/trials")`
loads every row of a study, `.../summary` every trial; `load_summary` and `load_rows` read only
what is asked (the report reads the summary and the rows of the few trials it tabulates).

No torch here: the report reads results on machines that never train.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

import study
from study import atomic, registry
from study.config import COST_METRIC
from study.space import Column
from study.stages import SHARED, instance_names

# Version 2 (release 0.4): parameters in their own types (only lists and dicts as JSON text),
# objective columns named after their objective, and this column. Version 1 (0.3, no such
# column): every non-number parameter as JSON text ('"ties"'), objectives as value_0, value_1.
# `upgrade` reads version 1 files as version 2.
SCHEMA_VERSION = 2
# The paper's column names for the four degradations (Table 1 onwards); a plugin's column is
# its name.
TABLE_COLUMNS = {"jpeg": "JPEG", "blur": "Blur", "awgn": "AWGN", "saltpepper": "SAPN"}


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
    """What ran: the code, the machine, the versions, and every installed plugin
    ("<group>:<name>" -> "<distribution> <version>", JSON text)."""
    return {"git_commit": git_commit(), "host": platform.node(),
            "study_version": study.__version__, "optuna_version": _version("optuna"),
            "torch_version": _version("torch"), "python_version": platform.python_version(),
            "plugins": json.dumps(registry.installed_plugins(), sort_keys=True)}


def _version(package: str) -> str:
    """The version of `package` this process runs: the imported module's own (torch's names
    its build, e.g. 2.14.1+cu130, which the installed distribution's metadata leaves out),
    else the installed distribution's, without importing it."""
    module = sys.modules.get(package)
    if module is not None and isinstance(getattr(module, "__version__", None), str):
        return str(module.__version__)
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# every network of the built-in degradations, so every file has the same key_ columns whatever
# is installed; a plugin degradation's expert keeps its key in the trial's Optuna attributes
STAGES = instance_names()
SHARED_STAGES = instance_names(stages=SHARED)   # base and the experts
# Every summary file of a study carries the same columns with the same types, so that
# pd.read_parquet(<dir>) (which takes the schema of one file) loads them all.
EXTRA_COLUMNS = {"wall_s": "Float64", "error": "string", "fail_kind": "string",
                 "fail_reason": "string",
                 "device": "string", "gpu": "string", "amp": "string", "protocol": "string",
                 "git_commit": "string",
                 "host": "string",
                 "study_version": "string", "optuna_version": "string",
                 "torch_version": "string", "python_version": "string", "plugins": "string",
                 "config_json": "string"}


def _cell(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict, tuple)) else v


def objective_column(method: str, metric: str) -> str:
    """The results column of an objective: `objective.fusiondistill.val.avg`."""
    return f"objective.{method}.{metric}"


@dataclass(frozen=True)
class Schema:
    """What a study's result files hold besides the fixed columns: its objectives' columns in
    objective order, and each searched parameter's column."""

    objectives: tuple[str, ...]
    params: Mapping[str, Column]

    @classmethod
    def of(cls, objectives: Iterable[Any], params: Iterable[Any]) -> Schema:
        """From a study file's objectives (method, metric) and its space's parameters."""
        return cls(tuple(objective_column(o.method, o.metric) for o in objectives),
                   {p.name: p.column for p in params})


def trial_frame(*, study_name: str, trial: int, attempt: int, state: str,
                seed_rows: Sequence[tuple[int, Sequence[Mapping[str, Any]]]],
                params: Mapping[str, Any], param_columns: Mapping[str, Column],
                stages: Mapping[str, Mapping[str, Any]],
                objectives: Mapping[str, float | None], extra: Mapping[str, Any]
                ) -> pd.DataFrame:
    """Long table for one trial, every column on every row (write_trial stores its per-trial
    columns once, in the summary: split_frame).

    seed_rows: (seed, evaluation rows) per replicate; stages: stage -> {key, hit, build_s};
    param_columns: every searched parameter -> how its column stores it (space.Param.column:
    its own type, lists and dicts as JSON text); objectives: each objective's column
    (objective_column) -> its value (None where not reached).
    """
    rows: list[Mapping[str, Any]] = []
    seeds: list[int | None] = []
    for seed, evals in seed_rows:
        rows += evals
        seeds += [seed] * len(evals)
    if not rows:
        rows, seeds = [{}], [seed_rows[0][0] if seed_rows else None]
    # Column by column, each typed once: building a frame and then inserting and casting ~60
    # columns took ~90 ms a trial here, most of a toy trial's orchestration overhead.
    cols: dict[str, tuple[str, list[Any]]] = {
        "study": ("string", [study_name]), "trial": ("int64", [trial]),
        "attempt": ("int64", [attempt]), "state": ("string", [state]), "seed": ("Int64", seeds)}
    for k, dtype in (("model", "string"), ("split", "string"), ("degradation", "string"),
                     ("level", "Int64"), ("level_step", "Int64"), ("accuracy", "Float64"),
                     ("n_images", "Int64")):
        cols[k] = (dtype, [r.get(k) for r in rows])
    cols["schema_version"] = ("int64", [SCHEMA_VERSION])
    for name, v in objectives.items():
        cols[name] = ("Float64", [v])
    for k, dtype in EXTRA_COLUMNS.items():
        cols[k] = (dtype, [_cell(extra.get(k))])
    for st in STAGES:
        info = stages.get(st, {})
        cols[f"key_{st}"] = ("string", [info.get("key")])
        cols[f"hit_{st}"] = ("boolean", [info.get("hit")])
        cols[f"build_s_{st}"] = ("Float64", [info.get("build_s")])
    for name, column in param_columns.items():
        cols[f"param_{name}"] = (column.dtype, [column.cell(params.get(name))])
    n = len(rows)
    return pd.DataFrame({c: pd.array(v if len(v) == n else v * n, dtype=dtype)
                         for c, (dtype, v) in cols.items()})


# A trial's files name the trial they hold in their Parquet footer: the id the launcher gave the
# trial when it asked it (Optuna user attribute `result_id`). Trial numbers restart with a new
# storage (a deleted journal, another study.storage), so a file left by an older study of the
# same name would otherwise pass for the new trial N's result.
RESULT_ID_KEY = b"study.result_id"

# What differs from one evaluation row of a trial to the next: the rows files hold these
# alone. Everything else trial_frame makes is the same on every row of a trial and is stored
# once, in its summary row: repeated on each of the smoke study's ~290 rows a trial, the ~60
# constant columns made reading 1,000 trials take 10-13 s and 2.2 GB, and 10,000 past 12 GB.
# Repeated strings are dictionary-encoded (pandas categories), one code byte a row.
ROW_COLUMNS = {"trial": "int64", "seed": "Int64", "model": "category", "split": "category",
               "degradation": "category", "level": "Int64", "level_step": "Int64",
               "accuracy": "Float64", "n_images": "Int64"}
# What a summary row adds to trial_frame's per-trial columns: the id in its footer (so a reader
# admits trials from the compacted table without opening their files), the replicate seeds
# with evaluation results (a JSON list), and how many rows its rows file holds.
SUMMARY_FACTS = {"result_id": "string", "seeds": "string", "n_rows": "int64"}
# The compacted summary of a study: every summary row in one file. The leading underscore keeps
# it out of pd.read_parquet("results/<study>/summary"), which skips names starting with _ or .
COMPACT_NAME = "_compact.parquet"
# Its footer lists the files it was made from (name -> [size, mtime_ns]); a file whose size or
# mtime differs, or that it lacks, is read from disk instead.
COMPACT_KEY = b"study.compact_of"


def new_result_id() -> str:
    return uuid.uuid4().hex


def summary_dir(study_dir: str | Path) -> Path:
    return Path(study_dir) / "summary"


def summary_path(study_dir: str | Path, number: int) -> Path:
    return summary_dir(study_dir) / f"trial-{number:06d}.parquet"


def split_frame(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """trial_frame's long table (of one trial or several) as its summary (one row per trial:
    every column but the per-row ones, with `seeds` and `n_rows`) and its rows (ROW_COLUMNS of
    the evaluation rows; none for a trial without evaluation, whose one row only carried its
    state)."""
    evaluated = (df["model"].notna() if "model" in df.columns
                 else pd.Series(False, index=df.index))
    rows = df.loc[evaluated, [c for c in ROW_COLUMNS if c in df.columns]]
    rows = rows.astype({c: t for c, t in ROW_COLUMNS.items() if c in rows.columns})
    rows = rows.reset_index(drop=True)
    summary = df.drop_duplicates("trial").drop(
        columns=[c for c in ROW_COLUMNS if c != "trial" and c in df.columns])
    summary = summary.reset_index(drop=True)
    measured = rows[rows.accuracy.notna()] if "accuracy" in rows.columns else rows.iloc[:0]
    seeds = measured.groupby("trial").seed.unique() if "seed" in rows.columns else {}
    n_rows = rows.groupby("trial").size()
    summary["seeds"] = pd.array(
        [json.dumps(sorted(int(s) for s in seeds.get(t, []) if not pd.isna(s)))
         for t in summary.trial], dtype="string")
    summary["n_rows"] = pd.array([int(n_rows.get(t, 0)) for t in summary.trial], dtype="int64")
    return summary, rows


def write_trial(study_dir: str | Path, number: int, df: pd.DataFrame, *,
                result_id: str | None, replace: bool = True) -> Path | None:
    """The trial's rows file, then its summary file, each written atomically (a reader sees a
    whole file or none) and carrying `result_id` in its footer. The summary lands last: a
    trial has a result once its summary file exists. Returns the summary's path.
    replace=False (the worker, the launcher failing a trial): a summary already there that
    carries the same id is this trial's (the launcher failed it, or an earlier run of a
    requeued job wrote it): it is kept and None returned, so the files and the storage never
    disagree. Files of another trial (an older study of the same name) are moved aside first,
    with a warning."""
    summary, rows = split_frame(df)
    summary["result_id"] = pd.array([result_id or ""] * len(summary), dtype="string")
    spath, rpath = summary_path(study_dir, number), trial_path(study_dir, number)
    if not replace:
        if spath.exists() and belongs(spath, result_id):
            return None
        for path in (spath, rpath):
            if path.exists() and not belongs(path, result_id):
                _move_aside(path, "holds another study's trial (an older study of this name, "
                            "before its storage was deleted or changed)")
    wrote_rows = len(rows) > 0
    if wrote_rows:
        _write_table(rpath, rows, result_id, replace=True)
    elif replace:   # a replaced trial keeps no rows of what it replaced
        rpath.unlink(missing_ok=True)
    written = _write_table(spath, summary, result_id, replace=replace,
                           fault_point="parquet_write")
    if written is None and wrote_rows:
        # the launcher failed this trial between the check above and now: its FAIL summary
        # has no rows, and these would contradict it
        rpath.unlink(missing_ok=True)
    return written


def _write_table(path: Path, df: pd.DataFrame, result_id: str | None, *, replace: bool,
                 fault_point: str | None = None) -> Path | None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           RESULT_ID_KEY: (result_id or "").encode()})
    return atomic.write_file(path, lambda f: pq.write_table(table, f), replace=replace,
                             fault_point=fault_point)


def belongs(path: Path, result_id: str | None) -> bool:
    """Whether the file at `path` holds the trial of this id (None: a trial asked by release
    0.3, whose files carry no id either). An unreadable footer belongs to nobody."""
    return _footer_id(path) == (result_id or "")


def _footer_id(path: Path) -> str | None:
    """The result id in a file's footer ("" when it has none); None when unreadable."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, ValueError, pa.ArrowException):
        return None
    return meta.get(RESULT_ID_KEY, b"").decode()


def has_trial(study_dir: str | Path, number: int, result_id: str | None) -> bool:
    """A result (summary file) of this trial is on disk; an unreadable one, or another study's
    trial, is moved aside with a warning."""
    path = summary_path(study_dir, number)
    if not path.exists():
        return False
    found = _footer_id(path)
    if found == (result_id or ""):
        return True
    _move_aside(path, "is not a readable result file" if found is None else
                "holds another study's trial of this number (an older study of this name, "
                "before its storage was deleted or changed)")
    return False


def read_trial(study_dir: str | Path, number: int) -> pd.DataFrame | None:
    """A trial's rows, each with its summary's columns (one row without evaluation columns for
    a trial that has no rows); None when it has no readable summary (an unreadable one is
    moved aside). A trial file of the layout before summaries is read as it is."""
    summary = _read_or_move_aside(summary_path(study_dir, number))
    if summary is None:
        legacy = trial_path(study_dir, number)
        return _read_or_move_aside(legacy) if _is_wide(legacy) else None
    return _joined(summary, load_rows(study_dir, [number]))


def _joined(summary: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    return summary.merge(rows, on="trial", how="left") if len(rows) else summary.assign(
        **{c: pd.array([None] * len(summary), dtype=t if t != "category" else "string")
           for c, t in ROW_COLUMNS.items() if c != "trial"})


def _is_wide(path: Path) -> bool:
    """A trial file of the layout before summaries: its rows carry the trial's state too."""
    try:
        return "state" in pq.read_schema(path).names
    except (OSError, ValueError, pa.ArrowException):
        return False


def recorded_objectives(df: pd.DataFrame, schema: Schema) -> list[float]:
    """The objective values a trial's file recorded, in the study's objective order."""
    df = upgrade(df, schema)
    return [float(df[name].iloc[0]) for name in schema.objectives]


def upgrade(df: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """Results in the current schema (SCHEMA_VERSION): rows of release 0.3 (no schema_version)
    have their objectives renamed from value_0, value_1... and their typed parameters parsed
    back from JSON text. Current rows are returned as they are; a frame of both is upgraded
    part by part."""
    if "schema_version" in df.columns and len(df):
        current = df.schema_version.fillna(0).astype("int64") >= SCHEMA_VERSION
        if current.all():
            return df
        if current.any():
            old = df[~current].drop(columns=[c for c in schema.objectives if c in df.columns])
            new = df[current].drop(columns=[c for c in df.columns if c.startswith("value_")])
            return pd.concat([new, upgrade(old, schema)]).sort_index()
    df = df.rename(columns={f"value_{i}": name for i, name in enumerate(schema.objectives)})
    for name, column in schema.params.items():
        col = f"param_{name}"   # 0.3 wrote every non-number as JSON text, numbers as numbers
        if (col in df.columns and not column.json
                and pd.api.types.is_string_dtype(df[col].dtype)):
            df[col] = pd.array([None if pd.isna(v) else json.loads(v) for v in df[col]],
                               dtype=column.dtype)
    return df.assign(schema_version=SCHEMA_VERSION)


# ---------------------------------------------------------------- readers
def load_summary(study_dir: str | Path, result_ids: Mapping[int, str | None] | None = None,
                 schema: Schema | None = None, *, refresh: bool = False) -> pd.DataFrame:
    """One row per trial with a result: its state, objectives, wall time, errors, parameters,
    provenance and stage columns (everything but the per-row columns). From the compacted
    summary where it is current, from the trial's own file where not (new, rewritten, or
    missing from it). `result_ids` (trial number -> its result_id in the storage), when given,
    admits only those trials, by the id they were written with: a file left by an older study
    of the same name is skipped (the launcher and the worker move such files aside; a reader
    may not: a launch may be writing the next trial's file meanwhile). refresh=True rewrites
    the compacted summary where files changed (the launcher, every COMPACT_EVERY trials)."""
    d = summary_dir(study_dir)
    listed = _listing(d)
    compact, made_of = _read_compact(d)
    fresh = {n for n, stat in listed.items() if made_of.get(n) == stat}
    parts = [compact[compact.trial.isin({_number(d / n) for n in fresh})]] if fresh else []
    stale, read = sorted(set(listed) - fresh), []
    for path in (d / n for n in stale):
        part = _read_or_move_aside(path)
        if part is not None:
            parts.append(part)
            read.append(path.name)
    parts += _legacy_summaries(study_dir, {_number(d / n) for n in listed})
    parts = [p for p in parts if len(p)]
    df = (pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].copy()
          if parts else pd.DataFrame())
    if refresh and (read or set(made_of) - set(listed)):
        _write_compact(d, df[df.trial.isin({_number(d / n) for n in {*fresh, *read}})],
                       {n: listed[n] for n in {*fresh, *read}})
    if not len(df):
        return df
    if result_ids is not None:
        ids = df.trial.map(lambda t: (result_ids.get(int(t)) or "")
                           if int(t) in result_ids else None)
        got = (df.result_id.astype(object).fillna("") if "result_id" in df.columns
               else pd.Series("", index=df.index))
        df = df[ids.notna() & (ids == got)]
    if schema is not None:   # files of release 0.3 and of this one, read as one schema
        df = upgrade(df, schema)
    return df.sort_values("trial").reset_index(drop=True)


def compact_summary(study_dir: str | Path) -> None:
    """Rewrite the compacted summary where the trials' summary files changed."""
    load_summary(study_dir, refresh=True)


def _listing(d: Path) -> dict[str, list[int]]:
    """Each trial summary file in `d`: name -> [size, mtime_ns], from one directory scan."""
    try:
        with os.scandir(d) as it:
            entries = [e for e in it if e.name.startswith("trial-")
                       and e.name.endswith(".parquet")]
            return {e.name: [(st := e.stat()).st_size, st.st_mtime_ns] for e in entries}
    except FileNotFoundError:
        return {}


def _read_compact(d: Path) -> tuple[pd.DataFrame, dict[str, list[int]]]:
    """The compacted summary and the files it was made from; empty when there is none or it
    cannot be read (it is rebuilt from the trials' files, so it is only ever a cache)."""
    path = d / COMPACT_NAME
    try:
        table = pq.read_table(path)
        made_of = json.loads((table.schema.metadata or {}).get(COMPACT_KEY, b"{}"))
        return table.to_pandas(), made_of
    except FileNotFoundError:
        return pd.DataFrame(), {}
    except (OSError, ValueError, pa.ArrowException):
        _move_aside(path, "is not a readable compacted summary; it is rebuilt from the "
                    "trials' summary files")
        return pd.DataFrame(), {}


def _write_compact(d: Path, df: pd.DataFrame, made_of: Mapping[str, list[int]]) -> None:
    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           COMPACT_KEY: json.dumps(made_of).encode()})
    atomic.write_file(d / COMPACT_NAME, lambda f: pq.write_table(table, f))


def _legacy_summaries(study_dir: str | Path, known: set[int]) -> list[pd.DataFrame]:
    """The summaries of trial files of the layout before summaries (one wide file a trial,
    every column on every row) that have no summary file: one row each, never cached."""
    d = trials_dir(study_dir)
    paths = [p for p in (sorted(d.glob("trial-*.parquet")) if d.exists() else [])
             if _number(p) not in known and _is_wide(p)]
    out = []
    for path in paths:
        wide = _read_or_move_aside(path)
        if wide is not None:
            summary, _ = split_frame(wide)
            out.append(summary.assign(result_id=pd.array([_footer_id(path) or ""] * len(
                summary), dtype="string")))
    return out


def load_rows(study_dir: str | Path, trials: Iterable[int] | None = None,
              columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The long rows (ROW_COLUMNS) of `trials` (None: every trial), only the `columns` asked
    (and `trial`), reading only those trials' files and only those columns. Join the
    summary's columns on `trial` (load_summary) for the per-trial ones. A file that cannot be
    read is moved aside with a warning."""
    paths = _trial_files(trials_dir(study_dir), lambda n: trial_path(study_dir, n), trials)
    names = list(ROW_COLUMNS) if columns is None else list(dict.fromkeys(["trial", *columns]))
    unknown = [c for c in names if c not in ROW_COLUMNS]
    if unknown:
        raise ValueError(f"no row column {unknown}: the rows hold {list(ROW_COLUMNS)}; the "
                         "per-trial columns are in load_summary")
    if not paths:
        return _empty({c: ROW_COLUMNS[c] for c in names})
    try:   # one scan of every file asked, columns projected
        table = ds.dataset([str(p) for p in paths], format="parquet").to_table(
            columns=names, filter=ds.field("model").is_valid() if "model" in names else None)
        frames = [table.to_pandas()]
    except (OSError, ValueError, pa.ArrowException):   # one bad file: read them one by one
        frames = [f for f in (_read_rows(p, names) for p in paths) if f is not None]
    frames = [f for f in frames if len(f)]
    if not frames:
        return _empty({c: ROW_COLUMNS[c] for c in names})
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return df.astype({c: ROW_COLUMNS[c] for c in names})


# What reading one damaged or foreign Parquet file raises: pyarrow's own errors, OSError for a
# truncated footer, and ValueError/TypeError/KeyError from a file whose columns are not ours.
_UNREADABLE = (OSError, ValueError, TypeError, KeyError, pa.ArrowException)


def _set_aside_unreadable(path: Path, e: Exception) -> None:
    _move_aside(path, f"is not a readable result file ({type(e).__name__}: {str(e)[:200]})")


def _read_rows(path: Path, names: Sequence[str]) -> pd.DataFrame | None:
    try:
        df = pq.read_table(path, columns=list(names)).to_pandas()
        return df[df.model.notna()] if "model" in df.columns else df
    except FileNotFoundError:
        return None
    except _UNREADABLE as e:
        _set_aside_unreadable(path, e)
        return None


def load(study_dir: str | Path, result_ids: Mapping[int, str | None] | None = None,
         schema: Schema | None = None) -> pd.DataFrame:
    """Every trial's rows with its summary's columns on each row (a trial without rows: one
    row), admitted as load_summary admits them. Convenient for a small study; a large one
    reads load_summary and the load_rows it needs."""
    summary = load_summary(study_dir, result_ids, schema)
    if not len(summary):
        return summary
    return _joined(summary, load_rows(study_dir, summary.trial.tolist()))


@dataclass(frozen=True)
class StudyResults:
    """A study's results as the report reads them: one row per trial, and the long rows and
    learning curves of the trials it asks for (reading only their files)."""

    summary: pd.DataFrame
    read_rows: Callable[[list[int]], pd.DataFrame]
    read_curves: Callable[[list[int]], pd.DataFrame]

    def rows(self, trials: Iterable[int | None]) -> pd.DataFrame:
        return self.read_rows(sorted({int(t) for t in trials if t is not None}))

    def curves(self, trials: Iterable[int | None]) -> pd.DataFrame:
        return self.read_curves(sorted({int(t) for t in trials if t is not None}))

    @classmethod
    def on_disk(cls, study_dir: str | Path, result_ids: Mapping[int, str | None],
                schema: Schema, *, refresh: bool = False) -> StudyResults:
        return cls(load_summary(study_dir, result_ids, schema, refresh=refresh),
                   lambda trials: load_rows(study_dir, trials),
                   lambda trials: load_curves(study_dir, trials))

    @classmethod
    def in_memory(cls, df: pd.DataFrame, curves: pd.DataFrame | None = None
                  ) -> StudyResults:
        """From rows with their summary's columns (load, or trial_frames concatenated) and
        learning curves (load_curves)."""
        c = _empty(CURVE_COLUMNS) if curves is None else curves

        def pick_curves(trials: list[int]) -> pd.DataFrame:
            return c[c.trial.isin(trials)]
        if not len(df):
            return cls(pd.DataFrame(), lambda trials: _empty(ROW_COLUMNS), pick_curves)
        summary, rows = split_frame(df)
        return cls(summary, lambda trials: rows[rows.trial.isin(trials)], pick_curves)


# A trial file must hold at least these, whatever its release: the launcher tells Optuna from
# `state` and the objectives, status and the report group by `trial`.
REQUIRED_COLUMNS = ("study", "trial", "state")


def _read_or_move_aside(path: Path, *, may_be_empty: bool = False) -> pd.DataFrame | None:
    """A Parquet file of this study, or None: a file pyarrow cannot read (truncated, garbage)
    or without the columns every summary (or curves) file has is moved aside
    (`*.corrupt-<ms>`, kept for a post-mortem) with a warning, so one bad file never stops a
    launch, a status or a report. A summary has its trial's row; a curves file may have none."""
    try:
        df = pd.read_parquet(path)
        missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"no column {missing}")
        if not len(df) and not may_be_empty:
            raise ValueError("no rows")
        return df
    except FileNotFoundError:
        return None
    except _UNREADABLE as e:
        _set_aside_unreadable(path, e)
        return None


def _empty(columns: Mapping[str, str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.array([], dtype=t) for c, t in columns.items()})


def _number(path: Path) -> int:
    digits = path.stem.removeprefix("trial-")
    return int(digits) if digits.isdigit() else -1


def _move_aside(path: Path, why: str) -> None:
    aside = atomic.move_aside(path)
    print(f"study: warning: {path} {why}; moved aside to {aside.name}", file=sys.stderr)


# ---------------------------------------------------------------- learning curves
# One row per (trial, seed, stage, epoch): every stage the trial got, built or a cache hit
# (whose history comes from the cache entry's meta, recorded when it was built), and the
# watched stage of a pruned trial up to the epoch where it stopped. The same columns and types
# in every file, so pd.read_parquet("results/<study>/curves") loads a whole study.
CURVE_COLUMNS = {"study": "string", "trial": "int64", "seed": "Int64", "stage": "string",
                 "epoch": "Int64", "loss": "Float64", "val": "Float64", "lr": "Float64",
                 "images_per_s": "Float64", "wall_s": "Float64", "hit": "boolean",
                 "state": "string"}


def curves_dir(study_dir: str | Path) -> Path:
    return Path(study_dir) / "curves"


def curves_path(study_dir: str | Path, number: int) -> Path:
    return curves_dir(study_dir) / f"trial-{number:06d}.parquet"


def curve_frame(*, study_name: str, trial: int, state: str,
                histories: Sequence[tuple[int | None, str, bool,
                                          Sequence[Mapping[str, Any]]]]) -> pd.DataFrame:
    """histories: (seed, stage, hit, epoch records as train.fit writes them) per stage."""
    rows = [{"study": study_name, "trial": trial, "seed": seed, "stage": stage, "hit": hit,
             "state": state, **{k: rec.get(k) for k in
                                ("epoch", "loss", "val", "lr", "images_per_s", "wall_s")}}
            for seed, stage, hit, records in histories for rec in records]
    return pd.DataFrame({c: pd.array([_finite(r[c]) for r in rows], dtype=dtype)
                         for c, dtype in CURVE_COLUMNS.items()})


def _finite(v: Any) -> Any:
    # NaN (no validation set) is a missing value here, not a number
    return None if isinstance(v, float) and v != v else v


def write_curves(study_dir: str | Path, number: int, df: pd.DataFrame) -> Path | None:
    """Replaced by a later attempt's run of the same trial number (a requeued job)."""
    return atomic.write_file(curves_path(study_dir, number),
                             lambda f: df.to_parquet(f, index=False))


def _trial_files(folder: Path, path_of: Callable[[int], Path], trials: Iterable[int] | None
                 ) -> list[Path]:
    """The files of `trials` (None: every trial's in `folder`) that exist, in trial order."""
    if trials is None:
        return sorted(folder.glob("trial-*.parquet")) if folder.exists() else []
    return [p for p in (path_of(n) for n in sorted(set(trials))) if p.exists()]


def load_curves(study_dir: str | Path, trials: Iterable[int] | None = None) -> pd.DataFrame:
    """The learning curves of `trials` (None: every trial), reading only their files."""
    files = _trial_files(curves_dir(study_dir), lambda n: curves_path(study_dir, n), trials)
    frames = [f for f in (_read_or_move_aside(p, may_be_empty=True) for p in files)
              if f is not None]
    if not frames:
        return _empty(CURVE_COLUMNS)
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------- compute summary
def compute_summary(df: pd.DataFrame, remaining: int) -> dict[str, Any]:
    """Device-hours per stage from one row per trial (load_summary, or what the workers told:
    status.told_summary; the first replicate's stage columns, as the worker records them):
    `built_s` the build time of stages a trial built, `saved_s` the recorded build time of
    those it found cached; `spent_s` the trials' wall times; the projection for `remaining`
    more trials is their mean wall time (trials that ran a pipeline: wall_s recorded, so not
    a launcher-written FAIL) times `remaining`."""
    out: dict[str, Any] = {"stages": {}, "spent_s": 0.0, "built_s": 0.0, "saved_s": 0.0,
                           "mean_trial_s": None, "remaining": max(remaining, 0),
                           "projected_s": None, "trials_timed": 0}
    if not len(df) or "trial" not in df.columns:
        return out
    first = df.drop_duplicates("trial")
    for st in STAGES:
        if f"hit_{st}" not in first.columns:
            continue
        hit = first[f"hit_{st}"].astype("boolean")
        b = first[f"build_s_{st}"].astype("Float64")
        built = float(b[(hit == False).fillna(False)].sum())  # noqa: E712
        saved = float(b[hit.fillna(False)].sum())
        n_built, n_hit = int((hit == False).sum()), int((hit == True).sum())  # noqa: E712
        if n_built or n_hit:
            out["stages"][st] = {"built": n_built, "hits": n_hit, "built_s": built,
                                 "saved_s": saved}
    out["built_s"] = sum(s["built_s"] for s in out["stages"].values())
    out["saved_s"] = sum(s["saved_s"] for s in out["stages"].values())
    if "wall_s" not in first.columns:
        return out
    wall = first.wall_s.astype("Float64")
    out["spent_s"] = float(wall.sum())
    # A later trial finds base and experts cached (trial 0 of the smoke study spends ~70% of
    # its time on them), so the projection leaves out the shared stages each trial built;
    # unless the study builds one per trial (its space varies a field it reads: no hits and
    # more than one build).
    own = wall.copy()
    for st in SHARED_STAGES:
        info = out["stages"].get(st)
        if info and (info["hits"] or info["built"] <= 1):
            built = (first[f"hit_{st}"].astype("boolean") == False).fillna(False)  # noqa: E712
            own = own - first[f"build_s_{st}"].astype("Float64").where(built, 0.0).fillna(0.0)
    own = own.dropna()
    if len(own):
        out["trials_timed"] = int(len(own))
        out["mean_trial_s"] = float(own.clip(lower=0).mean())
        out["projected_s"] = out["mean_trial_s"] * out["remaining"]
    return out


def metric_names(sf: Any) -> list[str]:
    """Names of the study's objective values on optuna-dashboard, e.g. "fusiondistill val.avg"
    (the launcher sets them when it creates the study: study.set_metric_names)."""
    return [f"{o.method} {o.metric}" for o in sf.study.objectives]


# ---------------------------------------------------------------- what the rows add up to
def paper_table(rows: pd.DataFrame | Sequence[Mapping[str, object]],
                order: Sequence[str] | None = None) -> pd.DataFrame:
    """Methods x JPEG/Blur/AWGN/SAPN/Avg/Clean in percent: mean over levels (and seeds), Avg of
    the degradations present. A method without a clean number (the oracle) gets NaN there."""
    df = pd.DataFrame(rows)
    per = df[df.degradation != "clean"].groupby(["model", "degradation"]).accuracy.mean()
    # the installed degradations' order, then any the rows name that is not installed here
    known = [*registry.names(registry.DEGRADATIONS), *sorted(set(per.index.get_level_values(1)))]
    out = per.unstack("degradation").reindex(columns=list(dict.fromkeys(
        d for d in known if d in set(df.degradation))))
    out["Avg"] = out.mean(axis=1)
    clean = df[df.degradation == "clean"].groupby("model").accuracy.mean()
    out["Clean"] = clean.reindex(out.index)
    out = out.rename(columns=TABLE_COLUMNS) * 100
    order = list(order or dict.fromkeys(df.model))
    return out.reindex([m for m in order if m in out.index])


def metric_value(rows: pd.DataFrame | Sequence[Mapping[str, object]], method: str,
                 metric: str) -> float:
    """One objective from evaluation rows, as a fraction: `metric` is `<split>.<aggregate>`,
    the aggregate `avg` (mean over the degradations of each one's mean over levels and
    seeds), `clean`, or one degradation's mean. NaN where the rows hold no such number (the
    oracle has no clean accuracy): the caller decides what that means."""
    split, _, aggregate = metric.partition(".")
    df = pd.DataFrame(rows)
    part = df[(df.model == method) & (df.split == split)] if len(df) else df
    if not len(part):
        raise ValueError(f"objective {metric} of {method}: no {split} rows")
    if aggregate == "clean":
        clean = part[part.degradation == "clean"].accuracy
        return float(clean.mean()) if len(clean) else math.nan
    per = part[part.degradation != "clean"].groupby("degradation").accuracy.mean()
    if aggregate == "avg":
        return float(per.mean()) if len(per) else math.nan
    return float(per.get(aggregate, math.nan))


def objective_values(rows: pd.DataFrame | Sequence[Mapping[str, object]],
                     objectives: Sequence[tuple[str, str]],
                     cost_hours: Mapping[str, float] | None = None) -> list[float]:
    """The study's objectives, (method, metric) each, from one trial's rows (all seeds); a
    cost objective (COST_METRIC) from `cost_hours`, method -> hours, which the worker sums
    from the stages' build times."""
    return [(cost_hours or {})[method] if metric == COST_METRIC
            else metric_value(rows, method, metric) for method, metric in objectives]
