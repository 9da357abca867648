"""Export: the recipe, the compressed weights, a report and the CLI command; load a recipe back."""

import io
import tempfile
from pathlib import Path

import pandas as pd

import streamlit as st
from safetensors.torch import save

from pet_core.errors import PetError
from pet_core.export.artifacts import FORMATS, make_artifact
from pet_core.physical import physical_workbench
from pet_core.figures import pareto_figure, sparsity_bars
from pet_core.recipe import dumps, loads
from pet_core.report import cli_command, html_report
from studio import state

ss = st.session_state
FORMAT_LABELS = {"packed": "packed (our format, as small as accounted)", "onnx": "ONNX fp32",
                 "onnx-int8": "ONNX int8 (dynamic)", "onnx-int8-static": "ONNX int8 (static, calibrated)",
                 "torchscript": "TorchScript", "state_dict": "state_dict (safetensors)"}
SUFFIX = {"packed": ".petz", "onnx": ".onnx", "onnx-int8": ".int8.onnx", "onnx-int8-static": ".int8s.onnx",
          "torchscript": ".ts.pt", "state_dict": ".safetensors"}


def artifact_row(a: dict, accounted: int) -> dict:
    lat = a.get("latency_ms") or {}
    return {"artifact": a.get("label", a["format"]), "file bytes (measured)": a["size_bytes"],
            "accounted bytes": accounted, "accuracy (measured)": a["accuracy"],
            "latency batch 1 (ms)": lat.get("batch1"), "latency batch 64 (ms)": lat.get("batch64")}
state.init()  # also here: a fresh server's first run may execute this page alone
st.title("📦 Export")
report = state.evaluate()
wb = state.workbench()
if report is None or wb is None:
    st.stop()
recipe = state.recipe().replace(model=ss["source"]["model"], dataset=ss["source"]["dataset"])
stem = f"{recipe.model.rsplit('.', 1)[0]}-{recipe.dataset}".replace("/", "_")

st.subheader("Recipe")
c1, c2 = st.columns(2)
c1.download_button("⬇️ Recipe (YAML)", dumps(recipe, "yaml"), f"{stem}.yaml", "application/x-yaml")
c2.download_button("⬇️ Recipe (JSON)", dumps(recipe, "json"), f"{stem}.json", "application/json")
st.code(dumps(recipe, "yaml"), language="yaml")
command = cli_command(recipe, f"{stem}.yaml", ss["source"].get("data_dir"))
st.markdown("Reproduce these numbers headless:")
st.code(command, language="bash")
st.markdown(f"Share these settings as a link: [open]({state.share_link()})")

st.subheader("Compressed model and report")
weights = save({k: v.contiguous() for k, v in wb.model.state_dict().items()})
c = report["compressed"]
st.download_button("⬇️ Compressed weights (safetensors)", weights, f"{stem}.safetensors")
st.caption(f"This file holds the **decoded** weights (fp32, {len(weights):,} bytes measured): the same numbers "
           f"as the app, not yet the packed {c['size_bytes']:,} B the accounting reports.")
figures = [sparsity_bars([r["name"] for r in report["layers"] if r["params"]],
                         [1 - r["nonzero"] / r["params"] for r in report["layers"] if r["params"]]),
           pareto_figure(state.runs())]
st.download_button("⬇️ Report (HTML)", html_report(report, figures, command), f"{stem}-report.html", "text/html")

st.subheader("Deployable artifacts (measured)")
st.caption("Each file is written, loaded back and run: its size is the file on disk, its accuracy and latency "
           "are measured (CPU, median of repeated runs). The numbers above are accounted, these are real.")
c1, c2 = st.columns(2)
fmt = c1.selectbox("Format", FORMATS, key="x_format", format_func=FORMAT_LABELS.get)
physical = c2.toggle("Remove pruned channels for real (Torch-Pruning)", key="x_physical",
                     help="channel pruning only: a smaller dense model with the same outputs")
if st.button("🔨 Build and measure", key="x_build"):
    with st.spinner(f"Writing {fmt}, loading it back, timing it…"):
        try:
            source, label = wb, fmt
            if physical:
                source, info = physical_workbench(wb)
                label = f"{fmt}, physically pruned"
                st.info(f"Physically pruned: {info['params_before']:,} → {info['params_after']:,} parameters.")
            path = Path(tempfile.mkdtemp(prefix="pet_export_")) / f"{stem}{SUFFIX[fmt]}"
            artifact = make_artifact(fmt, source, state.baseline(), path)
            ss.setdefault("artifacts", {})[label] = (state.recipe_key_now(), {**artifact, "label": label})
        except PetError as exc:
            st.error(f"{fmt} export failed: {exc}")
artifacts = {f: a for f, (key, a) in ss.get("artifacts", {}).items() if key == state.recipe_key_now()}
if artifacts:
    st.dataframe(pd.DataFrame([artifact_row(a, c["size_bytes"]) for a in artifacts.values()]),
                 hide_index=True, width="stretch")
    for label, a in artifacts.items():
        data = Path(a["path"]).read_bytes()
        c1, c2 = st.columns([1, 1])
        c1.download_button(f"⬇️ {label} ({len(data):,} B)", data, Path(a["path"]).name, key=f"dl_{label}")
        if a["format"] == "onnx" and c2.toggle("Open in Netron", key=f"x_netron_{label}"):
            from studio.netron_server import publish

            st.iframe(publish(data, Path(a["path"]).name), height=560)

st.subheader("Load a recipe")
upload = st.file_uploader("Recipe file (.yaml, .yml or .json)", type=["yaml", "yml", "json"])
if upload is not None and ss.get("recipe_upload_seen") != upload.file_id:
    ss["recipe_upload_seen"] = upload.file_id
    try:
        text = io.TextIOWrapper(io.BytesIO(upload.getvalue()), encoding="utf-8").read()
        new = loads(text, "json" if upload.name.endswith(".json") else "yaml")
        from pet_core.steps import resolve

        resolve(new.default, new.layers, wb.names)
        state.set_recipe(new)
        st.success(f"Loaded {upload.name}; Compress now shows it.")
        st.rerun()
    except (PetError, UnicodeDecodeError) as exc:
        st.error(f"{upload.name} was not loaded: {exc}")
