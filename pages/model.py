"""Model: pick a zoo model and a dataset, or upload a model file; see its architecture."""

import hashlib
from pathlib import Path

import pandas as pd
import streamlit as st

from pet_core.architecture import summary_rows, total_macs
from pet_core.errors import PetError
from pet_core.loader import load_baseline
from pet_core.model_io import env_trusts_code
from pet_core.zoo import list_models
from studio import state
from studio.text import plain
from studio.session_files import session_dir

state.init()  # also here: a fresh server's first run may execute this page alone
st.title("🧠 Model")
src = st.session_state["source"]
models = {m.name: m for m in list_models()}
DATASETS = ["digits", "mnist", "upload .npz"]

with st.form("source_form"):
    kind = st.radio("Model", ["Zoo model", "Upload a file"], horizontal=True,
                    index=0 if src["model"] in models else 1)
    c1, c2 = st.columns(2)
    name = c1.selectbox("Zoo model", list(models), index=list(models).index(src["model"]) if src["model"] in models else 0,
                        format_func=lambda n: f"{n} — {models[n].description}")
    ds_now = src["dataset"] if src["dataset"] in DATASETS[:2] else DATASETS[2]
    dataset = c2.selectbox("Dataset", DATASETS, index=DATASETS.index(ds_now), key="m_dataset",
                           help="digits: scikit-learn's 8×8 digits, offline. mnist: a folder with the four IDX files.")
    data_dir = c2.text_input("MNIST folder", value=src.get("data_dir") or state.default_mnist_dir(), key="m_data_dir")
    npz = c2.file_uploader("Dataset .npz (arrays x, y)", type=["npz"])
    upload = c1.file_uploader("Model file: state_dict (.pt/.pth), .safetensors or packed (.petz)"
                              + ("; with trust also TorchScript, torch.export (.pt2) or a pickled module"
                                 if env_trusts_code() else ""),
                              type=["pt", "pth", "safetensors", "petz", "ts", "pt2", "zip"])
    arch = c1.selectbox("Architecture of a state_dict", ["infer"] + list(models))
    trust_code = env_trusts_code() and c1.checkbox(   # offered only when the server owner started it so
        "Trust this file's code ⚠️", key="m_trust_code",
        help="Lets a pickled module, TorchScript or a torch.export program load. Loading and running them "
             "executes code from the file on this server, with its rights: only for files you would run "
             "yourself. Offered because the server was started with PET_TRUST_CODE=1.")
    submitted = st.form_submit_button("Load", type="primary")


def _save_upload(f) -> str:
    """The upload, kept in this session's folder (removed when the session ends) under its content hash."""
    data = f.getvalue()
    folder = session_dir() / "uploads" / hashlib.sha256(data).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / Path(f.name).name
    path.write_bytes(data)
    return str(path)


if submitted:
    if dataset == "upload .npz":
        dataset_spec = _save_upload(npz) if npz else None
    else:
        dataset_spec = dataset
    if dataset_spec is None:
        st.error("Choose an .npz file to use an uploaded dataset.")
    elif kind == "Zoo model":
        state.switch_zoo_source(name, dataset_spec, data_dir if dataset == "mnist" else None)
    elif upload is None:
        st.error("Choose a model file to upload, or pick a zoo model.")
    else:
        try:
            saved = _save_upload(upload)     # the path in this session's folder: workers and Export reload it
            loaded = load_baseline(saved, dataset_spec, data_dir if dataset == "mnist" else None,
                                   arch=None if arch == "infer" else arch, trust_code=trust_code)
            st.session_state["user_baseline"] = loaded
            state.set_source(saved, dataset_spec, data_dir if dataset == "mnist" else None)
        except PetError as exc:
            st.error(f"{plain(upload.name, 80)} was not loaded:")
            st.code(str(exc), language=None, wrap_lines=True)

base = state.baseline()
if base is not None:
    ds = base.dataset
    st.success(f"**{plain(Path(st.session_state['source']['model']).name, 80)}** on **{plain(ds.name, 80)}**: "
               f"{len(ds.y_train):,} training / {len(ds.y_test):,} test images of {list(ds.input_shape)}, "
               f"{ds.num_classes} classes. {ds.note}")
    wb = state.workbench()
    rows = summary_rows(base.model, ds.input_shape)
    c1, c2, c3 = st.columns(3)
    c1.metric("Baseline accuracy", f"{wb.baseline_accuracy:.2%}")
    c2.metric("Parameters", f"{sum(p.numel() for p in base.model.parameters()):,}")
    c3.metric("MACs per image", f"{total_macs(rows):,}")
    st.subheader("Architecture")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    st.subheader("Graph")
    try:
        from studio.netron import model_to_netron_bytes, publish

        cached = st.session_state.get("netron")
        if cached is None or cached[0] != id(base.model):
            cached = st.session_state["netron"] = (id(base.model), *model_to_netron_bytes(base.model, ds.input_shape))
        _, data, filename = cached
        st.iframe(publish(data, filename), height=640)  # published on every run: the served files are an LRU
        st.caption(f"Netron, served by this app on its own address ({filename}); nothing leaves it.")
    except Exception as exc:  # the graph is a view: never break the page for it
        st.info(f"The graph viewer is unavailable here ({type(exc).__name__}: {exc}).")
