"""The optimisation loop shared by fine-tuning and the lottery rounds: steps, schedule, progress, stop.

Batches are a pure function of (seed, step): epoch ``e`` shuffles with its own seeded generator, so a
run resumed at step k, even in the middle of an epoch, sees exactly the batches an uninterrupted run
would have. The ``checkpoint`` callback is called on stop, on error and, when the trainer is given
``checkpoint_every_steps`` or ``checkpoint_every_s``, periodically after a step (never at the last
step: the caller decides what a finished run keeps).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from pet_core.data import Dataset
from pet_core.finetune.config import Finetune
from pet_core.finetune.schedule import learning_rate
from pet_core.training import accuracy

VAL_FRACTION = 0.1
REPORT_EVERY = 10       # steps between progress reports
EPOCH_SEED = 7919       # a prime: epoch e shuffles with seed + EPOCH_SEED·(e + 1)
# Intra-op threads while training on the CPU, as in pet_core.training.train_classifier: these models
# are too small to gain from more, and on a busy CPU OpenMP's spin-waits stall. Measured on 2 busy
# cores: 6 epochs of lenet_300_100 took 205 s of CPU (7 min wall) with 2 threads, ~21 s with 1.
CPU_THREADS = 1


@dataclass
class Split:
    """Training tensors and a fixed, seeded 10% of the training set held out for validation."""

    x_train: Tensor     # (N, C, H, W)
    y_train: Tensor     # (N,)
    x_val: Tensor       # (V, C, H, W)
    y_val: Tensor       # (V,)


def epochs_for_steps(n_train: int, batch_size: int, steps: int) -> float:
    """The epochs (rounded up to 0.1) that make at least ``steps`` optimiser steps on a training set of
    ``n_train`` examples, of which :func:`split` holds out ``VAL_FRACTION``.

    >>> epochs_for_steps(1347, 128, 500)      # digits' training set
    50.0
    >>> epochs_for_steps(60000, 128, 500)     # MNIST's
    1.2
    """
    n_val = int(n_train * VAL_FRACTION) if n_train >= 10 else 0
    per_epoch = max(1, math.ceil((n_train - n_val) / batch_size))
    return math.ceil(10 * steps / per_epoch) / 10


def split(dataset: Dataset, seed: int, device: torch.device) -> Split:
    """Hold out ``VAL_FRACTION`` of the training set; on CUDA the tensors move there once."""
    n = len(dataset.y_train)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))   # (N,)
    n_val = int(n * VAL_FRACTION) if n >= 10 else 0
    val, train = order[:n_val], order[n_val:]
    where = device if device.type == "cuda" else torch.device("cpu")   # CPU/MPS: move per batch
    return Split(dataset.x_train[train].to(where), dataset.y_train[train].to(where),
                 dataset.x_train[val], dataset.y_train[val])


def steps_for(cfg: Finetune, n_train: int) -> int:
    """Optimiser steps of one run: ``steps``, else ``ceil(epochs · N / batch_size)``."""
    return cfg.steps if cfg.steps is not None else max(1, math.ceil(cfg.epochs * n_train / cfg.batch_size))


def make_optimizer(cfg: Finetune, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """adam / adamw / sgd (momentum 0.9) over the trainable parameters; lr is set every step."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@contextlib.contextmanager
def cpu_threads(device: torch.device):
    """``CPU_THREADS`` intra-op threads on the CPU for the duration; the caller's setting after."""
    old = torch.get_num_threads()
    if device.type == "cpu" and CPU_THREADS:
        torch.set_num_threads(CPU_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; none on MPS and CPU (fp32 there)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class RunState:
    """Everything about a run that a checkpoint must carry besides the model and the optimiser."""

    step: int = 0                   # steps done
    history: list[dict] = field(default_factory=list)
    val_accuracy: float | None = None
    seconds: float = 0.0
    stopped: bool = False


LossFn = Callable[[Tensor, Tensor, Tensor, nn.Module], Tensor]   # (logits, xb, yb, model) -> loss


class Trainer:
    """Runs ``total`` optimiser steps on a model; reports progress and honours a stop event."""

    def __init__(self, cfg: Finetune, data: Split, device: torch.device, loss_fn: LossFn, *,
                 progress: Callable[[dict], None] | None = None, stop: threading.Event | None = None,
                 on_step: Callable[[int], None] | None = None, freeze_norm: bool = False,
                 checkpoint_every_steps: int | None = None, checkpoint_every_s: float | None = None) -> None:
        self.cfg, self.data, self.device, self.loss_fn = cfg, data, device, loss_fn
        self.progress, self.stop, self.on_step, self.freeze_norm = progress, stop, on_step, freeze_norm
        self.checkpoint_every_steps, self.checkpoint_every_s = checkpoint_every_steps, checkpoint_every_s
        self.n_train = len(data.y_train)
        self.per_epoch = max(1, math.ceil(self.n_train / cfg.batch_size))
        self.eval_every = max(1, self.per_epoch // 4)
        self._order: tuple[int, Tensor] | None = None

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        """The batch of ``step`` (a pure function of seed and step), on the device."""
        epoch, i = divmod(step, self.per_epoch)
        if self._order is None or self._order[0] != epoch:
            gen = torch.Generator().manual_seed(self.cfg.seed + EPOCH_SEED * (epoch + 1))
            self._order = (epoch, torch.randperm(self.n_train, generator=gen))
        idx = self._order[1][i * self.cfg.batch_size:(i + 1) * self.cfg.batch_size]
        idx = idx.to(self.data.x_train.device)
        return self.data.x_train[idx].to(self.device), self.data.y_train[idx].to(self.device)

    def train_mode(self, model: nn.Module) -> None:
        model.train()
        if self.freeze_norm:   # frozen models (LoRA) keep their BatchNorm statistics
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def validate(self, model: nn.Module) -> float:
        acc = accuracy(model, self.data.x_val, self.data.y_val)
        self.train_mode(model)
        return acc

    def run(self, model: nn.Module, total: int, *, phase: str = "train", state: RunState | None = None,
            opt_state: dict | None = None,
            checkpoint: Callable[[nn.Module, torch.optim.Optimizer, RunState], None] | None = None,
            ) -> tuple[RunState, torch.optim.Optimizer]:
        """Train from ``state.step`` to ``total``; ``checkpoint`` is called on stop, on error and when due."""
        with cpu_threads(self.device):
            return self._run(model, total, phase=phase, state=state, opt_state=opt_state, checkpoint=checkpoint)

    def _run(self, model: nn.Module, total: int, *, phase: str, state: RunState | None, opt_state: dict | None,
             checkpoint: Callable[[nn.Module, torch.optim.Optimizer, RunState], None] | None,
             ) -> tuple[RunState, torch.optim.Optimizer]:
        state = state or RunState()
        model.to(self.device)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = make_optimizer(self.cfg, params)
        if opt_state is not None:
            opt.load_state_dict(opt_state)
        self.train_mode(model)
        window = dict(loss=0.0, correct=0, seen=0, start=time.perf_counter())
        started = last_written = time.perf_counter()
        seconds_before = state.seconds

        def clock() -> None:     # state.seconds: this run's time so far plus the time before a resume
            state.seconds = seconds_before + time.perf_counter() - started

        try:
            for step in range(state.step, total):
                if self.stop is not None and self.stop.is_set():
                    state.stopped = True
                    break
                if self.on_step is not None:
                    self.on_step(step)
                lr = learning_rate(step, total, self.cfg.lr, self.cfg.schedule)
                for group in opt.param_groups:
                    group["lr"] = lr
                xb, yb = self.batch(step)                                # (b, C, H, W), (b,)
                with autocast(self.device):
                    logits = model(xb)                                   # (b, classes)
                    loss = self.loss_fn(logits, xb, yb, model)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                state.step = step + 1
                window["loss"] += float(loss.detach()) * len(yb)
                window["correct"] += int((logits.detach().argmax(1) == yb).sum())
                window["seen"] += len(yb)
                if state.step % self.eval_every == 0 or state.step == total:
                    state.val_accuracy = self.validate(model)
                if state.step % REPORT_EVERY == 0 or state.step == total:
                    self._report(state, total, lr, phase, window)
                if checkpoint is not None and state.step < total and self.checkpoint_due(state.step, last_written):
                    clock()
                    checkpoint(model, opt, state)
                    last_written = time.perf_counter()
        except BaseException:
            clock()
            if checkpoint is not None:
                checkpoint(model, opt, state)
            raise
        clock()
        if state.stopped:
            if window["seen"]:
                self._report(state, total, opt.param_groups[0]["lr"] if params else 0.0, phase, window)
            if checkpoint is not None:
                checkpoint(model, opt, state)
        model.eval()
        return state, opt

    def checkpoint_due(self, step: int, last_written: float) -> bool:
        """Whether a periodic checkpoint is due after ``step`` (steps on a fixed grid, so a resumed run
        keeps it; seconds since ``last_written``, a ``time.perf_counter()`` value)."""
        every_steps, every_s = self.checkpoint_every_steps, self.checkpoint_every_s
        return ((every_steps is not None and step % every_steps == 0)
                or (every_s is not None and time.perf_counter() - last_written >= every_s))

    def _report(self, state: RunState, total: int, lr: float, phase: str, window: dict) -> None:
        """Append a progress row to the history (and pass it on); then reset the window."""
        now = time.perf_counter()
        seen = max(1, window["seen"])
        row = dict(step=state.step, steps=total, epoch=state.step / self.per_epoch, loss=window["loss"] / seen,
                   train_accuracy=window["correct"] / seen, val_accuracy=state.val_accuracy, lr=lr,
                   samples_per_s=window["seen"] / max(now - window["start"], 1e-9), phase=phase,
                   device=str(self.device))
        state.history.append(row)
        window.update(loss=0.0, correct=0, seen=0, start=now)
        if self.progress is not None:
            self.progress(row)
