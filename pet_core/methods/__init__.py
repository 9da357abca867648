"""Compression methods: one module per method, each a config dataclass + pure tensor functions.

``METHODS`` maps a method name (as used in recipes) to its config class, its apply
function and a one-line summary.

>>> get_method("l2_channel").make_config(sparsity=0.5).norm
2
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pet_core.errors import PetError
from pet_core.methods.channel import ChannelConfig, channel_prune
from pet_core.methods.low_rank import LowRankConfig, low_rank
from pet_core.methods.magnitude import MagnitudeConfig, magnitude_prune
from pet_core.methods.quantize import QuantizeConfig, quantize
from pet_core.methods.share import ShareConfig, share


@dataclass(frozen=True)
class MethodInfo:
    """One registered method; ``fixed`` are config fields the method pins (e.g. norm=1)."""

    name: str
    config_cls: type
    fn: Callable[..., Any]
    summary: str
    fixed: dict[str, Any] = field(default_factory=dict)

    def make_config(self, **kwargs: Any) -> Any:
        """Build the config from user fields plus the pinned ones.

        >>> METHODS["l1_channel"].make_config(sparsity=0.3)
        ChannelConfig(sparsity=0.3, threshold=None, norm=1)
        """
        for key, value in self.fixed.items():
            if key in kwargs and kwargs[key] != value:
                raise PetError(f"method {self.name} fixes {key}={value}, got {kwargs[key]}")
        try:
            return self.config_cls(**{**kwargs, **self.fixed})
        except TypeError as exc:  # unknown field name
            raise PetError(f"bad settings for method {self.name}: {exc}") from None


METHODS: dict[str, MethodInfo] = {
    info.name: info
    for info in (
        MethodInfo("magnitude", MagnitudeConfig, magnitude_prune, "Zero the individual weights with the smallest |w|."),
        MethodInfo(
            "l1_channel", ChannelConfig, channel_prune, "Remove whole output channels with the smallest L1 norm.",
            {"norm": 1},
        ),
        MethodInfo(
            "l2_channel", ChannelConfig, channel_prune, "Remove whole output channels with the smallest L2 norm.",
            {"norm": 2},
        ),
        MethodInfo("quantize", QuantizeConfig, quantize, "Round weights to 2**bits uniform levels."),
        MethodInfo("share", ShareConfig, share, "Share a small k-means codebook of values (Deep Compression)."),
        MethodInfo("low_rank", LowRankConfig, low_rank, "Factor a weight into two thin matrices by truncated SVD."),
    )
}


def get_method(name: str) -> MethodInfo:
    """Look up a method by name; unknown names raise PetError listing the known ones.

    >>> get_method("quantize").config_cls.__name__
    'QuantizeConfig'
    """
    try:
        return METHODS[name]
    except KeyError:
        raise PetError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


__all__ = [
    "METHODS",
    "MethodInfo",
    "get_method",
    "MagnitudeConfig",
    "ChannelConfig",
    "QuantizeConfig",
    "ShareConfig",
    "LowRankConfig",
]
