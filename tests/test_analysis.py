"""Weight statistics against numpy (float64), histograms against numpy.histogram, SVD against LAPACK."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import pet_core.analysis as analysis
from pet_core.analysis import analysis_report, analyze, histogram, layer_stats, singular_values
from pet_core.layers import compressible_layers
from pet_core.zoo import build_model, list_models, model_info

MODELS = [m.name for m in list_models()]
SHAPES = [(40, 30), (16, 8, 3, 3), (5, 1), (1, 64), (12, 4, 5)]



def _weights(shape, seed: int, zero_frac: float = 0.2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.1
    w = w * (torch.rand(shape, generator=g) >= zero_frac)            # zeros inserted
    flat = w.view(-1)
    if flat.numel() >= 20:
        flat[3] = 2.5                                                  # outliers far beyond 3 std
        flat[7] = -1.75
    return w


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_layer_stats_against_numpy(shape, seed):
    w = _weights(shape, seed)
    a = w.numpy().astype(np.float64).ravel()
    n = a.size
    mean = a.mean()
    m2 = ((a - mean) ** 2).mean()
    m4 = ((a - mean) ** 4).mean()
    std = np.sqrt(m2)
    s = layer_stats("l", "Linear", w)
    assert s.params == n and s.shape == list(shape)
    assert s.nonzero == int(np.count_nonzero(a))
    assert s.sparsity == pytest.approx(1 - np.count_nonzero(a) / n, abs=1e-12)
    assert s.min == a.min() and s.max == a.max()                      # exact: min and max are values
    assert s.abs_max == np.abs(a).max()
    assert s.mean == pytest.approx(mean, rel=1e-5, abs=1e-7)
    assert s.std == pytest.approx(np.std(a, ddof=0), rel=1e-5)
    assert s.std == pytest.approx(std, rel=1e-5)
    assert s.kurtosis == pytest.approx(m4 / m2 ** 2 - 3.0, rel=1e-4, abs=1e-4)
    assert s.outlier_fraction == np.count_nonzero(np.abs(a - mean) > 3 * std) / n
    if n >= 20:
        assert s.outlier_fraction > 0
    rows = a.reshape(shape[0], -1)
    np.testing.assert_allclose(s.channel_l1, np.abs(rows).sum(1), rtol=1e-5)
    np.testing.assert_allclose(s.channel_l2, np.sqrt((rows ** 2).sum(1)), rtol=1e-5)
    assert len(s.channel_l1) == len(s.channel_l2) == shape[0]


def test_layer_stats_known_values():
    # [0, 1, 2, 3]: mean 1.5, population variance 1.25, m4 = (2·1.5^4 + 2·0.5^4)/4 = 2.5625
    s = layer_stats("fc", "Linear", torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    assert (s.nonzero, s.sparsity, s.mean, s.min, s.max) == (3, 0.25, 1.5, 0.0, 3.0)
    assert s.std == pytest.approx(1.25 ** 0.5)
    assert s.kurtosis == pytest.approx(2.5625 / 1.25 ** 2 - 3)
    assert s.outlier_fraction == 0.0
    assert s.channel_l1 == [1.0, 5.0] and s.channel_l2 == pytest.approx([1.0, 13 ** 0.5])


def test_constant_and_all_zero_tensors():
    for w in (torch.zeros(4, 4), torch.full((3, 5), 0.25)):
        s = layer_stats("c", "Linear", w)
        assert s.std == 0.0 and s.kurtosis == 0.0 and s.outlier_fraction == 0.0
        assert sum(s.hist_counts) == w.numel()
        assert s.nonzero == int(torch.count_nonzero(w))


def test_layer_stats_does_not_modify_input():
    w = _weights((10, 10), 0)
    before = w.clone()
    layer_stats("l", "Linear", w)
    assert torch.equal(w, before)


# --- histograms ---------------------------------------------------------------------------------

def _edge_free(bins: int, n: int, seed: int, lo: float = -3.0, hi: float = 3.0) -> torch.Tensor:
    """Values at random bin positions at least 5% of a bin away from every inner edge, plus lo and hi."""
    rng = np.random.default_rng(seed)
    width = (hi - lo) / bins
    which = rng.integers(0, bins, n)
    frac = rng.uniform(0.05, 0.95, n)
    vals = lo + (which + frac) * width
    vals = np.concatenate([[lo, hi], vals]).astype(np.float32)
    rng.shuffle(vals)
    return torch.from_numpy(vals)


@pytest.mark.parametrize("bins", [1, 7, 12, 60])
@pytest.mark.parametrize("seed", range(3))
def test_histogram_counts_equal_numpy(bins, seed):
    v = _edge_free(bins, 2000, seed)
    counts, edges, sampled = histogram(v, bins)
    a = v.numpy().astype(np.float64)
    want, want_edges = np.histogram(a, bins=bins, range=(a.min(), a.max()))
    assert counts == want.tolist()
    np.testing.assert_allclose(edges, want_edges, rtol=0, atol=1e-6)
    assert not sampled and sum(counts) == v.numel()


@pytest.mark.parametrize("seed", range(3))
def test_layer_stats_histogram_equals_numpy(seed):
    v = _edge_free(60, 2998, seed, lo=-0.4, hi=0.9).reshape(30, 100)   # 2998 + lo + hi
    s = layer_stats("l", "Linear", v)
    a = v.numpy().astype(np.float64).ravel()
    want, _ = np.histogram(a, bins=60, range=(a.min(), a.max()))
    assert s.hist_counts == want.tolist() and not s.hist_sampled
    assert len(s.hist_edges) == 61 and s.hist_edges[0] == s.min and s.hist_edges[-1] == pytest.approx(s.max)


def test_histogram_random_normal_totals():
    """Random data (values can sit on edges): counts may move by one bin at an edge, never get lost."""
    v = torch.randn(5000, generator=torch.Generator().manual_seed(1))
    counts, edges, _ = histogram(v, 40)
    a = v.numpy().astype(np.float64)
    want, _ = np.histogram(a, bins=40, range=(a.min(), a.max()))
    assert sum(counts) == 5000
    assert np.abs(np.cumsum(counts) - np.cumsum(want)).max() <= 1


def test_histogram_sampled_when_large(monkeypatch):
    monkeypatch.setattr(analysis, "HIST_MAX_SAMPLES", 1000)
    w = _edge_free(60, 4318, 0).reshape(40, 108)                    # 4318 + lo + hi = 4320 > 1000
    s = layer_stats("big", "Linear", w)
    assert s.hist_sampled
    stride = -(-4320 // 1000)                                       # ceil: 5
    sample = w.flatten()[::stride].numpy().astype(np.float64)
    assert sum(s.hist_counts) == sample.size == 864
    full = w.numpy().astype(np.float64)
    want, _ = np.histogram(sample, bins=60, range=(full.min(), full.max()))
    assert s.hist_counts == want.tolist()
    # the statistics still cover every weight
    assert s.params == 4320 and s.mean == pytest.approx(full.mean(), rel=1e-5, abs=1e-7)
    # at or below the limit: not sampled
    small = layer_stats("small", "Linear", w[:9])                    # 9·108 = 972 <= 1000
    assert not small.hist_sampled and sum(small.hist_counts) == 972


def test_histogram_explicit_max_samples():
    v = torch.arange(10, dtype=torch.float32)
    counts, _, sampled = histogram(v, 5, max_samples=4)
    assert sampled and sum(counts) == len(range(0, 10, 3))          # stride ceil(10/4) = 3


# --- singular values ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_singular_values(shape):
    w = _weights(shape, 5, zero_frac=0.0)
    s = singular_values(w)
    m = w.reshape(shape[0], -1)
    torch.testing.assert_close(s, torch.linalg.svdvals(m), rtol=0, atol=0)
    np.testing.assert_allclose(s.numpy(), np.linalg.svd(m.numpy().astype(np.float64), compute_uv=False),
                               rtol=1e-4, atol=1e-6)
    assert s.numel() == min(m.shape) and bool((s[:-1] >= s[1:]).all())


# --- whole models ---------------------------------------------------------------------------------

def _zoo(name: str) -> nn.Module:
    side = max(8, model_info(name).min_hw)
    return build_model(name, (1, side, side), 10)


@pytest.mark.parametrize("name", MODELS)
def test_analyze_every_compressible_layer(name):
    model = _zoo(name)
    stats = analyze(model, bins=30)
    expected = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    assert [s.name for s in stats] == expected
    for s in stats:
        w = model.get_submodule(s.name).weight
        assert s.shape == list(w.shape) and s.params == w.numel() and len(s.hist_counts) == 30
        assert s.type == type(model.get_submodule(s.name)).__name__


def test_analysis_report_lists_skipped_batchnorm():
    model = _zoo("resnet_mini")
    rep = analysis_report(model)
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 6
    skipped = {r["name"]: r for r in rep["skipped"]}
    assert set(skipped) == set(bns), "exactly the BatchNorm layers are skipped (the rest own no tensors)"
    for n in bns:
        assert skipped[n]["type"] == "BatchNorm2d"
        assert "kept at fp32" in skipped[n]["reason"]
    layer_names = [layer["name"] for layer in rep["layers"]]
    assert layer_names == list(compressible_layers(model))
    assert not set(layer_names) & set(bns)
    assert {"hist_counts", "channel_l1", "kurtosis"} <= set(rep["layers"][0])


@pytest.mark.parametrize("name", ["lenet_300_100", "lenet5", "mnist_cnn"])
def test_analysis_report_nothing_skipped_without_bn(name):
    assert analysis_report(_zoo(name))["skipped"] == []


def test_as_dict_without_arrays():
    s = layer_stats("l", "Linear", _weights((4, 4), 0))
    d = s.as_dict(with_arrays=False)
    assert not {"hist_counts", "hist_edges", "channel_l1", "channel_l2"} & set(d)
    assert d["mean"] == s.mean
