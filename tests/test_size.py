"""Honest size accounting against bytes worked out by hand (formulas written out in each test).

Notation: ``n`` values, ``z`` non-zeros, ``b`` bits per stored value, ``p`` relative-index bits.
dense = n·b, bitmask = n + z·b, relative = (z + fillers)·(p + b); each tensor rounds up to bytes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pet_core.encoding import MAX_INDEX_BITS, StoredTensor, filler_count, relative_bits
from pet_core.methods.magnitude import MagnitudeConfig
from pet_core.methods.quantize import QuantizeConfig
from pet_core.methods.share import ShareConfig
from pet_core.pipeline import compress_layer
from pet_core.recipe import Recipe
from pet_core.size import model_bytes, stored_bytes, tensor_size
from pet_core.steps import LayerSpec
from pet_core.workbench import Workbench
from pet_core.zoo import build_model, list_models, model_info

MODELS = [m.name for m in list_models()]


def _t(flat: list[float], shape=(2, 8)) -> torch.Tensor:
    return torch.tensor(flat, dtype=torch.float32).reshape(shape)


def _bytes(bits: int) -> int:
    return math.ceil(bits / 8)


# A 2x8 weight, row-major non-zeros at positions 0, 11 and 15: gaps 0, 10 and 3 zeros; n=16, z=3.
PATTERN = _t([1, 0, 0, 0, 0, 0, 0, 0,
              0, 0, 0, 2, 0, 0, 0, 3])


# --- filler counts and relative bits, by hand ----------------------------------------------------

@pytest.mark.parametrize("flat, p, fillers", [
    # Han et al. Fig. 2: 3-bit gaps hold 0..7; a gap of 8 zeros needs one filler entry
    ([1] + [0] * 8 + [2], 3, 1),
    ([1] + [0] * 7 + [2], 3, 0),                    # a gap of 7 fits
    ([1] + [0] * 15 + [2], 3, 1),                   # 15 = filler after 7 zeros (8 positions) + gap 7
    ([1] + [0] * 16 + [2], 3, 2),                   # 16 = two runs of 8 (7 zeros + a filler each)
    ([0] * 8 + [2], 3, 1),                          # leading zeros count as a gap
    ([1] + [0] * 30, 3, 0),                         # trailing zeros need no entry
    ([0.0] * 12, 3, 0),                             # all zero: no entries at all
    ([1] + [0] * 8 + [2], 1, 4),                    # 1-bit gaps hold 0..1: 8 // 2 = 4 fillers
    ([1] + [0] * 8 + [2], 2, 2),                    # 8 // 4
    ([1] + [0] * 8 + [2], 4, 0),                    # 4-bit gaps hold 0..15
    ([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 3], 1, 0 // 2 + 10 // 2 + 3 // 2),
    ([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 3], 2, 0 + 10 // 4 + 3 // 4),
    ([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 3], 3, 1),
])
def test_filler_count(flat, p, fillers):
    assert filler_count(torch.tensor(flat, dtype=torch.float32), p) == fillers


def test_filler_count_is_row_major_over_a_matrix():
    # gaps run across row ends: positions 0 and 11 of a 2x8 are 10 zeros apart
    assert filler_count(PATTERN, 3) == 1          # the gap of 10 >= 8
    # the transposed (8x2) matrix in row-major order has non-zeros at 0, 7 (row 1 col 3 -> 3·2+1), 15:
    # gaps 0, 6, 7, which all fit 3 bits
    assert filler_count(PATTERN.t().contiguous(), 3) == 0
    assert filler_count(PATTERN.t().contiguous(), 2) == (6 // 4) + (7 // 4)


@pytest.mark.parametrize("b", [32, 8, 4, 1])
def test_relative_bits_pattern(b):
    # PATTERN: z=3, gaps 0, 10, 3. (z + fillers)·(p + b) for each p:
    by_hand = {
        1: (3 + (0 + 5 + 1)) * (1 + b),
        2: (3 + (0 + 2 + 0)) * (2 + b),
        3: (3 + (0 + 1 + 0)) * (3 + b),
        4: (3 + 0) * (4 + b),
    }
    for p in range(5, MAX_INDEX_BITS + 1):
        by_hand[p] = 3 * (p + b)
    best = min(by_hand.values())
    best_p = min(p for p, bits in by_hand.items() if bits == best)
    assert relative_bits(PATTERN, b) == (best, best_p)
    if b >= 4:
        assert best_p == 4 and best == 3 * (4 + b)
    else:   # b=1: p=2 gives 5·3 = 15 bits, as does p=4 (3·5); the smaller p is taken
        assert (best_p, best) == (2, 15)


def test_relative_bits_trailing_zeros_and_all_zero():
    one = torch.tensor([5.0] + [0.0] * 15)
    assert relative_bits(one, 32) == (1 * (1 + 32), 1)          # one entry, gap 0, smallest p
    assert relative_bits(torch.zeros(16), 32) == (0, 1)          # nothing to store


# --- the chosen encoding is the smallest of the three --------------------------------------------

def test_dense_fp32_no_zeros():
    for shape in [(3, 5), (4, 2, 3, 3), (7,)]:
        w = torch.rand(shape) + 0.5
        s = tensor_size(StoredTensor("weight", w, 32))
        n = w.numel()
        assert (s.encoding, s.size_bytes, s.params, s.nonzero) == ("dense", n * 4, n, n)
        assert stored_bytes(w) == n * 4


def test_pattern_fp32_relative_wins():
    s = tensor_size(StoredTensor("weight", PATTERN, 32))
    dense, bitmask, relative = 16 * 32, 16 + 3 * 32, (3 + 0) * (4 + 32)    # 512, 112, 108
    assert min(dense, bitmask, relative) == relative
    assert (s.encoding, s.size_bytes, s.nonzero) == ("relative-4bit", _bytes(relative), 3)


def test_bitmask_wins_on_a_long_gap_among_many_nonzeros():
    w = _t([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1])   # z=12, one gap of 4
    dense, bitmask = 16 * 32, 16 + 12 * 32                    # 512, 400
    relative = {1: (12 + 2) * 33, 2: (12 + 1) * 34, 3: 12 * 35}   # 462, 442, 420; larger p only grow
    assert min(relative.values()) > bitmask
    assert relative_bits(w, 32) == (420, 3)
    s = tensor_size(StoredTensor("weight", w, 32))
    assert (s.encoding, s.size_bytes) == ("bitmask", _bytes(bitmask))


def test_dense_wins_for_one_bit_values_with_one_zero():
    w = _t([1] * 7 + [0] + [1] * 8)                            # z=15, b=1
    dense, bitmask, relative = 16 * 1, 16 + 15 * 1, 15 * (1 + 1)  # 16, 31, 30
    s = tensor_size(StoredTensor("weight", w, 1))
    assert min(dense, bitmask, relative) == dense
    assert (s.encoding, s.size_bytes) == ("dense", _bytes(dense))


def test_trailing_zeros_relative():
    w = _t([3] + [0] * 15)
    s = tensor_size(StoredTensor("weight", w, 32))
    assert (s.encoding, s.size_bytes) == ("relative-1bit", _bytes(1 * (1 + 32)))   # 33 bits -> 5 bytes


def test_all_zero_tensor():
    s = tensor_size(StoredTensor("weight", torch.zeros(2, 8), 32, overhead_bits=64))
    # no entries: relative needs 0 bits; only the overhead (two scales) remains
    assert s.nonzero == 0 and s.encoding.startswith("relative") and s.size_bytes == 64 // 8


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("b", [1, 4, 8, 32])
def test_random_patterns_minimum_of_three(seed, b):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 20, generator=g) * (torch.rand(6, 20, generator=g) < 0.3)
    flat = w.flatten().numpy()
    n, z = flat.size, int(np.count_nonzero(flat))
    pos = np.flatnonzero(flat)
    gaps = np.diff(np.concatenate([[-1], pos])) - 1
    rel = min((z + int((gaps // 2 ** p).sum())) * (p + b) for p in range(1, 17))
    best = min(n * b, n + z * b, rel)
    assert tensor_size(StoredTensor("w", w, b, overhead_bits=96)).size_bytes == _bytes(best + 96)


# --- quantised and shared tensors: overhead --------------------------------------------------------

# 2x8, |w| in [0.5, 1] per row: no kept value rounds to the zero level at 3..8 bits (qmax >= 3)
W_NONZERO = _t([0.5, -0.6, 0.7, -0.8, 0.9, -1.0, 0.55, -0.65,
                -0.75, 0.85, -0.95, 0.5, -0.52, 0.6, 0.8, -1.0])


@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("scheme, granularity, groups, offsets", [
    ("symmetric", "per_channel", 2, 0),
    ("symmetric", "per_tensor", 1, 0),
    ("asymmetric", "per_channel", 2, 2),
    ("asymmetric", "per_tensor", 1, 1),
])
def test_quantised_overhead(bits, scheme, granularity, groups, offsets):
    w = W_NONZERO.abs() + 0.5 if scheme == "asymmetric" else W_NONZERO   # asymmetric: lo > 0, never 0
    r = compress_layer(w, None, LayerSpec(quantize=QuantizeConfig(bits, scheme, granularity)))
    (t,) = r.tensors
    assert int(torch.count_nonzero(t.values)) == 16
    assert t.value_bits == bits and t.overhead_bits == groups * 32 + offsets * 32
    s = tensor_size(t)
    assert (s.encoding, s.size_bytes) == ("dense", _bytes(16 * bits + groups * 32 + offsets * 32))


def test_pruned_and_quantised_pattern():
    # prune by threshold 0 keeps exactly PATTERN's non-zeros; 8-bit per tensor keeps them non-zero
    r = compress_layer(PATTERN, None, LayerSpec(prune=MagnitudeConfig(threshold=0.0, scope="layer"),
                                                quantize=QuantizeConfig(8, "symmetric", "per_tensor")))
    (t,) = r.tensors
    assert torch.equal(t.values != 0, PATTERN != 0)
    b = 8
    dense, bitmask, relative = 16 * b, 16 + 3 * b, 3 * (4 + b)    # 128, 40, 36
    s = tensor_size(t)
    assert (s.encoding, s.size_bytes) == ("relative-4bit", _bytes(min(dense, bitmask, relative) + 32))


@pytest.mark.parametrize("m", [2, 3, 4, 5, 8, 9, 16])
def test_shared_codebook_and_index_bits(m):
    w = torch.linspace(1.0, 2.0, 16).reshape(2, 8)             # 16 distinct values, all non-zero
    r = compress_layer(w, None, LayerSpec(share=ShareConfig(clusters=m)))
    (t,) = r.tensors
    index_bits = math.ceil(math.log2(m))
    assert len(torch.unique(t.values)) == m
    assert t.value_bits == index_bits and t.overhead_bits == m * 32 and t.value_format == f"shared{m}"
    s = tensor_size(t)
    assert (s.encoding, s.size_bytes) == ("dense", _bytes(16 * index_bits + m * 32))


def test_shared_with_fewer_distinct_values_than_clusters():
    w = _t([1, 2, 3] * 5 + [1])                                # 3 distinct values, 16 clusters asked
    (t,) = compress_layer(w, None, LayerSpec(share=ShareConfig(clusters=16))).tensors
    assert t.value_bits == math.ceil(math.log2(3)) and t.overhead_bits == 3 * 32
    assert tensor_size(t).size_bytes == _bytes(16 * 2 + 3 * 32)


# --- model bytes and the workbench report --------------------------------------------------------

def test_model_bytes_by_hand():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    # Linear: 3·2 weights + 2 biases; BN: weight, bias, running mean, running var (2 each) as fp32,
    # plus num_batches_tracked, one int64
    assert model_bytes(model) == (3 * 2 + 2) * 4 + (4 * 2) * 4 + 1 * 8
    half = nn.Linear(4, 4).half()
    assert model_bytes(half) == (16 + 4) * 2



def _zoo(name: str) -> nn.Module:
    side = max(8, model_info(name).min_hw)
    return build_model(name, (1, side, side), 10)


@pytest.mark.parametrize("name", MODELS)
def test_model_bytes_is_every_tensor(name):
    model = _zoo(name)
    expected = sum(t.numel() * t.element_size() for t in model.parameters())
    expected += sum(t.numel() * t.element_size() for t in model.buffers())
    assert model_bytes(model) == expected
    # the state_dict holds the same tensors (nothing shared), including int64 num_batches_tracked
    assert expected == sum(t.numel() * t.element_size() for t in model.state_dict().values())
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    int64 = [t for t in model.buffers() if t.dtype == torch.int64]
    assert len(int64) == n_bn and (name != "resnet_mini" or n_bn == 6)


def _workbench(name: str) -> Workbench:
    model = _zoo(name)
    side = max(8, model_info(name).min_hw)
    x = torch.randn(16, 1, side, side, generator=torch.Generator().manual_seed(0))
    return Workbench(model, x, torch.arange(16) % 10)


def _hand_tensor_bytes(values: torch.Tensor, b: int, overhead: int) -> int:
    flat = values.detach().flatten().numpy()
    n, z = flat.size, int(np.count_nonzero(flat))
    options = [n * b]
    if z < n:
        gaps = np.diff(np.concatenate([[-1], np.flatnonzero(flat)])) - 1
        options.append(n + z * b)
        options.append(min((z + int((gaps // 2 ** p).sum())) * (p + b) for p in range(1, 17)))
    return _bytes(min(options) + overhead)


@pytest.mark.parametrize("name", MODELS)
def test_empty_recipe_costs_the_baseline(name):
    wb = _workbench(name)
    wb.apply(Recipe())
    rep = wb.report(accuracy=0.0)
    base = model_bytes(wb.baseline)
    assert rep["baseline"]["size_bytes"] == base
    assert rep["compressed"]["size_bytes"] == base
    assert rep["compressed"]["compression_ratio"] == 1.0
    assert sum(r["size_bytes"] for r in rep["layers"]) == base
    assert rep["baseline"]["params"] == sum(p.numel() for p in wb.baseline.parameters())


RECIPES = {
    "prune_q4": {"prune": {"sparsity": 0.7}, "quantize": {"bits": 4}},
    "channel_share": {"prune": {"method": "l1_channel", "sparsity": 0.25}, "share": {"clusters": 8}},
    "lowrank_prune_q8": {"low_rank": {"rank": 3}, "prune": {"sparsity": 0.5},
                         "quantize": {"bits": 8, "scheme": "asymmetric"}},
}


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("name", MODELS)
def test_report_total_is_the_sum_of_rows(name, recipe):
    wb = _workbench(name)
    wb.apply(Recipe(default=RECIPES[recipe]))
    rep = wb.report(accuracy=0.0)
    rows = rep["layers"]
    assert rep["compressed"]["size_bytes"] == sum(r["size_bytes"] for r in rows)
    assert rep["compressed"]["compression_ratio"] == rep["baseline"]["size_bytes"] / rep["compressed"]["size_bytes"]
    assert rep["compressed"]["size_bytes"] < rep["baseline"]["size_bytes"]
    # every module that owns tensors has one row, and nothing is counted twice
    owners = [n or "(model)" for n, m in wb.model.named_modules()
              if list(m.parameters(recurse=False)) or list(m.buffers(recurse=False))]
    assert [r["name"] for r in rows] == owners
    by_name = {r["name"]: r for r in rows}
    for lname, module in wb.layers.items():
        row = by_name[lname]
        result = wb.result(lname)
        weight_bytes = sum(_hand_tensor_bytes(t.values, t.value_bits, t.overhead_bits) for t in result.tensors)
        bias_bytes = 0 if module.bias is None else module.bias.numel() * 4
        assert (row["weight_bytes"], row["other_bytes"]) == (weight_bytes, bias_bytes)
        assert row["size_bytes"] == weight_bytes + bias_bytes
        assert row["params"] == module.weight.numel() + (0 if module.bias is None else module.bias.numel())
    for row in rows:
        if row["name"] not in wb.layers:
            module = dict(wb.model.named_modules())[row["name"] if row["name"] != "(model)" else ""]
            own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
            assert row["size_bytes"] == sum(t.numel() * t.element_size() for t in own)
