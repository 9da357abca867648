"""Per-layer views, computed once and kept in the session: the Compress table's rows (with each weight's
relative reconstruction error), one layer's baseline statistics and the histogram of its compressed weights
(the Weights page and the picture beside the Compress sliders).

A Streamlit rerun happens on every click anywhere; these caches make an unrelated rerun cost nothing.
Each is keyed by what its numbers depend on (the session's source, the layer, the recipe) and bounded.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import numpy as np
import torch

from pet_core import analysis
from pet_core.analysis import LayerStats, layer_stats
from pet_core.workbench import Workbench

MAX_CACHED = 16      # (layer, recipe) statistics kept per session


def relative_error(before: torch.Tensor, after: torch.Tensor) -> float:
    """‖before − after‖ / ‖before‖ (Frobenius); 0 for an all-zero ``before`` left unchanged.

    >>> relative_error(torch.tensor([3., 4.]), torch.tensor([3., 0.]))
    0.8
    """
    with torch.no_grad():
        norm = float(torch.linalg.vector_norm(before.float()))
        diff = float(torch.linalg.vector_norm(before.float() - after.float()))
    return diff / norm if norm else (0.0 if diff == 0 else float("inf"))


def relative_errors(wb: Workbench) -> dict[str, float]:
    """Each compressible weight's relative reconstruction error in the working copy (0 where unchanged)."""
    return {name: 0.0 if wb.result(name) is None else relative_error(wb.baseline_weight(name), t.weight)
            for name, t in wb.layers.items()}


def layer_rows(report: dict[str, Any], errors: dict[str, float]) -> list[dict[str, Any]]:
    """The report's per-layer rows for a table: "tied: lm_head" for a tied tensor, the relative error added."""
    rows = []
    for row in report["layers"]:
        row = {k: v for k, v in row.items() if k != "tensors"}
        row["tied"] = f"tied: {row['tied']}" if row.get("tied") else ""
        row["relative_error"] = errors.get(row["name"])
        rows.append(row)
    return rows


def cached(store: OrderedDict, key: tuple, compute: Callable[[], Any], limit: int = MAX_CACHED) -> Any:
    """``store[key]``, computed by ``compute()`` on a miss; least recently used entries beyond ``limit`` go."""
    if key in store:
        store.move_to_end(key)
        return store[key]
    store[key] = value = compute()
    while len(store) > limit:
        store.popitem(last=False)
    return value


def largest_layer(wb: Workbench) -> str:
    """The compressible layer with the most weights (the first of equals)."""
    return max(wb.names, key=lambda n: wb.layers[n].weight.numel())


def baseline_stats(store: OrderedDict, source: Any, wb: Workbench, name: str) -> LayerStats:
    """Layer ``name``'s baseline statistics, computed once per (source, layer) and kept in ``store``."""
    layer_type = wb.layers[name].type
    return cached(store, ("before", source, name), lambda: layer_stats(name, layer_type, wb.baseline_weight(name)))


def overlay_counts(before: LayerStats, weight: torch.Tensor) -> list[int]:
    """The non-zero values of ``weight`` counted in ``before``'s histogram bins.

    The same values as ``before``'s histogram are read (the same strided sample when it was sampled),
    so the two bar series compare one to one; no full-size copy is made of a sampled weight.

    >>> w = torch.tensor([-1., 0., 0.5, 1.])
    >>> overlay_counts(layer_stats("w", "Linear", w, bins=2), w)
    [1, 2]
    """
    w = weight.detach().float()
    if before.hist_sampled:
        values = analysis.strided_sample(w, -(-w.numel() // analysis.HIST_MAX_SAMPLES))
    else:
        values = analysis.memory_order(w).numpy()
    edges = before.hist_edges
    kept = values.compress(values != 0)      # 3x faster than values[values != 0]
    counts, _ = np.histogram(kept, bins=len(before.hist_counts), range=(edges[0], edges[-1]))
    return counts.tolist()
