"""Plain supervised training and evaluation loops shared by the zoo and the compression methods."""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pet_core.accuracy import top1_accuracy


def pick_device() -> torch.device:
    """CUDA if available, else Apple MPS if available, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _autocast(device: torch.device):
    """Mixed precision on CUDA (bf16 where supported, else fp16); a no-op elsewhere."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Fraction of ``x`` (N,...) classified as ``y`` (N,), evaluated in eval mode on the model's device."""
    model.eval()
    return top1_accuracy(model, x, y, batch_size=batch_size)


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    progress: Callable[[dict], None] | None = None,
    device: torch.device | str | None = None,
    weight_decay: float = 0.0,
    cosine: bool = False,
    num_threads: int | None = 1,
) -> list[dict]:
    """Train with Adam + cross-entropy on seeded shuffles; returns [{epoch, loss}] per epoch.

    ``cosine=True`` decays the learning rate to 0 over all steps (per step, not per epoch).
    ``num_threads`` caps CPU intra-op threads while training (None keeps torch's setting):
    these models are too small to gain from more, and on a busy CPU torch's thread barriers
    stall, measured ~8x slower with 2 threads than with 1. The model ends in eval mode on the CPU.
    """
    device = torch.device(device) if device is not None else pick_device()
    old_threads = torch.get_num_threads()
    if device.type == "cpu" and num_threads:
        torch.set_num_threads(num_threads)
    history = []
    try:
        model.to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        gen = torch.Generator().manual_seed(seed)
        n = len(y)
        steps = max(1, math.ceil(n / batch_size))
        total = max(1, epochs * steps)
        sched = None
        if cosine:
            decay = lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))  # noqa: E731
            sched = torch.optim.lr_scheduler.LambdaLR(opt, decay)
        # fp16 needs loss scaling against underflow; bf16 and fp32 do not
        use_scaler = device.type == "cuda" and not torch.cuda.is_bf16_supported()
        scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        for epoch in range(1, epochs + 1):
            order = torch.randperm(n, generator=gen)  # (N,) seeded so runs are reproducible
            loss_sum, seen = 0.0, 0
            for step in range(1, steps + 1):
                idx = order[(step - 1) * batch_size : step * batch_size]
                xb, yb = x[idx].to(device), y[idx].to(device)  # (b, C, H, W), (b,)
                with _autocast(device):
                    loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                if sched is not None:
                    sched.step()
                loss_sum += float(loss.detach()) * len(idx)
                seen += len(idx)
                if progress is not None and (step % 20 == 0 or step == steps):
                    progress(dict(epoch=epoch, epochs=epochs, step=step, steps=steps, loss=loss_sum / seen))
            history.append({"epoch": epoch, "loss": loss_sum / max(seen, 1)})
    finally:
        torch.set_num_threads(old_threads)
        model.eval().to("cpu")
    return history
