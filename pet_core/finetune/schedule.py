"""Step schedules for fine-tuning: gradual sparsity (Zhu & Gupta 2017) and the learning rate."""

from __future__ import annotations

import math

from pet_core.errors import PetError


def _updates(start_step: int, end_step: int, frequency: int) -> int:
    """n: the number of mask-update intervals between t0 and the final sparsity (at least 1)."""
    if frequency < 1:
        raise PetError(f"gradual pruning: frequency = {frequency} must be >= 1 step")
    if end_step < start_step:
        raise PetError(f"gradual pruning: end step {end_step} is before start step {start_step}")
    return max(1, (end_step - start_step) // frequency)


def gradual_sparsity(step: int, final: float, initial: float, start_step: int, end_step: int,
                     frequency: int) -> float:
    """Target sparsity at ``step``: ``s_f + (s_i - s_f)·(1 - (t' - t0)/(nΔt))³``.

    Masks change only at update steps t0 + kΔt (k = 0..n, n = (end - start) // Δt, at least 1),
    so t' is the last update step <= ``step``. Before t0 nothing is pruned (0.0); from t0 + nΔt on
    it is exactly ``final``. The cubic prunes fast while many redundant weights remain and slowly
    near the end, when each removed weight costs more.

    >>> gradual_sparsity(100, final=0.8, initial=0.0, start_step=0, end_step=100, frequency=10)
    0.8
    """
    if not 0.0 <= initial <= final <= 1.0:
        raise PetError(f"gradual pruning: need 0 <= initial ({initial}) <= final ({final}) <= 1")
    n = _updates(start_step, end_step, frequency)
    if step < start_step:
        return 0.0
    span = n * frequency
    if step >= start_step + span:
        return float(final)
    last_update = start_step + (step - start_step) // frequency * frequency  # t'
    progress = (last_update - start_step) / span
    return float(final + (initial - final) * (1.0 - progress) ** 3)


def mask_update_due(step: int, start_step: int, end_step: int, frequency: int) -> bool:
    """True exactly at the update steps t0 + kΔt, k = 0..n (see ``gradual_sparsity``).

    >>> [s for s in range(40) if mask_update_due(s, start_step=10, end_step=30, frequency=10)]
    [10, 20, 30]
    """
    n = _updates(start_step, end_step, frequency)
    offset = step - start_step
    return 0 <= offset <= n * frequency and offset % frequency == 0


def learning_rate(step: int, total_steps: int, peak: float, schedule: str) -> float:
    """The learning rate at ``step``: ``constant`` is ``peak``; ``cosine`` decays from peak to 0.

    Cosine is ``0.5·peak·(1 + cos(π·step/total))`` with step clamped to [0, total].

    >>> learning_rate(50, 100, 1e-3, "cosine")
    0.0005
    """
    if schedule == "constant":
        return float(peak)
    if schedule != "cosine":
        raise PetError(f"learning-rate schedule '{schedule}' is unknown (allowed: cosine, constant)")
    if total_steps <= 0:
        return float(peak)  # nothing to decay over
    fraction = min(max(step, 0), total_steps) / total_steps
    return float(0.5 * peak * (1.0 + math.cos(math.pi * fraction)))
