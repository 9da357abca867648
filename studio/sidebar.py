"""The sidebar every page shares: what is loaded and the current numbers."""

import streamlit as st

from studio import state


def render() -> None:
    src = st.session_state["source"]
    with st.sidebar:
        st.caption(f"🧠 **{src['model']}** on **{src['dataset']}**")
        st.caption(f"📝 {state.summary()}")
