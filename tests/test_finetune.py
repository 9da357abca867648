"""Fine-tuning engine: compression kept while training, each technique, stop/resume, honest numbers.

Zoo models pretrained on digits, tens of steps each, on the CPU. Oracles are independent of the loop:
the post-training workbench (masks, PTQ accuracy, codebooks), a plain forward pass, byte snapshots.
"""

from __future__ import annotations

import json
import threading

import pytest
import torch
from torch import nn

from pet_core.errors import PetError
from pet_core.finetune import FinetuneResult, finetune
from pet_core.finetune import loop as loop_module
from pet_core.finetune.attach import attach, bake
from pet_core.finetune.checkpoint import checkpoint_path
from pet_core.finetune.config import parse_finetune
from pet_core.finetune.distill import distillation_loss
from pet_core.finetune.trainer import Trainer, split
from pet_core.layers import compressible_layers
from pet_core.loader import load_baseline, open_workbench
from pet_core.methods.channel import ChannelConfig
from pet_core.methods.quantize import FakeQuant, QuantizeConfig
from pet_core.recipe import Recipe
from pet_core.steps import LayerSpec
from pet_core.training import accuracy

CPU = torch.device("cpu")
_BASELINES: dict = {}
# Zoo models are trained afresh in every test session (conftest's hermetic cache), and the weights
# depend on the CPU's kernel path (ATen and oneDNN sum in different orders on AVX-512, AVX2, SSE4.1).
# The QAT-vs-PTQ test is stated at 2 bits, where the margin holds on every path: over the 9 ATen x
# oneDNN combinations here, resnet_mini's 2-bit PTQ gave 10.4-16.9% and QAT 71.3-89.1% (bound: 3 points).
# At 3 bits it did not (PTQ 86.2-96.4%): that is why the test is not at 3 bits.


def baseline(name: str):
    if name not in _BASELINES:
        _BASELINES[name] = load_baseline(name, "digits")
    return _BASELINES[name]


def run(name: str, default: dict, ft: dict, layers: dict | None = None, **kwargs):
    """(workbench, recipe, result) of fine-tuning ``name`` with the recipe ``default``/``layers``/``ft``."""
    b = baseline(name)
    wb = open_workbench(b)
    recipe = Recipe(model=name, default=default, layers=layers or {}, finetune=ft)
    return wb, recipe, finetune(wb, recipe, b.dataset, device=CPU, **kwargs)


def ptq(wb, recipe: Recipe):
    """The post-training workbench for ``recipe`` (a fresh one, the caller's stays as it was)."""
    fresh = open_workbench(baseline(recipe.model))
    fresh.apply(recipe)
    return fresh


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in compressible_layers(model).items()}


def snapshot(model: nn.Module) -> dict[str, bytes]:
    return {k: v.detach().cpu().numpy().tobytes() for k, v in model.state_dict().items()}


# --- attach: the parametrizations ------------------------------------------------------------------

def test_ste_gradients_flow_through_fake_quant():
    layer = nn.Linear(16, 8)
    attach(nn.Sequential(layer), {"0": LayerSpec(quantize=QuantizeConfig(bits=3))}, {}, qat=True)
    assert isinstance(layer.parametrizations.weight[0], FakeQuant)
    layer(torch.randn(4, 16)).pow(2).sum().backward()
    grad = layer.parametrizations.weight.original.grad
    assert grad is not None and grad.abs().sum() > 0
    q = FakeQuant(QuantizeConfig(bits=3), None)
    w = layer.parametrizations.weight.original.detach()
    assert torch.equal(layer.weight, q(w))
    assert all(len(torch.unique(row)) <= 7 for row in layer.weight.detach())   # 3 bits per channel


def test_bake_keeps_effective_weights_and_masked_bias():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4))
    with torch.no_grad():
        model[0].weight[:2] = 0                      # two pruned output channels
    spec = LayerSpec(prune=ChannelConfig(method="l1_channel", sparsity=0.5))
    assert attach(model, {"0": spec}, {}, qat=False) == {"0": "mask + bias mask"}
    before = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    assert torch.all(before[1][:2] == 0)
    bake(model)
    assert type(model[0]) is nn.Linear
    assert torch.equal(model[0].weight, before[0]) and torch.equal(model[0].bias, before[1])


# --- masked fine-tuning, QAT, shared centroids -------------------------------------------------------

def test_masked_finetune_keeps_pruned_weights_and_channel_biases_zero():
    default = {"prune": {"method": "magnitude", "scope": "global", "sparsity": 0.7}}
    layers = {"conv1": {"prune": {"method": "l1_channel", "sparsity": 0.5}}}
    wb, recipe, res = run("mnist_cnn", default, {"steps": 30, "lr": 3e-3}, layers=layers)
    before, after = ptq(wb, recipe).model, res.model
    kept_changed = 0
    for name, w0 in weights(before).items():
        w1 = compressible_layers(after)[name].weight.detach()
        assert torch.all(w1[w0 == 0] == 0), name
        kept_changed += int((w1[w0 != 0] != w0[w0 != 0]).sum())
    assert kept_changed > 0
    conv = compressible_layers(after)["conv1"]
    pruned_rows = compressible_layers(before)["conv1"].weight.flatten(1).eq(0).all(1)   # (out,)
    assert pruned_rows.sum() > 0 and torch.all(conv.bias[pruned_rows] == 0)
    assert res.report["compressed"]["weight_sparsity"] == pytest.approx(
        ptq(wb, recipe).report()["compressed"]["weight_sparsity"], abs=1e-9)


def test_qat_beats_post_training_quantization_at_2_bits():
    default = {"quantize": {"bits": 2, "scheme": "symmetric", "granularity": "per_tensor"}}
    wb, recipe, res = run("resnet_mini", default, {"steps": 30, "lr": 1e-3, "techniques": {"qat": {}}})
    ptq_acc = ptq(wb, recipe).evaluate()
    qat_acc = res.report["compressed"]["accuracy"]
    baked = accuracy(res.workbench.baseline, baseline("resnet_mini").dataset.x_test,
                     baseline("resnet_mini").dataset.y_test)
    assert abs(qat_acc - baked) <= 0.005          # re-quantising QAT-trained values is idempotent
    assert qat_acc > ptq_acc + 0.03, (ptq_acc, qat_acc)
    assert res.report["finetune"]["attached"]["fc"] == "fake-quant int2"
    for row in res.report["layers"]:
        if row["name"] in compressible_layers(res.model):
            assert row["bits"] == 2


def test_shared_centroids_stay_at_most_k_and_move():
    k = 8
    default = {"prune": {"sparsity": 0.8}, "share": {"clusters": k}}
    wb, recipe, res = run("lenet_300_100", default, {"steps": 30, "techniques": {"qat": {}}})
    post = ptq(wb, recipe)
    moved = 0
    for name, w in weights(res.model).items():
        values = torch.unique(w[w != 0])
        assert len(values) <= k, name
        moved += int(not torch.equal(values, torch.tensor(post.result(name).levels)))
        assert torch.all(w[post.model.get_submodule(name).weight == 0] == 0)
    assert moved > 0
    assert res.report["finetune"]["trainable_params"] < 3 * k + 1000      # codebooks + biases only


# --- distillation ------------------------------------------------------------------------------------

def test_distill_uses_distillation_loss_on_the_teacher(monkeypatch):
    calls = []

    def spy(student, teacher, labels, temperature, alpha):
        calls.append((teacher.detach().clone(), labels.clone(), temperature, alpha))
        return distillation_loss(student, teacher, labels, temperature, alpha)

    monkeypatch.setattr(loop_module, "distillation_loss", spy)
    ft = {"steps": 12, "batch_size": 64, "techniques": {"distill": {"temperature": 3.0, "alpha": 0.5}}}
    wb, recipe, res = run("lenet_300_100", {"prune": {"sparsity": 0.9}}, ft)
    assert len(calls) == 12 and all(c[2:] == (3.0, 0.5) for c in calls)
    cfg = parse_finetune(recipe.finetune)
    xb, yb = Trainer(cfg, split(baseline("lenet_300_100").dataset, cfg.seed, CPU), CPU, None).batch(0)
    with torch.no_grad():
        assert torch.equal(calls[0][0], wb.baseline(xb))     # the teacher is the baseline
    assert torch.equal(calls[0][1], yb)


def test_distill_with_alpha_zero_is_plain_training_bit_for_bit():
    ft = {"steps": 15, "seed": 3}
    _, _, plain = run("lenet_300_100", {"prune": {"sparsity": 0.8}}, ft)
    _, _, distilled = run("lenet_300_100", {"prune": {"sparsity": 0.8}},
                          {**ft, "techniques": {"distill": {"alpha": 0.0}}})
    for name, w in weights(plain.model).items():
        assert torch.equal(w, compressible_layers(distilled.model)[name].weight), name


# --- gradual, l1, lottery ----------------------------------------------------------------------------

def test_gradual_reaches_the_recipe_sparsity_and_masks_only_grow(monkeypatch):
    seen: dict[str, list[torch.Tensor]] = {}
    real = loop_module.set_mask

    def spy(module, mask):
        seen.setdefault(id(module), []).append(mask.clone())
        real(module, mask)

    monkeypatch.setattr(loop_module, "set_mask", spy)
    ft = {"steps": 50, "techniques": {"gradual": {"initial_sparsity": 0.2, "start_epoch": 0, "end_epoch": 3,
                                                  "frequency": 5}}}
    _, _, res = run("lenet_300_100", {"prune": {"sparsity": 0.8, "scope": "layer"}}, ft)
    for name, w in weights(res.model).items():
        assert abs(int((w == 0).sum()) - round(0.8 * w.numel())) <= 1, name
    assert len(seen) == 3
    for masks in seen.values():
        assert len(masks) >= 3
        for old, new in zip(masks, masks[1:]):
            assert not torch.any(new & ~old)          # nothing pruned comes back
        assert masks[0].float().mean() > masks[-1].float().mean()


def test_l1_prunes_to_the_recipe_and_shrinks_weights():
    default = {"prune": {"sparsity": 0.8, "scope": "global"}}
    _, _, l1 = run("lenet_300_100", default, {"steps": 30, "techniques": {"l1": {"strength": 1e-3}}})
    _, _, plain = run("lenet_300_100", default, {"steps": 30, "techniques": {"l1": {"strength": 0.0}}})
    total = sum(w.numel() for w in weights(l1.model).values())
    zeros = sum(int((w == 0).sum()) for w in weights(l1.model).values())
    assert abs(zeros - round(0.8 * total)) <= 1

    def mean_abs(res: FinetuneResult) -> float:   # the trained weights before the final prune
        ws = weights(res.workbench.baseline).values()
        return float(sum(w.abs().sum() for w in ws) / sum(w.numel() for w in ws))

    assert mean_abs(l1) < 0.95 * mean_abs(plain)


def test_lottery_rounds_increase_sparsity():
    ft = {"steps": 15, "techniques": {"lottery": {"rounds": 3, "rewind": "early", "rewind_steps": 5}}}
    _, _, res = run("lenet_300_100", {"prune": {"sparsity": 0.8, "scope": "layer"}}, ft)
    rounds = res.report["lottery"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    sparsities = [r["sparsity"] for r in rounds]
    assert sparsities == sorted(sparsities) and sparsities[-1] == pytest.approx(0.8, abs=1e-3)
    assert all(0.0 <= r["mask_overlap"] <= 1.0 and 0.0 <= r["test_accuracy"] <= 1.0 for r in rounds)
    assert res.report["finetune"]["steps"] == 5 + 4 * 15
    assert {h["phase"] for h in res.history} == {"rewind", "round 0/3", "round 1/3", "round 2/3", "round 3/3"}
    assert res.report["compressed"]["weight_sparsity"] == pytest.approx(0.8, abs=1e-3)


# --- LoRA ----------------------------------------------------------------------------------------------

def test_lora_trains_few_parameters_and_leaves_the_base_alone():
    default = {"prune": {"sparsity": 0.9}, "quantize": {"bits": 4}}
    wb, recipe, res = run("lenet_300_100", default, {"steps": 20, "lr": 3e-3, "techniques": {"lora": {"rank": 4}}})
    info = res.report["finetune"]
    assert info["trainable_params"] / info["total_params"] < 0.10
    post = ptq(wb, recipe)
    for name, module in res.adapters.named_modules():
        if hasattr(module, "lora_A"):
            assert torch.equal(module.base.weight, post.model.get_submodule(name).weight), name
            assert module.lora_B.abs().sum() > 0
    x = baseline("lenet_300_100").dataset.x_test[:64]
    torch.testing.assert_close(res.model(x), res.adapters(x), rtol=1e-5, atol=1e-5)
    c = res.report["compressed"]
    assert c["adapter_bytes"] == 4 * info["trainable_params"]
    assert c["size_bytes"] == c["base_size_bytes"] + c["adapter_bytes"] < res.report["merged"]["size_bytes"]


# --- stop, resume, errors, immutability ----------------------------------------------------------------

def test_stop_writes_checkpoint_and_resume_matches_uninterrupted(tmp_path):
    default = {"prune": {"sparsity": 0.8}, "quantize": {"bits": 4}}
    ft = {"steps": 40, "techniques": {"qat": {}}}
    _, _, full = run("lenet_300_100", default, ft)
    stop = threading.Event()

    def progress(row):
        if row["step"] >= 20:
            stop.set()

    _, _, first = run("lenet_300_100", default, ft, stop=stop, progress=progress, checkpoint_dir=tmp_path)
    assert first.stopped and first.report["finetune"]["steps"] == 20 and checkpoint_path(tmp_path).is_file()
    assert 0.0 < first.report["compressed"]["accuracy"] <= 1.0                   # still evaluated
    _, _, resumed = run("lenet_300_100", default, ft, checkpoint_dir=tmp_path, resume=True)
    assert not resumed.stopped and resumed.report["finetune"]["steps"] == 40
    assert resumed.history[-1]["step"] == 40 and [h["step"] for h in resumed.history][:2] == [10, 20]
    assert abs(resumed.report["compressed"]["accuracy"] - full.report["compressed"]["accuracy"]) <= 0.01
    for name, w in weights(full.model).items():
        torch.testing.assert_close(compressible_layers(resumed.model)[name].weight, w, rtol=0, atol=1e-6)


def test_error_writes_checkpoint_then_raises(tmp_path):
    def progress(row):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run("lenet_300_100", {"prune": {"sparsity": 0.5}}, {"steps": 20}, progress=progress,
            checkpoint_dir=tmp_path)
    assert torch.load(checkpoint_path(tmp_path), weights_only=True)["step"] == 10


def test_never_mutates_the_workbench_and_reports_the_original_baseline():
    b = baseline("mnist_cnn")
    wb = open_workbench(b)
    wb.apply(Recipe(model="mnist_cnn", default={"prune": {"sparsity": 0.3}}))
    before = snapshot(wb.baseline), snapshot(wb.model)
    recipe = Recipe(model="mnist_cnn", default={"prune": {"sparsity": 0.6}, "quantize": {"bits": 4}},
                    finetune={"steps": 10, "techniques": {"qat": {}, "distill": {}}})
    res = finetune(wb, recipe, b.dataset, device=CPU)
    assert (snapshot(wb.baseline), snapshot(wb.model)) == before
    assert res.report["baseline"]["accuracy"] == wb.baseline_accuracy
    assert res.report["finetune"]["device"] == "cpu" and res.report["finetune"]["steps"] == 10
    row = res.history[-1]
    assert set(row) == {"step", "steps", "epoch", "loss", "train_accuracy", "val_accuracy", "lr",
                        "samples_per_s", "phase", "device"}
    assert row["phase"] == "train" and row["val_accuracy"] is not None
    json.dumps(res.report)                      # the CLI writes it as report.json


def test_incompatible_techniques_are_refused():
    with pytest.raises(PetError, match="lora"):
        run("lenet_300_100", {"prune": {"sparsity": 0.5}}, {"steps": 5, "techniques": {"lora": {}, "l1": {}}})
    with pytest.raises(PetError, match="prune step"):
        run("lenet_300_100", {"quantize": {"bits": 4}}, {"steps": 5, "techniques": {"gradual": {}}})


def test_low_rank_layers_stay_frozen_and_keep_their_stored_factors():
    default = {"prune": {"sparsity": 0.7, "scope": "global"}, "quantize": {"bits": 6}}
    layers = {"fc1": {"low_rank": {"energy": 0.8}}}
    wb, recipe, res = run("lenet_300_100", default, {"steps": 20, "techniques": {"qat": {}}}, layers=layers)
    post = ptq(wb, recipe)
    assert res.report["finetune"]["attached"]["fc1"].startswith("frozen (low rank")
    assert torch.equal(res.model.fc1.weight, post.model.fc1.weight)
    rows = {r["name"]: r for r in res.report["layers"]}
    before = {r["name"]: r for r in post.report()["layers"]}
    assert rows["fc1"]["size_bytes"] == before["fc1"]["size_bytes"] and rows["fc1"]["rank"] == before["fc1"]["rank"]
    assert not torch.equal(res.model.fc2.weight, post.model.fc2.weight)
