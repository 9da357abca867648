"""Model registry: small classifiers from the compression literature, buildable for any input shape."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from pet_core.data import Dataset, fit_input, with_note
from pet_core.errors import PetError


@dataclass(frozen=True)
class ModelInfo:
    """A registered architecture: its builder and the smallest input side it accepts."""

    name: str
    description: str
    min_hw: int
    builder: Callable[[tuple[int, int, int], int], nn.Module]


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, description: str, min_hw: int = 1):
    """Decorator registering ``fn(input_shape, num_classes) -> nn.Module`` under ``name``."""

    def deco(fn):
        _REGISTRY[name] = ModelInfo(name=name, description=description, min_hw=min_hw, builder=fn)
        return fn

    return deco


def list_models() -> list[ModelInfo]:
    """All registered models, in registration order."""
    return list(_REGISTRY.values())


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` for ``name``; PetError naming the known models if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PetError(f"unknown model {name!r}; known models: {', '.join(_REGISTRY)}") from None


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int, seed: int = 0) -> nn.Module:
    """Build ``name`` for (C,H,W) inputs and ``num_classes`` outputs with seeded initialisation."""
    info = model_info(name)
    c, h, w = (int(v) for v in input_shape)
    if h < info.min_hw or w < info.min_hw:
        raise PetError(f"model {name} needs inputs of at least {info.min_hw}x{info.min_hw}, got {h}x{w}")
    # fork_rng keeps the caller's global RNG untouched while making init reproducible
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = info.builder((c, h, w), int(num_classes))
    return model.eval()


def adapt_dataset(ds: Dataset, name: str) -> Dataset:
    """Resize ``ds`` (bilinear) when its images are smaller than ``name``'s min_hw; else return it."""
    info = model_info(name)
    c, h, w = ds.input_shape
    if h >= info.min_hw and w >= info.min_hw:
        return ds
    side = info.min_hw
    note = f"resized {h}x{w} -> {side}x{side} (bilinear) for {name}"
    return with_note(ds, fit_input(ds.x_train, side), fit_input(ds.x_test, side), note)


def _flat_size(features: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Number of features after ``features`` for one input, found by a dummy forward."""
    with torch.no_grad():
        return int(features(torch.zeros(1, *input_shape)).numel())  # (1, C', H', W') -> count


# ---------------------------------------------------------------- models


class LeNet300100(nn.Module):
    """LeNet-300-100 MLP (Han et al., Deep Compression)."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        c, h, w = input_shape
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c * h * w, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)  # (B, C*H*W)
        x = torch.relu(self.fc1(x))  # (B, 300)
        x = torch.relu(self.fc2(x))  # (B, 100)
        return self.fc3(x)  # (B, classes)


class LeNet5(nn.Module):
    """Caffe LeNet-5 as used in Deep Compression (20/50 conv filters, 500 hidden units).

    Its native input is 28x28, so min_hw=28: the 8x8 sklearn digits are bilinearly resized
    to 28x28 by :func:`adapt_dataset` rather than changing the architecture (two 5x5 convs
    and two 2x2 pools would shrink an 8x8 image to nothing).
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        c = input_shape[0]
        self.conv1 = nn.Conv2d(c, 20, 5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        flat = _flat_size(nn.Sequential(self.conv1, self.pool1, self.conv2, self.pool2), input_shape)
        self.fc1 = nn.Linear(flat, 500)  # 50*4*4 = 800 for 28x28 inputs
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))  # (B, 20, 12, 12) for 28x28; Caffe LeNet has no ReLU here
        x = self.pool2(self.conv2(x))  # (B, 50, 4, 4)
        x = torch.relu(self.fc1(self.flatten(x)))  # (B, 500)
        return self.fc2(x)  # (B, classes)


class MnistCNN(nn.Module):
    """Small one-conv CNN (the classic Keras MNIST example, trimmed)."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], 32, 3)
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        flat = _flat_size(nn.Sequential(self.conv1, self.pool), input_shape)
        self.fc1 = nn.Linear(flat, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))  # (B, 32, (H-2)//2, (W-2)//2)
        x = torch.relu(self.fc1(self.flatten(x)))  # (B, 128)
        return self.fc2(x)  # (B, classes)


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    """conv (no bias: BN has one) followed by BatchNorm, with readable ``conv``/``bn`` names."""
    return nn.Sequential(
        OrderedDict(conv=nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), bn=nn.BatchNorm2d(cout))
    )


class BasicBlock(nn.Module):
    """Residual block: conv-BN-ReLU-conv-BN plus identity or 1x1-conv shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        # a projection is only needed when the shape changes
        self.shortcut = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))  # (B, cout, H/s, W/s)
        out = self.bn2(self.conv2(out))  # (B, cout, H/s, W/s)
        return torch.relu(out + self.shortcut(x))  # (B, cout, H/s, W/s)


class ResNetMini(nn.Module):
    """Two-block ResNet with BatchNorm (16 then 32 channels), global average pool, linear head."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(input_shape[0], 16, 3, padding=1, bias=False),
                bn=nn.BatchNorm2d(16),
                relu=nn.ReLU(),
            )
        )
        self.block1 = BasicBlock(16, 16)
        self.block2 = BasicBlock(16, 32, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, 16, H, W)
        x = self.block1(x)  # (B, 16, H, W)
        x = self.block2(x)  # (B, 32, ceil(H/2), ceil(W/2))
        return self.fc(self.flatten(self.pool(x)))  # (B, classes)


register_model("lenet_300_100", "LeNet-300-100 MLP, 266k weights on MNIST (Han et al. 2015)", 1)(LeNet300100)
register_model("lenet5", "Caffe LeNet-5 (conv20-conv50-fc500), 431k weights; 28x28 inputs", 28)(LeNet5)
register_model("mnist_cnn", "one conv (32 3x3) + fc128 CNN", 4)(MnistCNN)
register_model("resnet_mini", "two-block residual CNN with BatchNorm (16/32 channels)", 4)(ResNetMini)
