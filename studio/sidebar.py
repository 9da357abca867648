"""The sidebar every page shares: who you are, what is loaded and the current recipe."""

import streamlit as st

from studio import state
from studio.text import plain


def render(where) -> None:
    """Fill ``where`` (a sidebar container made before the page ran) after the page ran."""
    src = st.session_state["source"]
    state.keep_in_address()
    with where:
        if "s_user" not in st.session_state:      # the box starts from the name; a join (workshop) sets both
            st.session_state["s_user"] = state.user()
        name = st.text_input("Your name", key="s_user", max_chars=32,
                             help="your runs are recorded under this name; kept in the page address")
        if state.clean_user(name) != state.user():
            st.session_state["user"] = state.clean_user(name)
            st.query_params["user"] = st.session_state["user"]
            st.rerun()
        data = "weights only" if state.weights_only() else f"on **{plain(src['dataset'].rsplit('/', 1)[-1], 60)}**"
        st.caption(f":material/neurology: **{plain(src['model'].rstrip('/').rsplit('/', 1)[-1], 60)}** {data}")
        st.caption(f":material/edit_note: {state.summary()}")
