"""Content-keyed stage cache: checkpoints, degraded evaluation banks and evaluation results.

An entry lives at <root>/<stage>/<key>/ where key hashes exactly the config slice the stage reads,
its parents' keys and CODE_VERSION. Entries are written into <root>/.tmp and renamed into place, so
a crash never leaves a half entry and two writers never corrupt one (the loser of the rename race
discards its copy). Every file's sha256 is recorded in meta.json and checked on load: a truncated or
altered entry is moved aside and rebuilt, never loaded. A per-entry flock makes a second worker wait
for the first one's result instead of training the same stage twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from study import atomic
from study.errors import StudyError

# Bump when a stage's semantics change, so old entries stop matching instead of being reused.
CODE_VERSION = "2"
META = "meta.json"
# The file each kind of entry holds (its meta.json lists the sha256 of each).
STATE, JSON, ARRAY = "state.pt", "data.json", "array.npy"


def content_key(stage: str, config_slice: Any, parents: Sequence[str] = ()) -> str:
    blob = json.dumps({"stage": stage, "config": config_slice, "parents": list(parents),
                       "code": CODE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class StageCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.hits: list[str] = []      # "<stage>/<key>" found, for provenance and the output
        self.misses: list[str] = []
        self.corrupt: list[str] = []

    def entry(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def _mkdir(self, path: Path) -> None:
        """A folder of the cache, created; a cache root that is a file, or where no folder can
        be made (/proc/x), is the user's to fix: one paragraph naming it, not a traceback in
        every trial."""
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            full = atomic.disk_full(e, path)
            if full is not e:
                raise full from None
            raise StudyError(
                f"stage cache {self.root}: cannot create {path} ({e.strerror or e}); the cache "
                "(--cache, default <results>/cache) must be a directory this process can "
                "create and write") from None

    @contextlib.contextmanager
    def lock(self, stage: str, key: str) -> Iterator[None]:
        """Hold while checking and building one entry: a racing worker blocks here and then
        finds the finished entry."""
        lock_dir = self.root / ".locks"
        self._mkdir(lock_dir)
        with open(lock_dir / f"{stage}-{key}.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _verified(self, stage: str, key: str, *names: str) -> dict[str, bytes] | None:
        """The entry's files `names`, each read once and checked against the sha256 its
        meta.json records: what is loaded is exactly what was hashed, so a file altered after
        the check is never used. A meta.json that records no sha256 for one of them (`null`,
        `{"sha256": {}}`) makes the entry as corrupt as a mismatch: once loaded as a hit, it
        failed every later run the same way."""
        path = self.entry(stage, key)
        meta_path = path / META
        if not meta_path.exists():
            return None
        files: dict[str, bytes] = {}
        try:
            meta = json.loads(meta_path.read_text())
            digests = meta.get("sha256") if isinstance(meta, dict) else None
            if not isinstance(digests, dict):
                raise ValueError("meta.json records no sha256 per file")
            for name in names:
                files[name] = (path / name).read_bytes()
                if hashlib.sha256(files[name]).hexdigest() != digests.get(name):
                    raise ValueError(f"{name}: checksum mismatch or none recorded")
            ok = True
        except (OSError, ValueError):   # UnicodeDecodeError and JSONDecodeError too
            ok = False
        if not ok:
            atomic.move_aside(path)   # not deleted: the evidence stays for a post-mortem
            self.corrupt.append(f"{stage}/{key}")
            return None
        return files

    def _write(self, stage: str, key: str, files: Mapping[str, bytes], meta: Mapping[str, Any]
               ) -> Path:
        """The entry's files and its meta.json (their sha256s) as one folder, atomically."""
        self._mkdir(self.root / ".tmp")
        digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
        full_meta = {**meta, "stage": stage, "key": key, "sha256": digests,
                     "created": time.time()}
        # meta.json last: a folder with it is complete (the rename makes that atomic anyway)
        contents = {**files, META: json.dumps(full_meta, indent=1, default=str).encode()}
        return atomic.write_folder(self.entry(stage, key), contents,
                                   temp_root=self.root / ".tmp", fault_point="cache_write")

    def _note(self, stage: str, key: str, hit: bool) -> None:
        (self.hits if hit else self.misses).append(f"{stage}/{key}")

    # ------------------------------------------------------------ typed entries
    def load_state(self, stage: str, key: str) -> dict[str, Any] | None:
        files = self._verified(stage, key, STATE)
        self._note(stage, key, files is not None)
        if files is None:
            return None
        import torch  # the weights' format; see save_state

        return torch.load(io.BytesIO(files[STATE]), map_location="cpu", weights_only=True)

    def save_state(self, stage: str, key: str, state: Mapping[str, Any],
                   meta: Mapping[str, Any]) -> None:
        buf = io.BytesIO()
        # torch only here and in load_state: `study status` lists the cache (summary) on a
        # login node that never loads a network, and torch's import costs ~1.3 s
        import torch

        torch.save(dict(state), buf)
        self._write(stage, key, {STATE: buf.getvalue()}, meta)

    def load_json(self, stage: str, key: str) -> Any | None:
        files = self._verified(stage, key, JSON)
        self._note(stage, key, files is not None)
        return None if files is None else json.loads(files[JSON])

    def save_json(self, stage: str, key: str, data: Any, meta: Mapping[str, Any]) -> None:
        self._write(stage, key, {JSON: json.dumps(data).encode()}, meta)

    def load_array(self, stage: str, key: str) -> np.ndarray | None:
        files = self._verified(stage, key, ARRAY)
        if files is None:
            return None
        return np.load(io.BytesIO(files[ARRAY]))

    def save_array(self, stage: str, key: str, array: np.ndarray, meta: Mapping[str, Any]
                   ) -> None:
        buf = io.BytesIO()
        np.save(buf, array)
        self._write(stage, key, {ARRAY: buf.getvalue()}, meta)

    def meta(self, stage: str, key: str) -> dict[str, Any]:
        return json.loads((self.entry(stage, key) / META).read_text())

    def summary(self) -> dict[str, int]:
        """Entries per stage on disk (for `study status`)."""
        if not self.root.is_dir():
            return {}
        return {d.name: sum(1 for e in d.iterdir() if (e / META).exists())
                for d in sorted(self.root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
