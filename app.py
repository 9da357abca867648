"""PET Studio: see how pruning, quantization, weight sharing and low rank trade accuracy for bytes."""

import streamlit as st

from pet_core.threads import configure_server_threads
from studio import metric_view, state, sidebar
from studio.text import plain

configure_server_threads()   # one intra-op thread per request on a shared server (pet_core/threads.py)

# The tab icon, inline: an emoji needs an emoji font; a Material Symbol favicon is fetched from fonts.gstatic.com.
FAVICON = ("data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 24 24'%3E"
           "%3Crect width='24' height='24' rx='5' fill='%23ff4b4b'/%3E%3Cpath d='M8 3l4 4 4-4M8 21l4-4 4 4M5 12h14' "
           "stroke='%23fff' stroke-width='2.2' fill='none' stroke-linecap='round' stroke-linejoin='round'/%3E%3C/svg%3E")
st.set_page_config(page_title="PET Studio", page_icon=FAVICON, layout="wide")


def home() -> None:
    st.title("PET Studio")
    st.markdown(
        "Load a model, **look at its weights**, and move sliders to prune, quantize, share or factorise them.  \n"
        "Accuracy and **honest bytes** (the size of the encoding that would really be stored) update live.  \n"
        "Compare every configuration on a Pareto plot and leave with a recipe that reproduces the numbers headless."
    )
    report = state.evaluate()
    if report is None:
        return
    src = st.session_state["source"]
    b, c = report["baseline"], report["compressed"]
    metric = metric_view.metric_of(report)
    st.subheader("Now")
    cols = st.columns(4)
    cols[0].metric("Model", src["model"].rstrip("/").rsplit("/", 1)[-1], help=f"dataset: {src['dataset']}")
    metric_view.show_report(cols[1], report)
    cols[2].metric("Size", f"{c['size_bytes']:,} B", f"{c['compression_ratio']:.1f}× smaller", delta_color="off")
    cols[3].metric("Baseline size", f"{b['size_bytes']:,} B", help="dense fp32, every parameter and buffer")
    data = ("No dataset (weights only)" if state.weights_only()
            else f"Dataset **{plain(src['dataset'].rsplit('/', 1)[-1], 60)}**")
    st.caption(f"{data} · recipe: {state.summary()} · sizes "
               "are *accounted* (bytes of the chosen encoding), "
               + (f"{metric.name} is *measured* on decoded weights." if metric_view.measured(report) else
                  f"{metric.name} is *not measured* (weights only: no dataset)."))
    st.subheader("Where next")
    cols = st.columns(6)
    cols[5].page_link("pages/learn.py", label="Learn the techniques", icon=":material/school:")
    cols[0].page_link("pages/model.py", label="Pick a model", icon=":material/neurology:")
    cols[1].page_link("pages/weights.py", label="See the weights", icon=":material/bar_chart:")
    cols[2].page_link("pages/compress.py", label="Compress", icon=":material/tune:")
    cols[3].page_link("pages/pareto.py", label="Compare runs", icon=":material/show_chart:")
    cols[4].page_link("pages/export.py", label="Export", icon=":material/package_2:")


nav = st.navigation([
    st.Page(home, title="Home", icon=":material/home:", default=True),
    st.Page("pages/model.py", title="Model", icon=":material/neurology:"),
    st.Page("pages/weights.py", title="Weights", icon=":material/bar_chart:"),
    st.Page("pages/compress.py", title="Compress", icon=":material/tune:"),
    st.Page("pages/plan.py", title="Sensitivity & plan", icon=":material/target:"),
    st.Page("pages/finetune.py", title="Fine-tune", icon=":material/fitness_center:"),
    st.Page("pages/pareto.py", title="Pareto", icon=":material/show_chart:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("pages/export.py", title="Export", icon=":material/package_2:"),
    st.Page("pages/learn.py", title="Lessons", icon=":material/school:"),
    st.Page("pages/board.py", title="Class board", icon=":material/leaderboard:"),
])
state.init()
summary = st.sidebar.container()   # filled after the page ran, so it shows the page's latest recipe
nav.run()
sidebar.render(summary)
