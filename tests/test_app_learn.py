"""Workshop mode as people drive it (AppTest): a lesson's predict-then-reveal, a preset into Fine-tune
with the default length that visibly recovers, two nicknames on the class board, the handout.

Oracles: ``pet_core.lessons.answer`` (itself checked against a plain workbench in test_lessons.py),
the ledger's rows, the room's rows and ``pet_core.finetune.trainer.epochs_for_steps``.
"""

import re

import pytest

from pet_core.finetune.trainer import epochs_for_steps
from pet_core.ledger import Ledger
from pet_core.lessons import answer, load_lessons, shown_value
from pet_core.loader import load_baseline
from pet_core.workshop import Room
from studio import workshop_view
from test_app import assert_clean, key, metrics, new_app
from test_app_finetune import buttons, poll_until_finished

CODE, KEY = "ml-101", "tea-pot"


@pytest.fixture(scope="module", autouse=True)
def workshop_server():
    """The server was started with a workshop code, a budget and an instructor key."""
    load_baseline("lenet_300_100", "digits")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PET_WORKSHOP_CODE", CODE)
        mp.setenv("PET_WORKSHOP_BUDGET", "10x")
        mp.setenv("PET_WORKSHOP_INSTRUCTOR_KEY", KEY)
        workshop_view.config.clear()
        yield
    workshop_view.config.clear()


def learn(**query):
    at = new_app(**query)
    at.switch_page("pages/learn.py").run()
    assert_clean(at)
    return at


def join(at, nickname: str, code: str = CODE):
    at.text_input(key="l_code").input(code)
    at.text_input(key="l_nick").input(nickname)
    at.button[[b.label for b in at.button].index("Join")].click().run()
    assert_clean(at)


def test_a_guess_is_committed_before_the_measured_answer_is_revealed():
    at = learn()
    join(at, "ana")
    assert at.session_state["user"] == "ana" and at.query_params["workshop"] == CODE
    lesson = next(x for x in load_lessons()[0] if x.id == "quantization")
    at.radio(key="l_lesson").set_value("quantization").run()
    assert at.latex, "the formula is rendered"
    assert "l_reveal_quantization" not in [b.key for b in at.button]          # nothing to reveal yet
    assert at.button(key="l_commit_quantization").disabled                    # no guess, no commit
    at.number_input(key="l_guess_quantization").set_value(40000.0).run()
    at.button(key="l_commit_quantization").click().run()
    assert "l_guess_quantization" not in [n.key for n in at.number_input]     # the guess is locked in
    at.button(key="l_reveal_quantization").click().run()
    assert_clean(at)
    truth = answer(load_baseline("lenet_300_100", "digits"), lesson.exercise)
    shown = metrics(at)
    assert shown["Your guess"] == "40,000 B" and shown["Measured"] == shown_value(truth, "B")
    assert shown["How far off"] == f"{40000 / truth:.2f}× too high"
    [row] = Room().guesses(CODE, "quantization")
    assert (row["nickname"], row["guess"], row["truth"]) == ("ana", 40000.0, truth)


def test_a_wrong_code_or_no_nickname_does_not_join():
    at = learn()
    join(at, "bo", code="ml-999")
    assert any("not this workshop's code" in e.value for e in at.error) and "workshop" not in at.session_state
    at = learn()
    join(at, "   ")
    assert any("nickname" in e.value for e in at.error) and at.session_state["user"] == "me"


def test_a_preset_loads_model_recipe_and_a_finetune_that_visibly_recovers():
    at = new_app(instructor=KEY)
    at.switch_page("pages/board.py").run()
    assert_clean(at)
    at.selectbox(key="b_preset").set_value("lenet_digits_quick").run()
    at.button[[b.label for b in at.button].index("Load preset")].click().run()
    assert_clean(at)
    recipe = at.session_state["recipe"]
    assert recipe.default["prune"].sparsity == 0.95 and recipe.default["quantize"].bits == 3
    assert not recipe.finetune
    at.switch_page("pages/finetune.py").run()
    assert_clean(at)
    base = load_baseline("lenet_300_100", "digits")
    assert at.number_input(key="f_epochs").value == epochs_for_steps(len(base.dataset.y_train), 128, 500)
    assert at.number_input(key="f_lr").value == 0.003 and at.checkbox(key="f_qat").value
    before = at.session_state["report"][2]["compressed"]["accuracy"]
    buttons(at)["f_start"].click().run()
    run_id = at.session_state["finetune_run"]
    poll_until_finished(at)
    run = Ledger().get(run_id)
    assert run["recipe"]["finetune"]["epochs"] == at.number_input(key="f_epochs").value
    assert before < 0.5 and run["metrics"]["accuracy"] > before + 0.4, (before, run["metrics"]["accuracy"])


def test_two_nicknames_appear_on_the_board_and_the_leaderboard():
    people = {}
    for nick, sparsity in (("cy", 0.9), ("di", 0.95)):
        at = learn()
        join(at, nick)
        at.switch_page("pages/compress.py").run()
        at.slider(key=key(at, "c_prune_sparsity")).set_value(sparsity).run()
        assert_clean(at)
        people[nick] = at.session_state["report"][2]["run_id"]
    board = new_app()
    board.switch_page("pages/board.py").run()
    assert_clean(board)
    table = board.dataframe[0].value
    assert set(table["nickname"]) == {"cy", "di"}
    led = Ledger()
    for nick, run_id in people.items():
        assert led.get(run_id)["owner"] == nick
        mine = [r for r in led.runs(owner=nick, kinds=["post-training"]) if r["metrics"]["compression_ratio"] >= 10]
        best = max(mine, key=lambda r: (r["metrics"]["accuracy"], -r["metrics"]["size_bytes"]))
        assert int(table[table["nickname"] == nick]["run"].iloc[0]) == best["id"]
    assert any(re.match(r"\d+ joined · budget ≥ 10× smaller", c.value) for c in board.caption)


def test_the_handout_holds_the_guesses():
    at = learn()
    join(at, "eve")
    at.number_input(key="l_guess_magnitude_pruning").set_value(80.0).run()
    at.button(key="l_commit_magnitude_pruning").click().run()
    at.button(key="l_reveal_magnitude_pruning").click().run()
    [button] = at.get("download_button")
    assert button.proto.label.startswith("Download my handout")


def test_an_answer_from_another_model_can_be_guessed_again():
    at = learn()
    at.radio(key="l_lesson").set_value("low_rank").run()
    at.number_input(key="l_guess_low_rank").set_value(90.0).run()
    at.button(key="l_commit_low_rank").click().run()
    at.button(key="l_reveal_low_rank").click().run()
    assert "Measured" in metrics(at) and "l_again_low_rank" not in [b.key for b in at.button]
    at.session_state["lesson_progress"]["low_rank"]["model"] = "mnist_cnn|mnist||"   # answered before a preset
    at.run()
    assert any(c.value.startswith("You answered this on mnist") for c in at.caption)
    assert_clean(at)
    at.button(key="l_again_low_rank").click().run()
    assert "Measured" not in metrics(at) and "l_guess_low_rank" in [n.key for n in at.number_input]
