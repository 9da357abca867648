"""Workshop lessons: one Markdown file per technique, its head a small YAML spec (exercise, figure, preset).

A lesson file (``assets/lessons/*.md``, or an instructor's folder in ``$PET_LESSONS_DIR``)::

    ---
    id: magnitude_pruning
    title: Magnitude pruning
    order: 10
    formula: ['M = \\mathbb{1}[|W| > \\tau]']          # LaTeX, one or more lines
    figure: {kind: histogram, recipe: {default: {prune: {sparsity: 0.9}}}}
    exercise:
      question: Accuracy at 90% sparsity, no fine-tuning?
      measure: metric                                   # see MEASURES
      recipe: {default: {prune: {sparsity: 0.9}}}
      unit: "%"                                         # "%" (a fraction shown ×100), "B", "×" or ""
      range: [0, 100]
    preset: mnist_cnn_magnitude                         # a name in assets/presets/
    references: [Han et al. 2015]
    ---
    The text, in Markdown.

The *predict-then-reveal* exercise: a participant commits a guess, then :func:`answer` measures the
truth on the current model (a fresh working copy; the session's is never touched) and
:func:`how_far` says how far off the guess was. Everything here is data: a bad file is refused with
a message naming the file and the field, and the other lessons still load.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pet_core.bounded import check_size, load_yaml, read_files, shown
from pet_core.errors import PetError
from pet_core.recipe import Recipe

LESSONS_DIR = Path(__file__).resolve().parents[1] / "assets" / "lessons"
MAX_LESSON_BYTES = 64 * 1024
MAX_LESSONS = 64
UNITS = ("%", "B", "×", "")
FIGURE_KINDS = ("histogram", "channels", "spectrum", "nm_pattern", "temperature", "pipeline", "sparsity_curve")
FIELDS = {"id", "title", "order", "formula", "figure", "exercise", "preset", "references"}
EXERCISE_FIELDS = {"question", "measure", "recipe", "unit", "range", "temperature"}


@dataclass(frozen=True)
class Exercise:
    """Predict-then-reveal: the question, what is measured (with which recipe) and the guess's range."""

    question: str
    measure: str
    recipe: dict
    unit: str
    lo: float
    hi: float
    temperature: float = 4.0


@dataclass(frozen=True)
class Lesson:
    id: str
    title: str
    order: int
    text: str
    formulas: tuple[str, ...]
    figure: str
    figure_recipe: dict
    exercise: Exercise
    preset: str | None
    references: tuple[str, ...]
    source: str


def parse_lesson(text: str, where: str) -> Lesson:
    """A lesson from its file text (``where`` names it in messages)."""
    check_size(text, f"lesson {where}", MAX_LESSON_BYTES)
    if not text.startswith("---"):
        raise PetError(f"lesson {where}: must start with a '---' YAML head (id, title, exercise, ...)")
    head, sep, body = text[3:].partition("\n---")
    if not sep:
        raise PetError(f"lesson {where}: the YAML head is not closed by a '---' line")
    try:
        spec = load_yaml(head)
    except PetError as exc:
        raise PetError(f"lesson {where}: {exc}") from None
    if not isinstance(spec, dict):
        raise PetError(f"lesson {where}: the head must be a mapping, got {shown(spec)}")
    if extra := set(spec) - FIELDS:
        raise PetError(f"lesson {where}: unknown field {sorted(extra)[0]!r} (allowed: {', '.join(sorted(FIELDS))})")
    for name in ("id", "title", "exercise"):
        if name not in spec:
            raise PetError(f"lesson {where}: missing field {name!r}")
    ident = _text(spec["id"], where, "id", 48)
    if not all(c.isalnum() or c in "_-" for c in ident):
        raise PetError(f"lesson {where}: id {ident!r} may hold letters, digits, '_' and '-' only")
    figure = spec.get("figure") or {"kind": "histogram"}
    if not isinstance(figure, dict) or figure.get("kind") not in FIGURE_KINDS or set(figure) - {"kind", "recipe"}:
        raise PetError(f"lesson {where}: figure must be {{kind: one of {', '.join(FIGURE_KINDS)}, recipe: ...}}, "
                       f"got {shown(figure)}")
    formulas = spec.get("formula") or []
    formulas = [formulas] if isinstance(formulas, str) else formulas
    order = spec.get("order", 100)
    if isinstance(order, bool) or not isinstance(order, int):
        raise PetError(f"lesson {where}: order must be a whole number, got {shown(order)}")
    return Lesson(
        id=ident, title=_text(spec["title"], where, "title", 80), order=order, text=body.strip(),
        formulas=tuple(_text(f, where, "formula", 600) for f in _list(formulas, where, "formula")),
        figure=figure["kind"], figure_recipe=_recipe(figure.get("recipe") or {}, where, "figure.recipe"),
        exercise=_exercise(spec["exercise"], where),
        preset=None if spec.get("preset") is None else _text(spec["preset"], where, "preset", 64),
        references=tuple(_text(r, where, "references", 200) for r in _list(spec.get("references") or [], where,
                                                                            "references")),
        source=where)


def _exercise(data: Any, where: str) -> Exercise:
    if not isinstance(data, dict):
        raise PetError(f"lesson {where}: exercise must be a mapping, got {shown(data)}")
    if extra := set(data) - EXERCISE_FIELDS:
        raise PetError(f"lesson {where}: exercise has unknown field {sorted(extra)[0]!r} "
                       f"(allowed: {', '.join(sorted(EXERCISE_FIELDS))})")
    measure = data.get("measure")
    if measure not in MEASURES:
        raise PetError(f"lesson {where}: exercise.measure {shown(measure)} is not one of {', '.join(MEASURES)}")
    unit = data.get("unit", "")
    if unit not in UNITS:
        raise PetError(f"lesson {where}: exercise.unit {shown(unit)} is not one of {UNITS}")
    rng = data.get("range", [0, 100])
    if (not isinstance(rng, list) or len(rng) != 2 or not all(_number(v) for v in rng) or not rng[0] < rng[1]):
        raise PetError(f"lesson {where}: exercise.range must be [low, high] numbers with low < high, got {shown(rng)}")
    temperature = data.get("temperature", 4.0)
    if not _number(temperature) or not 0 < temperature <= 100:
        raise PetError(f"lesson {where}: exercise.temperature must be in (0, 100], got {shown(temperature)}")
    return Exercise(question=_text(data.get("question"), where, "exercise.question", 300), measure=measure,
                    recipe=_recipe(data.get("recipe") or {}, where, "exercise.recipe"), unit=unit,
                    lo=float(rng[0]), hi=float(rng[1]), temperature=float(temperature))


def _recipe(data: Any, where: str, field: str) -> dict:
    """A recipe's steps (``default``/``layers``), validated now so a lesson cannot fail later in the room."""
    if not isinstance(data, dict):
        raise PetError(f"lesson {where}: {field} must be a mapping, got {shown(data)}")
    try:
        return Recipe.from_dict({"pet_recipe": 1, **data}).to_dict()
    except PetError as exc:
        raise PetError(f"lesson {where}: {field}: {exc}") from None


def _text(value: Any, where: str, field: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PetError(f"lesson {where}: {field} must be text, got {shown(value)}")
    if len(value) > limit:
        raise PetError(f"lesson {where}: {field} is longer than {limit} characters")
    return value.strip()


def _list(value: Any, where: str, field: str) -> list:
    if not isinstance(value, list) or len(value) > 20:
        raise PetError(f"lesson {where}: {field} must be a list of at most 20 items, got {shown(value)}")
    return value


def _number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def lesson_dirs() -> list[Path]:
    """The shipped lessons, then the instructor's (``$PET_LESSONS_DIR``): a later lesson with the same id wins."""
    dirs = [LESSONS_DIR]
    if extra := os.environ.get("PET_LESSONS_DIR"):
        dirs.append(Path(extra))
    return dirs


def load_lessons(dirs: list[Path] | None = None) -> tuple[list[Lesson], list[str]]:
    """Every readable lesson, by ``order`` then title, and one message per file that was refused."""
    lessons, problems = read_files(dirs if dirs is not None else lesson_dirs(), "*.md", parse_lesson, "lesson",
                                   max_files=MAX_LESSONS, max_bytes=MAX_LESSON_BYTES)
    found = {lesson.id: lesson for lesson in lessons}          # a later folder's lesson of the same id wins
    return sorted(found.values(), key=lambda x: (x.order, x.title)), problems


# --- the measured answer ------------------------------------------------------------------------

def applied(baseline, recipe: dict):
    """A fresh working copy of ``baseline`` with a lesson's recipe steps applied (the session's is never touched)."""
    from pet_core.loader import open_workbench

    wb = open_workbench(baseline)
    wb.apply(Recipe.from_dict({"pet_recipe": 1, **recipe}))
    return wb


def teacher_logits(baseline, n: int):
    """The baseline's logits on its first ``n`` evaluation examples, float32 (n, classes); classifiers only."""
    import torch

    wb = applied(baseline, {})
    if not wb.measures or wb.metric.name != "accuracy":
        raise PetError("distillation's soft targets need a classifier loaded with a dataset"
                       + ("" if not wb.measures else f" (this model's metric is {wb.metric.name})"))
    with torch.no_grad():
        return wb.baseline(wb.x_eval[:n]).float()


def _metric(baseline, ex: Exercise) -> float:
    wb = applied(baseline, ex.recipe)
    if not wb.measures:
        raise PetError("this exercise measures the model's metric, and the model was loaded without a dataset")
    if ex.unit == "%" and wb.metric.name != "accuracy":
        raise PetError(f"this exercise asks for an accuracy, and this model's metric is {wb.metric.name}: "
                       "try it on a classifier (the zoo models)")
    value = wb.evaluate()
    return 100.0 * value if ex.unit == "%" else value


def _report(field: str, scale: float = 1.0) -> Callable[[Any, Exercise], float]:
    def measure(baseline, ex: Exercise) -> float:
        return scale * float(applied(baseline, ex.recipe).report()["compressed"][field])
    return measure


def _teacher_confidence(baseline, ex: Exercise) -> float:
    """The baseline's mean top-class probability on the test set with its logits divided by T (in %)."""
    import torch

    p = torch.softmax(teacher_logits(baseline, 2000) / ex.temperature, dim=1).amax(dim=1)
    return 100.0 * float(p.mean())


MEASURES: dict[str, Callable[[Any, Exercise], float]] = {
    "metric": _metric,                                  # accuracy (or the model's metric) of the recipe
    "size_bytes": _report("size_bytes"),                # accounted bytes of the recipe
    "compression_ratio": _report("compression_ratio"),  # baseline bytes / accounted bytes
    "sparsity": _report("weight_sparsity", 100.0),      # % of compressible weights that are zero
    "teacher_confidence": _teacher_confidence,          # distillation: how soft the teacher's targets are
}


def answer(baseline, ex: Exercise) -> float:
    """The measured truth of ``ex`` on ``baseline``, in the exercise's unit."""
    return float(MEASURES[ex.measure](baseline, ex))


def how_far(guess: float, truth: float, unit: str) -> dict[str, Any]:
    """How far off a guess was: ``error`` (guess − truth), ``relative`` (|error| / |truth|) and a sentence."""
    if not (_number(guess) and _number(truth)):
        raise PetError(f"a guess and its answer must be numbers, got {shown(guess)} and {shown(truth)}")
    error = guess - truth
    relative = abs(error) / abs(truth) if truth else (0.0 if error == 0 else math.inf)
    if unit == "%":
        text = f"{abs(error):.1f} points {'too high' if error > 0 else 'too low' if error < 0 else '(exact)'}"
    elif unit in ("B", "×") and guess > 0 and truth > 0:
        factor = max(guess, truth) / min(guess, truth)
        text = "exact" if factor == 1 else f"{factor:.2f}× too {'high' if guess > truth else 'low'}"
    else:
        text = f"off by {abs(error):.4g} ({relative:.0%})"
    return {"error": error, "relative": relative, "text": text, "close": relative <= 0.1}


def shown_value(value: float, unit: str) -> str:
    """A value in its unit, as the lesson pages and the handout print it."""
    if unit == "%":
        return f"{value:.1f}%"
    if unit == "B":
        return f"{value:,.0f} B"
    if unit == "×":
        return f"{value:.2f}×"
    return f"{value:.4g}"
