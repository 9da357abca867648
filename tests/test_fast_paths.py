"""The fast size, Huffman, quantisation and analysis paths equal simple reference implementations.

Each reference is written out here the plain way (one pass per gap width, the full packed streams,
the quantisation formula with a temporary per step), on random and tie-heavy tensors; results
must be equal (bit for bit where the engine promises it), not close.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pet_core.analysis import analyze, layer_stats
from pet_core.encoding import MAX_INDEX_BITS, StoredTensor, filler_counts, gaps_of, layout_options, nonzero_positions
from pet_core.methods.quantize import QuantizeConfig, quantize
from pet_core.packed.huffman import huffman_bits, huffman_bits_of_counts
from pet_core.packed.streams import build_streams
from pet_core.packed.tensor_blob import blob_bytes, huffman_tensor_bytes
from pet_core.pipeline import compress_layer
from pet_core.recipe import Recipe
from pet_core.size import tensor_size
from pet_core.steps import resolve


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _compressed(w: torch.Tensor, steps: dict) -> StoredTensor:
    spec = resolve(Recipe(default=steps).default, {}, ["x"])["x"]
    return compress_layer(w, None, spec).tensors[0]


CODINGS = ([{"quantize": {"bits": b, "scheme": s, "granularity": g}} for b in (1, 2, 4, 8)
            for s in ("symmetric", "asymmetric") for g in ("per_channel", "per_tensor")]
           + [{"share": {"clusters": c}} for c in (2, 16, 256)])
PRUNES = [{}, {"prune": {"sparsity": 0.3, "scope": "layer"}}, {"prune": {"sparsity": 0.9, "scope": "layer"}},
          {"prune": {"sparsity": 0.999, "scope": "layer"}}, {"prune": {"method": "nm", "n": 2, "m": 4}}]


def _tensors():
    """Stored tensors over codings x prunings, on random and on tie-heavy (rounded) weights."""
    for i, (coding, prune) in enumerate((c, p) for c in CODINGS for p in PRUNES):
        w = torch.randn(24, 45, generator=_gen(i))
        if i % 2:
            w = (w * 2).round() / 2                          # ties, and exact zeros before pruning
        yield f"{i}", _compressed(w, {**prune, **coding})


# --- layouts ---------------------------------------------------------------------------------------

def _fillers_reference(gaps: np.ndarray) -> list[int]:
    return [int((gaps >> p).sum()) for p in range(MAX_INDEX_BITS + 1)]


@pytest.mark.parametrize("seed", range(4))
def test_filler_counts_equal_one_pass_per_width(seed):
    rng = np.random.default_rng(seed)
    gaps = rng.geometric(0.01 * (seed + 1), size=5000) - 1
    if seed % 2:
        gaps[::97] = rng.integers(1 << 16, 1 << 22, size=gaps[::97].size)    # some gaps past 2^16
    assert filler_counts(gaps).tolist() == _fillers_reference(gaps)
    assert filler_counts(gaps[:0]).tolist() == [0] * (MAX_INDEX_BITS + 1)


def _relative_reference(pos: np.ndarray, n: int, b: int) -> dict[str, int]:
    if pos.size >= n:
        return {}
    gaps = gaps_of(pos)
    best = min(((pos.size + int((gaps >> p).sum())) * (p + b), p) for p in range(1, MAX_INDEX_BITS + 1))
    return {f"relative-{best[1]}bit": best[0]}


def test_layout_search_and_tensor_size_equal_the_formulas():
    for _, t in _tensors():
        pos = nonzero_positions(t.values)
        n, z, b = t.values.numel(), pos.size, t.value_bits
        options = {label: bits for label, (_, bits) in layout_options(t).items()}
        want = {"dense": n * b, **({"bitmask": n + z * b} if z < n else {}), **_relative_reference(pos, n, b)}
        assert {k: v for k, v in options.items() if not k.startswith("nm")} == want
        size = tensor_size(t)
        best = min(options.values())
        assert size.nonzero == int(torch.count_nonzero(t.values)) == z
        assert size.size_bytes == (best + t.overhead_bits + 7) // 8
        assert options[size.encoding] == best


# --- Huffman ---------------------------------------------------------------------------------------

def test_huffman_bits_of_counts_equal_the_stream_count():
    rng = np.random.default_rng(0)
    for width in (1, 2, 4, 8, 12):
        symbols = np.minimum(rng.geometric(0.3, size=3000) - 1, (1 << width) - 1)
        freqs = np.bincount(symbols, minlength=1 << width)
        assert huffman_bits_of_counts(freqs, width) == huffman_bits(symbols, width)


def test_huffman_tensor_bytes_equal_the_built_streams_in_every_layout():
    checked = 0
    for name, t in _tensors():
        labels = set(layout_options(t)) | {f"relative-{p}bit" for p in range(1, MAX_INDEX_BITS + 1)}
        if int(torch.count_nonzero(t.values)) == t.values.numel():
            labels = {label for label in labels if not label.startswith(("relative", "bitmask"))}
        for label in sorted(labels):
            assert huffman_tensor_bytes(t, label) == blob_bytes(build_streams(t, label), huffman=True), (name, label)
            checked += 1
    assert checked > 1000


# --- quantisation ----------------------------------------------------------------------------------

def _quantize_reference(w: torch.Tensor, cfg: QuantizeConfig, mask: torch.Tensor | None):
    """Today's formula, one temporary per step (as it was written before it was fused)."""
    cdt = torch.float64 if w.dtype == torch.float64 else torch.float32
    g = w.detach().to(cdt)
    g = g.reshape(1, -1) if cfg.granularity == "per_tensor" else g.reshape(g.shape[0], -1)
    keep = torch.ones_like(g, dtype=torch.bool) if mask is None else mask.bool().reshape(g.shape)
    inf = torch.tensor(float("inf"), dtype=g.dtype)
    lo = torch.where(keep, g, inf).amin(dim=1)
    hi = torch.where(keep, g, -inf).amax(dim=1)
    empty = ~keep.any(dim=1)
    lo, hi = torch.where(empty, torch.zeros_like(lo), lo), torch.where(empty, torch.zeros_like(hi), hi)
    absmax = torch.maximum(lo.abs(), hi.abs())
    if cfg.scheme == "symmetric" and cfg.bits == 1:
        codes, scale = torch.where(g >= 0, 1, -1).to(torch.int32), absmax / 2
        values = codes.to(cdt) * scale[:, None]
    elif cfg.scheme == "symmetric":
        qmax = 2 ** (cfg.bits - 1) - 1
        scale = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))
        codes = torch.clamp(torch.round(g / scale[:, None]), -qmax, qmax).to(torch.int32)
        values = codes.to(cdt) * scale[:, None]
    else:
        levels = 2 ** cfg.bits - 1
        scale = torch.where(hi - lo > 0, (hi - lo) / levels, torch.ones_like(lo))
        codes = torch.clamp(torch.round((g - lo[:, None]) / scale[:, None]), 0, levels).to(torch.int32)
        values = lo[:, None] + codes.to(cdt) * scale[:, None]
    codes = torch.where(keep, codes, torch.zeros_like(codes))
    return (values * keep).reshape(w.shape).to(w.dtype), codes.reshape(w.shape), scale.to(torch.float32)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns (so that -0.0 and +0.0 differ)."""
    ints = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16}
    return t.contiguous().view(ints[t.dtype]) if t.dtype in ints else t


@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
def test_quantize_equals_the_reference_bit_for_bit(scheme, bits):
    for i, shape in enumerate([(23, 17), (8, 3, 3, 3), (1, 40), (40,)]):
        for dtype in (torch.float32, torch.float64, torch.float16):
            w = torch.randn(*shape, generator=_gen(i)).to(dtype)
            if w.dim() == 2:
                w = w.t().contiguous().t()                     # strided, like HF Conv1D's canonical view
            w[0] = 0.0 * w[0]                                  # a channel of ±0.0
            if i % 2:
                w = (w * 3).round() / 3
            for mask in (None, torch.rand(w.shape, generator=_gen(i + 9)) > 0.5):
                for granularity in ("per_channel", "per_tensor"):
                    cfg = QuantizeConfig(bits=bits, scheme=scheme, granularity=granularity)
                    q = quantize(w, cfg, mask)
                    values, codes, scale = _quantize_reference(w, cfg, mask)
                    assert torch.equal(_bits(q.values), _bits(values))
                    assert torch.equal(q.codes, codes) and torch.equal(_bits(q.scale), _bits(scale))


# --- analysis --------------------------------------------------------------------------------------

def test_layer_stats_of_a_transposed_view_equal_those_of_its_copy():
    stored = torch.randn(30, 50, generator=_gen(3)) * 0.1                # as HF's Conv1D stores (in, out)
    stored[stored.abs() < 0.02] = 0
    a, b = layer_stats("t", "Conv1D", stored.t()), layer_stats("c", "Conv1D", stored.t().contiguous())
    assert (a.nonzero, a.min, a.max, a.hist_counts, a.shape) == (b.nonzero, b.min, b.max, b.hist_counts, b.shape)
    assert a.mean == pytest.approx(b.mean, rel=1e-6, abs=1e-9) and a.std == pytest.approx(b.std, rel=1e-6)
    assert a.outlier_fraction == b.outlier_fraction
    np.testing.assert_allclose(a.channel_l2, b.channel_l2, rtol=1e-6)


def test_moments_over_many_chunks_equal_float64(monkeypatch):
    import pet_core.analysis as analysis
    monkeypatch.setattr(analysis, "CHUNK", 37)
    w = torch.randn(41, 29, generator=_gen(4)) + 3.0                   # a mean far from 0
    a = w.numpy().astype(np.float64).ravel()
    s = layer_stats("l", "Linear", w)
    d = a - a.mean()
    assert s.mean == pytest.approx(a.mean(), rel=1e-7)
    assert s.std == pytest.approx(math.sqrt((d ** 2).mean()), rel=1e-6)
    assert s.kurtosis == pytest.approx((d ** 4).mean() / (d ** 2).mean() ** 2 - 3, rel=1e-5, abs=1e-5)


def test_analyze_covers_every_target_in_its_canonical_layout():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(11, 6)
            self.fc = nn.Linear(6, 4)

    model = Tiny()
    stats = analyze(model, bins=10)
    assert [(s.name, s.type, s.shape) for s in stats] == [("emb", "Embedding", [11, 6]), ("fc", "Linear", [4, 6])]
