"""Inverse design: per-layer settings that hit a size (or a largest metric drop), measured, then refined.

1. **Options.** Every layer may take any combination of a sparsity from the sensitivity ladder (or
   none) and a bit width (or none; k-means clusters instead when the ladder has clusters). Each
   option's accounted bytes are *computed* (the layer compressed and sized, no guess); its drop is
   *predicted* from the sensitivity curves: the pruning drop plus the coding drop, each made
   monotone in the setting (a rung may not predict less harm than a milder one).
2. **Knapsack.** A Lagrangian relaxation picks, for a multiplier λ, each layer's option minimising
   ``drop + λ·bytes``; λ is bisected to the smallest that fits the byte budget, then a greedy pass
   spends what is left on the upgrades with the best drop saved per byte (for a largest-drop target,
   the same with the roles swapped: fewest bytes within the allowed predicted drop).
3. **Measure and refine.** The plan is applied and measured exactly. A hill climb then measures the
   neighbours the model predicts best (one layer changed, or one up and one down, still within the
   target) and keeps a neighbour when its *measured* result is better. Without a time budget it stops
   after :data:`PATIENCE` measured neighbours in a row without gain; with one it keeps searching until
   the budget ends (or the neighbourhood is exhausted) and returns the best measured recipe, not the
   first acceptable one. When nothing meets the target, the closest is returned and says so.

The size is the *accounted* size (``Workbench.sizes``), the same number Compress shows.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pet_core.errors import PetError
from pet_core.recipe import Recipe
from pet_core.sensitivity import drop_of

PATIENCE = 6                 # measured neighbours without gain before a search without a budget stops
MAX_BUDGET_S = 3600.0
MAX_RATIO = 10_000.0
BISECT_STEPS = 60
PAIR_LAYERS = 16            # pairs of moves are tried on models with at most this many layers


@dataclass(frozen=True)
class PlanTarget:
    """Exactly one of: a compression ratio (baseline bytes / accounted bytes), a size in bytes, a largest drop."""

    ratio: float | None = None
    size_bytes: int | None = None
    max_drop: float | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("ratio", "size_bytes", "max_drop") if getattr(self, k) is not None]
        if len(given) != 1:
            raise PetError("plan: give exactly one target: a ratio, a size in bytes or a largest metric drop"
                           + (f" (got {', '.join(given)})" if given else ""))
        value = getattr(self, given[0])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PetError(f"plan: {given[0]} = {value!r:.40} is not a number")
        if self.ratio is not None and not 1.0 < self.ratio <= MAX_RATIO:
            raise PetError(f"plan: ratio {self.ratio} must be above 1 and at most {MAX_RATIO:g}")
        if self.size_bytes is not None and self.size_bytes <= 0:
            raise PetError(f"plan: size {self.size_bytes} bytes must be positive")
        if self.max_drop is not None and self.max_drop < 0:
            raise PetError(f"plan: the largest drop {self.max_drop} must be zero or more")

    def byte_budget(self, base_bytes: int) -> int | None:
        if self.ratio is not None:
            return int(base_bytes / self.ratio)
        return None if self.size_bytes is None else int(self.size_bytes)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("ratio", "size_bytes", "max_drop") if getattr(self, k) is not None}


@dataclass(frozen=True)
class Option:
    """One layer setting: its recipe steps, accounted bytes and predicted drop."""

    sparsity: float
    bits: int | None
    clusters: int | None
    bytes: int
    drop: float

    def steps(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.sparsity > 0:
            out["prune"] = {"method": "magnitude", "scope": "layer", "sparsity": self.sparsity}
        if self.bits is not None:
            out["quantize"] = {"bits": self.bits}
        if self.clusters is not None:
            out["share"] = {"clusters": self.clusters}
        return out

    def label(self) -> str:
        parts = [f"{self.sparsity:.0%} sparse"] if self.sparsity > 0 else []
        parts += [f"{self.bits}-bit"] if self.bits is not None else []
        parts += [f"k={self.clusters}"] if self.clusters is not None else []
        return ", ".join(parts) or "unchanged"


@dataclass
class Measured:
    """A measured candidate: one option index per layer, its metric, drop and accounted bytes."""

    choice: tuple[int, ...]
    value: float
    drop: float
    size_bytes: int
    how: str
    predicted_drop: float


@dataclass
class Search:
    """What a planning run did, for the report."""

    measured: list[Measured] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)


def options(wb, result: dict[str, Any], *, progress: Callable[[dict], None] | None = None) -> dict[str, list[Option]]:
    """Every layer's options with computed bytes and predicted drop (see the module docstring)."""
    ladder = result["ladder"]
    sparsities = [0.0] + [float(s) for s in ladder["sparsities"]]
    codes: list[tuple[int | None, int | None]] = [(None, None)] + [(int(b), None) for b in ladder["bits"]]
    codes += [(None, int(k)) for k in ladder.get("clusters", [])]
    grid = list(itertools.product(sparsities, codes))
    rows = {r["name"]: r for r in result["layers"]}
    missing = [n for n in wb.names if n not in rows]
    if missing:
        raise PetError(f"plan: the sensitivity analysis has no layer {missing[0]} (was it made on another model?)")
    curves = {n: _curves(rows[n]) for n in wb.names}
    held = wb.recipe
    empty = Recipe(model=held.model if held else "model", dataset=held.dataset if held else "data")
    out: dict[str, list[Option]] = {n: [] for n in wb.names}
    for i, (sparsity, (bits, clusters)) in enumerate(grid):
        probe = Option(sparsity, bits, clusters, 0, 0.0)
        steps = probe.steps()
        wb.apply(empty.replace(layers={n: steps for n in wb.names}) if steps else empty)
        sizes = {r.name: r.size_bytes for r in wb.sizes() if r.name in wb.layers}
        for n in wb.names:
            c = curves[n]
            drop = c["prune"].get(sparsity, 0.0) + (c["quantize"].get(bits, 0.0) if bits is not None else 0.0) + (
                c["share"].get(clusters, 0.0) if clusters is not None else 0.0)
            out[n].append(Option(sparsity, bits, clusters, sizes[n], drop))
        if progress is not None:
            progress({"stage": "sizing options", "step": i + 1, "steps": len(grid)})
    if held is not None:
        wb.apply(held)
    return out


def _curves(row: dict[str, Any]) -> dict[str, dict]:
    """Per step, setting → predicted drop ≥ 0, monotone: a harsher rung predicts at least a milder one's drop."""
    out: dict[str, dict] = {"prune": {0.0: 0.0}, "quantize": {}, "share": {}}
    for step, harsher_first in (("prune", False), ("quantize", True), ("share", True)):
        pts = sorted(((p["setting"], max(0.0, p["drop"] or 0.0)) for p in row["points"] if p["step"] == step),
                     reverse=harsher_first)          # mildest first: sparsity up, bits (clusters) down
        worst = 0.0
        for setting, drop in pts:
            worst = max(worst, drop)
            out[step][setting] = worst
    return out


# --- the knapsack -------------------------------------------------------------------------------

def _pick(opts: dict[str, list[Option]], weight: float, by_drop: bool) -> tuple[int, ...]:
    """Each layer's option minimising drop + weight·bytes (by_drop) or bytes + weight·drop."""
    out = []
    for layer in opts.values():
        key = ((lambda o: (o.drop + weight * o.bytes, o.bytes)) if by_drop
               else (lambda o: (o.bytes + weight * o.drop, o.drop)))
        out.append(min(range(len(layer)), key=lambda i: key(layer[i])))
    return tuple(out)


def _totals(opts: dict[str, list[Option]], choice: tuple[int, ...]) -> tuple[int, float]:
    layers = list(opts.values())
    return (sum(layers[i][c].bytes for i, c in enumerate(choice)),
            sum(layers[i][c].drop for i, c in enumerate(choice)))


def knapsack_bytes(opts: dict[str, list[Option]], budget: int) -> tuple[int, ...] | None:
    """Least predicted drop within ``budget`` layer bytes (None: not even the smallest options fit)."""
    smallest = _pick(opts, 1e30, True)
    if _totals(opts, smallest)[0] > budget:
        return None
    lo, hi = -30.0, 30.0          # log10 λ: bisect to the smallest λ that fits
    for _ in range(BISECT_STEPS):
        mid = (lo + hi) / 2
        if _totals(opts, _pick(opts, 10 ** mid, True))[0] <= budget:
            hi = mid
        else:
            lo = mid
    choice = list(_pick(opts, 10 ** hi, True))
    layers = list(opts.values())
    while True:                  # greedy: spend what is left on the best drop saved per byte
        used = _totals(opts, tuple(choice))[0]
        best = None
        for i, layer in enumerate(layers):
            cur = layer[choice[i]]
            for j, o in enumerate(layer):
                extra = o.bytes - cur.bytes
                saved = cur.drop - o.drop
                if saved > 0 and used + extra <= budget:
                    rate = saved / max(extra, 1)
                    if best is None or rate > best[0]:
                        best = (rate, i, j)
        if best is None:
            return tuple(choice)
        choice[best[1]] = best[2]


def knapsack_drop(opts: dict[str, list[Option]], max_drop: float) -> tuple[int, ...]:
    """Fewest layer bytes whose predicted drop is at most ``max_drop``."""
    lo, hi = -30.0, 30.0          # log10 μ: bisect to the smallest μ whose choice is within the drop
    for _ in range(BISECT_STEPS):
        mid = (lo + hi) / 2
        if _totals(opts, _pick(opts, 10 ** mid, False))[1] <= max_drop:
            hi = mid
        else:
            lo = mid
    choice = list(_pick(opts, 10 ** hi, False))
    layers = list(opts.values())
    while True:                  # greedy: take the byte savings that cost the least predicted drop
        used = _totals(opts, tuple(choice))[1]
        best = None
        for i, layer in enumerate(layers):
            cur = layer[choice[i]]
            for j, o in enumerate(layer):
                saved = cur.bytes - o.bytes
                extra = o.drop - cur.drop
                if saved > 0 and used + max(extra, 0.0) <= max_drop + 1e-12:
                    rate = saved / max(extra, 1e-9)
                    if best is None or rate > best[0]:
                        best = (rate, i, j)
        if best is None:
            return tuple(choice)
        choice[best[1]] = best[2]


# --- measuring and refining ---------------------------------------------------------------------

class _Planner:
    """Measures candidates on the workbench and keeps the best (see the module docstring, step 3)."""

    def __init__(self, wb, opts: dict[str, list[Option]], target: PlanTarget, budget: int | None, fixed: int,
                 progress, cancel, deadline: float | None, max_evaluations: int | None) -> None:
        self.wb, self.opts, self.target, self.budget, self.fixed = wb, opts, target, budget, fixed
        self.names = list(opts)
        self.layers = list(opts.values())
        self.progress, self.cancel, self.deadline, self.max_evaluations = progress, cancel, deadline, max_evaluations
        self.base_value = wb.baseline_metric
        self.higher = wb.metric.higher_is_better
        held = wb.recipe
        self.model, self.dataset = (held.model, held.dataset) if held else ("model", "data")
        self.measured: dict[tuple[int, ...], Measured] = {}
        self.best: Measured | None = None
        self.stopped = ""

    def recipe(self, choice: tuple[int, ...]) -> Recipe:
        layers = {n: self.layers[i][c].steps() for i, (n, c) in enumerate(zip(self.names, choice))}
        return Recipe(model=self.model, dataset=self.dataset, default={},
                      layers={n: s for n, s in layers.items() if s})

    def out_of_time(self) -> bool:
        if self.cancel is not None and self.cancel.is_set():
            self.stopped = "cancelled"
        elif self.deadline is not None and time.perf_counter() >= self.deadline:
            self.stopped = "time budget spent"
        elif self.max_evaluations is not None and len(self.measured) >= self.max_evaluations:
            self.stopped = "evaluation limit"
        return bool(self.stopped)

    def measure(self, choice: tuple[int, ...], how: str) -> Measured:
        if choice in self.measured:
            return self.measured[choice]
        self.wb.apply(self.recipe(choice))
        value = self.wb.evaluate()
        size = sum(r.size_bytes for r in self.wb.sizes())
        m = Measured(choice, value, drop_of(value, self.base_value, self.higher), size, how,
                     _totals(self.opts, choice)[1])
        self.measured[choice] = m
        if self.best is None or self.key(m) < self.key(self.best):
            self.best = m
        if self.progress is not None:
            self.progress({"stage": "measuring plans", "step": len(self.measured), "how": how, "value": value,
                           "drop": m.drop, "size_bytes": size, "best_value": self.best.value,
                           "best_size_bytes": self.best.size_bytes})
        return m

    def key(self, m: Measured) -> tuple:
        """Smaller is better: within the target first, then least drop (size target) or fewest bytes."""
        if self.budget is not None:
            over = max(0, m.size_bytes - self.budget)
            return (over > 0, over, m.drop, m.size_bytes)
        excess = max(0.0, m.drop - self.target.max_drop)
        return (excess > 0, excess, m.size_bytes, m.drop)

    def neighbours(self, choice: tuple[int, ...], explore: bool) -> list[tuple[int, ...]]:
        """Unmeasured choices one or two layers away, predicted within the target, best predicted first."""
        cur_bytes, cur_drop = _totals(self.opts, choice)
        moves: list[tuple[tuple, tuple[int, ...]]] = []
        singles = [(i, j) for i, layer in enumerate(self.layers) for j in range(len(layer)) if j != choice[i]]

        def delta(i: int, j: int) -> tuple[int, float]:
            a, b = self.layers[i][choice[i]], self.layers[i][j]
            return b.bytes - a.bytes, b.drop - a.drop

        def consider(new: tuple[int, ...], db: int, dd: float) -> None:
            if new in self.measured:
                return
            if self.budget is not None:          # within the bytes; least predicted drop, then most bytes
                if self.fixed + cur_bytes + db <= self.budget and (explore or dd <= 0):
                    moves.append(((dd, -db), new))
            elif self.measured[choice].drop + dd <= self.target.max_drop and (explore or db <= 0):
                moves.append(((db, dd), new))    # within the drop; fewest bytes, then least drop

        for i, j in singles:
            new = list(choice)
            new[i] = j
            consider(tuple(new), *delta(i, j))
        if len(self.layers) <= PAIR_LAYERS:      # one layer gives, another takes
            for i, j in singles:
                db, dd = delta(i, j)
                if (db <= 0) if self.budget is not None else (db >= 0):
                    continue
                for k, l in singles:
                    if k == i:
                        continue
                    db2, dd2 = delta(k, l)
                    new = list(choice)
                    new[i], new[k] = j, l
                    consider(tuple(new), db + db2, dd + dd2)
        moves.sort(key=lambda m: m[0])
        return [new for _, new in moves]

    def fill(self) -> None:
        """Spend the bytes the ladder's rungs leave unused (size targets): each layer in turn, biggest
        first, gets the least sparsity between its rung and the next milder one that still fits,
        with a drop interpolated between the two; measured, kept when better."""
        if self.budget is None or self.best is None:
            return
        order = sorted(range(len(self.layers)), key=lambda i: -self.layers[i][self.best.choice[i]].bytes)
        for i in order:
            if self.out_of_time():
                return
            choice = self.best.choice
            cur = self.layers[i][choice[i]]
            milder = [o for o in self.layers[i] if (o.bits, o.clusters) == (cur.bits, cur.clusters)
                      and o.sparsity < cur.sparsity]
            slack = self.budget - self.fixed - _totals(self.opts, choice)[0]
            if not milder or slack <= 0:
                continue
            near = max(milder, key=lambda o: o.sparsity)
            lo, hi = near.sparsity, cur.sparsity         # the answer lies in (lo, hi]
            for _ in range(12):
                mid = (lo + hi) / 2
                if self.fixed + _totals(self.opts, choice)[0] - cur.bytes + self.layer_bytes(i, mid, cur) <= self.budget:
                    hi = mid
                else:
                    lo = mid
            if hi >= cur.sparsity - 1e-9:
                continue
            t = (hi - near.sparsity) / (cur.sparsity - near.sparsity)
            option = Option(round(hi, 6), cur.bits, cur.clusters, self.layer_bytes(i, hi, cur),
                            near.drop + t * (cur.drop - near.drop))
            self.layers[i].append(option)
            new = list(choice)
            new[i] = len(self.layers[i]) - 1
            self.measure(tuple(new), "filled")

    def layer_bytes(self, i: int, sparsity: float, like: Option) -> int:
        """Accounted bytes of layer ``i`` at ``sparsity`` with ``like``'s coding (the layer alone compressed)."""
        name = self.names[i]
        steps = Option(round(sparsity, 6), like.bits, like.clusters, 0, 0.0).steps()
        self.wb.apply(Recipe(model=self.model, dataset=self.dataset, layers={name: steps}))
        return next(r.size_bytes for r in self.wb.sizes() if r.name == name)

    def climb(self, patience: int | None) -> None:
        """Hill climb from the best measured choice (``patience`` None: until time runs out)."""
        stale = 0
        while self.best is not None and not self.out_of_time():
            start = self.best
            for new in self.neighbours(start.choice, explore=True):
                if self.out_of_time():
                    return
                self.measure(new, "refined")
                if self.best is not start:
                    stale = 0
                    break
                stale += 1
                if patience is not None and stale >= patience:
                    self.stopped = "no better neighbour"
                    return
            else:
                self.stopped = "neighbourhood exhausted"
                return


def plan(wb, result: dict[str, Any], target: PlanTarget, *, budget_s: float | None = None,
         max_evaluations: int | None = None, progress: Callable[[dict], None] | None = None,
         cancel: Any = None) -> dict[str, Any]:
    """Plan per-layer settings for ``target`` from a sensitivity ``result``, measure and refine them.

    ``budget_s``: keep searching until this many seconds have passed and return the best measured
    recipe; None: stop after :data:`PATIENCE` measured neighbours without gain. ``max_evaluations``
    bounds the measurements (deterministic runs). The working copy ends holding the returned recipe.
    """
    from pet_core.size import model_bytes

    if not wb.measures:
        raise PetError("plan needs an evaluation set: this model was loaded without a dataset (weights only)")
    if budget_s is not None and not (0 < budget_s <= MAX_BUDGET_S):
        raise PetError(f"plan: the time budget {budget_s!r:.20} s must be above 0 and at most {MAX_BUDGET_S:g} s")
    if max_evaluations is not None and not (1 <= max_evaluations <= 10_000):
        raise PetError(f"plan: max_evaluations {max_evaluations!r:.20} must be between 1 and 10000")
    started = time.perf_counter()
    deadline = None if budget_s is None else started + budget_s
    opts = options(wb, result, progress=progress)
    base_bytes = model_bytes(wb.baseline)
    held = wb.recipe
    wb.apply(Recipe(model=held.model if held else "model", dataset=held.dataset if held else "data"))
    fixed = sum(r.size_bytes for r in wb.sizes() if r.name not in wb.layers)
    budget = target.byte_budget(base_bytes)
    p = _Planner(wb, opts, target, budget, fixed, progress, cancel, deadline, max_evaluations)
    if budget is not None:
        choice = knapsack_bytes(opts, budget - fixed)
        if choice is None:                       # nothing fits: the smallest there is, said plainly
            choice = _pick(opts, 1e30, True)
        p.measure(choice, "knapsack")
    else:
        allowed = target.max_drop
        for _ in range(8):                       # measured over the allowance: plan for less, measure again
            m = p.measure(knapsack_drop(opts, allowed), "knapsack")
            if m.drop <= target.max_drop or p.out_of_time():
                break
            allowed = allowed * 0.5 if allowed > 0 else 0.0
    if not p.out_of_time():
        p.fill()
    if not p.out_of_time():
        p.climb(PATIENCE if budget_s is None else None)
        if budget_s is not None and not p.stopped.startswith(("time", "cancel", "evaluation")):
            p.stopped = p.stopped or "neighbourhood exhausted"
    best = p.best
    wb.apply(p.recipe(best.choice))
    return _report(wb, p, best, target, budget, base_bytes, time.perf_counter() - started)


def _report(wb, p: _Planner, best: Measured, target: PlanTarget, budget: int | None, base_bytes: int,
            seconds: float) -> dict[str, Any]:
    metric = wb.metric
    met = p.key(best)[0] is False
    layers = [{"name": n, "setting": p.layers[i][c].label(), "sparsity": p.layers[i][c].sparsity,
               "bits": p.layers[i][c].bits, "clusters": p.layers[i][c].clusters, "bytes": p.layers[i][c].bytes,
               "predicted_drop": p.layers[i][c].drop}
              for i, (n, c) in enumerate(zip(p.names, best.choice))]
    history = [{"how": m.how, metric.name: m.value, "drop": m.drop, "size_bytes": m.size_bytes,
                "predicted_drop": m.predicted_drop} for m in p.measured.values()]
    return {
        "target": {**target.to_dict(), "byte_budget": budget},
        "met": met,
        "recipe": p.recipe(best.choice).to_dict(),
        "metric": metric.to_dict(),
        "baseline": {metric.name: p.base_value, "size_bytes": base_bytes},
        "measured": {metric.name: best.value, "drop": best.drop, "size_bytes": best.size_bytes,
                     "compression_ratio": base_bytes / best.size_bytes, "found_by": best.how},
        "predicted": {"drop": best.predicted_drop, "size_bytes": best.size_bytes},
        "layers": layers,
        "search": {"evaluations": len(p.measured), "seconds": seconds, "stopped": p.stopped or "done",
                   "history": history[:200]},
        "note": ("sizes are accounted (the encoding's bytes); the metric is measured exactly; "
                 + ("the target is met" if met else "nothing measured met the target: this is the closest")),
    }


def uniform(wb, target: PlanTarget, bits: list[int | None], *, steps: int = 24, scope: str = "layer") -> dict[str, Any]:
    """The reference: one setting for every layer (magnitude sparsity s, the same bits), the least
    sparsity that fits the byte budget, for each bit width; the best measured one is returned.
    ``scope="layer"``: every layer pruned to s (uniform allocation); ``"global"``: one threshold for all
    (global magnitude pruning, which allocates sparsity by weight magnitude)."""
    from pet_core.size import model_bytes

    base_bytes = model_bytes(wb.baseline)
    budget = target.byte_budget(base_bytes)
    if budget is None:
        raise PetError("uniform allocation needs a size target (a ratio or bytes)")
    held = wb.recipe
    empty = Recipe(model=held.model if held else "model", dataset=held.dataset if held else "data")

    def recipe(s: float, b: int | None) -> Recipe:
        default: dict[str, Any] = {}
        if s > 0:
            default["prune"] = {"method": "magnitude", "scope": scope, "sparsity": s}
        if b is not None:
            default["quantize"] = {"bits": b}
        return empty.replace(default=default)

    def size(s: float, b: int | None) -> int:
        wb.apply(recipe(s, b))
        return sum(r.size_bytes for r in wb.sizes())

    tried = []
    for b in bits:
        if size(0.0, b) <= budget:
            s = 0.0
        elif size(0.999, b) > budget:
            continue
        else:
            lo, hi = 0.0, 0.999
            for _ in range(steps):
                mid = (lo + hi) / 2
                lo, hi = (lo, mid) if size(mid, b) <= budget else (mid, hi)
            s = hi
        wb.apply(recipe(s, b))
        value = wb.evaluate()
        tried.append({"sparsity": s, "bits": b, "value": value, "size_bytes": size(s, b),
                      "drop": drop_of(value, wb.baseline_metric, wb.metric.higher_is_better)})
    if held is not None:
        wb.apply(held)
    if not tried:
        raise PetError(f"uniform allocation: no bit width fits {budget:,} bytes")
    best = min(tried, key=lambda t: t["drop"])
    return {**best, "tried": tried, "byte_budget": budget}
