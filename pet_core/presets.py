"""Instructor presets: a named model, dataset, recipe and fine-tune settings, loaded in one click.

A preset file (``assets/presets/*.yaml``, or the instructor's ``$PET_PRESETS_DIR``)::

    name: mnist_cnn_deep_compression
    title: "Deep Compression on the seeds' MNIST CNN"
    model: mnist_cnn              # a zoo model (never a path: presets are shared by the room)
    dataset: mnist                # digits or mnist
    description: Prune 90%, share 32 k-means centroids, fine-tune the centroids.
    recipe:                       # default / layers / finetune, as in any recipe
      default: {prune: {sparsity: 0.9}, share: {clusters: 32}}
      finetune: {epochs: 1.1, lr: 0.003, techniques: {qat: {}}}

Every field is validated when the file is read; a bad file is reported by name and the rest load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pet_core.bounded import check_size, load_yaml, read_files, shown
from pet_core.errors import PetError
from pet_core.recipe import Recipe

PRESETS_DIR = Path(__file__).resolve().parents[1] / "assets" / "presets"
PRESET_DATASETS = ("digits", "mnist")
MAX_PRESET_BYTES = 32 * 1024
MAX_PRESETS = 64
FIELDS = {"name", "title", "model", "dataset", "description", "recipe"}


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    model: str
    dataset: str
    description: str
    recipe: Recipe           # model and dataset filled in; ``finetune`` holds the fine-tune settings


def parse_preset(text: str, where: str) -> Preset:
    from pet_core.loader import is_zoo_name

    check_size(text, f"preset {where}", MAX_PRESET_BYTES)
    try:
        data = load_yaml(text)
    except PetError as exc:
        raise PetError(f"preset {where}: {exc}") from None
    if not isinstance(data, dict):
        raise PetError(f"preset {where}: must be a mapping, got {shown(data)}")
    if extra := set(data) - FIELDS:
        raise PetError(f"preset {where}: unknown field {sorted(extra)[0]!r} (allowed: {', '.join(sorted(FIELDS))})")
    for field in ("name", "title", "model", "dataset", "recipe"):
        if field not in data:
            raise PetError(f"preset {where}: missing field {field!r}")
    name = data["name"]
    if not isinstance(name, str) or not name or len(name) > 64 or not all(c.isalnum() or c in "_-" for c in name):
        raise PetError(f"preset {where}: name {shown(name)} may hold letters, digits, '_' and '-' only (≤ 64)")
    model, dataset = data["model"], data["dataset"]
    if not isinstance(model, str) or not is_zoo_name(model):
        raise PetError(f"preset {where}: model {shown(model)} is not a zoo model (presets name zoo models only)")
    if dataset not in PRESET_DATASETS:
        raise PetError(f"preset {where}: dataset {shown(dataset)} is not one of {', '.join(PRESET_DATASETS)}")
    if not isinstance(data["recipe"], dict):
        raise PetError(f"preset {where}: recipe must be a mapping, got {shown(data['recipe'])}")
    try:
        recipe = Recipe.from_dict({**data["recipe"], "pet_recipe": 1, "model": model, "dataset": dataset})
    except PetError as exc:
        raise PetError(f"preset {where}: {exc}") from None
    texts = {}
    for field, limit in (("title", 120), ("description", 600)):
        value = data.get(field, "")
        if not isinstance(value, str) or len(value) > limit:
            raise PetError(f"preset {where}: {field} must be text of at most {limit} characters")
        texts[field] = value.strip()
    return Preset(name=name, title=texts["title"] or name, model=model, dataset=dataset,
                  description=texts["description"], recipe=recipe)


def preset_dirs() -> list[Path]:
    dirs = [PRESETS_DIR]
    if extra := os.environ.get("PET_PRESETS_DIR"):
        dirs.append(Path(extra))
    return dirs


def load_presets(dirs: list[Path] | None = None) -> tuple[dict[str, Preset], list[str]]:
    """Name → preset (a later folder's preset of the same name wins), and one message per refused file."""
    presets, problems = read_files(dirs if dirs is not None else preset_dirs(), "*.y*ml", parse_preset, "preset",
                                   max_files=MAX_PRESETS, max_bytes=MAX_PRESET_BYTES)
    return {p.name: p for p in presets}, problems


def as_dict(preset: Preset) -> dict[str, Any]:
    return {"name": preset.name, "title": preset.title, "model": preset.model, "dataset": preset.dataset,
            "description": preset.description, "recipe": preset.recipe.to_dict()}
