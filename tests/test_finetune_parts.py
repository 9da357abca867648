"""Distillation loss, gradual-sparsity and LR schedules, and LoRA adapters."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from pet_core.errors import PetError
from pet_core.finetune.config import Lora
from pet_core.finetune.distill import distillation_loss
from pet_core.finetune.lora import (LoRAConv2d, LoRALinear, add_lora, lora_parameter_count, lora_state_dict,
                                    merge_lora, trainable_parameters)
from pet_core.finetune.schedule import gradual_sparsity, learning_rate, mask_update_due

# ---------------------------------------------------------------- distillation

STUDENT = [[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 3.0, -2.0], [-1.0, 1.5, 0.3, 0.9]]
TEACHER = [[3.0, 1.0, -2.0, 0.5], [0.0, -0.5, 2.5, -1.0], [-0.5, 2.0, 0.0, 0.4]]
LABELS = [0, 2, 3]


def _log_softmax(row: list[float], t: float) -> list[float]:
    """log(exp(z_i/T) / Σ_j exp(z_j/T)), written out."""
    z = [v / t for v in row]
    log_sum = math.log(sum(math.exp(v) for v in z))
    return [v - log_sum for v in z]


def _kd_by_hand(t: float, alpha: float) -> float:
    kl = 0.0
    for s, te in zip(STUDENT, TEACHER):
        ls, lt = _log_softmax(s, t), _log_softmax(te, t)
        kl += sum(math.exp(b) * (b - a) for a, b in zip(ls, lt))   # Σ p_t (log p_t - log p_s)
    kl /= len(STUDENT)                                               # batchmean
    ce = -sum(_log_softmax(s, 1.0)[y] for s, y in zip(STUDENT, LABELS)) / len(STUDENT)
    return alpha * t * t * kl + (1 - alpha) * ce


@pytest.mark.parametrize("t, alpha", [(1.0, 0.5), (4.0, 0.7), (2.5, 0.0), (3.0, 1.0), (1.0, 0.0)])
def test_distillation_loss_matches_hand_formula(t, alpha):
    loss = distillation_loss(torch.tensor(STUDENT, dtype=torch.float64), torch.tensor(TEACHER, dtype=torch.float64),
                             torch.tensor(LABELS), temperature=t, alpha=alpha)
    assert loss.item() == pytest.approx(_kd_by_hand(t, alpha), rel=1e-12)


def test_distillation_alpha_zero_is_cross_entropy_and_teacher_gets_no_gradient():
    s = torch.tensor(STUDENT, requires_grad=True)
    te = torch.tensor(TEACHER, requires_grad=True)
    loss = distillation_loss(s, te, torch.tensor(LABELS), temperature=1.0, alpha=0.0)
    assert loss.item() == pytest.approx(nn.functional.cross_entropy(s, torch.tensor(LABELS)).item())
    distillation_loss(s, te, torch.tensor(LABELS), temperature=4.0, alpha=0.7).backward()
    assert te.grad is None and s.grad is not None


def test_soft_gradient_magnitude_roughly_independent_of_temperature():
    """The T² factor keeps the soft gradient's scale as T grows (Hinton et al. 2015, §2.1)."""
    norms = []
    for t in (8.0, 16.0, 32.0):
        s = torch.tensor(STUDENT, requires_grad=True)
        distillation_loss(s, torch.tensor(TEACHER), torch.tensor(LABELS), temperature=t, alpha=1.0).backward()
        norms.append(s.grad.norm().item())
    assert max(norms) / min(norms) < 1.1


def test_distillation_rejects_bad_options():
    args = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS)
    with pytest.raises(PetError):
        distillation_loss(*args, temperature=0.0, alpha=0.5)
    with pytest.raises(PetError):
        distillation_loss(*args, temperature=1.0, alpha=1.5)

# ---------------------------------------------------------------- schedules


def _zhu_gupta(step, s_f, s_i, t0, end, dt):
    n = max(1, (end - t0) // dt)
    if step < t0:
        return 0.0
    if step >= t0 + n * dt:
        return s_f
    t_last = t0 + ((step - t0) // dt) * dt
    return s_f + (s_i - s_f) * (1 - (t_last - t0) / (n * dt)) ** 3


@pytest.mark.parametrize("s_i, t0, end, dt", [(0.1, 5, 25, 5), (0.0, 0, 100, 7), (0.2, 3, 4, 10), (0.0, 10, 10, 3)])
def test_gradual_sparsity_follows_zhu_gupta(s_i, t0, end, dt):
    s_f = 0.8
    values = [gradual_sparsity(step, s_f, s_i, t0, end, dt) for step in range(t0 + end + 3 * dt)]
    for step, v in enumerate(values):
        assert v == pytest.approx(_zhu_gupta(step, s_f, s_i, t0, end, dt), abs=1e-12), step
    assert all(b >= a for a, b in zip(values, values[1:]))          # monotone non-decreasing
    assert all(v == 0.0 for v in values[:t0])                        # no pruning before t0
    assert values[-1] == s_f                                          # exactly s_f at the end


def test_gradual_sparsity_values_on_a_small_schedule():
    # n = 4 updates of Δt = 5 from t0 = 5: s at 5, 10, 15, 20, 25 is s_f·(1 - (1 - k/4)³)
    got = [gradual_sparsity(s, 0.8, 0.0, 5, 25, 5) for s in (4, 5, 9, 10, 15, 20, 24, 25, 99)]
    expected = [0.0, 0.0, 0.0, 0.8 * (1 - 0.75**3), 0.8 * (1 - 0.5**3), 0.8 * (1 - 0.25**3),
                0.8 * (1 - 0.25**3), 0.8, 0.8]
    assert got == pytest.approx(expected)


def test_mask_update_due_exactly_at_update_steps():
    due = [s for s in range(60) if mask_update_due(s, start_step=5, end_step=27, frequency=5)]
    assert due == [5, 10, 15, 20, 25]                                # n = 22 // 5 = 4
    # the sparsity only changes at update steps
    values = [gradual_sparsity(s, 0.9, 0.0, 5, 27, 5) for s in range(60)]
    changes = [s for s in range(1, 60) if values[s] != values[s - 1]]
    assert set(changes) <= set(due)
    assert [s for s in range(30) if mask_update_due(s, 10, 10, 4)] == [10, 14]   # n is at least 1


def test_gradual_rejects_bad_options():
    with pytest.raises(PetError):
        gradual_sparsity(0, final=0.5, initial=0.6, start_step=0, end_step=10, frequency=1)
    with pytest.raises(PetError):
        gradual_sparsity(0, final=0.5, initial=0.0, start_step=10, end_step=5, frequency=1)
    with pytest.raises(PetError):
        mask_update_due(0, 0, 10, 0)


def test_learning_rate_schedules():
    assert learning_rate(0, 100, 0.1, "cosine") == pytest.approx(0.1)
    assert learning_rate(50, 100, 0.1, "cosine") == pytest.approx(0.05)
    assert learning_rate(100, 100, 0.1, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(150, 100, 0.1, "cosine") == pytest.approx(0.0, abs=1e-12)   # clamped
    assert learning_rate(37, 100, 0.1, "constant") == 0.1
    with pytest.raises(PetError):
        learning_rate(0, 10, 0.1, "linear")

# ---------------------------------------------------------------- LoRA


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 10))


def _convnet():
    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                             nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16))   # depthwise: skipped
    return nn.Sequential(features, nn.Flatten(), nn.Linear(16 * 4 * 4, 10))


def test_linear_parameter_counts_and_trainable_fraction():
    model = _mlp()
    base_total = sum(p.numel() for p in model.parameters())
    assert add_lora(model, Lora(rank=4, alpha=8.0, layers="*")) == ["1", "3"]
    expected = 4 * (64 + 300) + 4 * (300 + 10)
    assert lora_parameter_count(model) == expected
    assert trainable_parameters(model) == (expected, base_total + expected)
    assert isinstance(model[1], LoRALinear) and model[1].scale == 2.0


def test_conv_parameter_counts_and_skipped_grouped_conv():
    model = _convnet()
    base_total = sum(p.numel() for p in model.parameters())
    assert add_lora(model, Lora(rank=2, alpha=4.0, layers="*")) == ["0.0", "0.2", "2"]
    assert list(model.lora_skipped) == ["0.4"] and "groups = 16" in model.lora_skipped["0.4"]
    expected = (2 * 3 * 9 + 8 * 2) + (2 * 8 * 9 + 16 * 2) + 2 * (256 + 10)
    assert lora_parameter_count(model) == expected
    assert trainable_parameters(model) == (expected, base_total + expected)
    assert isinstance(model[0][0], LoRAConv2d)
    assert set(lora_state_dict(model)) == {"0.0.lora_A.weight", "0.0.lora_B.weight", "0.2.lora_A.weight",
                                           "0.2.lora_B.weight", "2.lora_A", "2.lora_B"}


@pytest.mark.parametrize("make, shape", [(_mlp, (5, 1, 8, 8)), (_convnet, (5, 3, 8, 8))])
def test_adapters_start_as_the_base_model(make, shape):
    model = make()
    x = torch.randn(shape)
    before = model(x)
    add_lora(model, Lora(rank=3, alpha=6.0, layers="*"))
    assert torch.equal(model(x), before)                     # B = 0 at init


def test_glob_selects_layers_and_seed_is_reproducible():
    model = _convnet()
    assert add_lora(model, Lora(rank=2, alpha=2.0, layers="0.*"), seed=3) == ["0.0", "0.2"]
    assert isinstance(model[2], nn.Linear)
    again = _convnet()
    add_lora(again, Lora(rank=2, alpha=2.0, layers="0.*"), seed=3)
    assert all(torch.equal(a, b) for a, b in zip(lora_state_dict(model).values(), lora_state_dict(again).values()))
    other = _convnet()
    add_lora(other, Lora(rank=2, alpha=2.0, layers="0.*"), seed=4)
    assert not torch.equal(lora_state_dict(model)["0.0.lora_A.weight"], lora_state_dict(other)["0.0.lora_A.weight"])


def test_glob_matching_nothing_is_a_pet_error():
    with pytest.raises(PetError, match="matches no"):
        add_lora(_mlp(), Lora(layers="encoder.*"))
    with pytest.raises(PetError, match="groups"):
        add_lora(_convnet(), Lora(layers="0.4"))               # only a grouped conv matches


def _train(model, x, steps=5):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    y = torch.randint(0, 10, (x.shape[0],), generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("make, shape", [(_mlp, (16, 1, 8, 8)), (_convnet, (16, 3, 8, 8))])
def test_training_changes_only_adapters_and_merge_matches(make, shape):
    model = make()
    add_lora(model, Lora(rank=4, alpha=8.0, layers="*"))
    base = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    adapters = lora_state_dict(model)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    _train(model, x)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())                   # base bit-identical
    assert all(not torch.equal(after[k], v) for k, v in adapters.items())           # every adapter moved
    merged = merge_lora(model)
    assert not any(isinstance(m, (LoRALinear, LoRAConv2d)) for m in merged.modules())
    assert any(isinstance(m, (LoRALinear, LoRAConv2d)) for m in model.modules())    # the original is kept
    with torch.no_grad():
        torch.testing.assert_close(merged(x), model(x), atol=1e-5, rtol=0)


class _Mask(nn.Module):
    """A pruning mask as a torch parametrization."""

    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w):
        return w * self.mask


def test_merge_uses_the_effective_weight_of_a_parametrized_base():
    model = _mlp()
    layer = model[1]
    parametrize.register_parametrization(layer, "weight", _Mask((torch.rand(layer.weight.shape) > 0.5).float()))
    add_lora(model, Lora(rank=2, alpha=4.0, layers="1"))
    original = model[1].base.parametrizations.weight.original.clone()
    x = torch.randn(8, 1, 8, 8)
    _train(model, x)
    assert torch.equal(model[1].base.parametrizations.weight.original, original)
    merged = merge_lora(model)
    assert type(merged[1]) is nn.Linear and not parametrize.is_parametrized(merged[1])
    with torch.no_grad():
        torch.testing.assert_close(merged(x), model(x), atol=1e-5, rtol=0)
