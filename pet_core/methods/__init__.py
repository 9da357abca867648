"""The method registry: one line per compression method. Everything else iterates it.

The recipe's steps and their fields (``pet_core.steps``), ``python -m pet_core steps``, the
pipeline, size accounting, packed coding, QAT, the Compress controls, the Pareto labels and the
test matrix all read ``METHODS``. To add a method, write its module (a config dataclass and a
method object, see ``pet_core.methods.base``) and add one line below.

>>> get_method("l2_channel").make_config(sparsity=0.5).norm
2
"""

from __future__ import annotations

from pet_core.errors import PetError
from pet_core.methods.base import CodeMethod, FactorMethod, Method, PruneMethod
from pet_core.methods.channel import Channel
from pet_core.methods.low_rank import LowRank
from pet_core.methods.magnitude import Magnitude
from pet_core.methods.nm import NM
from pet_core.methods.quantize import Quantize
from pet_core.methods.share import Share

METHODS: dict[str, Method] = {m.name: m for m in (
    Magnitude(),
    Channel("l1_channel"),
    Channel("l2_channel"),
    NM(),
    Quantize(),
    Share(),
    LowRank(),
)}


def get_method(name: str) -> Method:
    """Look up a method by name; unknown names raise PetError listing the known ones.

    >>> get_method("quantize").config.__name__
    'QuantizeConfig'
    """
    try:
        return METHODS[name]
    except KeyError:
        raise PetError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


__all__ = ["METHODS", "get_method", "Method", "PruneMethod", "CodeMethod", "FactorMethod"]
