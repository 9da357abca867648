"""Magnitude pruning prunes exactly ``count_to_prune(n, s)`` weights, ties broken by index.

Oracles: ``torch.nn.utils.prune`` on data without ties (its masks, exactly); on data with many
ties (weights rounded to a few values) a stable argsort of the scores in global order (layer
order, then flat index), whose first k are the weights to prune. ``torch.topk`` orders ties in
no documented way, so torch's masks are not an oracle there (only its count is).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from pet_core.methods import score_index
from pet_core.methods.magnitude import (Cut, MagnitudeConfig, ScoreIndex, count_to_prune, cut_for_sparsity,
                                        cut_masks, global_cuts, magnitude_prune)
from pet_core.recipe import Recipe
from pet_core.workbench import Workbench

SPARSITIES = [0.0, 0.1, 0.3, 0.5, 0.77, 0.9, 1.0]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tied(shape: tuple[int, ...], seed: int, levels: int = 7) -> torch.Tensor:
    """Weights rounded to a few values (many exact ties, zeros and sign pairs among them)."""
    return (torch.randn(*shape, generator=_gen(seed)) * levels / 3).round() / levels


def _oracle_masks(weights: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Keep masks pruning the first k of a stable argsort of |w| over the weights in order."""
    flat = torch.cat([w.abs().reshape(-1) for w in weights])
    k = count_to_prune(flat.numel(), sparsity)
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[:k]] = False
    return [m.reshape(w.shape) for m, w in zip(keep.split([w.numel() for w in weights]), weights)]


class Net(nn.Module):
    def __init__(self, seed: int, tied: bool):
        super().__init__()
        self.fc1, self.conv, self.fc2 = nn.Linear(30, 20), nn.Conv2d(3, 6, 3), nn.Linear(20, 5)
        with torch.no_grad():
            for i, m in enumerate((self.fc1, self.conv, self.fc2)):
                if tied:
                    m.weight.copy_(_tied(tuple(m.weight.shape), seed + i))
                else:
                    m.weight.copy_(torch.randn(m.weight.shape, generator=_gen(seed + i)))

    def layers(self) -> list[nn.Module]:
        return [self.fc1, self.conv, self.fc2]


# --- per layer ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_layer_scope_prunes_exactly_k_lowest_index_first(sparsity):
    w = _tied((40, 30), seed=1)
    assert w.abs().unique().numel() < 20                     # the data really is tie-heavy
    _, mask = magnitude_prune(w, MagnitudeConfig(sparsity=sparsity, scope="layer"))
    assert int((~mask).sum()) == count_to_prune(w.numel(), sparsity)
    assert torch.equal(mask, _oracle_masks([w], sparsity)[0])
    module = nn.Linear(30, 40)
    with torch.no_grad():
        module.weight.copy_(w)
    torch_prune.l1_unstructured(module, "weight", amount=sparsity)
    assert int((module.weight_mask == 0).sum()) == int((~mask).sum())      # torch's count, too


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_layer_scope_equals_torch_without_ties(sparsity):
    module = nn.Conv2d(4, 8, 3)
    w = module.weight.detach().clone()
    assert w.abs().unique().numel() == w.numel()
    _, mask = magnitude_prune(w, MagnitudeConfig(sparsity=sparsity, scope="layer"))
    torch_prune.l1_unstructured(module, "weight", amount=sparsity)
    assert torch.equal(mask, module.weight_mask.bool())


def test_cut_prunes_below_and_the_first_ties():
    scores = [torch.tensor([[2.0, 1.0], [1.0, 3.0]]), torch.tensor([1.0, 0.5])]
    masks = cut_masks(scores, Cut(1.0, ties=2))
    assert masks[0].tolist() == [[True, False], [False, True]]
    assert masks[1].tolist() == [True, False]                # its 1.0 is the third: kept
    assert cut_masks(scores, Cut(1.0, ties=0))[1].tolist() == [True, False]
    assert cut_masks(scores, Cut(1.0, ties=3))[1].tolist() == [False, False]
    assert cut_for_sparsity(scores, 0.5) == Cut(1.0, ties=2)   # 0.5 (1) + two of the three 1.0s


def test_a_transposed_weight_breaks_ties_in_its_own_row_major_order():
    stored = _tied((30, 40), seed=10)                       # as HF's Conv1D stores (in, out)
    w = stored.t()                                          # the canonical (out, in) view: strided
    _, mask = magnitude_prune(w, MagnitudeConfig(sparsity=0.5, scope="layer"))
    assert torch.equal(mask, _oracle_masks([w.contiguous()], 0.5)[0])


def test_an_explicit_threshold_still_prunes_everything_at_or_below():
    w = _tied((10, 10), seed=2)
    t = float(w.abs().median())
    _, mask = magnitude_prune(w, MagnitudeConfig(threshold=t))
    assert torch.equal(mask, w.abs() > t)


# --- global ------------------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_global_scope_prunes_exactly_k_lowest_index_first(sparsity):
    net = Net(seed=3, tied=True)
    names, weights = ("fc1", "conv", "fc2"), [m.weight.detach() for m in net.layers()]
    expected = _oracle_masks(weights, sparsity)
    cuts = global_cuts(ScoreIndex([[w] for w in weights]), sparsity)
    masks = [cut_masks([w.abs()], cut)[0] for w, cut in zip(weights, cuts)]
    for m, e in zip(masks, expected):
        assert torch.equal(m, e)
    assert sum(int((~m).sum()) for m in masks) == count_to_prune(sum(w.numel() for w in weights), sparsity)
    wb = Workbench(net, None, None)
    wb.apply(Recipe(default={"prune": {"method": "magnitude", "scope": "global", "sparsity": sparsity}}))
    for name, w, cut, e in zip(names, weights, cuts, expected):
        assert wb.result(name).threshold == cut.value
        assert torch.equal(wb.layers[name].weight != 0, e & (w != 0))     # a kept zero stays zero


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_global_scope_equals_torch_without_ties(sparsity):
    net = Net(seed=4, tied=False)
    wb = Workbench(net, None, None)
    wb.apply(Recipe(default={"prune": {"sparsity": sparsity}}))
    modules = net.layers()
    torch_prune.global_unstructured([(m, "weight") for m in modules], pruning_method=torch_prune.L1Unstructured,
                                    amount=sparsity)
    for name, m in zip(("fc1", "conv", "fc2"), modules):
        assert torch.equal(wb.layers[name].weight != 0, m.weight_mask.bool())


def test_an_unchanged_cut_rewrites_nothing():
    net = Net(seed=5, tied=True)
    wb = Workbench(net, None, None)
    recipe = Recipe(default={"prune": {"sparsity": 0.5}})
    assert wb.apply(recipe) == ["fc1", "conv", "fc2"]
    assert wb.apply(recipe) == []
    assert len({wb.result(n).threshold for n in ("fc1", "conv", "fc2")}) == 1
    weights = [[m.weight.detach()] for m in net.layers()]      # a cut is data: equal when unchanged
    assert global_cuts(ScoreIndex(weights), 0.5) == global_cuts(ScoreIndex(weights), 0.5)


# --- the index against a stable argsort ----------------------------------------------------------

def _index_oracle(members: list[list[torch.Tensor]], k: int) -> tuple[float, list[int]]:
    flat = torch.cat([t.reshape(-1).abs().double() for m in members for t in m])
    member = torch.cat([torch.full((t.numel(),), i) for i, m in enumerate(members) for t in m])
    first_k = torch.argsort(flat, stable=True)[:k]
    t = float(flat[first_k[-1]])
    equal = first_k[flat[first_k] == t]
    return t, torch.bincount(member[equal], minlength=len(members)).tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("chunk", [64, 1 << 20])
def test_index_matches_a_stable_argsort(monkeypatch, dtype, chunk):
    monkeypatch.setattr(score_index, "CHUNK", chunk)
    g = _gen(6)
    for trial in range(6):
        members = []
        for i in range(3):
            t = torch.randn(int(torch.randint(1, 400, (1,), generator=g)), generator=g)
            if trial % 3 == 0:
                t = (t * 3).round() / 3                         # ties
            if trial % 3 == 1:
                t[t.abs() < 0.8] = 0                            # mostly zeros: bucket 0 alone
            members.append([t.to(dtype)])
        members[1].append(torch.randn(9, 7, generator=g).to(dtype).t())   # a transposed view
        index = ScoreIndex(members)
        n = index.numel
        for k in sorted({1, 2, n // 3, n // 2, n - 1, n, *range(1, n, 53)} - {0}):
            assert index.ties(k) == _index_oracle(members, k), (trial, k)


def test_index_equals_kthvalue_on_random_floats():
    ws = [torch.randn(300, 50, generator=_gen(7)), torch.randn(64, 3, 3, 3, generator=_gen(8))]
    flat = torch.cat([w.abs().reshape(-1) for w in ws])
    index = ScoreIndex(ws)
    for k in (1, 100, flat.numel() // 2, flat.numel()):
        assert index.kth(k) == float(torch.kthvalue(flat, k).values)


def test_index_holds_less_than_a_third_of_the_scores_bytes():
    w = torch.randn(2048, 1024, generator=_gen(9))
    index = ScoreIndex([w])
    assert index.nbytes < 0.33 * w.numel() * 4
