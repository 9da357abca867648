"""The workbench: a baseline that is never mutated, and a working copy a recipe is applied to.

Applying a recipe resolves it to one ``LayerSpec`` per layer and recomputes only the layers whose
spec (or, in global scope, whose global threshold) changed, writing into the working copy in
place. Global thresholds come from scores indexed once. Evaluation reuses tensors kept in memory.
This is what makes a slider move cost milliseconds rather than a deepcopy.
"""

from __future__ import annotations

import copy
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from pet_core.encoding import StoredTensor
from pet_core.pipeline import LayerResult, compress_layer, prune_scores
from pet_core.layers import Target, module_type, own_tensors, skipped_layers, storage_key, targets
from pet_core.methods.base import FactorMethod, PruneMethod
from pet_core.methods.magnitude import SortedScores
from pet_core.recipe import Recipe
from pet_core.packed.tensor_blob import huffman_tensor_bytes
from pet_core.size import LayerSize, layer_size, model_bytes, plain_size
from pet_core.steps import LayerSpec, resolve

PARALLEL_SIZES_WEIGHTS = 4_000_000  # rewriting or sizing this many weights is worth a few threads
ALONE_WEIGHTS = 8_000_000           # a layer this big is rewritten on its own (its transients are big)
HUFFMAN_EAGER_WEIGHTS = 20_000_000   # above this, report() leaves the Huffman size to export or a request

MEASURE_NOTES = {
    "metric": "measured: the working model (compressed weights decoded to fp32) on the eval set; "
              "None when no dataset was given (weights only)",
    "size_bytes": "accounted: bytes of the chosen encoding per tensor (no file is written)",
    "size_bytes_huffman": "accounted: the same layouts with Huffman-coded value codes and gaps (packed file); "
                          "None for models over 20 M weights unless asked for (export computes it)",
    "speed": "simulated: masks and fake quantisation give no speed-up",
}


class Workbench:
    """Baseline + working copy + eval tensors.

    Example:
        >>> wb = Workbench(nn.Sequential(nn.Linear(4, 3)), torch.randn(8, 4), torch.zeros(8, dtype=torch.long))
        >>> wb.apply(Recipe(default={"prune": {"sparsity": 0.5}}))
        ['0']
        >>> int((wb.model[0].weight == 0).sum())
        6
    """

    def __init__(self, baseline: nn.Module, x_eval: Any = None, y_eval: Any = None, *,
                 batch_size: int = 512, task: str = "image_classification", identity: Any = None) -> None:
        self.baseline = baseline.eval()
        self.model = copy.deepcopy(baseline).eval()   # deepcopy keeps tied tensors tied
        self.layers: dict[str, Target] = targets(self.model)
        self.names = list(self.layers)
        self._base = {n: (t.weight, t.bias) for n, t in targets(self.baseline).items()}
        # 512: big enough for fast matmuls, small enough that a conv's activations (mnist_cnn:
        # 512·32·26·26 floats = 44 MB) do not page-fault on every batch as 4096 did.
        self.x_eval, self.y_eval, self.batch_size, self.task = x_eval, y_eval, batch_size, task
        self.recipe: Recipe | None = None
        self.specs: dict[str, LayerSpec] = {n: LayerSpec() for n in self.names}
        self._keys: dict[str, Any] = {n: (LayerSpec(), None) for n in self.names}
        self._results: dict[str, LayerResult | None] = {n: None for n in self.names}
        self._sizes: dict[str, LayerSize] = {}   # per compressible layer, dropped when it is rewritten
        self._huffman: dict[str, int] = {}       # entropy-coded bytes per compressible layer, likewise
        self._zeros: dict[str, int] = {}         # zero weights per layer, likewise
        self._plain: list[tuple[str, Any]] | None = None   # the size table's order, uncompressed rows made once
        self._sorted: OrderedDict[tuple, SortedScores] = OrderedDict()
        self._baseline_metric: float | None = None
        self._identity, self._engine = identity, None   # identity: (model hash, data hash) shares the engine
        self.last_apply_ms = 0.0

    @property
    def metric(self):
        """The task's metric (name, direction, formatting)."""
        from pet_core.metrics import metric_for

        return metric_for(self.task)

    @property
    def measures(self) -> bool:
        """False in weights-only mode (no eval data): the metric is not measured."""
        return self.x_eval is not None

    # --- applying -----------------------------------------------------------------------------

    def apply(self, recipe: Recipe) -> list[str]:
        """Bring the working copy to ``recipe``; returns the names of the layers recomputed."""
        start = time.perf_counter()
        self.recipe = None      # until every layer is written: no cached value may describe a half-applied copy
        specs = resolve(recipe.default, recipe.layers, self.names)
        thresholds = self._global_thresholds(specs)
        todo = [(name, spec, (spec, thresholds.get(name))) for name, spec in specs.items()
                if (spec, thresholds.get(name)) != self._keys[name]]

        def write(item: tuple) -> None:
            name, spec, key = item
            self._write(name, spec, key[1])
            self._keys[name] = key

        # layers are independent: many big ones are rewritten two at a time, except a huge one (an
        # embedding), done alone so that two sets of its transients never meet
        alone = [item for item in todo if self.layers[item[0]].weight.numel() >= ALONE_WEIGHTS]
        rest = [item for item in todo if self.layers[item[0]].weight.numel() < ALONE_WEIGHTS]
        for item in alone:
            write(item)
        if len(rest) > 1 and sum(self.layers[n].weight.numel() for n, _, _ in rest) >= PARALLEL_SIZES_WEIGHTS:
            with ThreadPoolExecutor(max(1, min(2, os.cpu_count() or 1))) as pool:
                list(pool.map(write, rest))
        else:
            for item in rest:
                write(item)
        changed = [name for name, _, _ in todo]
        self.recipe, self.specs = recipe, specs
        self.last_apply_ms = (time.perf_counter() - start) * 1e3
        return changed

    def _global_thresholds(self, specs: dict[str, LayerSpec]) -> dict[str, Any]:
        """Each layer's cut in its global group (layers whose prune method puts them in one group).

        A group's scores are indexed once (``ScoreIndex``, reused for every sparsity); the method
        gives one hashable cut per layer, equal to the last one when nothing changed for it. Indexes
        are kept least recently used first out: at most 4, and at most half the weights' bytes
        (always the newest).
        """
        groups: dict[tuple, list[str]] = {}
        for name, spec in specs.items():
            prune = spec.of_kind(PruneMethod)
            if prune is not None and (key := prune[0].global_key(prune[1])) is not None:
                groups.setdefault((prune[0].name, key), []).append(name)
        out = {}
        for names in groups.values():
            method, cfg = specs[names[0]].of_kind(PruneMethod)
            key = tuple((n, specs[n].of_kind(FactorMethod)) for n in names)
            scores = self._sorted.get(key)
            if scores is None:
                scores = SortedScores([prune_scores(self._base[n][0], specs[n]) for n in names])
                self._sorted[key] = scores
                budget = sum(w.numel() * w.element_size() for w, _ in self._base.values()) // 2
                while len(self._sorted) > 4 or (len(self._sorted) > 1
                                                and sum(s.nbytes for s in self._sorted.values()) > budget):
                    self._sorted.popitem(last=False)
            self._sorted.move_to_end(key)
            out.update(zip(names, method.threshold(scores, cfg)))
        return out

    def _write(self, name: str, spec: LayerSpec, threshold: float | None) -> None:
        weight, bias = self._base[name]
        target = self.layers[name]
        if not spec.is_identity and target.parameter.numel() >= 1 << 20:
            # a big layer's weight is replaced, not updated: let the old one go before the new one is
            # made (the working copy holds no weight here for a moment; apply is not concurrent)
            self._results[name] = None
            target.parameter.data = target.parameter.data.new_zeros(1).expand(target.parameter.shape)
        try:
            result = None if spec.is_identity else compress_layer(weight, bias, spec, threshold)
        except BaseException:
            if target.parameter.stride() != target.parameter.data.contiguous().stride():
                target.write(weight.clone(), bias, adopt=True)       # the baseline again, as its key says
                self._results[name], self._keys[name] = None, (LayerSpec(), None)
            raise
        if result is None:
            self.layers[name].write(weight, bias)
        else:   # the working copy takes the result's weight as it is: one copy of it, not two
            owned = result.weight.untyped_storage().data_ptr() != weight.untyped_storage().data_ptr()
            self.layers[name].write(result.weight, result.bias, adopt=owned)
            # codes are not kept: a quarter of the weight's bytes or more, needed only to write the
            # packed file or price its Huffman coding; coded_tensors() recomputes them then
            result = replace(result, tensors=[replace(t, codes=None) for t in result.tensors])
        self._results[name] = result
        self._sizes.pop(name, None)
        self._huffman.pop(name, None)
        self._zeros.pop(name, None)

    # --- reading ------------------------------------------------------------------------------

    def result(self, name: str) -> LayerResult | None:
        """The layer's compression result (None when the layer is unchanged from the baseline)."""
        return self._results[name]

    def stored_tensors(self, name: str) -> list[StoredTensor]:
        """The tensors a layer's weight is stored as (the fp32 weight itself when unchanged)."""
        result = self._results[name]
        return result.tensors if result else [StoredTensor("weight", self.layers[name].weight, 32)]

    def coded_tensors(self, name: str) -> list[StoredTensor]:
        """The stored tensors with their integer codes, for packing and Huffman pricing: the layer is
        compressed again from the baseline (pure and deterministic: the very same values)."""
        result = self._results[name]
        if result is None or all(t.coding is None or t.codes is not None for t in result.tensors):
            return self.stored_tensors(name)
        weight, bias = self._base[name]
        return compress_layer(weight, bias, self.specs[name], self._keys[name][1]).tensors

    def baseline_weight(self, name: str) -> torch.Tensor:
        return self._base[name][0]

    @property
    def engine(self):
        """The evaluation engine (``pet_core.evaluation``); shared with every workbench of the same identity."""
        if self._engine is None and self.measures:
            from pet_core.evaluation import EvalEngine, shared_engine

            self._engine = (EvalEngine(self.x_eval, self.y_eval, self.task) if self._identity is None
                            else shared_engine(self._identity, self.x_eval, self.y_eval, self.task))
        return self._engine

    def state_key(self) -> str | None:
        """What the working copy holds: the canonical post-training recipe (None while it is being applied)."""
        if self.recipe is None:
            return None
        from pet_core.pareto import recipe_key

        d = self.recipe.to_dict()
        return recipe_key({"default": d.get("default"), "layers": d.get("layers")})

    def evaluate(self, model: nn.Module | None = None, *, cancel: Any = None) -> float | None:
        """The task's metric (top-1 accuracy as a fraction, or perplexity) of the working copy, or of
        ``model``, on the eval data; None in weights-only mode.

        The working copy and the baseline go through the engine (its fastest agreeing backend, values
        shared by recipe across sessions; ``cancel``, an Event, stops it between batches by raising
        ``pet_core.evaluation.Cancelled``); any other model (a file loaded back, a physically pruned
        copy) is run eagerly.
        """
        if not self.measures:
            return None
        if model is None or model is self.model:
            return self.engine.exact(self.model, key=self.state_key(), cancel=cancel)
        if model is self.baseline:
            return self.engine.baseline(self.baseline)[0]
        from pet_core.metrics import evaluate

        return evaluate(model, self.x_eval, self.y_eval, self.task, batch_size=self.batch_size)

    def cached_metric(self) -> float | None:
        """The working copy's exact metric when this configuration was evaluated before (any session)."""
        key = self.state_key()
        return None if key is None or not self.measures else self.engine.cached(key)

    def estimate(self):
        """The working copy's metric on the engine's fixed stratified subset, with its 95% interval
        (a ``pet_core.evaluation.Estimate``; exact when the evaluation set is small); None weights-only."""
        return self.engine.estimate(self.model, self.baseline) if self.measures else None

    def exact_is_slow(self, seconds: float) -> bool:
        """True when an exact evaluation is expected to take longer than ``seconds`` and an estimate exists."""
        if not self.measures or not self.engine.can_estimate:
            return False
        predicted = self.engine.predicted_exact_seconds()
        return predicted is None or predicted > seconds

    @property
    def baseline_metric(self) -> float | None:
        if self._baseline_metric is None:
            self._baseline_metric = self.evaluate(self.baseline)
        return self._baseline_metric

    baseline_accuracy = baseline_metric   # the metric of a classifier is its accuracy

    def _table(self) -> list[tuple[str, Any]]:
        """The size table's rows in model order: ("layer", name) for a target, ("plain", LayerSize) for a
        module's tensors that no target covers. A tied tensor is counted once, at its owner."""
        if self._plain is None:
            by_path: dict[str, list[str]] = {}
            for name, t in self.layers.items():
                by_path.setdefault(t.path, []).append(name)
            seen = {storage_key(x) for t in self.layers.values() for x in t.covered()}
            rows: list[tuple[str, Any]] = []
            for path, module in self.model.named_modules():
                rows += [("layer", n) for n in by_path.get(path, ())]
                rest = [x for x in own_tensors(module) if storage_key(x) not in seen]
                seen.update(storage_key(x) for x in rest)
                if rest:
                    rows.append(("plain", plain_size(path or "(model)", module_type(module), rest)))
            self._plain = rows
        return self._plain

    def _layer_size(self, name: str) -> LayerSize:
        if name not in self._sizes:
            t, result = self.layers[name], self._results[name]
            bias = [] if t.bias is None else [t.bias]
            self._sizes[name] = layer_size(name, t.type, t.weight.numel(), self.stored_tensors(name), bias,
                                           rank=result.rank if result else None, tied=t.tied)
        return self._sizes[name]

    def sizes(self) -> list[LayerSize]:
        """One size row per compressible tensor (with its bias) and per module with other tensors;
        recomputed only for layers rewritten since the last call, several layers at once when there
        is much to do (the layout search is mostly numpy, one core per call)."""
        missing = [n for n in self.names if n not in self._sizes]
        if len(missing) > 1 and sum(self.layers[n].weight.numel() for n in missing) >= PARALLEL_SIZES_WEIGHTS:
            with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
                list(pool.map(self._layer_size, missing))      # each fills its own entry of _sizes
        return [self._layer_size(item) if kind == "layer" else item for kind, item in self._table()]

    @staticmethod
    def _huffman_now(asked: bool | None, weights: int) -> bool:
        return asked if asked is not None else weights <= HUFFMAN_EAGER_WEIGHTS

    def huffman_by_default(self) -> bool:
        """True when :meth:`report` computes the Huffman size unasked (at most 20 M weights)."""
        return self._huffman_now(None, sum(self._base[n][0].numel() for n in self.names))

    def zero_weights(self, name: str) -> int:
        if name not in self._zeros:
            self._zeros[name] = int(self.layers[name].weight.numel() - torch.count_nonzero(self.layers[name].weight))
        return self._zeros[name]

    def size_bytes_huffman(self) -> int:
        """Total bytes with value codes and gaps Huffman-coded, as ``save_packed(huffman=True)`` writes."""
        total = 0
        for row in self.sizes():
            if row.name not in self.layers:
                total += row.size_bytes
                continue
            if row.name not in self._huffman:
                stored = zip(self.coded_tensors(row.name), row.tensors)   # row.tensors: the chosen layouts
                coded = sum(huffman_tensor_bytes(t, size.encoding) for t, size in stored)
                self._huffman[row.name] = coded + row.other_bytes
            total += self._huffman[row.name]
        return total

    def report(self, accuracy: float | None = None, *, huffman: bool | None = None,
               estimate: Any = None) -> dict[str, Any]:
        """The numbers the CLI's ``evaluate --json`` prints and every page shows.

        The metric is exact (``accuracy`` when given, else evaluated now), or, with ``estimate`` (an
        inexact ``pet_core.evaluation.Estimate``), that estimate: ``report["evaluation"]`` says which
        (``exact``, ``n`` of ``total`` items, and for an estimate its 95% interval ``low``..``high``).

        ``huffman``: compute ``size_bytes_huffman`` (True), leave it None (False), or (None) compute
        it when the model holds at most :data:`HUFFMAN_EAGER_WEIGHTS` weights: on GPT-2 size models
        it would double the cost of every slider move, so it is computed on request and on export.
        """
        rows = self.sizes()
        base_bytes = model_bytes(self.baseline)
        size_bytes = sum(r.size_bytes for r in rows)
        params = sum(p.numel() for p in self.baseline.parameters())
        nonzero = sum(r.nonzero for r in rows)
        weights = sum(self._base[n][0].numel() for n in self.names)
        zero_weights = sum(self.zero_weights(n) for n in self.names)
        metric = self.metric
        if estimate is not None and not estimate.exact:
            value, evaluation = estimate.value, estimate.to_dict()
        else:
            value = self.evaluate() if accuracy is None and estimate is None else (
                accuracy if accuracy is not None else estimate.value)
            n = None if not self.measures else len(self.x_eval)
            evaluation = None if not self.measures else {"exact": True, "value": value, "n": n, "total": n}
        if evaluation is not None:
            evaluation["backend"] = self.engine.backend_name
        return {
            "recipe": None if self.recipe is None else self.recipe.to_dict(),
            "metric": {**metric.to_dict(), "measured": self.measures},
            "evaluation": evaluation,
            "baseline": {metric.name: self.baseline_metric, "size_bytes": base_bytes, "params": params},
            "compressed": {
                metric.name: value,
                "size_bytes": size_bytes,
                "size_bytes_huffman": self.size_bytes_huffman() if self._huffman_now(huffman, weights) else None,
                "nonzero_params": nonzero,
                "compression_ratio": base_bytes / size_bytes,
                "weight_sparsity": zero_weights / max(1, weights),
            },
            "layers": [r.as_dict() for r in rows],
            "skipped": skipped_layers(self.model, self.layers),
            "notes": MEASURE_NOTES,
        }
