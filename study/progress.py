"""Progress of long work, for a person watching: a live bar per stage on a terminal, plain lines
in a log file (a SLURM job's output, the local executor's trial-N.log), a heartbeat file per
running trial that `study status` reads, and the helpers that format what they show.

The paper setting's base trains 200 epochs (about an hour on a GPU), a pipeline several hours, a
study a day: what runs must say where it is, how fast it goes and when it ends, without slowing
down what it watches. `train.fit` calls a stage's `StageProgress` after every step (a counter and
a clock read); it publishes a `Snapshot` at most every TICK_S seconds and at every epoch's end,
and only then reads the loss sum off the device (one sync every half second, against the ~350
steps of a paper epoch that stay asynchronous).

Verbosity: STUDY_LOG_LEVEL (`--log-level`, `--quiet` = warning) is inherited by workers, so one
flag on `study launch` reaches every trial's log:
- debug: a line at every epoch's end and every evaluated level;
- info (default): a bar on a terminal; in a log, a line at an epoch's end (at most one every
  STUDY_PROGRESS_S / 10 seconds, always the first and the last epoch of a stage) and within a
  long epoch one every STUDY_PROGRESS_S seconds (default 30: 120 lines for an hour's stage);
- warning: no progress and no per-stage lines; results and the launcher's own lines stay.
The heartbeat does not depend on the level.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tqdm import tqdm

from study import atomic
from study.errors import StudyError

if TYPE_CHECKING:   # annotations only: `study --help` reads this module's settings
    import numpy as np
    import torch

__all__ = ["ENV_HEARTBEAT_S", "ENV_LEVEL", "ENV_LINE_S", "HEARTBEAT_FIELDS",
           "HEARTBEAT_MAX_BYTES", "LEVELS", "UNREADABLE", "Display", "Heartbeat", "LineDisplay",
           "BarDisplay", "Progress", "Snapshot", "StageProgress", "check_environment",
           "describe_heartbeat", "fmt_duration", "heartbeat_interval", "heartbeat_path",
           "line_interval", "log_level", "read_heartbeat", "set_log_level", "stale_threshold"]

LEVELS = ("debug", "info", "warning")
ENV_LEVEL = "STUDY_LOG_LEVEL"
ENV_LINE_S = "STUDY_PROGRESS_S"      # seconds between log lines within a long epoch
ENV_HEARTBEAT_S = "STUDY_HEARTBEAT_S"
LINE_S = 30.0
# A heartbeat every 5 s: a study of 8 parallel trials writes 1.6 small files a second; a trial
# is called stale after 3 missed beats (15 s), well above a busy node's scheduling hiccups.
HEARTBEAT_S = 5.0
STALE_BEATS = 3
# Snapshots within an epoch: twice a second is smooth for a bar and costs one device sync each.
TICK_S = 0.5

CopyFn = Callable[[str, int], "np.ndarray"]


# ---------------------------------------------------------------- settings
def log_level() -> str:
    level = os.environ.get(ENV_LEVEL, "info").strip().lower() or "info"
    if level == "quiet":
        level = "warning"
    if level not in LEVELS:
        raise StudyError(f"{ENV_LEVEL}={level!r}: allowed: {list(LEVELS)} (or quiet)")
    return level


def set_log_level(level: str) -> None:
    """For this process and the workers it starts (they inherit the environment)."""
    os.environ[ENV_LEVEL] = level
    log_level()


def _seconds(env: str, default: float) -> float:
    raw = os.environ.get(env)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise StudyError(f"{env}={raw!r}: a number of seconds > 0") from None
    if not value > 0 or math.isinf(value):
        raise StudyError(f"{env}={raw!r}: a number of seconds > 0")
    return value


def line_interval() -> float:
    return _seconds(ENV_LINE_S, LINE_S)


def heartbeat_interval() -> float:
    return _seconds(ENV_HEARTBEAT_S, HEARTBEAT_S)


def check_environment() -> None:
    """Every setting above, checked where a command that starts workers begins: workers
    inherit the environment and read STUDY_HEARTBEAT_S only as they start, so a bad value
    there failed each trial, which was retried as an infrastructure fault, again and again."""
    log_level()
    line_interval()
    heartbeat_interval()


def fmt_duration(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "?"
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


# ---------------------------------------------------------------- what is shown
@dataclass
class Snapshot:
    """Where one stage (or evaluation) is. Train: units are steps; eval: degraded levels."""

    stage: str                  # "base", "expert_jpeg", or "eval test"
    phase: str                  # "train" or "eval"
    epoch: int                  # the epoch running or just finished, 1-based (eval: 0)
    epochs: int
    epochs_done: int
    done: int                   # units done of the stage, resumed ones included
    total: int
    elapsed_s: float            # since the stage started in this process
    eta_s: float | None
    images_per_s: float | None = None
    loss: float | None = None   # the epoch's mean loss so far
    val: float | None = None    # the last validation accuracy (0-1)
    detail: str = ""            # eval: the level being built, e.g. "awgn 30"
    prefix: str = ""            # e.g. "trial 3 seed 1": the log of a packed job names it

    def line(self, kind: str) -> str:
        """One log line (`kind`: tick, epoch, end)."""
        head = f"[{time.strftime('%H:%M:%S')}] {self.prefix + ' ' if self.prefix else ''}"
        if self.phase == "eval":
            what = (f"{self.stage:<17} level {self.done}/{self.total}"
                    + (f" ({self.detail})" if self.detail else ""))
        else:
            pct = f" {100 * self.done / self.total:3.0f}%" if kind == "tick" and self.total else ""
            what = f"{self.stage:<17} epoch {self.epoch}/{self.epochs}{pct}"
            if self.loss is not None:
                what += f"  loss {self.loss:.4f}"
            if self.val is not None:
                what += f"  val {self.val:.3f}"
            if self.images_per_s is not None:
                what += f"  {self.images_per_s:,.0f} img/s"
        return (f"{head}{what}  elapsed {fmt_duration(self.elapsed_s)}"
                f"  ETA {fmt_duration(self.eta_s)}")


class Display:
    """Shows nothing (--quiet); the base of the two that show something."""

    def open(self, snap: Snapshot) -> None: ...

    def update(self, snap: Snapshot, kind: str) -> None: ...   # kind: tick or epoch

    def close(self, snap: Snapshot, ok: bool) -> None: ...


class LineDisplay(Display):
    """Plain lines for a log file, at a rate a person can read (see the module docstring)."""

    def __init__(self, emit: Callable[[str], None], every_s: float, every_epoch: bool = False):
        self.emit, self.every_s, self.every_epoch = emit, every_s, every_epoch
        self._last = -math.inf
        self._first_epoch: dict[str, int] = {}

    def _say(self, snap: Snapshot, kind: str) -> None:
        self._last = time.monotonic()
        self.emit(snap.line(kind))

    def open(self, snap: Snapshot) -> None:
        self._first_epoch[snap.stage] = snap.epoch
        self._last = time.monotonic()   # the stage starts now: its first line comes later

    def update(self, snap: Snapshot, kind: str) -> None:
        since = time.monotonic() - self._last
        if kind == "tick":
            if since >= self.every_s or (self.every_epoch and snap.phase == "eval"):
                self._say(snap, kind)
            return
        edge = snap.epoch in (self._first_epoch.get(snap.stage), snap.epochs)
        if self.every_epoch or edge or since >= self.every_s / 10:
            self._say(snap, kind)

    def close(self, snap: Snapshot, ok: bool) -> None:
        # a finished stage is summed up by the pipeline's own line ("built ... in 12.3s")
        if not ok:
            self.emit(f"[{time.strftime('%H:%M:%S')}] "
                      f"{snap.prefix + ' ' if snap.prefix else ''}{snap.stage:<17} stopped at "
                      f"{'level' if snap.phase == 'eval' else 'epoch'} "
                      f"{snap.done if snap.phase == 'eval' else snap.epochs_done}/"
                      f"{snap.total if snap.phase == 'eval' else snap.epochs} after "
                      f"{fmt_duration(snap.elapsed_s)}")


class BarDisplay(Display):
    """One tqdm bar per stage on a terminal; it stays on screen when the stage ends."""

    def __init__(self, file: TextIO):
        self.file = file
        self._bar: tqdm | None = None

    def open(self, snap: Snapshot) -> None:
        unit = "level" if snap.phase == "eval" else "step"
        self._bar = tqdm(total=snap.total, initial=snap.done, unit=unit, file=self.file,
                         desc=f"{snap.prefix + ' ' if snap.prefix else ''}{snap.stage:<17}",
                         leave=True, dynamic_ncols=True, mininterval=TICK_S)

    def update(self, snap: Snapshot, kind: str) -> None:
        if self._bar is None:
            return
        parts = ([snap.detail] if snap.phase == "eval" else
                 [f"ep {snap.epoch}/{snap.epochs}"]
                 + ([f"loss {snap.loss:.3f}"] if snap.loss is not None else [])
                 + ([f"val {snap.val:.3f}"] if snap.val is not None else [])
                 + ([f"{snap.images_per_s:,.0f} img/s"] if snap.images_per_s else []))
        self._bar.set_postfix_str("  ".join(parts), refresh=False)
        self._bar.update(snap.done - self._bar.n)

    def close(self, snap: Snapshot, ok: bool) -> None:
        if self._bar is not None:
            self.update(snap, "end")
            self._bar.close()
            self._bar = None


Listener = Callable[[Snapshot], None]


# ---------------------------------------------------------------- the hub
class StageProgress:
    """One stage's training, as `train.fit` reports it (train.FitProgress)."""

    def __init__(self, hub: Progress, name: str, steps_per_epoch: int):
        self.hub, self.name, self.spe = hub, name, max(int(steps_per_epoch), 1)
        self.epochs, self.start, self.epoch = 0, 0, 0
        self.steps, self.images = 0, 0
        self.loss_sum: torch.Tensor | None = None
        self.loss: float | None = None
        self.val: float | None = None
        self.ips: float | None = None
        self.t0 = self.epoch_t0 = self._next = time.monotonic()
        self.records: list[dict[str, float]] = []
        self.begun = False

    def snapshot(self, end_of_epoch: bool = False) -> Snapshot:
        now = time.monotonic()
        if end_of_epoch:
            done = (self.epoch + 1) * self.spe
        else:
            done = self.epoch * self.spe + min(self.steps, self.spe)
        ran = done - self.start * self.spe
        total = self.epochs * self.spe
        elapsed = now - self.t0
        eta = elapsed / ran * (total - done) if ran > 0 else None
        if not end_of_epoch and self.loss_sum is not None and self.steps:
            self.loss = float(self.loss_sum) / self.steps   # the one device sync of a tick
            # a rate over less than a tick is noise (one step's images over microseconds)
            if now - self.epoch_t0 >= TICK_S / 2:
                self.ips = self.images / (now - self.epoch_t0)
        return Snapshot(self.name, "train", self.epoch + 1, self.epochs,
                        self.epoch + (1 if end_of_epoch else 0), done, total, elapsed, eta,
                        self.ips, self.loss, self.val, prefix=self.hub.prefix)

    # train.FitProgress
    def begin(self, epochs: int, start: int) -> None:
        self.epochs, self.start, self.epoch = epochs, start, start
        self.t0 = self.epoch_t0 = time.monotonic()
        self.begun = True
        self.hub.publish(self.snapshot(), "open")

    def step(self, epoch: int, steps: int, images: int, loss_sum: torch.Tensor) -> None:
        if epoch != self.epoch:   # fit started elsewhere than begin() said: time it from here
            self.epoch, self.epoch_t0 = epoch, time.monotonic()
        self.steps, self.images, self.loss_sum = steps, images, loss_sum
        now = time.monotonic()
        if now >= self._next:
            self._next = now + TICK_S
            self.hub.publish(self.snapshot(), "tick")

    def end_epoch(self, record: Mapping[str, float]) -> None:
        self.epoch = int(record["epoch"]) - 1
        self.loss, self.val = record.get("loss"), record.get("val", self.val)
        self.ips = record.get("images_per_s", self.ips)
        self.loss_sum, self.steps = None, 0
        self.records.append(dict(record))
        self.hub.publish(self.snapshot(end_of_epoch=True), "epoch")
        self.epoch += 1
        self.epoch_t0 = self._next = time.monotonic()


class Progress:
    """Routes every stage's snapshots to a display and to listeners (a trial's heartbeat,
    its Optuna attributes); keeps each stage's epoch records, so a stage stopped midway (a
    pruned trial) still has its learning curve up to where it stopped."""

    def __init__(self, display: Display | None = None, listeners: Sequence[Listener] = (),
                 prefix: str = ""):
        self.display = display or Display()
        self.listeners = list(listeners)
        self.prefix = prefix
        self.records: dict[str, list[dict[str, float]]] = {}
        self.last: Snapshot | None = None

    @classmethod
    def from_env(cls, emit: Callable[[str], None] = print, listeners: Sequence[Listener] = (),
                 prefix: str = "", stream: TextIO | None = None) -> Progress:
        """The display the settings and the output ask for: a bar where stderr is a terminal,
        lines (through `emit`, flushed at once: a log file is block-buffered) elsewhere."""
        level = log_level()
        stream = stream or sys.stderr
        display: Display
        if level == "warning":
            display = Display()
        elif stream.isatty():
            display = BarDisplay(stream)
        else:
            def flushed(line: str) -> None:
                emit(line)
                sys.stdout.flush()
            display = LineDisplay(flushed, line_interval(), every_epoch=level == "debug")
        return cls(display, listeners, prefix)

    def publish(self, snap: Snapshot, kind: str) -> None:
        self.last = snap
        if kind == "open":
            self.display.open(snap)
        else:
            self.display.update(snap, kind)
        for listen in self.listeners:
            listen(snap)

    @contextlib.contextmanager
    def stage(self, name: str, steps_per_epoch: int) -> Iterator[StageProgress]:
        """`with progress.stage(name, steps) as p: train.fit(..., progress=p)`."""
        sp = StageProgress(self, name, steps_per_epoch)
        self.records[name] = sp.records
        ok = False
        try:
            yield sp
            ok = True
        finally:
            if sp.begun:
                snap = sp.snapshot(end_of_epoch=False)
                snap.epoch, snap.epochs_done = min(sp.epoch + 1, sp.epochs), sp.epoch
                if ok:
                    snap.done = snap.total
                self.display.close(snap, ok)

    @contextlib.contextmanager
    def evaluation(self, split: str, levels: int) -> Iterator[Callable[[CopyFn], CopyFn]]:
        """Wraps the copy function evaluation.evaluate calls once per degraded (degradation,
        level): each call means the levels before it are done (the plan starts with the clean
        images, which need no copy)."""
        t0, name = time.monotonic(), f"eval {split}"
        done, detail = 0, ""

        def snap() -> Snapshot:
            elapsed = time.monotonic() - t0
            eta = elapsed / done * (levels - done) if done else None
            return Snapshot(name, "eval", 0, 0, 0, done, levels, elapsed, eta, detail=detail,
                            prefix=self.prefix)

        def wrap(copy: CopyFn) -> CopyFn:
            def watched(degradation: str, level: int) -> np.ndarray:
                nonlocal done, detail
                done, detail = done + 1, f"{degradation} {level}"
                self.publish(snap(), "tick")
                return copy(degradation, level)
            return watched

        self.publish(snap(), "open")
        ok = False
        try:
            yield wrap
            ok = True
        finally:
            if ok:
                done, detail = levels, "done"
            self.display.close(snap(), ok)


# ---------------------------------------------------------------- heartbeat
def heartbeat_path(study_dir: str | Path, trial: int) -> Path:
    """Next to the trial's job file (launcher.job_path): results/<study>/jobs/."""
    return Path(study_dir) / "jobs" / f"trial-{trial:06d}.heartbeat.json"


class Heartbeat:
    """A small JSON file a running trial rewrites every `interval_s` seconds from a thread, so
    it beats through long steps without events (a JPEG bank build, torch.compile): `updated_at`
    says the process lives, `progress_at` when its snapshot last moved. Atomic (a reader never
    sees half a file); a failed write (a full disk) is skipped, never the trial's end."""

    def __init__(self, path: str | Path, fields: Mapping[str, Any],
                 interval_s: float | None = None):
        self.path = Path(path)
        self.interval_s = interval_s or heartbeat_interval()
        self.fields = {"host": platform.node(), "pid": os.getpid(), **fields}
        self.progress: dict[str, str] = {}      # stage -> "epochs done/epochs"
        self._snap: Snapshot | None = None
        self._progress_at = time.time()
        self._phase = "starting"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started_at = time.time()

    def __call__(self, snap: Snapshot) -> None:   # a Progress listener: no I/O here
        with self._lock:
            self._snap, self._progress_at, self._phase = snap, time.time(), snap.phase
            if snap.phase == "train":
                self.progress[snap.stage] = f"{snap.epochs_done}/{snap.epochs}"

    def doc(self, state: str = "running") -> dict[str, Any]:
        with self._lock:
            snap = asdict(self._snap) if self._snap is not None else {}
            out = {**self.fields, "state": state, "phase": self._phase,
                   "stage": snap.get("stage"), "epoch": snap.get("epoch"),
                   "epochs": snap.get("epochs"), "epochs_done": snap.get("epochs_done"),
                   "done": snap.get("done"), "total": snap.get("total"),
                   "images_per_s": snap.get("images_per_s"), "eta_s": snap.get("eta_s"),
                   "loss": snap.get("loss"), "val": snap.get("val"),
                   "detail": snap.get("detail"), "progress": dict(self.progress),
                   "started_at": self.started_at, "progress_at": self._progress_at,
                   "interval_s": self.interval_s, "updated_at": time.time()}
        return out

    def write(self, state: str = "running") -> None:
        doc = self.doc(state)
        with contextlib.suppress(OSError):
            atomic.write_text(self.path, json.dumps(doc, default=_json_default))

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.write()

    def start(self) -> Heartbeat:
        self.write()
        self._thread = threading.Thread(target=self._beat, name="study-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self, state: str) -> None:
        """The last beat names the trial's final state (a reader then knows it ended)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.write(state)


def _json_default(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return str(v)


# A heartbeat is one small JSON object: 720 bytes with every stage of the paper's tables in its
# `progress` (measured), under 2 KB with long names. Reading stops at 64 KiB, 30x that: a bigger
# file is no heartbeat (one of 1.5 GB, read whole, took 3.8 GB of memory in `study status`).
HEARTBEAT_MAX_BYTES = 64 * 1024
UNREADABLE = "unreadable"   # read_heartbeat's note of what it could not use


def _number(v: Any) -> bool:
    """A JSON number to compute with: no bool, finite as a float (1e999 reads as inf)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:   # an integer of 400 digits
        return False


def _positive(v: Any) -> bool:
    return _number(v) and v > 0


def _text(v: Any) -> bool:
    return isinstance(v, str)


def _stage_epochs(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(x, str) for kv in v.items() for x in kv)


# Each field of a heartbeat (Heartbeat.doc and the worker's fields) and what its value must be;
# null passes everywhere (not known yet). `study status` does arithmetic on the numbers.
HEARTBEAT_FIELDS: dict[str, Callable[[Any], bool]] = {
    **dict.fromkeys(("host", "study", "gpu", "state", "phase", "stage", "detail"), _text),
    **dict.fromkeys(("pid", "trial", "attempt", "epoch", "epochs", "epochs_done", "done",
                     "total", "images_per_s", "eta_s", "loss", "val", "started_at",
                     "progress_at", "updated_at"), _number),
    "interval_s": _positive,
    "progress": _stage_epochs,
}


def read_heartbeat(path: str | Path) -> dict[str, Any] | None:
    """A trial's heartbeat; None while there is none. What cannot be used is left out and
    said under UNREADABLE: the whole file when it is too big or no JSON object, else each
    field of the wrong type (`"updated_at": "x"`), so that the rest still shows."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEARTBEAT_MAX_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        return {UNREADABLE: f"cannot read it ({e.strerror or e})"}
    if len(raw) > HEARTBEAT_MAX_BYTES:
        return {UNREADABLE: f"over {HEARTBEAT_MAX_BYTES // 1024} KiB, which no heartbeat is"}
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):   # RecursionError: [[[[... nested past the stack
        return {UNREADABLE: "not JSON"}
    if not isinstance(doc, dict):
        return {UNREADABLE: "not a JSON object"}
    bad = [k for k, v in doc.items()
           if k in HEARTBEAT_FIELDS and v is not None and not HEARTBEAT_FIELDS[k](v)]
    out = {k: v for k, v in doc.items() if k in HEARTBEAT_FIELDS and k not in bad}
    if bad:
        out[UNREADABLE] = f"fields of the wrong type: {', '.join(bad)}"
    return out


def stale_threshold(hb: Mapping[str, Any], stale_after: float | None = None
                    ) -> tuple[float, str]:
    """(seconds, why): --stale-after when given, else STALE_BEATS missed beats."""
    if stale_after is not None:
        return stale_after, f"--stale-after {stale_after:g}s"
    interval = float(hb.get("interval_s") or HEARTBEAT_S)
    return STALE_BEATS * interval, f"{STALE_BEATS} x its {interval:g}s interval"


def describe_heartbeat(hb: Mapping[str, Any] | None, now: float | None = None,
                       stale_after: float | None = None,
                       trial_eta_s: float | None = None) -> tuple[str, bool]:
    """One `study status` row's text for a running trial's heartbeat, and whether it is stale."""
    if hb is None:
        return ("no heartbeat yet: its worker has not started (a queued job, or a process "
                "still importing, ~5 s)"), False
    if set(hb) == {UNREADABLE}:
        return f"heartbeat unreadable ({hb[UNREADABLE]}); the trial's log says more", False
    now = time.time() if now is None else now
    # without its time a beat says nothing of the worker: not called stale on no evidence
    age = now - float(hb["updated_at"]) if hb.get("updated_at") is not None else None
    limit, why = stale_threshold(hb, stale_after)
    stale = age is not None and age > limit
    stage = hb.get("stage") or hb.get("phase") or "starting"
    if hb.get("phase") == "eval":
        where = f"{stage} level {hb.get('done')}/{hb.get('total')}"
    elif hb.get("epochs"):
        where = f"{stage} epoch {hb.get('epoch')}/{hb.get('epochs')}"
        if hb.get("total"):
            where += f" ({100 * float(hb.get('done') or 0) / float(hb['total']):.0f}%)"
    else:
        where = str(stage)
    parts = [where]
    if hb.get("val") is not None:
        parts.append(f"val {float(hb['val']):.3f}")
    if hb.get("images_per_s"):
        parts.append(f"{float(hb['images_per_s']):,.0f} img/s")
    if hb.get("eta_s") is not None:
        parts.append(f"stage ETA {fmt_duration(float(hb['eta_s']))}")
    if trial_eta_s is not None:
        parts.append(f"trial ETA ~{fmt_duration(trial_eta_s)}")
    parts.append(f"{hb.get('host', '?')} pid {hb.get('pid')}")
    parts.append(f"beat {fmt_duration(age)} ago" if age is not None else "beat time unknown")
    if hb.get(UNREADABLE):
        parts.append(f"heartbeat partly unreadable ({hb[UNREADABLE]})")
    text = ", ".join(parts)
    if stale:
        text += (f"  STALE: no heartbeat for {fmt_duration(age)} (> {fmt_duration(limit)} = "
                 f"{why}); its worker may be dead")
    return text, stale
