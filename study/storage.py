"""Where a study lives: Optuna storage, results directory, sampler and pruner from the study file.

Default storage: JournalStorage with a file backend at results/<study>/optuna.journal (safe on NFS,
no server, optuna-dashboard opens it directly). Any Optuna storage URL (sqlite:///, postgresql://,
mysql://) is accepted in `study.storage`, except an in-memory database.

Secrets: `study.storage` may say `${NAME}` (e.g. postgresql://me:${STUDY_DB_PASSWORD}@db/optuna);
it is expanded from the environment only when the storage is opened, so the study file, the job
files and every log keep the reference, never the password. A URL with no password at all works
too: PostgreSQL's client library reads ~/.pgpass and $PGPASSWORD by itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy.engine
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from study.atomic import disk_full
from study.config import STORAGE_SCHEMES, StudyFile, StudySection
from study.errors import ConfigError, StorageError, StudyError, naming_file

if TYPE_CHECKING:
    from study.studyfile import LoadedStudy

FINGERPRINT_ATTR = "study_fingerprint"
# numpy's RandomState, behind every Optuna sampler, takes seeds in 0..2**32-1 only
SEED_RANGE = 2**32
# Every line Optuna's journal writes is one operation, `{"op_code":<n>,"worker_id":...}` (its
# own backend and JournalFile below both dump with separators (",", ":")).
_JOURNAL_HEAD = re.compile(rb'\A\{\s*"op_code"\s*:')
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# What a study folder holds, each made by its writer when missing: jobs/ (job files, worker
# logs, heartbeats: launcher.job_path, progress.heartbeat_path), trials/, summary/ and curves/
# (results.trials_dir, results.summary_dir, results.curves_dir).
STUDY_FOLDERS = ("jobs", "trials", "summary", "curves")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")   # RFC 3986


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


def check_study_dir(sdir: Path) -> Path:
    """The study folder and the folders in it (STUDY_FOLDERS) are folders wherever they exist.
    A regular file named results/<study>/jobs otherwise surfaced as a NotADirectoryError
    traceback in the middle of a launch, after its trial was asked, and as "no heartbeat yet"
    for every trial in `study status`."""
    for path in (sdir, *(sdir / name for name in STUDY_FOLDERS)):
        if os.path.lexists(path) and not path.is_dir():   # lexists: a dangling link too
            what = "the study's folder" if path == sdir else f"the study's {path.name}/ folder"
            raise StudyError(
                f"{path} is not a folder (a file or a dangling link has its name); it must be "
                f"{what}, which is created when missing. Move the file away and run the "
                "command again.")
    return sdir


def storage_url(sf: StudyFile, results: str | Path) -> str:
    """The storage as a string a worker can reopen (journal file path or RDB URL)."""
    if sf.study.storage:
        return sf.study.storage
    return str((study_dir(results, sf.study.name) / "optuna.journal").resolve())


def expand(url: str, source: str = "study.storage") -> str:
    """`${NAME}` replaced from the environment. Only at open time: the expanded URL (the
    password) is never stored, written into a job file or printed."""
    def value(m: re.Match[str]) -> str:
        if m.group(1) not in os.environ:
            raise StorageError(
                f"key '{source}': the storage {masked(url)!r} refers to the environment "
                f"variable {m.group(1)}, which is not set here; export it where the launcher "
                "and the workers run (SLURM jobs inherit the environment of `study launch`)")
        return os.environ[m.group(1)]
    return _ENV_REF.sub(value, url)


def _database(url: str) -> str | None:
    """The database a URL names (sqlite, postgresql, mysql), its `+driver` dropped; None for
    a journal path. sqlite+pysqlite:///x.db, taken for a path, became a journal file
    ./sqlite+pysqlite:/x.db, and sqlite+pysqlite:///:memory: escaped the in-memory check."""
    scheme, sep, _ = url.partition("://")
    base = scheme.split("+")[0]
    return base if sep and base in STORAGE_SCHEMES else None


def _in_memory(url: str) -> bool:
    """A SQLite URL whose database lives in the opening process only: `sqlite://`,
    `sqlite:///:memory:`, `sqlite:///file::memory:?cache=shared`, `...?mode=memory`."""
    if _database(url) != "sqlite":
        return False
    try:
        u = sqlalchemy.engine.make_url(url)
    except Exception:  # noqa: BLE001 - a malformed URL is reported when it is opened
        return False
    db = u.database or ""
    return (db in ("", ":memory:") or db.startswith("file::memory:")
            or "mode=memory" in db or u.query.get("mode") == "memory")


def check(url: str, source: str = "study.storage") -> str:
    """Every refusal that needs no connection, before anything is created; returns the URL
    with `${NAME}` expanded. A launch, its dry run and each worker run it."""
    full = expand(url, source)
    scheme, sep, rest = full.partition("://")
    head = full.split(":", 1)[0] if ":" in full else ""
    if not sep and head.split("+")[0] in STORAGE_SCHEMES:
        # sqlite:/x.db would be a journal file ./sqlite:/x.db; the rest is not echoed: a
        # URL without '//' is not masked
        raise StorageError(
            f"key '{source}': the storage starts with '{head}:' but has no '//' after it, so "
            "it would be taken for a journal file path; a database URL reads e.g. "
            "sqlite:///results/study.db or postgresql://user@host/optuna")
    if sep and _database(full) is None:
        # config's _known_scheme saw what the file says: `${X}` has no scheme (a journal
        # path), so X=redis://... became a journal file ./redis:/localhost:6379/0. The scheme
        # is shown only when it looks like one: what precedes '://' may hold the password.
        shown = f"the scheme {scheme!r}" if _SCHEME.fullmatch(scheme) else "a malformed scheme"
        raise StorageError(
            f"key '{source}': the storage {masked(url)!r} "
            f"{'expands to a URL with' if full != url else 'has'} {shown}, which no storage "
            "has; allowed: a journal file path or a URL "
            f"{[x + '://...' for x in STORAGE_SCHEMES]}")
    if sep and re.split(r"[/?#]", rest, maxsplit=1)[0].count("@") > 1:
        # SQLAlchemy would read postgresql://u:se@cret@host as password 'se' on host
        # 'cret@host', and the driver's "cannot resolve host" message would print the rest
        raise StorageError(
            f"key '{source}': the user name or password in {masked(url)!r} contains '@'; a URL "
            "needs it percent-encoded as %40 (in the environment variable too, where the "
            "password comes from one), else the part after it is taken for the host name")
    if _in_memory(full):
        raise StorageError(
            f"key '{source}': {masked(url)!r} is an in-memory database: every worker would "
            "open its own empty one and no trial could be told. Give a file, e.g. "
            "sqlite:///results/study.db, a server URL (postgresql://, mysql://), or leave the "
            "key out for the journal file results/<study>/optuna.journal")
    if _database(full) is None:
        _check_journal_file(Path(full), source)
    return full


def _check_journal_file(path: Path, source: str) -> None:
    """A journal path that names an existing file which is not an Optuna journal is refused:
    opening it would cut everything after its last newline (a journal drops a half-written
    last line) and append operations to it; someone's notes or database would be destroyed."""
    if path.is_dir():
        raise StorageError(f"key '{source}': the journal path {path} is a directory; give a "
                           "file path, e.g. <dir>/optuna.journal")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except (FileNotFoundError, NotADirectoryError):
        return    # a new journal; a path below a file fails to open with its own message
    except OSError as e:
        raise StorageError(f"key '{source}': cannot read the journal {path}: "
                           f"{e.strerror or e}") from None
    if not head or _JOURNAL_HEAD.match(head):
        return    # empty, or a journal (maybe with a half line a killed writer left)
    what = ("a SQLite database: to use it, write study.storage: sqlite:///" + str(path)
            if head.startswith(b"SQLite format 3\x00") else
            "not an Optuna journal (whose lines start with {\"op_code\":)")
    raise StorageError(
        f"key '{source}': {path} exists and is {what}. It is left untouched: opening it as a "
        "journal would rewrite it. Point the key at a new or empty file, or at the study's "
        "own journal.")


def open_storage(url: str, source: str = "study.storage") -> optuna.storages.BaseStorage:
    full = check(url, source)
    try:
        if _database(full) is not None:
            # pool_pre_ping: long studies outlive idle database connections.
            kwargs: dict[str, Any] = {"pool_pre_ping": True}
            if _database(full) == "sqlite":
                # SQLite has one writer at a time and others wait at most `timeout` s (default
                # 5). 16 writers on 2 busy cores hit "database is locked" (surfacing as Optuna's
                # StorageInternalError) once in 1,600 trials at 5 s: a worker holding the lock
                # was descheduled. A worker waits 60 s rather than lose its result.
                kwargs["connect_args"] = {"timeout": 60}
            return optuna.storages.RDBStorage(full, engine_kwargs=kwargs)
        Path(full).parent.mkdir(parents=True, exist_ok=True)
        # The open-lock works on NFS, where symlink locks may not.
        backend = JournalFile(full, lock_obj=JournalFileOpenLock(full))
        return optuna.storages.JournalStorage(backend)
    except Exception as e:  # noqa: BLE001 - any connection/driver error is a user error here
        raise StorageError(f"key '{source}': cannot open storage {masked(url)!r}: "
                          f"{type(e).__name__}: {_scrub(str(e), url, full)}") from None


def _scrub(text: str, url: str, full: str) -> str:
    """The first line of a driver's message without the URL or its password in it."""
    text = (text.splitlines() or [""])[0]
    for u in (full, url):
        text = text.replace(u, masked(u))
    secret = _password(full)
    # a password of 1-3 characters would turn every such letter of the message into ***
    if secret and len(secret) >= 4:
        text = text.replace(secret, "***")
    return text


def trial_id(store: optuna.storages.BaseStorage, study_name: str, number: int) -> int:
    """The storage's id of trial `number`: what its public methods (get_trial,
    set_trial_user_attr) take. Optuna's Study and FrozenTrial keep it in private attributes."""
    return store.get_trial_id_from_study_id_trial_number(
        store.get_study_id_from_name(study_name), number)


def _userinfo(url: str) -> tuple[str, str, str] | None:
    """(scheme://, userinfo, rest) of a URL with credentials. The userinfo ends at the LAST '@'
    of the URL: a password may hold '@', '/', ':' or '?' written unescaped, which both
    urllib.parse and SQLAlchemy's make_url misplace (make_url reads u:se@cret@host as password
    'se' on host 'cret@host'). An '@' further on, in a query, only masks more than needed."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, after = rest.rpartition("@")
    if not sep or not at:
        return None
    return f"{scheme}://", userinfo, after


def _password(url: str) -> str | None:
    parts = _userinfo(url)
    if parts is None or ":" not in parts[1]:
        return None
    return urllib.parse.unquote(parts[1].split(":", 1)[1])


def masked(url: str) -> str:
    """The URL without its password (in the userinfo or as a ?password= parameter): error
    messages and `study status` end up in logs and CI output. A journal path is returned as
    is."""
    parts = _userinfo(url)
    if parts is not None and ":" in parts[1]:
        head, userinfo, after = parts
        user, secret = userinfo.split(":", 1)
        if not _ENV_REF.fullmatch(secret):   # ${NAME} is a reference, not the password
            url = f"{head}{user}:***@{after}"
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url, flags=re.IGNORECASE)


def make_sampler(sf: StudyFile, grid: dict[str, list[Any]] | None,
                 parallel: int, resumed_at: int = 0) -> optuna.samplers.BaseSampler:
    """`resumed_at`: trials already in storage. A resumed launcher must not replay the random
    stream of the first one (its startup draws would repeat the same configurations), so the
    seed moves on with the study, reproducibly."""
    s, seed = sf.study.sampler, resume_seed(sf.study.seed, resumed_at)
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


def resume_seed(seed: int, resumed_at: int) -> int:
    """The sampler seed of a launcher that finds `resumed_at` trials in storage: a new stream
    per resume, the same for the same study and count. Wrapped into numpy's 0..2**32-1: the
    step of 1,000,003 per trial leaves that range at ~4,300 trials (and study.seed may be
    negative or past it). 1,000,003 is odd, so n -> seed + 1,000,003 n mod 2**32 is one-to-one:
    counts below 2**32 still give distinct seeds."""
    return (seed + 1_000_003 * resumed_at) % SEED_RANGE


# Each study.pruner, from the study section and the pruned stage's epochs (Optuna's steps:
# epochs reported from 1). Median: n_warmup_steps=2 spares the first epoch, whose validation
# accuracy says little yet. Successive halving and Hyperband: rungs at min_resource * 3**k
# epochs; reduction factor 3, not Optuna's 4, so a 9-epoch CPU distillation has rungs at 1 and 3
# (with 4, one rung at 1 only).
PRUNERS: dict[str, Callable[[StudySection, int], optuna.pruners.BasePruner]] = {
    "none": lambda s, epochs: optuna.pruners.NopPruner(),
    "median": lambda s, epochs: optuna.pruners.MedianPruner(n_startup_trials=3,
                                                            n_warmup_steps=2),
    "successive_halving": lambda s, epochs: optuna.pruners.SuccessiveHalvingPruner(
        min_resource=s.pruner_min_epochs, reduction_factor=3),
    "hyperband": lambda s, epochs: optuna.pruners.HyperbandPruner(
        min_resource=s.pruner_min_epochs, max_resource=max(epochs, s.pruner_min_epochs),
        reduction_factor=3),
}


def make_pruner(sf: StudyFile) -> optuna.pruners.BasePruner:
    """The study file's pruner. Optuna keeps no pruner in its storage: the launcher and every
    worker (where `trial.should_prune()` is asked) build it from the file; a worker that took
    load_study's default would prune by another rule."""
    if len(sf.study.objectives) > 1:
        return optuna.pruners.NopPruner()   # an explicit pruner was refused at load
    max_epochs = max(sf.pipeline.distill.epochs, sf.pipeline.fusing.epochs)
    return PRUNERS[sf.study.pruner](sf.study, max_epochs)


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
    check_study_dir(study_dir(results, sf.study.name))
    full = check(url)
    # sqlite would create an empty database file just to say the study is not in it
    db = _database(full)
    file = full.partition(":///")[2] if db == "sqlite" else full
    if (db is None or (db == "sqlite" and file)) and not Path(file).exists():
        raise StorageError(f"study '{sf.study.name}' has not been launched yet (no {file})")
    store = open_storage(url)
    try:
        return optuna.load_study(study_name=sf.study.name, storage=store), store
    except KeyError:
        raise StorageError(f"study '{sf.study.name}' not found in storage {masked(url)}") from None


@dataclass
class StoredStudy:
    """A study file's study, opened in its storage, with where its results go."""

    ld: LoadedStudy
    study: optuna.Study
    store: optuna.storages.BaseStorage
    url: str            # as written: a ${NAME} reference stays unexpanded (see masked)
    study_dir: Path     # results/<study>


def study_paths(ld: LoadedStudy, results: str | Path) -> tuple[str, Path]:
    """The storage URL and the results folder of a study file's study (checked: a file where
    one of its folders goes is refused, see check_study_dir)."""
    return storage_url(ld.sf, results), check_study_dir(study_dir(results, ld.sf.study.name))


def open_study(ld: LoadedStudy, results: str | Path) -> StoredStudy:
    """An already launched study; a study never launched is a user error naming the file."""
    url, sdir = study_paths(ld, results)
    with naming_file(ld.source):
        st, store = open_existing(ld.sf, results)
    return StoredStudy(ld, st, store, url, sdir)
