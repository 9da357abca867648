"""Fine-tuning of compressed models: ``finetune(wb, recipe, dataset) -> FinetuneResult``.

The names are loaded lazily: ``pet_core.recipe`` imports ``pet_core.finetune.config`` while it is
itself being imported, and the loop imports ``pet_core.recipe``.
"""

from __future__ import annotations

__all__ = ["finetune", "FinetuneResult"]


def __getattr__(name: str):
    if name in __all__:
        from pet_core.finetune import loop
        return getattr(loop, name)
    raise AttributeError(f"module 'pet_core.finetune' has no attribute {name!r}")
