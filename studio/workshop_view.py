"""Workshop glue: the server's workshop (from the environment), joining with the code and a nickname,
the room's guesses, the class board.

Joining sets the session's user name to the nickname, so every run the participant makes is recorded
under it and appears on the board. The code and nickname are kept in the page address
(``?workshop=…&user=…``), so a reload rejoins.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from pet_core.errors import PetError
from pet_core.workshop import Room, WorkshopConfig
from studio import state
from studio.text import plain

ss = st.session_state


@st.cache_resource
def config() -> WorkshopConfig | PetError:
    try:
        return WorkshopConfig.from_env()
    except PetError as exc:
        return exc


def workshop() -> WorkshopConfig | None:
    """The server's workshop, or None when it was started without one (or with a bad setting, said once)."""
    cfg = config()
    if isinstance(cfg, PetError):
        st.warning(f"Workshop mode is off: {plain(cfg)}")
        return None
    return cfg if cfg.code else None


@st.cache_resource
def _room(path: str) -> Room:
    return Room(path)


def room() -> Room:
    from pet_core.workshop import room_path

    return _room(str(room_path()))


def joined() -> dict[str, Any] | None:
    """{"code", "nickname"} once this session joined (a reload with ``?workshop=CODE`` rejoins)."""
    cfg = workshop()
    if cfg is None:
        return None
    if "workshop" not in ss and cfg.accepts(st.query_params.get("workshop", "")) and state.user() != "me":
        _join(cfg, state.user())
    return ss.get("workshop")


def _join(cfg: WorkshopConfig, nickname: str) -> None:
    room().join(cfg.code, nickname)
    ss["workshop"] = {"code": cfg.code, "nickname": nickname}
    ss["user"] = nickname
    ss["s_user"] = nickname            # the sidebar's name box, drawn after the page in this run, shows it
    st.query_params["user"] = nickname
    st.query_params["workshop"] = cfg.code
    restore_guesses(cfg.code, nickname)


def restore_guesses(code: str, nickname: str) -> None:
    from studio.lesson_view import progress

    mine = progress()
    for g in room().guesses(code):
        if g["nickname"] == nickname and g["lesson"] not in mine:
            mine[g["lesson"]] = {"guess": g["guess"], "truth": g["truth"], "model": None}


def join_form(key: str) -> None:
    """Code and nickname; joining makes the nickname this session's user name."""
    cfg = workshop()
    if cfg is None or joined():
        return
    with st.form(f"{key}_join", border=True):
        st.markdown("**Join the workshop**: the code is on the instructor's screen.")
        c1, c2 = st.columns(2)
        code = c1.text_input("Workshop code", key=f"{key}_code", max_chars=32)
        nick = c2.text_input("Nickname", key=f"{key}_nick", max_chars=32,
                             help="letters, digits, - _ . (shown on the class board with your runs' numbers)")
        if st.form_submit_button("Join", icon=":material/login:", type="primary"):
            nickname = state.clean_user(nick)
            if not cfg.accepts(code):
                st.error("That is not this workshop's code.")
            elif nickname == "me" or not nick.strip():
                st.error("Choose a nickname (letters, digits, - _ .).")
            else:
                try:
                    _join(cfg, nickname)
                except PetError as exc:
                    st.error(plain(exc))
                    return
                st.rerun()


def banner() -> None:
    who = joined()
    if who:
        st.caption(f":material/groups: Workshop **{plain(who['code'])}** as **{plain(who['nickname'])}**: "
                   "your runs and guesses appear on the class board.")


def record_guess(lesson, entry: dict[str, Any]) -> None:
    who = joined()
    if who and entry.get("truth") is not None:
        room().record_guess(who["code"], who["nickname"], lesson.id, entry["guess"], entry["truth"],
                            lesson.exercise.unit)


@st.cache_data(ttl=2, show_spinner=False)
def board_data(code: str, budget_text: str | None) -> dict[str, Any]:
    """The class board (``pet_core.workshop.board``), computed at most every 2 s for the whole room."""
    from pet_core.workshop import Budget, board

    return board(state.ledger(), room(), code, Budget.parse(budget_text) if budget_text else None)


def budget_bytes(budget, group: dict[str, Any]) -> int | None:
    """Where the budget's line goes on a group's plot (a ratio becomes bytes of that group's model)."""
    if budget is None:
        return None
    if budget.size_bytes is not None:
        return budget.size_bytes
    run = next((r for r in group["runs"] if r["metrics"].get("compression_ratio")), None)
    return None if run is None else int(run["metrics"]["size_bytes"] * run["metrics"]["compression_ratio"] / budget.ratio)
