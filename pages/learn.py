"""Lessons: one technique at a time: the idea, the formula, a live figure on the current model, and a
predict-then-reveal exercise; each lesson's preset loads a worked example in one click."""

import streamlit as st

from pet_core.lessons import how_far, shown_value
from pet_core.workshop_figures import guesses_figure
from studio import handout_view, lesson_view, state, workshop_view
from studio.text import plain

ss = st.session_state
state.init()
st.title("Lessons")
workshop_view.banner()
workshop_view.join_form("l")
lessons, problems = lesson_view.lessons()
for problem in problems:
    st.warning(f"A lesson file was not loaded: {plain(problem)}")
if not lessons:
    st.info("No lessons found (assets/lessons/, or the folder in PET_LESSONS_DIR).")
    st.stop()
ids = [x.id for x in lessons]
asked = st.query_params.get("lesson")
if asked in ids and "l_lesson" not in ss:
    ss["l_lesson"] = asked
done = lesson_view.progress()
titles = {x.id: x.title for x in lessons}      # labels never change: a changed label deselects the radio
lesson_id = st.radio("Lesson", ids, key="l_lesson", horizontal=True, format_func=titles.get)
finished = [titles[i] for i in ids if (done.get(i) or {}).get("truth") is not None]
if finished:
    st.caption(f"Done: {len(finished)} of {len(ids)} ({', '.join(finished)})")
st.query_params["lesson"] = lesson_id
lesson = next(x for x in lessons if x.id == lesson_id)
base = state.baseline()

left, right = st.columns([5, 6])
with left:
    st.header(lesson.title)
    st.markdown(lesson.text)
with right:
    if base is not None:
        fig = lesson_view.figure(lesson, base)
        if fig is not None:
            st.plotly_chart(fig, key=f"l_fig_{lesson.id}", width="stretch")
for formula in lesson.formulas:        # full width: a display formula is wider than a column
    st.latex(formula)
if lesson.references:
    st.caption("References: " + "; ".join(plain(r) for r in lesson.references))

ex = lesson.exercise
with st.container(border=True):
    st.subheader("Predict, then reveal")
    st.markdown(f"**{plain(ex.question)}** (on {plain(ss['source']['model'])}, {plain(ss['source']['dataset'])})")
    entry = done.get(lesson.id)
    if entry is None:
        c1, c2 = st.columns([2, 1])
        guess = c1.number_input(f"Your guess{f' ({ex.unit})' if ex.unit else ''}", ex.lo, ex.hi,
                                value=None, key=f"l_guess_{lesson.id}", placeholder="commit a number first")
        c2.write("")
        if c2.button("Commit my guess", key=f"l_commit_{lesson.id}", icon=":material/lock:", type="primary",
                     disabled=guess is None):
            lesson_view.commit_guess(lesson, guess)
            st.rerun()
    elif entry.get("truth") is None:
        st.markdown(f"Your guess: **{shown_value(entry['guess'], ex.unit)}** (committed)")
        if st.button("Reveal the measured answer", key=f"l_reveal_{lesson.id}", icon=":material/visibility:",
                     type="primary", disabled=base is None):
            with st.spinner("Measuring on the current model…"):
                try:
                    entry = lesson_view.reveal(lesson, base)
                except Exception as exc:      # a lesson is data: whatever it asks, the page stays up
                    st.error(f"Could not measure this exercise on this model: {plain(exc)}")
                    st.stop()
            workshop_view.record_guess(lesson, entry)
            st.rerun()
    else:
        if entry.get("model") not in (None, state.source_key()):
            st.caption(f"You answered this on {plain(entry['model'].split('|')[0])} "
                       f"({plain(entry['model'].split('|')[1])}), not the model loaded now.")
            if st.button("Guess again on this model", key=f"l_again_{lesson.id}", icon=":material/replay:"):
                done.pop(lesson.id)
                st.rerun()
        m = st.columns(3)
        m[0].metric("Your guess", shown_value(entry["guess"], ex.unit))
        m[1].metric("Measured", shown_value(entry["truth"], ex.unit))
        m[2].metric("How far off", how_far(entry["guess"], entry["truth"], ex.unit)["text"])
        who = workshop_view.joined()
        if who:
            room = workshop_view.room().guesses(who["code"], lesson.id)
            if len(room) > 1:
                st.caption("The room so far: each dot is one guess, the red line the measured answer.")
                st.plotly_chart(guesses_figure(room, entry["truth"], ex.unit, f"The room's guesses ({len(room)})"),
                                key=f"l_room_{lesson.id}", width="stretch")

presets, preset_problems = lesson_view.presets()
preset = presets.get(lesson.preset) if lesson.preset else None
with st.container(border=True):
    st.subheader("Try it: the preset")
    if preset is None:
        st.caption("This lesson names no preset" + (f" ({plain(lesson.preset)} was not found)" if lesson.preset else ""))
    else:
        st.markdown(f"**{plain(preset.title)}**  \n{plain(preset.description)}")
        c1, c2, c3 = st.columns(3)
        if c1.button("Load this preset", key=f"l_preset_{lesson.id}", icon=":material/download:", type="primary"):
            if lesson_view.load_preset(preset):
                st.success(f"Loaded: {plain(preset.model)} on {plain(preset.dataset)}, its recipe and fine-tune settings.")
        c2.page_link("pages/compress.py", label="Open Compress", icon=":material/tune:")
        c3.page_link("pages/finetune.py", label="Fine-tune it", icon=":material/fitness_center:")

handout_view.download_button("l", base)
