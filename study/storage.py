"""Where a study lives: Optuna storage, results directory, sampler and pruner from the study file.

Default storage: JournalStorage with a file backend at results/<study>/optuna.journal (safe on NFS,
no server, optuna-dashboard opens it directly). Any Optuna storage URL (sqlite:///, postgresql://,
mysql://) is accepted in `study.storage`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from study.atomic import disk_full
from study.config import StudyFile
from study.errors import ConfigError, StorageError

RDB_SCHEMES = ("sqlite:", "postgresql", "mysql")
FINGERPRINT_ATTR = "study_fingerprint"
def _cut_partial_line(fd: int) -> int:
    """Truncate the journal after its last newline; returns the new size. Readers skip a line
    without its newline, so nobody has seen the bytes cut."""
    end = pos = os.lseek(fd, 0, os.SEEK_END)
    while pos > 0:
        n = min(pos, 1 << 16)
        i = os.pread(fd, n, pos - n).rfind(b"\n")
        if i >= 0:
            pos = pos - n + i + 1
            break
        pos -= n
    if pos != end:
        os.ftruncate(fd, pos)
    return pos


class JournalFile(JournalFileBackend):
    """Optuna's journal file with all-or-nothing appends. Optuna's own append can stop midway
    when the disk fills (tmpfs and ext4 allocate 4 KiB pages, so a 500-byte line can end at a
    page boundary); the next append, once space is back, glues a valid line onto that fragment
    and from then on every read raises: the whole study is unreadable. Here an append first cuts
    a fragment left by a writer that died mid-line, and a failed append cuts its own."""

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode()
        self._lock.acquire()
        try:
            fd = os.open(self._file_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                _cut_partial_line(fd)
                try:
                    view = memoryview(data)
                    while view:   # os.write may write part: a page fitted, the next did not
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                except OSError as e:
                    _cut_partial_line(fd)
                    raise disk_full(e, self._file_path) from None
            finally:
                os.close(fd)
        finally:
            self._lock.release()


def study_dir(results: str | Path, name: str) -> Path:
    return Path(results) / name


def storage_url(sf: StudyFile, results: str | Path) -> str:
    """The storage as a string a worker can reopen (journal file path or RDB URL)."""
    if sf.study.storage:
        return sf.study.storage
    return str((study_dir(results, sf.study.name) / "optuna.journal").resolve())


def open_storage(url: str, source: str = "study.storage") -> optuna.storages.BaseStorage:
    try:
        if url.startswith(RDB_SCHEMES):
            # pool_pre_ping: long studies outlive idle database connections.
            kwargs: dict[str, Any] = {"pool_pre_ping": True}
            if url.startswith("sqlite:"):
                # SQLite has one writer at a time and others wait at most `timeout` s (default
                # 5). 16 writers on 2 busy cores hit "database is locked" (surfacing as Optuna's
                # StorageInternalError) once in 1,600 trials at 5 s: a worker holding the lock
                # was descheduled. A worker waits 60 s rather than lose its result.
                kwargs["connect_args"] = {"timeout": 60}
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        # The open-lock works on NFS, where symlink locks may not.
        backend = JournalFile(url, lock_obj=JournalFileOpenLock(url))
        return optuna.storages.JournalStorage(backend)
    except Exception as e:  # noqa: BLE001 - any connection/driver error is a user error here
        shown = masked(url)
        detail = str(e).replace(url, shown).splitlines()[0] if str(e) else ""
        raise StorageError(f"key '{source}': cannot open storage {shown!r}: "
                          f"{type(e).__name__}: {detail}") from None


def trial_id(store: optuna.storages.BaseStorage, study_name: str, number: int) -> int:
    """The storage's id of trial `number`: what its public methods (get_trial,
    set_trial_user_attr) take. Optuna's Study and FrozenTrial keep it in private attributes."""
    return store.get_trial_id_from_study_id_trial_number(
        store.get_study_id_from_name(study_name), number)


def masked(url: str) -> str:
    """The URL without its password: error messages end up in logs and CI output."""
    return re.sub(r"^([a-z0-9+]+://[^:/@]*):[^@]*@", r"\1:***@", url)


def make_sampler(sf: StudyFile, grid: dict[str, list[Any]] | None,
                 parallel: int, resumed_at: int = 0) -> optuna.samplers.BaseSampler:
    """`resumed_at`: trials already in storage. A resumed launcher must not replay the random
    stream of the first one (its startup draws would repeat the same configurations), so the
    seed moves on with the study, reproducibly."""
    s, seed = sf.study.sampler, sf.study.seed + 1_000_003 * resumed_at
    if s == "tpe":
        # constant_liar: trials in flight count as bad guesses, so parallel workers spread out.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=parallel > 1,
                                          n_startup_trials=5)
    if s == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if s == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if s == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if grid is None:
        raise ConfigError("key 'study.sampler': bruteforce needs a finite space (every float "
                          "with a step, or categorical/int/subset parameters)")
    return optuna.samplers.BruteForceSampler(seed=seed)


def make_pruner(sf: StudyFile) -> optuna.pruners.BasePruner:
    """The study file's pruner. Optuna keeps no pruner in its storage: the launcher and every
    worker (where `trial.should_prune()` is asked) build it from the file; a worker that took
    load_study's default would prune by another rule."""
    max_epochs = max(sf.pipeline.distill.epochs, sf.pipeline.fusing.epochs)
    if len(sf.study.objectives) > 1 or sf.study.pruner == "none":
        return optuna.pruners.NopPruner()   # Optuna prunes single-objective studies only
    if sf.study.pruner == "median":
        # epochs are reported from 1 and Optuna prunes from step n_warmup_steps on: 2 spares
        # the first epoch, whose validation accuracy says little yet
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(max_epochs, 1))


def fingerprint(tree: dict[str, Any], space_fingerprint: str) -> str:
    """What makes two runs the same study: the fixed pipeline, the space, the objectives."""
    blob = json.dumps({"pipeline": tree["pipeline"], "space": space_fingerprint,
                       "objectives": tree.get("study", {}).get("objectives"),
                       "replicates": tree.get("study", {}).get("replicates")},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_or_create(sf: StudyFile, storage: optuna.storages.BaseStorage, sampler:
                   optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner,
                   print_: bool = True, fp: str | None = None) -> optuna.Study:
    directions = [o.direction for o in sf.study.objectives]
    study = optuna.create_study(study_name=sf.study.name, storage=storage, sampler=sampler,
                                pruner=pruner, directions=directions, load_if_exists=True)
    if fp is not None:
        old = study.user_attrs.get(FINGERPRINT_ATTR)
        if old is None:
            study.set_user_attr(FINGERPRINT_ATTR, fp)
        elif old != fp:
            raise StorageError(
                f"study '{sf.study.name}' already exists in its storage with a different pipeline, "
                f"space or objectives (fingerprint {old}, now {fp}); its trials would not be "
                "comparable. Start a new study with --set study.name=<new name>, or restore the "
                "file as it was to resume.")
    return study


def open_existing(sf: StudyFile, results: str | Path
                  ) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    """A study already launched, with the storage it lives in."""
    url = storage_url(sf, results)
    # sqlite would create an empty database file just to say the study is not in it
    file = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
    if (not url.startswith(RDB_SCHEMES) or url.startswith("sqlite:///")) and (
            not Path(file).exists()):
        raise StorageError(f"study '{sf.study.name}' has not been launched yet (no {file})")
    store = open_storage(url)
    try:
        return optuna.load_study(study_name=sf.study.name, storage=store), store
    except KeyError:
        raise StorageError(f"study '{sf.study.name}' not found in storage {masked(url)}") from None
