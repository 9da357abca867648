"""Lessons and presets as data (``pet_core.lessons``, ``pet_core.presets``, ``pet_core.lesson_figures``).

Oracles: every shipped lesson's answer recomputed here without the lesson machinery (a plain
workbench with the recipe written out, or torch's softmax for the teacher's confidence); every figure
drawn on two zoo models; hostile and broken lesson/preset files refused with a message naming the file
and the field, while the good ones still load.
"""

from __future__ import annotations

import math

import pytest
import torch

from pet_core.errors import PetError
from pet_core.lesson_figures import FIGURES, lesson_figure
from pet_core.lessons import (FIGURE_KINDS, answer, how_far, load_lessons, parse_lesson, shown_value)
from pet_core.loader import load_baseline, open_workbench
from pet_core.presets import load_presets, parse_preset
from pet_core.recipe import Recipe

LESSONS, PROBLEMS = load_lessons()
PRESETS, PRESET_PROBLEMS = load_presets()
TOPICS = {"magnitude_pruning", "structured_pruning", "quantization", "weight_sharing", "low_rank",
          "deep_compression", "distillation", "lottery_tickets", "nm_sparsity"}

GOOD = """---
id: mine
title: My lesson
formula: 'a^2 + b^2 = c^2'
figure: {kind: histogram, recipe: {default: {prune: {sparsity: 0.5}}}}
exercise: {question: "Accuracy at 50%?", measure: metric, recipe: {default: {prune: {sparsity: 0.5}}},
           unit: "%", range: [0, 100]}
preset: lenet_digits_quick
---
Some *text*.
"""


BEFORE: dict = {}


@pytest.fixture(scope="module")
def digits():
    base = load_baseline("lenet_300_100", "digits")
    BEFORE.update({k: v.clone() for k, v in base.model.state_dict().items()})
    return base


def test_every_technique_ships_a_lesson_with_a_formula_and_a_preset():
    assert PROBLEMS == [] and PRESET_PROBLEMS == []
    assert {x.id for x in LESSONS} == TOPICS
    for lesson in LESSONS:
        assert lesson.formulas and lesson.text and lesson.references
        assert lesson.preset in PRESETS, lesson.id
        assert lesson.figure in FIGURES
    assert set(FIGURE_KINDS) == set(FIGURES)
    seeds = [p for p in PRESETS.values() if (p.model, p.dataset) == ("mnist_cnn", "mnist")]
    assert len(seeds) >= 9 and all(p.recipe.finetune for p in PRESETS.values())


def plain_answer(base, lesson) -> float:
    """The exercise's truth by hand: the recipe on a plain workbench, or the teacher's softmax at T."""
    ex = lesson.exercise
    wb = open_workbench(base)
    if ex.measure == "teacher_confidence":
        with torch.no_grad():
            p = torch.softmax(base.model.eval()(base.dataset.x_test[:2000]) / ex.temperature, dim=1)
        return 100 * float(p.max(dim=1).values.mean())
    wb.apply(Recipe.from_dict({"pet_recipe": 1, **ex.recipe}))
    c = wb.report()["compressed"]
    return {"metric": 100 * c["accuracy"], "size_bytes": c["size_bytes"], "compression_ratio": c["compression_ratio"],
            "sparsity": 100 * c["weight_sparsity"]}[ex.measure]


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda x: x.id)
def test_each_answer_is_what_the_engine_measures(digits, lesson):
    truth = answer(digits, lesson.exercise)
    assert truth == pytest.approx(plain_answer(digits, lesson), rel=1e-9)
    assert lesson.exercise.lo <= truth <= lesson.exercise.hi
    assert all(torch.equal(a, b) for a, b in zip(digits.model.state_dict().values(), BEFORE.values()))  # untouched


@pytest.mark.parametrize("kind", sorted(FIGURES))
@pytest.mark.parametrize("model", ["lenet_300_100", "mnist_cnn"])
def test_every_figure_draws_on_dense_and_conv_models(kind, model):
    base = load_baseline(model, "digits")
    recipe = next((x.figure_recipe for x in LESSONS if x.figure == kind), {})
    fig = lesson_figure(kind, base, recipe)
    assert fig.data and fig.layout.title.text
    if kind == "channels":
        removed = sum(1 for c in fig.data[0].marker.color if c == "#e4572e")
        assert 0 < removed < len(fig.data[0].y)
        assert list(fig.data[0].y) == sorted(fig.data[0].y)
    if kind == "nm_pattern":
        rows = fig.data[0].z
        assert all(sum(row[i:i + 4]) == 2 for row in rows for i in range(0, len(row) - len(row) % 4, 4))
    if kind == "temperature":
        assert all(math.isclose(sum(t.y), 1.0, rel_tol=1e-5) for t in fig.data)
        assert max(fig.data[0].y) > max(fig.data[1].y)          # T = 4 is softer than T = 1


def test_how_far_in_each_unit():
    assert how_far(90, 95, "%")["text"] == "5.0 points too low"
    assert how_far(2000, 1000, "B")["text"] == "2.00× too high" and how_far(500, 1000, "B")["relative"] == 0.5
    assert how_far(10, 10, "×")["text"] == "exact" and how_far(10, 10, "×")["close"]
    with pytest.raises(PetError):
        how_far(float("nan"), 1, "%")
    assert shown_value(12345.6, "B") == "12,346 B" and shown_value(97.25, "%") == "97.2%"


@pytest.mark.parametrize("text, message", [
    ("no head", "must start"),
    ("---\nid: x\n", "not closed"),
    ("---\n- a list\n---\n", "mapping"),
    ("---\nid: x\ntitle: t\nexercise: {}\nevil: 1\n---\n", "unknown field 'evil'"),
    ("---\ntitle: t\nexercise: {}\n---\n", "missing field 'id'"),
    ("---\nid: '../x'\ntitle: t\nexercise: {}\n---\n", "id"),
    (GOOD.replace("measure: metric", "measure: os.system"), "exercise.measure"),
    (GOOD.replace("kind: histogram", "kind: nope"), "figure"),
    (GOOD.replace('unit: "%"', 'unit: "$"'), "exercise.unit"),
    (GOOD.replace("range: [0, 100]", "range: [100, 0]"), "exercise.range"),
    (GOOD.replace("histogram, recipe: {default: {prune: {sparsity: 0.5", "histogram, recipe: {default: {prune: {sparsity: 5"),
     "figure.recipe"),
    (GOOD.replace("{default: {prune: {sparsity: 0.5}}},\n", "{layers: {x: {quantize: {bits: 99}}}},\n"),
     "exercise.recipe"),
    ("---\nid: x\ntitle: t\nexercise: &a [*a]\n---\n", "lesson x.md"),
    ("---\n" + "".join(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9 if i else ["1"] * 9) + "]\n"
                       for i in range(12)) + "---\n", "aliases"),
    ("---\nid: x\n" + "t" * 70_000 + "\n---\n", "allowed"),
])
def test_a_bad_lesson_is_refused_naming_the_file_and_field(text, message):
    with pytest.raises(PetError, match="lesson x.md") as err:
        parse_lesson(text, "x.md")
    assert message in str(err.value)


def test_a_bad_file_does_not_stop_the_others(tmp_path):
    (tmp_path / "a.md").write_text(GOOD)
    (tmp_path / "b.md").write_text(GOOD.replace("id: mine", "id: also").replace("measure: metric", "measure: ???"))
    (tmp_path / "c.md").write_bytes(b"\xff\xfe not utf-8")
    (tmp_path / "big.md").write_text("x" * 70_000)
    lessons, problems = load_lessons([tmp_path])
    assert [x.id for x in lessons] == ["mine"]
    assert len(problems) == 3 and any("b.md" in p for p in problems) and any("big.md" in p for p in problems)
    assert lessons[0].formulas == ("a^2 + b^2 = c^2",) and lessons[0].text == "Some *text*."
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "z.md").write_text(GOOD.replace("title: My lesson", "title: Mine, overridden"))
    lessons, _ = load_lessons([tmp_path, extra])
    assert [x.title for x in lessons] == ["Mine, overridden"]     # the instructor's folder wins


def test_an_instructor_adds_a_lesson_without_code(tmp_path, monkeypatch, digits):
    (tmp_path / "my_lesson.md").write_text(GOOD)
    monkeypatch.setenv("PET_LESSONS_DIR", str(tmp_path))
    lessons, problems = load_lessons()
    mine = next(x for x in lessons if x.id == "mine")
    assert problems == [] and len(lessons) == len(TOPICS) + 1
    wb = open_workbench(digits)
    wb.apply(Recipe(default={"prune": {"sparsity": 0.5}}))
    assert answer(digits, mine.exercise) == pytest.approx(100 * wb.evaluate())


PRESET = """name: p1
title: A preset
model: lenet_300_100
dataset: digits
recipe: {default: {prune: {sparsity: 0.9}}, finetune: {steps: 100, techniques: {qat: {}}}}
"""


@pytest.mark.parametrize("change, message", [
    (("model: lenet_300_100", "model: /etc/passwd"), "zoo"),
    (("model: lenet_300_100", "model: ../../x.pt"), "zoo"),
    (("dataset: digits", "dataset: /tmp/data.npz"), "dataset"),
    (("name: p1", "name: 'a b'"), "name"),
    (("sparsity: 0.9", "sparsity: 9"), "sparsity"),
    (("steps: 100", "steps: -1"), "steps"),
    (("title: A preset", "title: A preset\nrun: rm -rf /"), "unknown field 'run'"),
])
def test_a_bad_preset_is_refused(change, message):
    with pytest.raises(PetError, match="preset p.yaml") as err:
        parse_preset(PRESET.replace(*change), "p.yaml")
    assert message in str(err.value)


def test_presets_round_trip_their_recipe():
    p = parse_preset(PRESET, "p.yaml")
    assert (p.model, p.dataset) == ("lenet_300_100", "digits")
    assert p.recipe.finetune["steps"] == 100 and p.recipe.model == "lenet_300_100"
    assert Recipe.from_dict(p.recipe.to_dict()) == p.recipe
    assert all(Recipe.from_dict(x.recipe.to_dict()) == x.recipe for x in PRESETS.values())


def test_lessons_on_a_language_model_answer_or_say_why(tmp_path):
    """A lesson is data and the model may be anybody's: on a GPT-2 every figure draws or raises a one-line
    PetError, sizes are answered, and an accuracy question says the metric is perplexity."""
    import hf_models

    folder = hf_models.gpt2_folder(tmp_path / "gpt2")
    (tmp_path / "corpus.txt").write_text(" ".join(hf_models.SENTENCES * 4))
    base = load_baseline(str(folder), str(tmp_path / "corpus.txt"))
    for lesson in LESSONS:
        try:
            assert lesson_figure(lesson.figure, base, lesson.figure_recipe).data
        except PetError as exc:
            assert "\n" not in str(exc)
        if lesson.exercise.unit == "%" and lesson.exercise.measure == "metric":
            with pytest.raises(PetError, match="perplexity"):
                answer(base, lesson.exercise)
        elif lesson.exercise.measure in ("size_bytes", "compression_ratio"):
            assert answer(base, lesson.exercise) > 0
