"""The sidebar every page shares: what is loaded and the current recipe."""

import streamlit as st

from studio import state


def render(where) -> None:
    """Fill ``where`` (a sidebar container made before the page ran) after the page ran."""
    src = st.session_state["source"]
    with where:
        st.caption(f"🧠 **{src['model']}** on **{src['dataset']}**")
        st.caption(f"📝 {state.summary()}")
