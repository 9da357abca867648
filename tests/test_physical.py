"""Physical channel pruning: the smaller dense model must compute exactly what the masked model does.

The oracle is the workbench's masked working copy (``wb.model``): same outputs on the whole digits
test set, fewer parameters, and the result survives a state_dict round trip and torch.jit.trace.
"""

from __future__ import annotations

import copy
import io
from collections import OrderedDict

import pytest
import torch
from torch import nn

from pet_core.errors import PetError
from pet_core.latency import measure_latency
from pet_core.loader import load_baseline, open_workbench
from pet_core.physical import ConstInputConv2d, channel_keep_masks, physically_prune
from pet_core.recipe import Recipe
from pet_core.zoo import list_models

MODELS = [m.name for m in list_models()]
TOL = 1e-4


def _classifier(model: nn.Module) -> str:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]


@pytest.fixture(scope="module", params=MODELS)
def pruned(request):
    """(workbench at 50% L1 channel pruning except the classifier, pruned model, info, keep masks)."""
    base = load_baseline(request.param, "digits")
    wb = open_workbench(base)
    wb.apply(Recipe(default={"prune": {"method": "l1_channel", "sparsity": 0.5}},
                    layers={_classifier(base.model): {"prune": None}}))
    keep = channel_keep_masks(wb)
    before = copy.deepcopy(wb.model.state_dict())
    model, info = physically_prune(wb.model, keep, wb.x_eval[:8])
    after = wb.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the input model was mutated"
    return request.param, wb, model, info, keep


@torch.no_grad()
def test_outputs_equal_masked_model(pruned):
    _, wb, model, _, _ = pruned
    diff = (model(wb.x_eval) - wb.model(wb.x_eval)).abs().max()   # (N, classes), whole test set
    assert float(diff) <= TOL
    assert wb.evaluate(model) == wb.evaluate()


def test_smaller_and_channels_removed(pruned):
    name, wb, model, info, keep = pruned
    assert info["params_after"] == sum(p.numel() for p in model.parameters())
    assert info["params_after"] < info["params_before"] == sum(p.numel() for p in wb.model.parameters())
    assert _classifier(wb.model) not in keep
    assert info["layers"][_classifier(wb.model)]["out_after"] == info["layers"][_classifier(wb.model)]["out_before"]
    shrunk = [n for n, row in info["layers"].items() if row["out_after"] < row["out_before"]]
    assert shrunk, info
    if name != "resnet_mini":  # no residual sums: every pruned channel goes
        for layer, mask in keep.items():
            assert info["layers"][layer]["out_after"] == int(mask.sum())
        assert info["skipped"] == []


def test_state_dict_round_trip_and_trace(pruned):
    _, wb, model, _, _ = pruned
    x = wb.x_eval[:32]
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    other.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    traced = torch.jit.trace(model, x[:2])
    with torch.no_grad():
        want = model(x)
        assert torch.allclose(other(x), want, atol=1e-6)
        assert torch.allclose(traced(x), want, atol=1e-5)


def test_resnet_mini_residual_groups_and_bn_constants():
    base = load_baseline("resnet_mini", "digits")
    wb = open_workbench(base)
    wb.apply(Recipe(default={"prune": {"method": "l1_channel", "sparsity": 0.5}}, layers={"fc": {"prune": None}}))
    keep = channel_keep_masks(wb)
    model, info = physically_prune(wb.model, keep, wb.x_eval[:8])
    # the masked model zeroes conv weights but not BatchNorm: a removed channel's BN output is a constant
    bn = wb.model.stem.bn
    shift = (bn.bias - bn.weight * bn.running_mean / torch.sqrt(bn.running_var + bn.eps)).detach()
    assert float(shift[~keep["stem.conv"]].abs().max()) > 1e-3
    # intersection rule: the identity-coupled group keeps channels pruned in only one member
    both = int((~keep["stem.conv"] & ~keep["block1.conv2"]).sum())
    assert info["layers"]["stem.conv"]["out_after"] == 16 - both == info["layers"]["block1.conv2"]["out_after"]
    assert any(set(s["layers"]) == {"stem.conv", "block1.conv2"} and "intersection" in s["reason"]
               for s in info["skipped"])
    # padded convs get the exact border-aware constant; without it the outputs differ
    padded = [f["layer"] for f in info["folded"] if f["kind"] == "const_kernel"]
    assert padded and all(isinstance(model.get_submodule(n), ConstInputConv2d) for n in padded)
    x = wb.x_eval[:64]
    with torch.no_grad():
        broken = copy.deepcopy(model)
        for m in broken.modules():
            if isinstance(m, ConstInputConv2d):
                m.const_kernel.zero_()
        assert float((broken(x) - wb.model(x)).abs().max()) > 1e-3
        interior_only = copy.deepcopy(model)  # the naive fold: the interior value as a plain bias
        conv = interior_only.get_submodule(padded[0])
        conv.bias = nn.Parameter(conv.const_kernel.flatten(1).sum(1) + (0 if conv.bias is None else conv.bias))
        conv.const_kernel.zero_()
        assert float((interior_only(x) - wb.model(x)).abs().max()) > 1e-4
    # the cached (eval) and recomputed (train) maps agree; in train mode grads reach const_kernel
    conv = model.get_submodule(padded[0])
    with torch.no_grad():
        cached = conv(conv.const_bias.new_ones(2, conv.in_channels, 8, 8))
    conv.train()
    fresh = conv(conv.const_bias.new_ones(2, conv.in_channels, 8, 8))
    fresh.sum().backward()
    conv.eval()
    assert conv.const_kernel.grad is not None and torch.allclose(cached, fresh.detach(), atol=1e-6)
    # the input size is free: 28x28 inputs still match the masked model
    with torch.no_grad():
        big = torch.randn(3, 1, 28, 28)
        assert torch.allclose(model(big), wb.model(big), atol=TOL)
        model(x)  # back to the built size: a trace at 28x28 computes the map inline
        assert torch.allclose(torch.jit.trace(model, big[:1])(big), wb.model(big), atol=TOL)


def _tiny(pool: nn.Module) -> nn.Module:
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 4, 3, padding=1), bn=nn.BatchNorm2d(4), relu=nn.ReLU(), pool=pool,
        conv2=nn.Conv2d(4, 3, 3, padding=1), flatten=nn.Flatten(), fc=nn.Linear(3 * 6 * 6, 2))).eval()


def test_bn_shift_folded_and_non_constant_channels_kept():
    torch.manual_seed(0)
    model = _tiny(nn.MaxPool2d(2))
    with torch.no_grad():
        model.bn.bias.fill_(0.7)     # ReLU(BN(0)) = 0.7: a non-zero constant to fold
        model.bn.running_mean.uniform_(-0.1, 0.1)
    x = torch.randn(5, 1, 12, 12)
    keep = {"conv1": torch.tensor([True, False, True, False]), "conv2": torch.tensor([True, True, False])}
    pruned, info = physically_prune(model, keep, x[:2])
    masked = copy.deepcopy(model)
    with torch.no_grad():
        masked.conv1.weight[~keep["conv1"]] = 0
        masked.conv1.bias[~keep["conv1"]] = 0
        masked.conv2.weight[~keep["conv2"]] = 0
        masked.conv2.bias[~keep["conv2"]] = 0
        assert torch.allclose(pruned(x), masked(x), atol=1e-5)
    assert pruned.conv1.out_channels == 2 and pruned.bn.num_features == 2
    assert pruned.fc.in_features == 2 * 6 * 6          # flatten -> linear columns of the channel removed
    # average pooling that counts zero padding makes a constant channel vary at the borders: keep it
    avg = _tiny(nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=True))
    with torch.no_grad():
        avg.bn.bias.fill_(0.7)
    pruned, info = physically_prune(avg, {"conv1": keep["conv1"]}, x[:2])
    assert pruned.conv1.out_channels == 4
    assert "not constant" in info["skipped"][0]["reason"]


def test_output_layer_and_bad_keep():
    model = _tiny(nn.MaxPool2d(2))
    x = torch.randn(2, 1, 12, 12)
    pruned, info = physically_prune(model, {"fc": torch.tensor([True, False])}, x)
    assert pruned.fc.out_features == 2 and "model output" in info["skipped"][0]["reason"]
    pruned, info = physically_prune(model, {"conv2": torch.zeros(3, dtype=torch.bool)}, x)
    assert pruned.conv2.out_channels == 3 and "every channel" in info["skipped"][0]["reason"]
    with pytest.raises(PetError, match="not a Linear/Conv"):
        physically_prune(model, {"bn": torch.ones(4, dtype=torch.bool)}, x)
    with pytest.raises(PetError, match="bool tensor of shape"):
        physically_prune(model, {"conv1": torch.ones(3, dtype=torch.bool)}, x)
    with pytest.raises(PetError, match="TorchScript"):
        physically_prune(torch.jit.trace(model, x), {}, x)


def test_measure_latency():
    threads = torch.get_num_threads()
    calls = []
    r = measure_latency(lambda v: calls.append(v) or v * 2, torch.ones(3), repeats=7, warmup=2, threads=1)
    assert len(calls) == 9 and r["repeats"] == 7 and r["threads"] == 1
    assert 0 <= r["min_ms"] <= r["median_ms"] <= r["p90_ms"]
    assert torch.get_num_threads() == threads
    with pytest.raises(PetError):
        measure_latency(lambda v: v, 1, repeats=0)
