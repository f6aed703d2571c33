"""Never a wrong number without an error: inputs that once crashed or quietly misled.

Each case here once ended in a traceback, a file written where none belongs, or a number
changed without a word: a storage `${NAME}` expanding to a scheme no storage has (a journal file
`./redis:/localhost:6379/0` was written), heartbeat files with fields of the wrong type or 1.5 GB
long (`study status` crashed, or read it whole: 3.8 GB resident), STUDY_HEARTBEAT_S=abc (met by
each worker only, so every trial failed as an infrastructure fault and was retried), a stage
cache entry whose meta.json lists no checksums (never moved aside: every later run failed the
same way), `study report` on a read-only results folder, a regular file named
results/<study>/jobs, and a 16-bit grayscale PNG (clipped to white).

A refusal exits 2 with one paragraph naming the file, key or variable and what is allowed, no
traceback, and leaves every folder it was given as it was. Everything runs the real code: the
CLI in-process (`toy_studies.run_cli`), a study made in a real journal, a read-only bind mount
(as root; chmod elsewhere).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from PIL import Image
from toy_studies import run_cli

from study import data, progress, storage, studyfile
from study.cache import StageCache
from study.errors import DataError, StudyError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"
NAME = "hostile"
SETS = [f"study.name={NAME}"]


# ---------------------------------------------------------------- helpers
def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for a folder or a sparse giant)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file()
                                         and p.stat().st_size < 1 << 20 else None)
            for p in sorted(folder.rglob("*"))}


def _refused(argv: list[str], folder: Path, *needles: str) -> str:
    """`study ARGV` exits 2 with one paragraph holding `needles`, no traceback, and leaves
    `folder` exactly as it was. Returns the message."""
    before = _tree(folder)
    rc, out, err = run_cli(argv)
    assert rc == 2, f"exit {rc} for {argv}\nstdout: {out[-1500:]}\nstderr: {err[-1500:]}"
    assert "Traceback" not in out + err
    assert err.startswith("study: error:") and err.count("study: error:") == 1, err
    for n in needles:
        assert n in err, f"{n!r} missing from the message of {argv}:\n{err}"
    assert _tree(folder) == before, f"{argv} changed {folder}"
    return err


def _args(cmd: str, results: Path, *extra: str) -> list[str]:
    return [cmd, "--space", str(SMOKE), *(x for s in SETS for x in ("--set", s)), *extra,
            "--results", str(results)]


def _study_with_a_running_trial(results: Path) -> Path:
    """A study in its journal, as a launch leaves it, with trial 0 RUNNING; its folder."""
    ld = studyfile.load(str(SMOKE), SETS, check_space=False)
    url, sdir = storage.storage_url(ld.sf, results), storage.study_dir(results, NAME)
    st = storage.load_or_create(ld.sf, storage.open_storage(url),
                                optuna.samplers.RandomSampler(seed=0),
                                storage.make_pruner(ld.sf))
    assert st.ask().number == 0
    return sdir


# ---------------------------------------------------------------- 5. ${NAME} and the scheme
def test_storage_reference_expanding_to_an_unknown_scheme_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The schema checks the scheme of what the file says (`${STUDY_HOSTILE_URL}`, no scheme:
    a journal path); the expanded URL must meet the same rule where it is expanded."""
    monkeypatch.setenv("STUDY_HOSTILE_URL", "redis://u:hunter22pw@localhost:6379/0")
    monkeypatch.chdir(tmp_path)   # where the journal './redis:/localhost:6379/0' was written
    results = tmp_path / "res"
    for cmd, extra in (("launch", ["--dry-run"]), ("launch", ["--executor", "debug",
                                                              "--n-trials", "1"]),
                       ("status", []), ("report", ["--no-push"])):
        err = _refused(_args(cmd, results, *extra, "--set",
                             "study.storage=${STUDY_HOSTILE_URL}"), tmp_path,
                       "study.storage", "STUDY_HOSTILE_URL", "'redis'", "sqlite://",
                       "postgresql://")
        assert "hunter22pw" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_storage_check_names_the_scheme_of_the_expanded_url(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDY_HOSTILE_URL", "postgresql+psycopg2://u:pw@db/optuna")
    assert storage.check("${STUDY_HOSTILE_URL}") == "postgresql+psycopg2://u:pw@db/optuna"
    monkeypatch.setenv("STUDY_HOSTILE_URL", "mongodb://u:hunter22pw@db/optuna")
    with pytest.raises(StudyError, match="'mongodb'") as e:
        storage.check("${STUDY_HOSTILE_URL}")
    assert "hunter22pw" not in str(e.value)


@pytest.mark.parametrize("url,says", [
    ("sqlite:/x.db", "no '//'"),                          # was a journal file ./sqlite:/x.db
    ("sqlite+pysqlite:///:memory:", "in-memory"),          # was a journal file, not refused
    ("u:hunter22pw@h://x", "a malformed scheme"),
])
def test_storage_urls_that_would_become_journal_files_are_refused(
        url: str, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STUDY_HOSTILE_URL", url)
    with pytest.raises(StudyError, match=says) as e:
        storage.open_storage("${STUDY_HOSTILE_URL}")
    assert "hunter22pw" not in str(e.value)
    assert list(tmp_path.iterdir()) == []
    storage.open_storage("sqlite+pysqlite:///x.db")        # a driver suffix is a database
    assert [p.name for p in tmp_path.iterdir()] == ["x.db"]


# ---------------------------------------------------------------- 7a. heartbeat field types
HOSTILE_BEATS: dict[str, dict[str, Any]] = {
    "updated_at_text": {"updated_at": "x"},
    "epochs_list": {"epochs": []},
    "val_text": {"val": "high"},
    "everything_wrong": {"updated_at": "x", "epochs": [], "val": "high", "started_at": "y",
                         "interval_s": -5, "done": "3", "total": {}, "eta_s": "soon",
                         "images_per_s": True, "pid": [1], "host": 7, "progress": [1, 2]},
}


def _good_beat(now: float) -> dict[str, object]:
    return {"host": "node7", "pid": 4242, "state": "running", "phase": "train",
            "stage": "fusiondistill", "epoch": 3, "epochs": 40, "done": 30, "total": 400,
            "images_per_s": 2500.0, "eta_s": 60.0, "val": 0.5, "started_at": now - 100,
            "progress_at": now - 1, "interval_s": 5.0, "updated_at": now - 1,
            "progress": {"fusiondistill": "2/40"}}


@pytest.mark.parametrize("case", HOSTILE_BEATS)
def test_heartbeat_fields_of_the_wrong_type_are_dropped(case: str, tmp_path: Path) -> None:
    now = 1_800_000_000.0
    path = progress.heartbeat_path(tmp_path, 0)
    path.parent.mkdir()
    path.write_text(json.dumps({**_good_beat(now), **HOSTILE_BEATS[case]}))
    hb = progress.read_heartbeat(path)
    assert hb is not None
    for name in HOSTILE_BEATS[case]:
        assert name not in hb, name                 # dropped: as if the worker never said
    assert hb["stage"] == "fusiondistill"           # what is right is still shown
    # status.py computes the trial ETA from it: float(started_at) must hold
    float(hb.get("started_at") or now)
    text, stale = progress.describe_heartbeat(hb, now)
    assert "fusiondistill" in text and "unreadable" in text, text
    for name in HOSTILE_BEATS[case]:
        assert name in text, text
    assert not stale or "updated_at" not in HOSTILE_BEATS[case]


HOSTILE_FILES = {   # a heartbeat file's whole text
    "not_json": '{"updated_at": 1',
    "a_list": "[1, 2]",
    "nested_past_the_stack": "[" * 60_000 + "]" * 60_000,
    "not_utf8": b"\xff\xfe{}".decode("latin-1"),
}


@pytest.mark.parametrize("case", HOSTILE_FILES)
def test_a_heartbeat_that_is_no_json_object_is_unreadable(case: str, tmp_path: Path) -> None:
    path = tmp_path / "trial-000000.heartbeat.json"
    path.write_text(HOSTILE_FILES[case], encoding="latin-1")
    hb = progress.read_heartbeat(path)
    text, stale = progress.describe_heartbeat(hb, 1_800_000_000.0)
    assert text.startswith("heartbeat unreadable (") and not stale, text


def test_huge_numbers_in_a_heartbeat_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "trial-000000.heartbeat.json"
    path.write_text('{"stage": "base", "updated_at": 1e999, "eta_s": ' + "9" * 400
                    + ', "val": NaN}')
    hb = progress.read_heartbeat(path)
    assert hb == {"stage": "base",
                  "unreadable": "fields of the wrong type: updated_at, eta_s, val"}
    text, stale = progress.describe_heartbeat(hb)
    assert text.startswith("base, ") and "beat time unknown" in text and not stale, text


def test_status_shows_what_a_hostile_heartbeat_still_says(tmp_path: Path) -> None:
    results = tmp_path / "res"
    sdir = _study_with_a_running_trial(results)
    path = progress.heartbeat_path(sdir, 0)
    path.parent.mkdir()
    path.write_text(json.dumps({**_good_beat(0.0), **HOSTILE_BEATS["everything_wrong"]}))
    rc, out, err = run_cli(_args("status", results))
    assert rc == 0, err
    row = out.split("in flight:", 1)[1]
    assert "fusiondistill" in row and "unreadable" in row and "updated_at" in row, out


# ---------------------------------------------------------------- 7b. a giant heartbeat
def test_a_giant_heartbeat_is_unreadable_without_reading_it(tmp_path: Path) -> None:
    """1.5 GB (sparse: no disk) read whole took 3.8 GB of memory; at most the bound is read."""
    results = tmp_path / "res"
    sdir = _study_with_a_running_trial(results)
    path = progress.heartbeat_path(sdir, 0)
    path.parent.mkdir()
    path.write_text(json.dumps(_good_beat(0.0)))
    os.truncate(path, 1_500_000_000)
    tracemalloc.start()
    try:
        hb = progress.read_heartbeat(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak                       # a real heartbeat is under 2 KB
    text, stale = progress.describe_heartbeat(hb)
    assert "unreadable" in text and not stale, text
    rc, out, err = run_cli(_args("status", results))
    assert rc == 0, err
    assert "heartbeat unreadable" in out.split("in flight:", 1)[1], out


# ---------------------------------------------------------------- 7c. STUDY_HEARTBEAT_S
@pytest.mark.parametrize("variable", [progress.ENV_HEARTBEAT_S, progress.ENV_LINE_S,
                                      progress.ENV_LEVEL])
def test_worker_settings_in_the_environment_are_checked_before_any_trial(
        variable: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers read them when they start: a bad one there fails every trial as an
    infrastructure fault, retried. The command that starts workers refuses it first."""
    monkeypatch.setenv(variable, "abc")
    results = tmp_path / "res"
    for extra in (["--dry-run"], ["--executor", "debug", "--n-trials", "1"]):
        _refused(_args("launch", results, *extra), tmp_path, variable, "'abc'")
    assert not results.exists()
    with pytest.raises(StudyError, match=variable):
        progress.check_environment()


# ---------------------------------------------------------------- 7d. cache meta.json
KINDS: dict[str, tuple[Any, Any, Any]] = {   # entry kind: (save, load, a value)
    "state": (StageCache.save_state, StageCache.load_state, {"w": torch.arange(3.0)}),
    "json": (StageCache.save_json, StageCache.load_json, {"accuracy": 0.5}),
    "array": (StageCache.save_array, StageCache.load_array, np.arange(6, dtype=np.uint8)),
}
BAD_METAS: dict[str, Any] = {
    "sha256_empty": {"sha256": {}},
    "null": None,
    "list": [],
    "sha256_null": {"sha256": None},
    "sha256_text": {"sha256": "abc"},
    "sha256_of_another_file": {"sha256": {"other.bin": "0" * 64}},
    "digest_a_number": {"sha256": {"state.pt": 5, "data.json": 5, "array.npy": 5}},
}


def _same(a: object, b: object) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            _same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)  # type: ignore[arg-type]
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)  # type: ignore[arg-type]
    return a == b


@pytest.mark.parametrize("meta", BAD_METAS)
@pytest.mark.parametrize("kind", KINDS)
def test_cache_meta_without_checksums_is_moved_aside_and_rebuilt(kind: str, meta: str,
                                                                 tmp_path: Path) -> None:
    save, load, value = KINDS[kind]
    cache = StageCache(tmp_path / "cache")
    save(cache, "base", "k1", value, {})
    entry = cache.entry("base", "k1")
    (entry / "meta.json").write_text(json.dumps(BAD_METAS[meta]))
    assert load(cache, "base", "k1") is None          # not loaded, not a crash
    assert not entry.exists() and cache.corrupt == ["base/k1"]
    (aside,) = entry.parent.glob("k1.corrupt-*")      # kept for a post-mortem
    assert (aside / "meta.json").exists()
    save(cache, "base", "k1", value, {})              # rebuilt: the next run loads it
    assert _same(value, load(cache, "base", "k1"))


# ---------------------------------------------------------------- 7e. read-only report
@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """`folder` read-only: a read-only bind mount as root (whom chmod does not stop), chmod
    elsewhere; undone at the end, pass or fail."""
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(mode)
        return
    mount = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True,
                           text=True)
    if mount.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but no bind mount: {mount.stderr.strip()}")
        pytest.skip(f"no bind mount here: {mount.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True,
                       capture_output=True)
        yield
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mounts: Linux")
def test_report_on_a_read_only_results_folder_is_refused(tmp_path: Path) -> None:
    results = tmp_path / "res"
    sdir = _study_with_a_running_trial(results)
    with _read_only(results):
        for extra in (["--no-push"], []):
            _refused(_args("report", results, *extra), tmp_path, str(sdir), "writable")
    assert not (sdir / "report.html").exists()


# ---------------------------------------------------------------- 7f. jobs is a file
@pytest.mark.parametrize("blocked", ["jobs", "study folder"])
def test_a_file_where_the_study_keeps_its_jobs_is_refused(blocked: str, tmp_path: Path) -> None:
    results = tmp_path / "res"
    sdir = _study_with_a_running_trial(results)
    path = sdir if blocked == "study folder" else sdir / blocked
    if blocked == "study folder":
        for p in sdir.iterdir():
            p.unlink()
        sdir.rmdir()
    path.write_text("not a folder")
    for cmd, extra in (("launch", ["--executor", "debug", "--n-trials", "1"]),
                       ("launch", ["--dry-run"]), ("status", []), ("report", ["--no-push"])):
        _refused(_args(cmd, results, *extra), tmp_path, str(path), "not a folder")


@pytest.mark.parametrize("name", ["jobs", "trials", "summary", "curves"])
def test_check_study_dir_names_each_folder_that_is_a_file(name: str, tmp_path: Path) -> None:
    storage.check_study_dir(tmp_path)                  # absent folders are fine: made later
    (tmp_path / name).write_text("x")
    with pytest.raises(StudyError, match=str(tmp_path / name)):
        storage.check_study_dir(tmp_path)


# ---------------------------------------------------------------- 7g. 16-bit images
def _folder_with(root: Path, odd: Image.Image | None, suffix: str = ".png") -> Path:
    """An image folder of 8x8 RGB PNGs, `odd` saved as train/a/1<suffix>; its path."""
    rng = np.random.default_rng(0)
    for split, cls, i in (("train", "a", 0), ("train", "b", 0), ("test", "a", 0),
                          ("test", "b", 0)):
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            root / split / cls / f"{i}.png")
    path = root / "train" / "a" / f"1{suffix}"
    if odd is not None:
        odd.save(path)
    return path


def test_a_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    """Every 16-bit value v becomes v >> 8 in all three channels: 0xffff white, 0x8001 mid
    grey (128), 0x12ff 18 (what PIL makes of the same value in a 16-bit RGB PNG); an 8-bit
    image widened the usual way (v * 257) comes back exactly."""
    values = np.array([0, 0x00ff, 0x0100, 0x12ff, 0x8001, 0xfeff, 0xffff, 257 * 200],
                      dtype=np.uint16)
    gray16 = np.resize(values, (8, 8)).astype(np.uint16)
    img = Image.fromarray(gray16)
    assert img.mode == "I;16"
    _folder_with(tmp_path, img)
    ds = data.load_dataset("imagefolder", str(tmp_path))
    loaded = ds.train.images[1]                        # train/a/1.png, after a/0.png
    expected = (gray16 >> 8).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(loaded[..., c], expected)
    assert loaded[0, 1, 0] == 0 and loaded[0, 6, 0] == 255 and loaded[0, 7, 0] == 200


@pytest.mark.parametrize("mode", ["I", "F"])
def test_an_image_without_a_white_level_is_refused(mode: str, tmp_path: Path) -> None:
    """32-bit integer or float pixels (TIFF) have no white level a format fixes: scaling them
    would be a guess, clipping (what PIL's convert does) a wrong number."""
    arr = (np.arange(64).reshape(8, 8) * 1000).astype(np.int32 if mode == "I" else np.float32)
    img = Image.fromarray(arr)
    assert img.mode == mode
    path = _folder_with(tmp_path, img, ".tif")
    with pytest.raises(DataError, match=str(path)) as e:
        data.load_dataset("imagefolder", str(tmp_path))
    assert "8-bit" in str(e.value)
