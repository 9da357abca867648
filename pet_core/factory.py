"""Architectures named as ``module:factory``: the user's own code builds the model a state_dict fills.

``arch="mypkg.models:build_net"`` imports ``mypkg.models`` and calls ``build_net()``, or
``build_net(num_classes=K)`` when the factory has a ``num_classes`` parameter and the class count
is known. Importing named code runs it, so it needs the same trust as a pickled model file:
:func:`pet_core.model_io.load_model_file` refuses a factory without ``trust_code`` before it gets here.
"""

from __future__ import annotations

import importlib
import inspect
import re

from torch import nn

from pet_core.errors import PetError

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_factory_arch(arch: str | None) -> bool:
    """True for ``"module.path:function"`` (zoo names have no colon)."""
    return isinstance(arch, str) and ":" in arch


def check_factory_name(arch: str) -> None:
    """PetError unless ``arch`` reads ``module.path:function``."""
    if not _FACTORY.match(arch):
        raise PetError(f"architecture {arch[:80]!r} is neither a zoo name nor 'module.path:factory'")


def build_from_factory(arch: str, *, num_classes: int | None = None) -> nn.Module:
    """The module ``arch`` (``"module:factory"``) builds, in eval mode. Runs that code: trusted callers only.

    Raises:
        PetError: one line: for a malformed name, a module that does not import, a missing factory,
            or a factory that fails or returns no ``nn.Module``.
    """
    check_factory_name(arch)
    module_name, func_name = arch.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise PetError(f"architecture {arch}: module {module_name} does not import ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise PetError(f"architecture {arch}: module {module_name} has no function {func_name}")
    kwargs = {}
    try:
        takes_classes = "num_classes" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        takes_classes = False
    if takes_classes and num_classes:
        kwargs["num_classes"] = num_classes
    try:
        model = factory(**kwargs)
    except Exception as e:
        raise PetError(f"architecture {arch}: {func_name}() failed ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
    if not isinstance(model, nn.Module):
        raise PetError(f"architecture {arch}: {func_name}() returned {type(model).__name__}, not a torch nn.Module")
    return model.eval()


__all__ = ["build_from_factory", "check_factory_name", "is_factory_arch"]
