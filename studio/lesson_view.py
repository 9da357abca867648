"""The Lessons page's glue: lessons and presets (read once a minute), each lesson's figure and measured
answer (computed once per model for the whole room), a participant's guesses, loading a preset.

A guess is committed before the answer is shown: ``progress()[lesson_id]`` holds the guess, then the
measured truth once revealed. In a workshop the guess also goes to the room (``studio.workshop_view``).
"""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

from pet_core.lesson_figures import lesson_figure
from pet_core.lessons import Lesson, answer, load_lessons
from pet_core.presets import Preset, load_presets
from studio import state
from studio.text import plain

ss = st.session_state


@st.cache_data(ttl=60, show_spinner=False)
def lessons() -> tuple[list[Lesson], list[str]]:
    return load_lessons()


@st.cache_data(ttl=60, show_spinner=False)
def presets() -> tuple[dict[str, Preset], list[str]]:
    return load_presets()


def model_key(base) -> str:
    """What a lesson's figure and answer depend on: the model's weights and the data."""
    return f"{state.source_key()}|{base.info.get('model_hash') or id(base.model)}"


@st.cache_data(max_entries=256, show_spinner=False)
def _figure(key: str, kind: str, recipe_json: str, _base) -> Any:
    return lesson_figure(kind, _base, json.loads(recipe_json))


@st.cache_data(max_entries=256, show_spinner=False)
def _truth(key: str, lesson_id: str, exercise_json: str, _base, _lesson: Lesson) -> float:
    return answer(_base, _lesson.exercise)


def figure(lesson: Lesson, base) -> Any:
    """The lesson's live figure on the current model, or None (with a line saying why)."""
    try:
        return _figure(model_key(base), lesson.figure, json.dumps(lesson.figure_recipe, sort_keys=True), base)
    except Exception as exc:     # a lesson is data, the model may be anybody's: the page stays up
        st.info(f"This lesson's figure cannot be drawn on this model: {plain(exc)}")
        return None


def truth(lesson: Lesson, base) -> float:
    ex = lesson.exercise
    spec = json.dumps([ex.measure, ex.recipe, ex.unit, ex.temperature], sort_keys=True)
    return _truth(model_key(base), lesson.id, spec, base, lesson)


def progress() -> dict[str, dict[str, Any]]:
    """This session's exercises: lesson id → {guess, truth (None until revealed), model (its source key)}."""
    return ss.setdefault("lesson_progress", {})


def commit_guess(lesson: Lesson, guess: float) -> None:
    progress()[lesson.id] = {"guess": float(guess), "truth": None, "model": state.source_key()}


def reveal(lesson: Lesson, base) -> dict[str, Any]:
    """Measure the answer to the committed guess (once per model, shared by the room)."""
    entry = progress()[lesson.id]
    entry["truth"] = truth(lesson, base)
    return entry


# --- presets --------------------------------------------------------------------------------------

def controls_from_finetune(section: dict[str, Any]) -> dict[str, Any]:
    """The Fine-tune page's settings (``f_*`` keys) from a recipe's ``finetune:`` section."""
    t = section.get("techniques") or {}
    out: dict[str, Any] = {"f_lr": float(section.get("lr", 3e-3)), "f_optimizer": section.get("optimizer", "adam"),
                           "f_schedule": section.get("schedule", "cosine"),
                           "f_batch_size": int(section.get("batch_size", 128)),
                           "f_qat": "qat" in t, "f_distill": "distill" in t, "f_l1": "l1" in t,
                           "f_gradual": "gradual" in t, "f_lottery": "lottery" in t, "f_lora": "lora" in t}
    for key, technique, field in (("f_temperature", "distill", "temperature"), ("f_alpha", "distill", "alpha"),
                                  ("f_l1_strength", "l1", "strength"),
                                  ("f_initial_sparsity", "gradual", "initial_sparsity"),
                                  ("f_start_epoch", "gradual", "start_epoch"), ("f_end_epoch", "gradual", "end_epoch"),
                                  ("f_frequency", "gradual", "frequency"), ("f_rounds", "lottery", "rounds"),
                                  ("f_rewind", "lottery", "rewind"), ("f_lora_rank", "lora", "rank"),
                                  ("f_lora_alpha", "lora", "alpha"), ("f_lora_layers", "lora", "layers")):
        if field in (t.get(technique) or {}):
            out[key] = t[technique][field]
    return out


def load_preset(preset: Preset) -> bool:
    """Make ``preset`` the session's model, dataset, recipe and fine-tune settings (False: it could not load)."""
    data_dir = state.default_mnist_dir() if preset.dataset == "mnist" else None
    if preset.dataset == "mnist" and not data_dir:
        st.error(f"The preset {plain(preset.title)} needs MNIST, which this server does not have "
                 "(set PET_MNIST_DIR when starting it).")
        return False
    if not state.switch_zoo_source(preset.model, preset.dataset, data_dir):
        return False
    section = preset.recipe.finetune or {}
    for key, value in controls_from_finetune(section).items():
        ss[key] = value
    ss["f_steps_wanted"] = section.get("steps")
    if section.get("steps") is None and section.get("epochs") is not None:
        ss["f_epochs"], ss["f_steps_wanted"] = float(section["epochs"]), None
        ss["f_epochs_for"] = state.source_key()
    state.set_recipe(preset.recipe.replace(finetune={}))
    ss["preset_loaded"] = preset.name
    return True
