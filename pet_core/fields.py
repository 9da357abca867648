"""Config fields that validate themselves: default, allowed values, help text and UI hints in one place.

Every recipe step (a compression method's config) and every fine-tune option is a frozen dataclass
whose fields are made with :func:`spec_field`. Validation (:func:`check_value`), the
``python -m pet_core steps`` table and the Compress page's widgets all read this metadata, so an
allowed range is written once.
"""

from __future__ import annotations

import math
from dataclasses import field
from typing import Any

from pet_core.bounded import shown, shown_key
from pet_core.errors import PetError

MAX_INT = 2**53                 # larger integers are refused: floats cannot hold them, and no field needs them


def spec_field(default: Any, help: str, *, choices: tuple | None = None, lo: float | None = None,
               hi: float | None = None, lo_open: bool = False, kind: type = float,
               ui: dict | None = None) -> Any:
    """A dataclass field with its rules.

    Args:
        default: the value when the recipe leaves the key out.
        help: one line for docs, tooltips and error messages.
        choices: the allowed values (strings, or numbers such as bit widths).
        lo, hi, lo_open: the allowed numeric range ``[lo, hi]`` (``(lo, hi]`` when ``lo_open``);
            ``hi = inf`` means unbounded.
        kind: ``float``, ``int``, ``str`` (or ``bool``/``dict`` for fine-tune options).
        ui: widget hints for the app (``step``, ``label``, ``widget``, ``min``/``max`` for an
            unbounded field's widget); absent keys are derived from the rules.
    """
    return field(default=default, metadata=dict(help=help, choices=choices, lo=lo, hi=hi,
                                                lo_open=lo_open, kind=kind, ui=ui or {}))


_f = spec_field   # the short name the fine-tune options use


def check_value(name: str, value: Any, meta: dict, where: str) -> Any:
    """``value`` checked against a field's metadata and normalised (int or float); PetError otherwise.

    Booleans are not numbers here, integers beyond 2^53 and non-finite numbers are out of range
    (``hi = inf`` means "no upper bound", not that inf itself is allowed).
    """
    kind, choices = meta["kind"], meta["choices"]
    if value is None:
        return None
    what = f"recipe: {where}.{shown_key(name)} = {shown(value)}"
    if kind is str:
        if not isinstance(value, str) or not value or (choices is not None and value not in choices):
            raise PetError(f"{what} is not allowed (allowed: {', '.join(choices or ['a non-empty string'])})")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            kind is int and isinstance(value, float) and math.isfinite(value) and not value.is_integer()):
        raise PetError(f"{what} must be {'an integer' if kind is int else 'a number'}")
    if isinstance(value, float) and not math.isfinite(value) and kind is int:
        raise PetError(f"{what} must be an integer")
    allowed = allowed_text(meta)
    if isinstance(value, int) and abs(value) > MAX_INT or isinstance(value, float) and not math.isfinite(value):
        raise PetError(f"{what} is out of range (allowed: {allowed})")
    value = kind(value)
    if choices is not None and value not in choices:
        raise PetError(f"{what} is out of range (allowed: {allowed})")
    lo, hi = meta["lo"], meta["hi"]
    if lo is not None and (value < lo or (meta["lo_open"] and value == lo) or value > hi):
        raise PetError(f"{what} is out of range (allowed: {allowed})")
    return value


def allowed_text(meta: dict, short: bool = True) -> str:
    """A field's allowed values as messages print them: "[0, 1]", "1-8 or 16" (``short``), "a, b"."""
    choices = meta["choices"]
    if choices is not None and not short:
        return ", ".join(map(str, choices))
    if choices is not None:
        numbers = [c for c in choices if isinstance(c, int)]
        if (len(numbers) == len(choices) > 2 and numbers[:-1] == list(range(numbers[0], numbers[-2] + 1))
                and numbers[-1] > numbers[-2] + 1):
            return f"{numbers[0]}-{numbers[-2]} or {numbers[-1]}"    # 1-8 or 16
        return ", ".join(map(str, choices))
    if meta["lo"] is None:
        return "any non-empty string" if meta["kind"] is str else "any"
    hi = "inf)" if meta["hi"] == math.inf else f"{meta['hi']:g}]"
    return f"{'(' if meta['lo_open'] else '['}{meta['lo']:g}, {hi}"


def check_fields(data: dict[str, Any], metas: dict[str, dict], where: str,
                 one_of: tuple[tuple[str, str], ...] = (), *, complete: bool = True) -> dict[str, Any]:
    """Recipe fields checked against their metadata: unknown keys, nulls, values, one-of pairs.

    ``complete``: each one-of pair needs one of its fields (False for a layer override, which the
    default completes). Returns the normalised values; PetError names the key, value and rule.
    """
    checked = {}
    for key, value in data.items():
        if key not in metas:
            raise PetError(f"recipe: unknown key '{where}.{shown_key(key)}' (allowed: {', '.join(metas)})")
        if value is None:
            raise PetError(f"recipe: {where}.{key} = null is not allowed (leave the key out instead)")
        checked[key] = check_value(key, value, metas[key], where)
    for a, b in one_of:
        if a in checked and b in checked:
            raise PetError(f"recipe: {where} sets both {a} and {b} (give one)")
        if complete and a not in checked and b not in checked:
            raise PetError(f"recipe: {where} needs {a} or {b}")
    return checked
