"""Compression methods against independent oracles (torch.nn.utils.prune, brute force, SVD)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from pet_core.errors import PetError
from pet_core.methods import METHODS, get_method
from pet_core.pipeline import compress_layer
from pet_core.recipe import Recipe
from pet_core.steps import STEPS, LayerSpec, method_of
from pet_core.methods.channel import ChannelConfig, channel_norms, channel_prune, channels_to_keep
from pet_core.methods.low_rank import LowRankConfig, as_matrix, low_rank, rank_for_energy
from pet_core.methods.magnitude import MagnitudeConfig, SortedScores, count_to_prune, keep_mask
from pet_core.methods.magnitude import magnitude_prune, magnitude_scores, threshold_for_sparsity
from pet_core.methods.quantize import QuantizeConfig, code_dtype, quantize
from pet_core.methods.share import ShareConfig, kmeans_1d, share

SPARSITIES = [0.0, 0.3, 0.5, 0.9, 0.99, 1.0]
SHAPES = {"linear": (24, 40), "conv": (8, 4, 3, 3)}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _modules() -> list[nn.Module]:
    torch.manual_seed(0)
    return [nn.Linear(40, 24), nn.Conv2d(4, 8, 3)]


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("name", list(METHODS))
def test_every_registered_method_runs_the_pipeline_on_every_shape(name, shape):
    """The registry's own example config, through the real pipeline (compress_layer), on a Linear and a
    Conv weight: shapes kept, inputs untouched, stored tensors consistent with the effective weight."""
    method = get_method(name)
    cfg = method.make_config(**method.example)
    w = nn.Parameter(torch.randn(shape, generator=_gen()))  # as a module weight, with grad
    bias = torch.randn(shape[0], generator=_gen(1))
    before, bias_before = w.detach().clone(), bias.clone()
    r = compress_layer(w.detach(), bias, LayerSpec(**{method.step: cfg}))
    assert r.weight.shape == w.shape and r.weight.dtype == w.dtype and not r.weight.requires_grad
    assert torch.equal(w.detach(), before) and torch.equal(bias, bias_before), "input modified in place"
    assert r.bias.shape == bias.shape
    assert not torch.equal(r.weight, w.detach()), f"{name} {method.example} changed nothing"
    if len(r.tensors) == 1:
        assert torch.equal(r.tensors[0].values.reshape(shape), r.weight)
    for t in r.tensors:
        assert 1 <= t.value_bits <= 32
    assert method.summary and method.label(cfg) and method.step in STEPS


def test_every_method_has_a_config_that_round_trips_through_a_recipe():
    for method in METHODS.values():
        recipe = Recipe(default={method.step: method.example_fields()})
        assert Recipe.from_dict(recipe.to_dict()) == recipe
        assert method_of(method.step, recipe.default[method.step]) is method


def test_channel_norm_follows_the_method():
    assert get_method("l1_channel").make_config(sparsity=0.1).norm == 1
    assert get_method("l2_channel").make_config(sparsity=0.1).norm == 2
    with pytest.raises(PetError):
        get_method("l1_channel").make_config(sparsity=0.1, method="l3_channel")
    with pytest.raises(PetError):
        get_method("quantize").make_config(nonsense=1)


def test_unknown_method_lists_known_names():
    with pytest.raises(PetError, match="magnitude.*low_rank"):
        get_method("prune_everything")


@pytest.mark.parametrize(
    "make",
    [
        lambda: MagnitudeConfig(), lambda: MagnitudeConfig(sparsity=0.5, threshold=0.1),
        lambda: MagnitudeConfig(sparsity=1.5), lambda: ChannelConfig(sparsity=0.5, method="l3_channel"),
        lambda: QuantizeConfig(bits=12), lambda: QuantizeConfig(scheme="fancy"),
        lambda: QuantizeConfig(granularity="per_row"), lambda: ShareConfig(clusters=0),
        lambda: LowRankConfig(), lambda: LowRankConfig(rank=2, energy=0.5), lambda: LowRankConfig(energy=0.0),
    ],
)
def test_invalid_configs_raise(make):
    with pytest.raises(PetError):
        make()


def test_count_to_prune_matches_torch():
    for n in (1, 5, 10, 15, 101):
        for s in (0.0, 0.05, 0.25, 0.5, 0.3, 0.75, 0.99, 1.0):
            assert count_to_prune(n, s) == prune._compute_nparams_toprune(s, n)


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_magnitude_matches_l1_unstructured(sparsity):
    for module in _modules():
        w = module.weight.detach().clone()
        _, mask = magnitude_prune(w, MagnitudeConfig(sparsity=sparsity))
        prune.l1_unstructured(module, "weight", amount=sparsity)
        assert mask.dtype == torch.bool
        assert torch.equal(mask, module.weight_mask.bool())


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_sorted_scores_match_global_unstructured(sparsity):
    torch.manual_seed(1)
    modules = [nn.Linear(30, 20), nn.Conv2d(3, 6, 3), nn.Linear(20, 5)]
    weights = [m.weight.detach().clone() for m in modules]
    scores = [magnitude_scores(w) for w in weights]
    t = SortedScores(scores).threshold(sparsity)
    prune.global_unstructured(
        [(m, "weight") for m in modules], pruning_method=prune.L1Unstructured, amount=sparsity
    )
    for m, s in zip(modules, scores):
        assert torch.equal(keep_mask(s, t), m.weight_mask.bool())


def test_sorted_scores_agree_with_kthvalue_threshold():
    s = torch.rand(1000, generator=_gen())
    sorted_scores = SortedScores([s[:300], s[300:].reshape(35, 20)])
    for sp in (0.0, 0.001, 0.1, 0.5, 0.77, 1.0):
        assert sorted_scores.threshold(sp) == threshold_for_sparsity(s, sp)


def test_threshold_mode_keeps_strictly_above():
    w = torch.randn(20, 30, generator=_gen())
    t = float(w.abs().median())  # a value that occurs: equality must be pruned
    pruned, mask = magnitude_prune(w, MagnitudeConfig(threshold=t))
    assert torch.equal(mask, w.abs() > t)
    assert torch.equal(pruned, torch.where(mask, w, torch.zeros_like(w)))


@pytest.mark.parametrize("norm", [1, 2])
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_channel_matches_ln_structured(norm, sparsity):
    for module in _modules():
        w = module.weight.detach().clone()
        pruned, mask = channel_prune(w, ChannelConfig(sparsity=sparsity, method=f"l{norm}_channel"))
        prune.ln_structured(module, "weight", amount=sparsity, n=norm, dim=0)
        assert mask.shape == w.shape
        assert torch.equal(mask, module.weight_mask.bool())
        assert torch.equal(pruned, w * module.weight_mask)


def test_channel_threshold_and_ties():
    w = torch.tensor([[1.0, 1.0], [0.5, 0.5], [1.0, -1.0], [3.0, 0.0]])
    assert torch.equal(channel_norms(w, 1), torch.tensor([2.0, 1.0, 2.0, 3.0]))
    # tie between channels 0 and 2: the lower index is pruned first
    assert channels_to_keep(channel_norms(w, 1), 0.5).tolist() == [False, False, True, True]
    _, mask = channel_prune(w, ChannelConfig(threshold=2.0))
    assert mask[:, 0].tolist() == [False, False, False, True]


def _groups(t: torch.Tensor, granularity: str) -> torch.Tensor:
    return t.reshape(1, -1) if granularity == "per_tensor" else t.reshape(t.shape[0], -1)


@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8, 16])
def test_quantize_error_levels_and_codes(bits, scheme, granularity, masked):
    w = torch.randn(8, 4, 3, 3, generator=_gen(bits)) * torch.linspace(0.1, 3.0, 8).reshape(8, 1, 1, 1)
    w[0, 0, 0, 0] = 50.0  # outlier, pruned when masked: must not widen the range
    mask = torch.rand(w.shape, generator=_gen(99)) > 0.4 if masked else torch.ones_like(w, dtype=torch.bool)
    if masked:
        mask[0, 0, 0, 0] = False
    before = w.clone()
    q = quantize(w, QuantizeConfig(bits=bits, scheme=scheme, granularity=granularity), mask if masked else None)
    assert torch.equal(w, before)
    assert q.values.shape == w.shape and q.values.dtype == w.dtype
    assert q.codes.dtype == code_dtype(bits) and q.bits == bits      # the narrowest integer type
    n_groups = 1 if granularity == "per_tensor" else 8
    assert q.scale.shape == q.step.shape == (n_groups,)
    assert (q.offset is None) == (scheme == "symmetric")

    # pruned positions exactly 0, code 0
    assert torch.all(q.values[~mask] == 0) and torch.all(q.codes[~mask] == 0)

    vg, wg, cg, kg = (_groups(t, granularity) for t in (q.values, w, q.codes, mask))
    for i in range(n_groups):
        kept_w, kept_v, kept_c = wg[i][kg[i]], vg[i][kg[i]], cg[i][kg[i]]
        absmax = float(kept_w.abs().max())
        err = (kept_v - kept_w).abs().max()
        assert err <= float(q.step[i]) / 2 + 1e-6 * absmax
        assert kept_v.unique().numel() <= 2**bits
        if scheme == "asymmetric":
            assert kept_c.min() >= 0 and kept_c.max() <= 2**bits - 1
        elif bits == 1:
            assert set(kept_c.tolist()) <= {-1, 1}
        else:
            qmax = 2 ** (bits - 1) - 1
            assert kept_c.abs().max() <= qmax
    if masked and bits >= 4:
        assert float(q.step.max()) < 5.0, "pruned outlier widened the range"


def test_quantize_all_zero_and_all_pruned_groups():
    w = torch.zeros(3, 4)
    w[2] = torch.tensor([1.0, -1.0, 0.5, 0.25])
    mask = torch.ones_like(w, dtype=torch.bool)
    mask[1] = False
    for scheme in ("symmetric", "asymmetric"):
        q = quantize(w, QuantizeConfig(bits=8, scheme=scheme), mask)
        assert torch.isfinite(q.scale).all() and torch.isfinite(q.values).all()
        assert torch.equal(q.values[:2], torch.zeros(2, 4))


def _nearest_objective(x: torch.Tensor, c: torch.Tensor) -> float:
    """Brute-force k-means objective in float64 (independent of the implementation)."""
    x64, c64 = x.double().reshape(-1, 1), c.double().reshape(1, -1)
    return float(((x64 - c64) ** 2).min(dim=1).values.sum())


@pytest.mark.parametrize("k", [2, 5, 8])
def test_share_lossless_when_few_distinct(k):
    levels = torch.tensor([-0.7, -0.1, 0.0, 0.3, 2.5])[:k]  # k >= number of distinct values
    w = levels[torch.randint(0, levels.numel(), (16, 10), generator=_gen())]
    s = share(w, ShareConfig(clusters=k))
    assert torch.equal(s.values, w)
    assert torch.equal(s.codebook[s.codes.long()], w)


@pytest.mark.parametrize("k", [2, 4, 16, 32])
def test_share_kmeans_properties(k):
    w = torch.randn(30, 50, generator=_gen(k))
    mask = torch.rand(w.shape, generator=_gen(7)) > 0.3
    s = share(w, ShareConfig(clusters=k), mask)
    assert s.codes.dtype == torch.int32 and s.codebook.dtype == torch.float32
    assert torch.all(s.codebook[1:] > s.codebook[:-1]) and s.codebook.numel() <= k
    assert torch.all(s.values[~mask] == 0) and torch.all(s.codes[~mask] == 0)
    assert s.values[mask].unique().numel() <= k
    assert torch.equal(s.values[mask], s.codebook[s.codes[mask].long()])
    # every kept weight sits on its nearest centroid (brute force)
    kept = w[mask]
    dist = (kept[:, None].double() - s.codebook[None, :].double()).abs()
    chosen = dist.gather(1, s.codes[mask].long()[:, None]).squeeze(1)
    assert torch.all(chosen <= dist.min(dim=1).values + 1e-6)
    # objective does not increase vs. the linear initialisation
    init = torch.linspace(float(kept.min()), float(kept.max()), k)
    assert _nearest_objective(kept, s.codebook) <= _nearest_objective(kept, init) + 1e-6


def test_kmeans_drops_empty_clusters_and_reindexes():
    # two tight lumps far apart, too many distinct values for the exact path: Lloyd's linear init
    # with k=6 leaves the middle clusters empty
    x = torch.cat([torch.full((2000,), -1.0) + 1e-5 * torch.arange(2000), torch.full((50,), 9.0)])
    c, codes = kmeans_1d(x, 6, 30)
    assert c.numel() < 6
    assert codes.max() == c.numel() - 1 and codes.min() == 0
    assert torch.bincount(codes.long(), minlength=c.numel()).min() > 0


@pytest.mark.parametrize("shape", [(30, 20), (20, 30), (8, 4, 3, 3)], ids=["tall", "wide", "conv"])
@pytest.mark.parametrize("rank", [1, 3, 7])
def test_low_rank_eckart_young(shape, rank):
    w = torch.randn(shape, generator=_gen(rank))
    f = low_rank(w, LowRankConfig(rank=rank))
    assert f.rank == rank and f.first.shape == (shape[0], rank)
    assert f.second.shape == (rank, as_matrix(w).shape[1])
    assert torch.equal(f.values, (f.first @ f.second).reshape(w.shape))
    s = torch.linalg.svdvals(w.reshape(shape[0], -1).double())
    expected = float((s[rank:] ** 2).sum())
    got = float(((w - f.values).double() ** 2).sum())
    assert got == pytest.approx(expected, rel=1e-4)


def test_low_rank_rank_is_clipped_and_energy_edges():
    w = torch.randn(6, 10, generator=_gen())
    assert low_rank(w, LowRankConfig(rank=100)).rank == 6
    # a rank-3 matrix: energy 1.0 gives the numerical rank, not the full size
    a = torch.randn(30, 3, generator=_gen(1)) @ torch.randn(3, 20, generator=_gen(2))
    s = torch.linalg.svdvals(a)
    assert rank_for_energy(s, 1.0) == int(torch.linalg.matrix_rank(a)) == 3
    assert low_rank(a, LowRankConfig(energy=1.0)).rank == 3
    assert rank_for_energy(s, 1e-9) == 1
    assert rank_for_energy(torch.zeros(5), 0.9) == 1
    full = torch.linalg.svdvals(torch.randn(12, 12, generator=_gen(3)))
    ranks = [rank_for_energy(full, e) for e in (0.1, 0.5, 0.9, 0.99, 1.0)]
    assert ranks == sorted(ranks) and ranks[-1] == 12
    r = rank_for_energy(full, 0.9)
    frac = torch.cumsum(full**2, 0) / (full**2).sum()
    assert frac[r - 1] >= 0.9 - 1e-6 and (r == 1 or frac[r - 2] < 0.9)


def test_low_rank_rejects_vectors():
    with pytest.raises(PetError):
        low_rank(torch.randn(5), LowRankConfig(rank=1))

