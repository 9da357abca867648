"""Fine-tuning checkpoints: ``<dir>/finetune.pt``, written periodically, on stop, on error and at the end.

The model's state_dict carries the parametrization originals and buffers (masks, codes), so a
resumed run rebuilds the same parametrized model and loads it back; batches and the learning rate
depend only on the step, and the RNG state is restored, so it continues exactly where the checkpoint
was written. A process killed between two periodic writes loses the steps since the last one.

Writes are atomic: the payload goes to a temporary file in the same folder, is flushed to disk, then
``os.replace``-d over the old checkpoint, so a kill mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pet_core.atomic import atomic_write
from pet_core.errors import PetError
from pet_core.finetune.trainer import RunState

FILENAME = "finetune.pt"


def checkpoint_path(directory: str | Path) -> Path:
    return Path(directory) / FILENAME


def _cuda_rng() -> list[torch.Tensor] | None:
    """The CUDA generators' states, when CUDA is in use in this process (asking would start it)."""
    return torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None


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
        "cuda_rng": _cuda_rng(),
    }
    # fsync: on disk before the rename, so a crash cannot leave an empty file in place
    return atomic_write(path, lambda f: torch.save(payload, f), fsync=True)


def load_checkpoint(directory: str | Path, recipe: dict[str, Any]) -> dict[str, Any]:
    """Read the checkpoint written for ``recipe``; PetError when missing or for another recipe."""
    path = checkpoint_path(directory)
    if not path.is_file():
        raise PetError(f"finetune: no checkpoint to resume from ({path} not found)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # truncated or not a checkpoint at all
        raise PetError(f"finetune: the checkpoint {path} cannot be read ({type(exc).__name__}); "
                       "start afresh without resume") from exc
    if not isinstance(data, dict) or data.get("recipe") != recipe:
        raise PetError(f"finetune: the checkpoint {path} was written for a different recipe; "
                       "resume with the same recipe or start afresh")
    return data


def restore_rng(data: dict[str, Any]) -> None:
    """Put the generators back as they were when the checkpoint was written."""
    torch.set_rng_state(data["rng"])
    cuda = data.get("cuda_rng")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def run_state(data: dict[str, Any]) -> RunState:
    """The loop state stored in a checkpoint."""
    return RunState(step=data["step"], history=list(data["history"]), val_accuracy=data["val_accuracy"],
                    seconds=data["seconds"])
