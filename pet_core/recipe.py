"""Recipes: the versioned configuration that reproduces every number, validated on load.

A recipe is plain data (JSON or YAML). ``Recipe.to_dict()`` returns exactly what was given
(after type normalisation), so ``parse(dump(r)) == r`` for both formats::

    pet_recipe: 1
    model: lenet_300_100
    dataset: digits
    default:
      prune:    {method: magnitude, scope: global, sparsity: 0.9}
      quantize: {bits: 4, scheme: symmetric, granularity: per_channel}
    layers:
      "fc3": {prune: {sparsity: 0.5}, quantize: {bits: 8}}

Step fields, their defaults, allowed values and help texts live in each method's config
(``pet_core.methods``); ``python -m pet_core steps`` lists them.
"""

from __future__ import annotations

import base64
import copy
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pet_core.bounded import MAX_TEXT_BYTES, check_size, check_tree, cut, inflate, load_yaml, shown, shown_key
from pet_core.errors import PetError
from pet_core.finetune.config import validate_finetune
from pet_core.methods.base import StepConfig
from pet_core.steps import STEPS, Patch, clashing, step_config, step_patch

RECIPE_VERSION = 1
TOP_KEYS = ("pet_recipe", "model", "dataset", "default", "layers", "finetune")
MAX_NAME_CHARS = 1024           # a model, dataset or layer pattern (paths included)
MAX_TOKEN_CHARS = 64 * 1024     # a share link's token; browsers cut URLs not much longer


@dataclass(frozen=True)
class Recipe:
    """A validated recipe: typed, frozen step configs (``default``) and layer overrides (``layers``).

    Built from plain data (:meth:`from_dict`, or the constructor with plain mappings, which are
    validated the same way); :meth:`to_dict` writes back exactly the keys that were given.

    >>> Recipe(default={"quantize": {"bits": 4}}).default["quantize"].scheme
    'symmetric'
    """

    model: str = "lenet_300_100"
    dataset: str = "digits"
    default: dict[str, StepConfig] = field(default_factory=dict)
    layers: dict[str, dict[str, Patch | None]] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)   # empty: post-training compression only

    def __post_init__(self) -> None:
        if not all(isinstance(v, StepConfig) for v in self.default.values()):
            object.__setattr__(self, "default", _default(_plain(self.default)))
        if not all(v is None or isinstance(v, Patch) for steps in self.layers.values() for v in steps.values()):
            object.__setattr__(self, "layers", _layers(_plain(self.layers)))

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data, ready for JSON or YAML."""
        out: dict[str, Any] = {"pet_recipe": RECIPE_VERSION, "model": self.model, "dataset": self.dataset}
        out["default"] = {step: cfg.to_dict() for step, cfg in self.default.items()}
        if self.layers:
            out["layers"] = {pattern: {step: None if p is None else p.as_dict() for step, p in steps.items()}
                             for pattern, steps in self.layers.items()}
        if self.finetune:
            out["finetune"] = copy.deepcopy(self.finetune)
        return out

    def replace(self, **changes: Any) -> "Recipe":
        """A validated copy with top-level fields replaced (``default=...``, ``layers=...``)."""
        data = self.to_dict()
        data.update(changes)
        return Recipe.from_dict(_plain(data))

    @classmethod
    def from_dict(cls, data: Any) -> "Recipe":
        """Validate plain data; raises PetError naming the key, the value and what is allowed."""
        if not isinstance(data, dict):
            raise PetError(f"recipe: expected a mapping at the top level, got {type(data).__name__}")
        unknown = [k for k in data if k not in TOP_KEYS]
        if unknown:
            raise PetError(f"recipe: unknown key '{shown_key(unknown[0])}' (allowed: {', '.join(TOP_KEYS)})")
        version = data.get("pet_recipe")
        if type(version) is not int or version != RECIPE_VERSION:          # not True, not 1.0
            raise PetError(f"recipe: pet_recipe = {shown(version)} is not supported (allowed: {RECIPE_VERSION})")
        model = _text(data.get("model", "lenet_300_100"), "model")
        dataset = _text(data.get("dataset", "digits"), "dataset")
        default = _default(_or_empty(data.get("default")))
        layers = _layers(_or_empty(data.get("layers")))
        finetune = validate_finetune(data["finetune"]) if data.get("finetune") is not None else {}
        return cls(model=model, dataset=dataset, default=default, layers=layers, finetune=finetune)


def _plain(value: Any) -> Any:
    """Step configs and patches back to plain data (a mapping may mix both when built in code)."""
    if isinstance(value, StepConfig):
        return value.to_dict()
    if isinstance(value, Patch):
        return value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _default(data: Any) -> dict[str, StepConfig]:
    if not isinstance(data, dict):
        raise PetError(f"recipe: default must be a mapping of steps ({', '.join(STEPS)}), got {shown(data)}")
    out = {}
    for step, fields_ in data.items():
        _known_step(step, "default")
        if fields_ is None:
            raise PetError(f"recipe: default.{step} = null (null switches a step off only in layers)")
        out[step] = step_config(step, fields_, f"default.{step}")
    if clash := clashing(out):
        raise PetError(f"recipe: default has both {clash[0]} and {clash[1]} (a layer uses {clash[0]} or "
                       f"{clash[1]}, not both)")
    return out


def _layers(data: Any) -> dict[str, dict[str, Patch | None]]:
    if not isinstance(data, dict):
        raise PetError(f"recipe: layers must be a mapping of layer name or glob to steps, got {shown(data)}")
    layers = {}
    for pattern, steps in data.items():
        if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_NAME_CHARS:
            raise PetError(f"recipe: layers key {shown(pattern)} must be a layer name or glob "
                           f"(1-{MAX_NAME_CHARS} characters)")
        where = f"layers.{shown_key(pattern)}"
        steps = _or_empty(steps)
        if not isinstance(steps, dict):
            raise PetError(f"recipe: {where} must be a mapping of steps ({', '.join(STEPS)}), got {shown(steps)}")
        out: dict[str, Patch | None] = {}
        for step, fields_ in steps.items():
            _known_step(step, where)
            out[step] = None if fields_ is None else step_patch(step, fields_, f"{where}.{step}")
        layers[pattern] = out
    return layers


def _known_step(step: Any, where: str) -> None:
    if step not in STEPS:
        raise PetError(f"recipe: unknown key '{where}.{shown_key(step)}' (allowed: {', '.join(STEPS)})")


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_CHARS:
        raise PetError(f"recipe: {key} = {shown(value)} must be a non-empty string of at most "
                       f"{MAX_NAME_CHARS} characters")
    return value


def _or_empty(value: Any) -> Any:
    """A missing section (``null``) is an empty mapping; anything else is checked as given."""
    return {} if value is None else value


# --- text formats ------------------------------------------------------------------------------

def dumps(recipe: Recipe, fmt: str = "yaml") -> str:
    """Serialise to ``"yaml"`` or ``"json"`` text."""
    data = recipe.to_dict()
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    raise PetError(f"recipe format {shown(fmt)} is not supported (allowed: yaml, json)")


def loads(text: str, fmt: str = "yaml") -> Recipe:
    """Parse and validate recipe text (JSON is valid YAML, but ``fmt="json"`` gives JSON's messages).

    Text over 1 MiB, nesting deeper than 20 levels and YAML aliases that expand past 200,000
    values are refused (:mod:`pet_core.bounded`) before anything big is built.
    """
    if not isinstance(text, str):
        raise PetError(f"recipe: expected text, got {type(text).__name__}")
    try:
        check_size(text, "text")
        data = _json(text) if fmt == "json" else load_yaml(text)
    except PetError as exc:
        raise PetError(f"recipe: {exc}") from None
    return Recipe.from_dict(data)


def _json(text: str | bytes) -> Any:
    """``json.loads`` within the budgets of :mod:`pet_core.bounded`; PetError for anything else."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise PetError("JSON nests too deep (refused)") from None
    except ValueError as exc:                      # JSONDecodeError, bad UTF-8, 5,000-digit integers
        raise PetError(f"not valid JSON: {cut(' '.join(str(exc).split()))}") from None
    check_tree(data, "JSON")
    return data


def load(path: str | Path) -> Recipe:
    """Read a recipe file (``.json``, ``.yaml`` or ``.yml``)."""
    path = Path(path)
    if not path.is_file():
        raise PetError(f"recipe file {path} not found")
    fmt = "json" if path.suffix.lower() == ".json" else "yaml"
    if path.stat().st_size > MAX_TEXT_BYTES:      # refused before a byte is read
        raise PetError(f"recipe file {path.name} is {path.stat().st_size:,} bytes, more than the "
                       f"{MAX_TEXT_BYTES:,} allowed")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PetError(f"recipe file {path} is not UTF-8 text") from None
    try:
        return loads(text, fmt)
    except PetError as exc:
        raise PetError(f"{path.name}: {exc}") from None


def save(recipe: Recipe, path: str | Path) -> None:
    """Write a recipe; the format follows the file extension."""
    path = Path(path)
    path.write_text(dumps(recipe, "json" if path.suffix.lower() == ".json" else "yaml"), encoding="utf-8")


# --- links ----------------------------------------------------------------------------------------

def to_token(recipe: Recipe) -> str:
    """A compact URL-safe token for sharing a recipe as a link (``?recipe=...``)."""
    raw = json.dumps(recipe.to_dict(), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")


def from_token(token: str) -> Recipe:
    """The recipe in a link token; PetError when the token is damaged or too big.

    The token is at most 64 KiB of text and inflates to at most 1 MiB; the zlib stream is
    decompressed with that cap, so a small token cannot expand into gigabytes.
    """
    if not isinstance(token, str):
        raise PetError(f"recipe link is damaged (expected text, got {type(token).__name__})")
    if len(token) > MAX_TOKEN_CHARS:
        raise PetError(f"recipe link is too long ({len(token):,} characters, at most {MAX_TOKEN_CHARS:,})")
    try:
        packed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError as exc:                       # binascii.Error, non-ASCII text
        raise PetError(f"recipe link is damaged ({type(exc).__name__})") from None
    raw = inflate(packed, MAX_TEXT_BYTES, "recipe link")
    try:
        data = _json(raw)
    except PetError as exc:
        raise PetError(f"recipe link: {exc}") from None
    return Recipe.from_dict(data)
