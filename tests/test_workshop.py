"""Workshop mode's engine (``pet_core.workshop``): the code, the room, the class board.

Oracles: the ledger's own rows (runs recorded here under nicknames, before and after joining, on two
models), the leaderboard recomputed by a plain loop, and what the board may share (names and numbers,
no recipes, paths or weights).
"""

from __future__ import annotations

import time

import pytest

from pet_core.errors import PetError
from pet_core.ledger import Ledger
from pet_core.loader import load_baseline, open_workbench
from pet_core.recipe import Recipe
from pet_core.runs import record_evaluation
from pet_core.workshop import Budget, Room, WorkshopConfig, board
from pet_core.workshop_figures import board_figure, guesses_figure


@pytest.mark.parametrize("text, want", [("25000", Budget(size_bytes=25000)), ("20x", Budget(ratio=20.0)),
                                        ("20×", Budget(ratio=20.0)), (" 1,000 ", Budget(size_bytes=1000)),
                                        ("", None), (None, None)])
def test_budgets_parse(text, want):
    assert Budget.parse(text) == want


@pytest.mark.parametrize("text", ["-5", "0", "abc", "0.5x", "1e400x", "nanx", "x"])
def test_bad_budgets_are_refused(text):
    with pytest.raises(PetError, match="budget"):
        Budget.parse(text)


def test_the_workshop_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("PET_WORKSHOP_CODE", raising=False)
    assert WorkshopConfig.from_env().code is None
    monkeypatch.setenv("PET_WORKSHOP_CODE", "ml-101")
    monkeypatch.setenv("PET_WORKSHOP_BUDGET", "30x")
    monkeypatch.setenv("PET_WORKSHOP_INSTRUCTOR_KEY", "s3cret")
    cfg = WorkshopConfig.from_env()
    assert cfg.accepts("ml-101") and cfg.accepts(" ml-101 ") and not cfg.accepts("ml-102") and not cfg.accepts("")
    assert cfg.budget == Budget(ratio=30.0)
    assert cfg.is_instructor("s3cret") and not cfg.is_instructor("") and not cfg.is_instructor(None)
    monkeypatch.setenv("PET_WORKSHOP_CODE", "<script>")
    with pytest.raises(PetError, match="PET_WORKSHOP_CODE"):
        WorkshopConfig.from_env()


def test_the_room_keeps_members_guesses_and_the_budget(tmp_path):
    room = Room(tmp_path / "room.sqlite")
    first = room.join("ws", "ana")
    assert room.join("ws", "ana") == first                      # joining again keeps the first time
    room.join("ws", "bo")
    room.join("other", "cy")
    assert [m["nickname"] for m in room.members("ws")] == ["ana", "bo"]
    room.record_guess("ws", "ana", "quantization", 30000, 28380, "B")
    room.record_guess("ws", "bo", "quantization", 20000, 28380, "B")
    room.record_guess("ws", "bo", "low_rank", 90, 96, "%")
    assert [g["nickname"] for g in room.guesses("ws", "quantization")] == ["ana", "bo"]
    assert len(room.guesses("ws")) == 3 and room.guesses("other") == []
    assert room.budget("ws", Budget(ratio=10)) == Budget(ratio=10)
    room.set_budget("ws", "50000")
    assert Room(tmp_path / "room.sqlite").budget("ws", Budget(ratio=10)) == Budget(size_bytes=50000)
    with pytest.raises(PetError):
        room.set_budget("ws", "lots")
    assert room.budget("ws", None) == Budget(size_bytes=50000)  # a refused budget is not stored


def test_a_corrupt_room_file_is_a_message(tmp_path):
    bad = tmp_path / "room.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(PetError, match="workshop room"):
        Room(bad)


@pytest.fixture(scope="module")
def ledger_and_room(tmp_path_factory):
    d = tmp_path_factory.mktemp("ws")
    led, room = Ledger(d / "ledger.sqlite"), Room(d / "room.sqlite")
    lenet, cnn = load_baseline("lenet_300_100", "digits"), load_baseline("mnist_cnn", "digits")

    def run(base, owner, sparsity, bits):
        wb = open_workbench(base)
        wb.apply(Recipe(default={"prune": {"sparsity": sparsity}, "quantize": {"bits": bits}}))
        return record_evaluation(led, base, wb.report(), owner=owner)

    before = run(lenet, "ana", 0.5, 8)             # made before ana joined: not on the board
    time.sleep(1.2)
    for nick in ("ana", "bo", "cy"):
        room.join("ws", nick)
    ids = {"ana": [run(lenet, "ana", s, b) for s, b in ((0.9, 4), (0.95, 3), (0.7, 8))],
           "bo": [run(lenet, "bo", s, b) for s, b in ((0.8, 4), (0.97, 2))],
           "cy": [run(cnn, "cy", 0.9, 4)],
           "stranger": [run(lenet, "stranger", 0.6, 8)]}
    return led, room, before, ids


def test_the_board_shows_members_runs_since_they_joined(ledger_and_room):
    led, room, before, ids = ledger_and_room
    out = board(led, room, "ws", None)
    assert out["members"] == ["ana", "bo", "cy"]
    [lenet, cnn] = out["groups"]                                       # most runs first
    assert (lenet["model"], cnn["model"]) == ("lenet_300_100", "mnist_cnn")
    assert sorted(r["id"] for r in lenet["runs"]) == sorted(ids["ana"] + ids["bo"])
    assert before not in [r["id"] for r in lenet["runs"]] and ids["stranger"][0] not in [r["id"] for r in lenet["runs"]]
    for r in lenet["runs"] + cnn["runs"]:
        assert set(r) == {"id", "owner", "kind", "label", "created_at", "metrics"}   # names and numbers only
        assert set(r["metrics"]) <= {"accuracy", "perplexity", "size_bytes", "compression_ratio", "weight_sparsity"}


@pytest.mark.parametrize("budget", [None, Budget(ratio=20.0), Budget(size_bytes=30_000), Budget(size_bytes=10)])
def test_the_leaderboard_is_each_persons_best_within_the_budget(ledger_and_room, budget):
    led, room, _, ids = ledger_and_room
    group = board(led, room, "ws", budget)["groups"][0]
    best = {}
    for nick in ("ana", "bo"):
        rows = [led.get(i) for i in ids[nick]]
        rows = [r for r in rows if budget is None or (r["metrics"]["size_bytes"] <= budget.size_bytes
                                                       if budget.size_bytes else
                                                       r["metrics"]["compression_ratio"] >= budget.ratio)]
        if rows:
            best[nick] = max(rows, key=lambda r: (r["metrics"]["accuracy"], -r["metrics"]["size_bytes"]))
    want = sorted(best, key=lambda n: -best[n]["metrics"]["accuracy"])
    assert [r["nickname"] for r in group["leaderboard"]] == want
    assert [r["run"] for r in group["leaderboard"]] == [best[n]["id"] for n in want]
    assert [r["rank"] for r in group["leaderboard"]] == list(range(1, len(want) + 1))
    fig = board_figure(group, budget.size_bytes if budget else None)
    assert {t.name for t in fig.data if t.mode == "markers"} == {"ana", "bo"}


def test_the_guesses_figure_draws_the_truth():
    fig = guesses_figure([{"guess": 10}, {"guess": 30}], 20.0, "%", "q")
    assert fig.layout.shapes[0].x0 == 20.0 and list(fig.data[0].x) == [10, 30]
    assert fig.data[1].x == (20.0,)              # the truth is a point of the plot: the axis reaches it
