"""Class board: every participant's runs (by nickname) on one accuracy-vs-size plot, a leaderboard under
the instructor's size budget, and the room's guesses. Refreshes every 2 seconds; only names and numbers
are shared."""

import pandas as pd
import streamlit as st

from pet_core.errors import PetError
from pet_core.workshop_figures import board_figure, guesses_figure
from studio import lesson_view, state, workshop_view
from studio.text import plain

ss = st.session_state
state.init()
st.title("Class board")
cfg = workshop_view.workshop()
if cfg is None:
    st.info("This server runs no workshop. The instructor starts one with a code, e.g.  \n"
            "`make run HOST=0.0.0.0 WORKSHOP=ml-101 BUDGET=20x`  \n(see README, *Running a workshop*).")
    st.stop()
instructor = cfg.is_instructor(st.query_params.get("instructor"))
if not instructor:
    workshop_view.banner()
    workshop_view.join_form("b")
room = workshop_view.room()
budget = room.budget(cfg.code, cfg.budget)

if instructor:
    with st.expander("Instructor", icon=":material/school:", expanded=True):
        c1, c2 = st.columns([1, 2])
        text = c1.text_input("Size budget (bytes, or a ratio such as 20x)",
                             value="" if budget is None else (f"{budget.ratio:g}x" if budget.ratio else str(budget.size_bytes)),
                             key="b_budget")
        if c1.button("Set budget", icon=":material/straighten:"):
            try:
                budget = room.set_budget(cfg.code, text)
                st.cache_data.clear()
            except PetError as exc:
                st.error(plain(exc))
        c2.markdown(f"Workshop code: **{plain(cfg.code)}**: participants join on the Lessons or Board page.")
        presets, _ = lesson_view.presets()
        name = c2.selectbox("Preset for this session", list(presets), format_func=lambda n: presets[n].title,
                            key="b_preset")
        if c2.button("Load preset", icon=":material/download:") and lesson_view.load_preset(presets[name]):
            st.success(f"Loaded {plain(presets[name].title)}.")


@st.fragment(run_every=2.0)
def live() -> None:
    text = None if budget is None else (f"{budget.ratio:g}x" if budget.ratio else str(budget.size_bytes))
    data = workshop_view.board_data(cfg.code, text)
    st.caption(f"{len(data['members'])} joined · budget {data['budget'] or 'none'} · refreshed every 2 s")
    if not data["groups"]:
        st.info("No runs yet: every configuration a participant evaluates, fine-tunes or sweeps appears here.")
        return
    labels = [f"{g['model']} on {g['dataset']} ({len(g['runs'])} runs)" for g in data["groups"]]
    pick = st.radio("Model", range(len(labels)), format_func=lambda i: labels[i], horizontal=True, key="b_group") \
        if len(labels) > 1 else 0
    group = data["groups"][pick]
    left, right = st.columns([3, 2])
    left.plotly_chart(board_figure(group, workshop_view.budget_bytes(budget, group), height=620 if instructor else 480),
                      key="b_figure", width="stretch")
    name = group["metric"]["name"]
    with right:
        st.subheader("Leaderboard")
        st.caption(f"Each person's best {name} " + (f"within {budget.text()}" if budget else "(no size budget set)"))
        rows = [{"rank": r["rank"], "nickname": r["nickname"], name: r[name], "bytes": r["size_bytes"],
                 "×": r["compression_ratio"], "run": r["run"], "runs": r["runs"]} for r in group["leaderboard"]]
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="b_leaders",
                     column_config={name: st.column_config.NumberColumn(format="percent" if name == "accuracy" else "%.3f")})


live()
lessons, _ = lesson_view.lessons()
guesses = room.guesses(cfg.code)
if guesses:
    st.subheader("The room's guesses")
    st.caption("Each dot is one person's guess; the red line is the measured answer.")
    by_lesson = {x.id: x for x in lessons}
    cols = st.columns(3)
    for i, lesson_id in enumerate(dict.fromkeys(g["lesson"] for g in guesses)):
        mine = [g for g in guesses if g["lesson"] == lesson_id]
        lesson = by_lesson.get(lesson_id)
        title = lesson.title if lesson else lesson_id
        cols[i % 3].plotly_chart(guesses_figure(mine, mine[-1]["truth"], mine[-1]["unit"], f"{title} ({len(mine)})"),
                                 key=f"b_guess_{lesson_id}", width="stretch")
