"""The evaluation engine: one interface over measured backends, exact and estimated metrics, a shared cache.

* **Backends** (``backends.py``): with CUDA, a GPU mirror of the model; on the CPU, eager PyTorch and
  ONNX Runtime with the weights fed as inputs. When there is a choice, each candidate is checked
  against eager on a probe of the evaluation set *with perturbed weights* (so a weight that a backend
  failed to take as an input is caught) and timed; the fastest that agrees is used. ``PET_EVAL_BACKEND``
  (``eager``, ``onnxruntime``, ``cuda``) forces one.
* **Exact** values are computed on every item and kept in a bounded cache keyed by the caller's key
  (the workbench uses its canonical post-training recipe); engines are shared by every workbench over
  the same model content and evaluation set (:func:`shared_engine`), so the second session that tries
  a configuration gets its number at once.
* **Estimates** (``estimate.py``) run on a fixed stratified subset and say so, with a 95% interval.
* A ``cancel`` event stops an exact evaluation between batches (a newer slider move wants the model).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pet_core.errors import PetError
from pet_core.evaluation.backends import CudaBackend, EagerBackend, OnnxRuntimeBackend, Run, perturbed
from pet_core.evaluation.estimate import Estimate, accuracy_estimate, nll_estimate, stratified_subset
from pet_core.metrics import LM_BATCH_SIZE, PERPLEXITY, metric_for

EVAL_BATCH = 256            # items per batch: big enough for fast kernels, small enough to stay in cache
SUBSET_SIZE = 1000          # items an estimate looks at, at most
MIN_SUBSET = 200            # and at least
ESTIMATE_BUDGET_S = 0.05    # a slow model's subset is smaller: an estimate should take about this long
PROBE_SIZE = 512            # items a backend is timed and checked on
ESTIMATE_FIRST_ABOVE_S = 0.08  # an exact number expected to take longer is shown as an estimate first (the app)
FAST_ENOUGH_S = 0.05        # eager evaluating the whole set this fast is kept without trying others
ORT_MAX_PARAMS = 20_000_000  # larger models stay eager (export and its checks would cost too much)
CACHED_VALUES = 4096        # exact values kept per engine
BACKENDS = ("eager", "onnxruntime", "cuda")
AGREE_RTOL = 1e-3           # a backend's logits must equal eager's within this (relative to their scale)


class Cancelled(Exception):
    """An exact evaluation was cancelled by a newer request."""


class EvalEngine:
    """Evaluates models of one architecture on one evaluation set (see the module docstring)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor | None, task: str, *, backend: str | None = None,
                 subset_size: int = SUBSET_SIZE) -> None:
        self.x, self.task, self.metric = x, task, metric_for(task)
        self.lm = self.metric is PERPLEXITY
        self.y = None if self.lm else y
        self.total = len(x)
        self.batch = LM_BATCH_SIZE if self.lm else EVAL_BATCH
        self.wanted = (backend or os.environ.get("PET_EVAL_BACKEND") or "auto").strip().lower()
        if self.wanted not in BACKENDS + ("auto",):
            raise PetError(f"unknown evaluation backend {self.wanted!r}; use auto or one of {', '.join(BACKENDS)}")
        self.subset_size = subset_size
        self._subset: np.ndarray | None = None
        self.choice: dict[str, Any] = {}
        self._backend = None
        self._lock = threading.Lock()
        self._values: OrderedDict[Any, float] = OrderedDict()
        self._baseline: tuple[float, np.ndarray] | None = None
        self.seconds_per_item: float | None = None

    # --- backends -------------------------------------------------------------------------------

    @property
    def backend_name(self) -> str | None:
        return None if self._backend is None else self._backend.name

    def backend(self, model: nn.Module):
        """The backend, chosen on first use with ``model`` (thread-safe)."""
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = self._choose(model)
        return self._backend

    def _candidates(self, model: nn.Module) -> list[tuple[str, Callable[[], Any]]]:
        names = [self.wanted] if self.wanted != "auto" else (
            ["cuda"] if torch.cuda.is_available() else
            ["eager"] + (["onnxruntime"] if not self.lm and _params(model) <= ORT_MAX_PARAMS else []))
        makers = {"eager": lambda: EagerBackend(self.x), "cuda": lambda: CudaBackend(self.x),
                  "onnxruntime": lambda: OnnxRuntimeBackend(model, self.x)}
        return [(n, makers[n]) for n in names]

    def _choose(self, model: nn.Module):
        candidates = self._candidates(model)
        if len(candidates) == 1 and candidates[0][0] == "eager":
            self.choice = {"backend": "eager", "why": "the only candidate"}
            return EagerBackend(self.x)
        probe = slice(0, min(self.total, PROBE_SIZE))
        if self.wanted == "auto" and not torch.cuda.is_available():
            eager = EagerBackend(self.x).bind(model)
            projected = min(_time(lambda: eager(probe)) for _ in range(2)) * self.total / probe.stop
            self._observe(projected)
            if projected <= FAST_ENOUGH_S:     # a small set: exporting and checking would cost more than it saves
                self.choice = {"backend": "eager", "why": f"eager takes {projected * 1e3:.0f} ms for the whole set"}
                return EagerBackend(self.x)
        twin = perturbed(model)
        reference = EagerBackend(self.x).bind(twin)(probe)
        timings, refused, built = {}, {}, {}
        for name, make in candidates:
            try:
                backend = make()
                got = backend.bind(twin)(probe)
            except Exception as exc:  # noqa: BLE001 - a backend that cannot run this model is skipped
                refused[name] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
                continue
            if not _agree(reference, got):
                refused[name] = "its logits differ from eager PyTorch on the probe"
                continue
            run = backend.bind(model)
            timings[name] = min(_time(lambda: run(probe)) for _ in range(2)) * 1e3
            built[name] = backend
        if not built:
            self.choice = {"backend": "eager", "refused": refused, "why": "no other backend agreed"}
            return EagerBackend(self.x)
        best = min(timings, key=timings.get)
        self.seconds_per_item = timings[best] / 1e3 / probe.stop     # warm: what the next runs will take
        self.choice = {"backend": best, "probe_ms": {k: round(v, 2) for k, v in timings.items()},
                       "probe_items": probe.stop, "refused": refused}
        return built[best]

    # --- evaluating -----------------------------------------------------------------------------

    def outcomes(self, model: nn.Module, index: np.ndarray | None = None,
                 cancel: threading.Event | None = None) -> np.ndarray:
        """Per item: 1.0/0.0 for a correct/wrong top-1 prediction, or a block's summed next-token NLL.

        Raises:
            Cancelled: when ``cancel`` is set before the last batch.
        """
        run: Run = self.backend(model).bind(model)
        count = self.total if index is None else len(index)
        parts = []
        for start in range(0, count, self.batch):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            at = slice(start, min(count, start + self.batch)) if index is None else index[start:start + self.batch]
            logits = run(at)
            parts.append(self._score(logits, at))
        return np.concatenate(parts) if parts else np.zeros(0)

    def _score(self, logits: torch.Tensor, at: Any) -> np.ndarray:
        if not self.lm:
            return (logits.argmax(1) == self.y[at]).numpy().astype(np.float64)
        tokens = self.x[at]                                                   # (b, L)
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1),
                              reduction="none").double()                     # (b * (L-1),)
        return nll.reshape(len(tokens), -1).sum(1).numpy()                    # (b,)

    def value_of(self, outcomes: np.ndarray) -> float:
        """The metric from every item's outcome."""
        if not self.lm:
            return float(outcomes.mean()) if len(outcomes) else 0.0
        return math.exp(float(outcomes.sum()) / (len(outcomes) * (self.x.shape[1] - 1)))

    def exact(self, model: nn.Module, *, key: Any = None, cancel: threading.Event | None = None) -> float:
        """The metric on every item; with ``key``, kept and reused for the same key (any session)."""
        if key is not None and (hit := self.cached(key)) is not None:
            return hit
        start = time.perf_counter()
        value = self.value_of(self.outcomes(model, cancel=cancel))
        self._observe(time.perf_counter() - start)
        if key is not None:
            self.remember(key, value)
        return value

    def cached(self, key: Any) -> float | None:
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
        return None

    def remember(self, key: Any, value: float) -> None:
        with self._lock:
            self._values[key] = value
            while len(self._values) > CACHED_VALUES:
                self._values.popitem(last=False)

    def baseline(self, model: nn.Module) -> tuple[float, np.ndarray]:
        """The baseline's exact value and its outcome on every item (computed once per engine)."""
        if self._baseline is None:
            start = time.perf_counter()
            out = self.outcomes(model)
            self._observe(time.perf_counter() - start)
            self._baseline = (self.value_of(out), out)
        return self._baseline

    def _observe(self, seconds: float) -> None:
        """Keep the fastest per-item time seen: what this machine can do warm and unloaded (a first,
        cold run or one slowed by other sessions must not make every later number an estimate)."""
        per_item = seconds / max(1, self.total)
        self.seconds_per_item = per_item if self.seconds_per_item is None else min(self.seconds_per_item, per_item)

    def predicted_exact_seconds(self) -> float | None:
        """How long an exact evaluation took last time (None before the first)."""
        return None if self.seconds_per_item is None else self.seconds_per_item * self.total

    @property
    def can_estimate(self) -> bool:
        """False for an evaluation set too small to subsample (it is evaluated exactly every time)."""
        return self.total >= 2 * MIN_SUBSET

    def subset(self) -> np.ndarray | None:
        """The fixed stratified subset (labels as strata), drawn once: as many items as an estimate can
        look at in about :data:`ESTIMATE_BUDGET_S` at the measured speed, within
        [:data:`MIN_SUBSET`, ``subset_size``]; None when the set is too small to subsample."""
        if self._subset is None and self.can_estimate:
            per_item = self.seconds_per_item or 0.0
            size = self.subset_size if per_item <= 0 else int(ESTIMATE_BUDGET_S / per_item)
            size = max(MIN_SUBSET, min(self.subset_size, size))
            if self.total >= 2 * size:
                labels = None if self.y is None else self.y.numpy()
                self._subset = stratified_subset(labels, size, self.total)
        return self._subset

    def estimate(self, model: nn.Module, baseline: nn.Module) -> Estimate:
        """The metric on the fixed stratified subset, as an estimate of the full-set value with its 95%
        interval (exact, on every item, when the set is too small to subsample)."""
        start = time.perf_counter()
        base_value, base_out = self.baseline(baseline)
        subset = self.subset()
        if subset is None:
            value = self.exact(model)
            return Estimate(value, value, value, self.total, self.total, True, time.perf_counter() - start)
        now = self.outcomes(model, subset)
        before = base_out[subset]
        if self.lm:
            per = self.x.shape[1] - 1
            value, low, high = nll_estimate(math.log(base_value), before / per, now / per, self.total)
        else:
            value, low, high = accuracy_estimate(base_value, before, now, self.total)
        return Estimate(value, low, high, len(subset), self.total, False, time.perf_counter() - start)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _agree(reference: torch.Tensor, got: torch.Tensor) -> bool:
    if reference.shape != got.shape:
        return False
    scale = float(reference.abs().max()) or 1.0
    return bool(torch.isfinite(got).all()) and float((reference - got).abs().max()) <= AGREE_RTOL * scale


def _time(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --- engines shared by all sessions -------------------------------------------------------------

_ENGINES: OrderedDict[Any, EvalEngine] = OrderedDict()
_ENGINES_LOCK = threading.Lock()
MAX_ENGINES = 32


def shared_engine(identity: Any, x: torch.Tensor, y: torch.Tensor | None, task: str) -> EvalEngine:
    """The engine of (model content, evaluation set, task) ``identity``, made on first use.

    ``identity`` must name the model's content and the evaluation set (e.g. their hashes); the
    engine's cached values are keyed under it, so two workbenches over equal models share them.
    """
    key = (identity, task)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _ENGINES[key] = EvalEngine(x, y, task)
            while len(_ENGINES) > MAX_ENGINES:
                _ENGINES.popitem(last=False)
        _ENGINES.move_to_end(key)
        return engine


__all__ = ["BACKENDS", "Cancelled", "ESTIMATE_FIRST_ABOVE_S", "EvalEngine", "SUBSET_SIZE", "shared_engine"]
