"""Export: the recipe, the compressed weights, a report and the CLI command; load a recipe back."""

import io

import streamlit as st
from safetensors.torch import save

from pet_core.errors import PetError
from pet_core.figures import pareto_figure, sparsity_bars
from pet_core.recipe import dumps, loads
from pet_core.report import cli_command, html_report
from studio import state

ss = st.session_state
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
