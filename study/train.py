"""Plain training loops: optimiser and schedule builders, one epoch, fit with checkpoint/resume.

Schedules step once per epoch, as the reference code's do. `fit` keeps the checkpoint chosen on
validation (or the last one) and writes an epoch checkpoint atomically after every epoch, so a
preempted job resumes from the last finished epoch with the same data order (TrainStream epochs are
pure functions of the seed and the epoch number).
"""

from __future__ import annotations

import copy
import hashlib
import io
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from study import atomic, faults
from study.augment import Batch


def make_optimizer(params: Iterable[nn.Parameter], name: str, lr: float, momentum: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "radam":   # coupled L2 (decoupled_weight_decay=False), as the reference runs it
        return torch.optim.RAdam(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer '{name}'; allowed: ['sgd', 'radam', 'adam', 'adamw']")


def make_scheduler(optimizer: torch.optim.Optimizer, name: str, epochs: int,
                   milestones: Sequence[int], gamma: float, t_max: int | None
                   ) -> torch.optim.lr_scheduler.LRScheduler:
    if name == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones), gamma)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, t_max or epochs)
    if name == "constant":
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    raise ValueError(f"unknown schedule '{name}'; allowed: ['multistep', 'cosine', 'constant']")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits for a whole normalised tensor, in inference batches."""
    model.eval()
    return torch.cat([model(x[i:i + batch_size])[0].float() for i in range(0, len(x), batch_size)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000, *,
             per_batch: int | None = None) -> float:
    """The share of `x` classified right; with `per_batch`, the mean of the accuracies of its
    consecutive batches of that many images, each batch weighing the same, the last and smaller
    one too: how the reference code averages its validation (10,000 images in batches of 128:
    78 full batches and one of 16, which then counts 1/79 instead of 16/10,000).
    `batch_size` is the inference batch only; it changes no number."""
    right = (predict(model, x, batch_size).argmax(1) == y).float()
    if per_batch is None:
        return right.mean().item()
    return torch.stack([b.mean() for b in right.split(per_batch)]).mean().item()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer,
               loss_fn: Callable[[nn.Module, Batch], torch.Tensor], batch: Batch,
               autocast: torch.dtype | None = None) -> torch.Tensor:
    """One optimiser step; returns the loss, detached and left on the device (no sync).
    `autocast`: a reduced dtype (torch.bfloat16) for the forward pass on CUDA, else None."""
    if autocast is None:
        loss = loss_fn(model, batch)
    else:
        with torch.autocast(batch.labels.device.type, dtype=autocast):
            loss = loss_fn(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


class FitProgress(Protocol):
    """What `fit` tells a progress display (study/progress.py) while it trains; all optional
    to `fit`. `step` runs after every optimiser step, so it must stay cheap (a counter and a
    clock read): `loss_sum` is the epoch's loss sum so far, still on the device, read (a sync)
    only when a line is shown."""

    def begin(self, epochs: int, start: int) -> None: ...

    def step(self, epoch: int, steps: int, images: int, loss_sum: torch.Tensor) -> None: ...

    def end_epoch(self, record: Mapping[str, float]) -> None: ...


@dataclass
class FitResult:
    state: dict[str, torch.Tensor]        # the selected weights
    best_val: float | None
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0                 # epochs already done when this call started
    kept_epoch: int | None = None         # whose weights `state` holds (1-based)


# An epoch checkpoint is this header line, then torch.save's bytes: a file altered or cut on
# disk fails the check and the stage restarts from epoch 0 instead of resuming from garbage.
CHECKPOINT_MAGIC = b"study-epoch-checkpoint sha256="


def _save_checkpoint(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    header = CHECKPOINT_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"
    atomic.write_bytes(path, header + payload, fault_point="epoch_write")


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at `path` if its checksum holds; otherwise None, the file moved aside
    (kept for a post-mortem) so the stage starts over."""
    data = path.read_bytes()
    header, _, payload = data.partition(b"\n")
    if header.startswith(CHECKPOINT_MAGIC) and (
            header[len(CHECKPOINT_MAGIC):].decode(errors="replace")
            == hashlib.sha256(payload).hexdigest()):
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    atomic.move_aside(path)
    return None


def fit(model: nn.Module, *, epochs: int, optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler, batches: Callable[[int], Iterable[Batch]],
        loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
        validate: Callable[[nn.Module, int], float] | None, select: str,
        checkpoint: Path | None = None,
        on_epoch: Callable[[int, float | None], None] | None = None,
        forward: nn.Module | None = None, autocast: torch.dtype | None = None,
        progress: FitProgress | None = None, ties: str = "earlier") -> FitResult:
    """Train for `epochs`; `on_epoch(epoch, val)` may raise (e.g. optuna.TrialPruned) to stop.
    `forward`, when given, is what the loss calls (a torch.compile of `model`, sharing its
    parameters); checkpoints and the result hold `model`'s own state dict. `autocast`: the
    reduced precision of the forward passes (torch.bfloat16) or None for fp32. `progress`
    sees every step and every epoch's record (a live bar, log lines, a heartbeat).
    `validate(model, epoch)` scores the weights after `epoch` (1-based); a validation that
    redraws its images per epoch must draw them from the epoch alone, so that a resumed stage
    scores its epochs on the images an uninterrupted one would have.

    Each history record: epoch, loss (mean over the epoch's steps), val (when validated), lr
    (the rate the epoch trained with), images, images_per_s (training images over the time
    to the end of the epoch's last step), wall_s (the epoch's steps and validation). Records
    resumed from a checkpoint of an older release lack the last four."""
    step_model = model if forward is None else forward
    start, best_val, best_state, history = 0, None, None, []
    best_epoch: int | None = None
    ck = load_checkpoint(checkpoint) if checkpoint is not None and checkpoint.exists() else None
    if ck is not None:
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        start, best_val, best_state, history = (ck["epoch"], ck["best_val"], ck["best_state"],
                                                ck["history"])
        # a checkpoint of release 0.3 has no best_epoch: the first epoch of its best val
        best_epoch = ck.get("best_epoch", next((r["epoch"] for r in history
                                                if r.get("val") == best_val), None))
    resumed_from = start
    if progress is not None:
        progress.begin(epochs, start)
    for epoch in range(start, epochs):
        model.train()
        t0 = time.perf_counter()
        lr = float(optimizer.param_groups[0]["lr"])   # before scheduler.step() moves it
        # summed on the device: a .item() per step would wait for the GPU 350 times an epoch
        total, steps, images = torch.zeros(()), 0, 0
        for batch in batches(epoch):
            # a 0-dim CPU tensor adds to one on any device
            total = train_step(step_model, optimizer, loss_fn, batch, autocast) + total
            steps += 1
            images += batch.labels.shape[0]   # a shape, no sync
            if progress is not None:
                progress.step(epoch, steps, images, total)
        loss = float(total) / max(steps, 1)   # the epoch's one sync: the steps are done here
        train_s = time.perf_counter() - t0
        scheduler.step()
        val = validate(model, epoch + 1) if validate is not None else None
        record = {"epoch": epoch + 1, "loss": loss, **({"val": val} if val is not None else {}),
                  "lr": lr, "images": images,
                  "images_per_s": images / train_s if train_s > 0 else float("nan")}
        # ties go to the earlier epoch, or to the later one as the reference code keeps them
        better = (val is not None and (best_val is None or val > best_val
                                       or (ties == "later" and val == best_val)))
        if select == "best_val" and better:
            best_val, best_state = val, copy.deepcopy(model.state_dict())
            best_epoch = epoch + 1
        # taken before the checkpoint write, which stores this record: the write itself
        # (0.1-1 s a ResNet56 checkpoint with its optimiser state) is left out
        record["wall_s"] = time.perf_counter() - t0
        history.append(record)
        if checkpoint is not None:
            _save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "epoch": epoch + 1,
                          "best_val": best_val, "best_state": best_state, "history": history,
                          "best_epoch": best_epoch},
                         checkpoint)
        faults.pace_epoch(t0)   # the SLURM time-limit test only
        if progress is not None:
            progress.end_epoch(record)
        if on_epoch is not None:
            on_epoch(epoch + 1, val)
    if select == "last" or best_state is None:
        best_state = copy.deepcopy(model.state_dict())
        best_val = history[-1].get("val") if history else None
        best_epoch = epochs
    return FitResult({k: v.detach().cpu() for k, v in best_state.items()}, best_val, history,
                     resumed_from, best_epoch)
