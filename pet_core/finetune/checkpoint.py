"""Fine-tuning checkpoints: ``<dir>/finetune.pt``, written on stop and on error, read on resume.

The model's state_dict carries the parametrization originals and buffers (masks, codes), so a
resumed run rebuilds the same parametrized model and loads it back; batches and the learning rate
depend only on the step, and the RNG state is restored, so it continues exactly where it stopped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pet_core.errors import PetError
from pet_core.finetune.trainer import RunState

FILENAME = "finetune.pt"


def checkpoint_path(directory: str | Path) -> Path:
    return Path(directory) / FILENAME


def save_checkpoint(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: RunState,
                    recipe: dict[str, Any]) -> Path:
    """Write the checkpoint atomically (a reader never sees half a file); returns its path."""
    path = checkpoint_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "step": state.step,
        "history": state.history,
        "val_accuracy": state.val_accuracy,
        "seconds": state.seconds,
        "recipe": recipe,
        "rng": torch.get_rng_state(),
    }
    tmp = path.with_suffix(".pt.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(directory: str | Path, recipe: dict[str, Any]) -> dict[str, Any]:
    """Read the checkpoint written for ``recipe``; PetError when missing or for another recipe."""
    path = checkpoint_path(directory)
    if not path.is_file():
        raise PetError(f"finetune: no checkpoint to resume from ({path} not found)")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if data.get("recipe") != recipe:
        raise PetError(f"finetune: the checkpoint {path} was written for a different recipe; "
                       "resume with the same recipe or start afresh")
    return data


def run_state(data: dict[str, Any]) -> RunState:
    """The loop state stored in a checkpoint."""
    return RunState(step=data["step"], history=list(data["history"]), val_accuracy=data["val_accuracy"],
                    seconds=data["seconds"])
