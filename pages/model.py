"""Model: a zoo model, an uploaded file or a path on this server (a Hugging Face folder, a big file),
on a dataset or weights only; its compressible tensors and, for image models, its architecture."""

from pathlib import Path

import pandas as pd
import streamlit as st

from pet_core.architecture import summary_rows, total_macs
from pet_core.errors import PetError
from pet_core.layers import skipped_layers
from pet_core.metrics import TASKS
from pet_core.model_io import env_trusts_code
from pet_core.zoo import list_models
from studio import metric_view, sources, state
from studio.text import plain

state.init()  # also here: a fresh server's first run may execute this page alone
st.title("Model")
src = st.session_state["source"]
models = {m.name: m for m in list_models()}
by_path = sources.paths_allowed()
KINDS = ["Zoo model", "Upload a file", *(["Path on this server"] if by_path else [])]
DATASETS = sources.datasets(by_path)
AUTO_TASK = "from the model"

with st.form("source_form"):
    now = 0 if src["model"] in models else 2 if by_path and st.session_state.get("source_by_path") else 1
    kind = st.radio("Model", KINDS, horizontal=True, index=now, key="m_kind")
    c1, c2 = st.columns(2)
    name = c1.selectbox("Zoo model", list(models), index=list(models).index(src["model"]) if src["model"] in models else 0,
                        format_func=lambda n: f"{n} — {models[n].description}")
    dataset = c2.selectbox("Dataset", DATASETS, index=DATASETS.index(sources.dataset_choice(src["dataset"])),
                           key="m_dataset", help="digits: scikit-learn's 8×8 digits, offline. mnist: a folder with "
                           "the four IDX files. A language model reads token ids (.npz: tokens or x) or a .txt its "
                           "tokenizer reads. Weights only: compress and size a file or folder without running it.")
    data_dir = c2.text_input("MNIST folder", value=src.get("data_dir") or state.default_mnist_dir(), key="m_data_dir")
    npz = c2.file_uploader("Dataset .npz (arrays x, y; or tokens) or .txt", type=["npz", "txt"])
    data_path = c2.text_input("Dataset file on this server", key="m_data_path",
                              value=src["dataset"] if sources.dataset_choice(src["dataset"]) == sources.PATH_DATASET
                              else "") if by_path else ""
    upload = c1.file_uploader("Model file: state_dict (.pt/.pth), .safetensors or packed (.petz)"
                              + ("; with trust also TorchScript, torch.export (.pt2) or a pickled module"
                                 if env_trusts_code() else ""),
                              type=["pt", "pth", "safetensors", "petz", "ts", "pt2", "zip"],
                              help=f"up to {sources.upload_limit_mb():,} MB (the server's owner sets it with "
                                   "PET_MAX_UPLOAD_MB)" + ("; bigger files load by path" if by_path else ""))
    path = c1.text_input("Hugging Face folder or file on this server", key="m_path",
                         value=src["model"] if st.session_state.get("source_by_path") else "",
                         help="a folder with config.json and its weights (read locally, never downloaded, no "
                              "remote code), or a model file of any size") if by_path else ""
    arch = c1.selectbox("Architecture of a state_dict", ["infer"] + list(models))
    task = c1.selectbox("Task", [AUTO_TASK, *TASKS], key="m_task",
                        help="what the model does, when its folder's config fits several heads or a file is not an "
                             "image classifier; it decides the dataset's form and the metric")
    trust_code = env_trusts_code() and c1.checkbox(   # offered only when the server owner started it so
        "Trust this file's code :material/warning:", key="m_trust_code",
        help="Lets a pickled module, TorchScript or a torch.export program load. Loading and running them "
             "executes code from the file on this server, with its rights: only for files you would run "
             "yourself. Offered because the server was started with PET_TRUST_CODE=1.")
    submitted = st.form_submit_button("Load", type="primary")

if submitted:
    task = None if task == AUTO_TASK else task
    given = path.strip() if kind == "Path on this server" else upload.name if upload is not None else ""
    try:
        spec = sources.dataset_spec(dataset, npz, data_path)
        folder = data_dir if dataset == "mnist" else None
        if kind == "Zoo model":
            if spec == sources.NO_DATASET:
                raise PetError("a zoo model is trained on a dataset: choose digits, mnist or a file (weights only "
                               "is for a file or a folder)")
            state.switch_zoo_source(name, spec, folder)
        elif not given:
            raise PetError("give a path on this server" if kind == "Path on this server" else
                           "choose a model file to upload, or pick a zoo model")
        else:
            sources.load_user_model(path.strip() if kind == "Path on this server" else sources.save_upload(upload),
                                    spec, folder, arch=None if arch == "infer" else arch, task=task,
                                    trust_code=trust_code, by_path=kind == "Path on this server")
    except (PetError, OSError) as exc:   # one line; the session keeps its model
        st.error(f"{plain(Path(given).name, 80) + ' was not loaded: ' if given else ''}{plain(exc, 600)}")

base = state.baseline()
wb = state.workbench() if base is not None else None
if wb is not None:
    ds, shown = base.dataset, plain(Path(st.session_state["source"]["model"]).name, 80)
    if ds is None:
        st.info(f"**{shown}**, weights only: no dataset, so it is compressed and sized but not run "
                f"({wb.metric.name} not measured). Task: {base.task}.")
    else:
        st.success(f"**{shown}** on **{plain(ds.name, 80)}**: {sources.describe_dataset(ds)} {plain(ds.note)}")
    if base.info.get("note"):
        st.caption(plain(base.info["note"]))
    c1, c2, c3 = st.columns(3)
    metric_view.show(c1, wb.metric, wb.baseline_metric, label=f"Baseline {wb.metric.name}",
                     help=None if not wb.measures else f"exact, all {len(wb.x_eval):,} test items")
    c2.metric("Parameters", f"{sum(p.numel() for p in base.model.parameters()):,}")
    c3.metric("Compressible tensors", f"{len(wb.layers):,}", help="weights a known operation uses; tied ones once")
    st.subheader("Compressible tensors")
    st.dataframe(pd.DataFrame([{"tensor": n, "type": t.type, "shape": list(t.weight.shape), "params": t.weight.numel(),
                                "tied": ", ".join(t.tied)} for n, t in wb.layers.items()]),
                 hide_index=True, width="stretch")
    skipped = skipped_layers(wb.model, wb.layers)
    with st.expander(f"Not compressed ({len(skipped)}): the tensors left at fp32 and why"):
        st.dataframe(pd.DataFrame(skipped, columns=["name", "type", "reason"]), hide_index=True, width="stretch")
if wb is not None and base.dataset is not None and base.task == "image_classification":
    rows = summary_rows(base.model, ds.input_shape)
    st.metric("MACs per image", f"{total_macs(rows):,}")
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
