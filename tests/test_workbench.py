"""The workbench on every zoo model (pretrained on digits) x a matrix of step configurations.

Oracles are independent of the engine: ``torch.nn.utils.prune`` for masks, a plain forward pass for
accuracy, a fresh workbench for incremental recomputation, byte-level snapshots for immutability.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.utils import prune as torch_prune

from pet_core.layers import compressible_layers
from pet_core.loader import load_baseline
from pet_core.recipe import Recipe
from pet_core.methods import METHODS
from pet_core.steps import STEPS, method_of
from pet_core.workbench import Workbench
from pet_core.zoo import list_models

MODELS = [m.name for m in list_models()]

CONFIGS: dict[str, dict] = {
    "prune_global_0.8": {"prune": {"method": "magnitude", "scope": "global", "sparsity": 0.8}},
    "prune_layer_0.5": {"prune": {"method": "magnitude", "scope": "layer", "sparsity": 0.5}},
    "l1_channel_0.5": {"prune": {"method": "l1_channel", "sparsity": 0.5}},
    "l2_channel_0.25": {"prune": {"method": "l2_channel", "sparsity": 0.25}},
    "q4_sym_per_channel": {"quantize": {"bits": 4, "scheme": "symmetric", "granularity": "per_channel"}},
    "q3_asym_per_tensor": {"quantize": {"bits": 3, "scheme": "asymmetric", "granularity": "per_tensor"}},
    "share_16": {"share": {"clusters": 16}},
    "low_rank_energy_0.9": {"low_rank": {"energy": 0.9}},
    "low_rank_4_prune_0.5_q8": {"low_rank": {"rank": 4}, "prune": {"sparsity": 0.5}, "quantize": {"bits": 8}},
    "prune_0.9_share_32": {"prune": {"sparsity": 0.9}, "share": {"clusters": 32}},
    # every registered method's own example: a new method joins the matrix from the registry
    **{f"{m.name}_example": {m.step: m.example_fields()} for m in METHODS.values()},
}
CONFIG_NAMES = list(CONFIGS)


def test_configs_cover_every_step_and_method():
    used = {step for cfg in CONFIGS.values() for step in cfg}
    assert used == set(STEPS)
    methods = {method_of(step, cfg).name for c in CONFIGS.values() for step, cfg in Recipe(default=c).default.items()}
    assert methods == set(METHODS)


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().cpu().numpy().tobytes()


class Zoo:
    """One pretrained baseline, its byte snapshot, and workbenches with one config applied (cached)."""

    def __init__(self, name: str):
        self.base = load_baseline(name, "digits")
        self.model = self.base.model
        self.x, self.y = self.base.dataset.x_test, self.base.dataset.y_test
        self.snapshot = {k: (v.dtype, _bytes(v)) for k, v in self.model.state_dict().items()}
        self._applied: dict[str, Workbench] = {}

    def workbench(self) -> Workbench:
        return Workbench(self.model, self.x, self.y)

    def applied(self, config: str) -> Workbench:
        if config not in self._applied:
            wb = self.workbench()
            changed = wb.apply(Recipe(default=CONFIGS[config]))
            assert changed == wb.names, "a fresh workbench recomputes every layer the recipe touches"
            self._applied[config] = wb
        return self._applied[config]

    def assert_baseline_intact(self) -> None:
        state = self.model.state_dict()
        assert list(state) == list(self.snapshot)
        for k, v in state.items():
            dtype, raw = self.snapshot[k]
            assert v.dtype == dtype and _bytes(v) == raw, f"baseline {k} was modified"



@pytest.fixture(scope="module", params=MODELS)
def zoo(request) -> Zoo:
    return Zoo(request.param)


def _weights(wb: Workbench) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach() for n, m in wb.layers.items()}


# --- (a) the baseline is never mutated -----------------------------------------------------------

@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_baseline_never_mutated(zoo, config):
    wb = zoo.applied(config)
    wb.report()
    zoo.assert_baseline_intact()
    assert wb.baseline is zoo.model and wb.model is not zoo.model
    # not vacuous: the working copy did change, and its tensors are not the baseline's storage
    base = compressible_layers(zoo.model)
    assert any(not torch.equal(m.weight, base[n].weight) for n, m in wb.layers.items())
    for n, m in wb.layers.items():
        assert m.weight.data_ptr() != base[n].weight.data_ptr()


# --- (b) global magnitude masks equal torch.nn.utils.prune.global_unstructured --------------------

@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.97])
def test_global_magnitude_matches_torch(zoo, sparsity):
    if sparsity == 0.8:
        wb = zoo.applied("prune_global_0.8")
    else:
        wb = zoo.workbench()
        wb.apply(Recipe(default={"prune": {"method": "magnitude", "scope": "global", "sparsity": sparsity}}))
    oracle = copy.deepcopy(zoo.model)
    layers = compressible_layers(oracle)
    assert all(int((m.weight == 0).sum()) == 0 for m in layers.values()), "the baseline has no exact zeros"
    torch_prune.global_unstructured([(m, "weight") for m in layers.values()],
                                    pruning_method=torch_prune.L1Unstructured, amount=sparsity)
    total = sum(m.weight.numel() for m in layers.values())
    k = round(sparsity * total)
    scores = torch.cat([zoo.model.get_submodule(n).weight.detach().abs().flatten() for n in layers])
    kth = torch.sort(scores).values
    tie = kth[k - 1] == kth[k]
    mismatched = 0
    for name, m in layers.items():
        engine_keep = wb.layers[name].weight != 0
        torch_keep = m.weight_mask.bool()
        if tie:  # only weights at the threshold magnitude may differ
            diff = engine_keep != torch_keep
            assert torch.all(zoo.model.get_submodule(name).weight.abs()[diff] == kth[k - 1])
            mismatched += int(diff.sum())
        else:
            assert torch.equal(engine_keep, torch_keep), name
        # kept weights are the baseline's, untouched
        base_w = zoo.model.get_submodule(name).weight
        assert torch.equal(wb.layers[name].weight[engine_keep], base_w[engine_keep])
    zeros = sum(int((m.weight == 0).sum()) for m in wb.layers.values())
    assert zeros == k or (tie and zeros >= k)
    rep = wb.report()
    assert rep["compressed"]["weight_sparsity"] == zeros / total


def test_layer_scope_prunes_each_layer_to_its_sparsity(zoo):
    wb = zoo.applied("prune_layer_0.5")
    for name, m in wb.layers.items():
        oracle = copy.deepcopy(zoo.model.get_submodule(name))
        torch_prune.l1_unstructured(oracle, "weight", amount=0.5)
        assert torch.equal(m.weight != 0, oracle.weight_mask.bool()), name
        assert int((m.weight == 0).sum()) == round(0.5 * m.weight.numel())


# --- (c) pruned weights stay exactly zero after quantize / share -----------------------------------

PRUNE_THEN_CODE = [
    ({"prune": {"sparsity": 0.9}}, {"prune": {"sparsity": 0.9}, "share": {"clusters": 32}}),
    ({"prune": {"sparsity": 0.9}}, {"prune": {"sparsity": 0.9}, "quantize": {"bits": 2}}),
    ({"prune": {"method": "l1_channel", "sparsity": 0.5}},
     {"prune": {"method": "l1_channel", "sparsity": 0.5}, "quantize": {"bits": 3, "scheme": "asymmetric",
                                                                        "granularity": "per_tensor"}}),
    ({"prune": {"scope": "layer", "sparsity": 0.7}},
     {"prune": {"scope": "layer", "sparsity": 0.7}, "quantize": {"bits": 5, "scheme": "asymmetric"}}),
    ({"low_rank": {"rank": 4}, "prune": {"sparsity": 0.5}},
     {"low_rank": {"rank": 4}, "prune": {"sparsity": 0.5}, "quantize": {"bits": 8}}),
]


def _stored_zeros(wb: Workbench) -> dict[tuple[str, str], torch.Tensor]:
    out = {}
    for name in wb.names:
        for t in wb.result(name).tensors:
            out[(name, t.name)] = t.values == 0
        out[(name, "effective")] = wb.layers[name].weight == 0
        if wb.layers[name].bias is not None:
            out[(name, "bias")] = wb.layers[name].bias == 0
    return out


@pytest.mark.parametrize("case", range(len(PRUNE_THEN_CODE)))
def test_pruned_stay_zero_after_coding(zoo, case):
    prune_only, coded = PRUNE_THEN_CODE[case]
    wb = zoo.workbench()
    wb.apply(Recipe(default=prune_only))
    before = _stored_zeros(wb)
    assert any(bool(z.any()) for z in before.values())
    wb.apply(Recipe(default=coded))
    after = _stored_zeros(wb)
    low_rank = "low_rank" in prune_only
    for key, zeros in before.items():
        if low_rank and key[1] == "effective":
            continue  # the product of pruned factors has no structural zeros to keep
        assert bool(after[key][zeros].all()), f"{key}: a pruned position became non-zero"
    if not low_rank:
        for name in wb.names:
            assert all(t.pruned for t in wb.result(name).tensors)


# --- (d) incremental recomputation ---------------------------------------------------------------

@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_a_b_a_equals_fresh_a(zoo, config):
    other = CONFIG_NAMES[(CONFIG_NAMES.index(config) + 1) % len(CONFIG_NAMES)]
    a, b = Recipe(default=CONFIGS[config]), Recipe(default=CONFIGS[other])
    wb = zoo.workbench()
    assert wb.apply(a) == wb.names
    assert wb.apply(b) == wb.names
    assert wb.apply(a) == wb.names
    assert wb.apply(a) == [], "re-applying the same recipe recomputes nothing"
    fresh = zoo.applied(config)
    got, want = wb.model.state_dict(), fresh.model.state_dict()
    assert list(got) == list(want)
    for k in got:
        assert _bytes(got[k]) == _bytes(want[k]), f"{k} differs after A -> B -> A"
    assert wb.report()["compressed"]["size_bytes"] == fresh.report()["compressed"]["size_bytes"]
    zoo.assert_baseline_intact()


def test_only_changed_layers_recompute(zoo):
    wb = zoo.workbench()
    names = wb.names
    last = names[-1]
    default = {"prune": {"sparsity": 0.9}, "quantize": {"bits": 4}}

    def recipe(default=default, **override):
        return Recipe(default=default, layers={last: override})

    assert wb.apply(recipe(prune={"sparsity": 0.5}, quantize={"bits": 8})) == names
    snap = {n: _bytes(w) for n, w in _weights(wb).items()}

    # only the override's quantize bits: only that layer
    r2 = recipe(prune={"sparsity": 0.5}, quantize={"bits": 6})
    assert wb.apply(r2) == [last]
    for n, w in _weights(wb).items():
        assert (_bytes(w) == snap[n]) == (n != last), n
    fresh = zoo.workbench()
    fresh.apply(r2)
    for n in names:
        assert _bytes(_weights(wb)[n]) == _bytes(_weights(fresh)[n])

    # the override's own (layer-scope) sparsity: the global threshold of the others is unchanged
    assert wb.apply(recipe(prune={"sparsity": 0.6}, quantize={"bits": 6})) == [last]
    # the default's global sparsity: every layer but the overridden one
    changed = wb.apply(recipe(default={"prune": {"sparsity": 0.8}, "quantize": {"bits": 4}},
                              prune={"sparsity": 0.6}, quantize={"bits": 6}))
    assert changed == names[:-1]
    # switching the last layer off restores its baseline weight and bias exactly
    assert wb.apply(Recipe(default={"prune": {"sparsity": 0.8}, "quantize": {"bits": 4}},
                           layers={last: {"prune": None, "quantize": None}})) == [last]
    base = zoo.model.get_submodule(last)
    assert _bytes(wb.layers[last].weight) == _bytes(base.weight)
    assert wb.result(last) is None
    # back to nothing: every layer that was compressed goes back to the baseline
    assert wb.apply(Recipe()) == names[:-1]
    for n, m in wb.layers.items():
        assert _bytes(m.weight) == _bytes(zoo.model.get_submodule(n).weight)
    assert wb.apply(Recipe()) == []


def test_channel_then_other_restores_bias(zoo):
    wb = zoo.workbench()
    wb.apply(Recipe(default=CONFIGS["l1_channel_0.5"]))
    wb.apply(Recipe(default=CONFIGS["q4_sym_per_channel"]))
    for n, m in wb.layers.items():
        if m.bias is not None:
            assert _bytes(m.bias) == _bytes(zoo.model.get_submodule(n).bias), n


# --- (e) the reported accuracy is the working model's accuracy -----------------------------------

def _independent_accuracy(model, x, y) -> float:
    net = copy.deepcopy(model).eval()
    with torch.no_grad():
        pred = net(x).argmax(dim=1)
    return float((pred == y).double().mean())


@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_reported_accuracy(zoo, config):
    wb = zoo.applied(config)
    rep = wb.report()
    acc = rep["compressed"]["accuracy"]
    assert acc == pytest.approx(_independent_accuracy(wb.model, zoo.x, zoo.y), abs=1e-12)
    assert rep["baseline"]["accuracy"] == pytest.approx(_independent_accuracy(zoo.model, zoo.x, zoo.y), abs=1e-12)
    assert rep["baseline"]["accuracy"] == pytest.approx(zoo.base.info["accuracy"], abs=1e-12)
    assert 0.0 <= acc <= 1.0 and len(zoo.y) == 450
    # the evaluation ran on the compressed weights: a model rebuilt from the working state agrees
    rebuilt = copy.deepcopy(zoo.model)
    rebuilt.load_state_dict(wb.model.state_dict())
    assert _independent_accuracy(rebuilt, zoo.x, zoo.y) == pytest.approx(acc, abs=1e-12)


def test_pretrained_baselines_are_accurate(zoo):
    assert zoo.base.info["accuracy"] >= 0.9


# --- (f) channel pruning zeroes whole output rows and their bias entries --------------------------

@pytest.mark.parametrize("config, norm, amount", [("l1_channel_0.5", 1, 0.5), ("l2_channel_0.25", 2, 0.25)])
def test_channel_pruning_rows_and_bias(zoo, config, norm, amount):
    wb = zoo.applied(config)
    for name, m in wb.layers.items():
        base = zoo.model.get_submodule(name)
        oracle = copy.deepcopy(base)
        torch_prune.ln_structured(oracle, "weight", amount=amount, n=norm, dim=0)
        keep = oracle.weight_mask.reshape(oracle.weight_mask.shape[0], -1).bool().all(dim=1)   # (out,)
        rows = m.weight.detach().reshape(m.weight.shape[0], -1)                                # (out, in_flat)
        zero_rows = (rows == 0).all(dim=1)
        assert torch.equal(zero_rows, ~keep), name
        assert int(zero_rows.sum()) == round(amount * rows.shape[0])
        base_rows = base.weight.detach().reshape(rows.shape)
        assert torch.equal(rows[keep], base_rows[keep]), "kept channels are untouched"
        if base.bias is not None:
            assert torch.all(m.bias[~keep] == 0) and torch.equal(m.bias[keep], base.bias[keep]), name
