"""Export a run: its recipe, its weights, a report, the CLI command and measured artifacts.

Any run of the ledger can be exported — the baseline, a compressed configuration, a fine-tuned run —
and what is built is exactly that run (``pet_core.runs.open_run``): its measured accuracy equals the
run's, and the recipe written reproduces it.
"""

import io

import pandas as pd
import streamlit as st
from safetensors.torch import save

from pet_core.errors import PetError
from pet_core.export.artifacts import make_artifact
from pet_core.export.formats import FORMATS
from pet_core.figures import pareto_figure, sparsity_bars
from pet_core.pareto import summarize_recipe
from pet_core.physical import physical_workbench
from pet_core.recipe import Recipe, dumps, loads
from pet_core.report import cli_command, html_report
from pet_core.runs import metric_fields, open_run
from pet_core.steps import resolve
from studio import metric_view, state
from studio.pareto_view import run_points
from studio.session_files import session_dir

ss = st.session_state


def artifact_row(a: dict, accounted: int, metric: str) -> dict:
    lat = a.get("latency_ms") or {}
    return {"artifact": a.get("label", a["format"]), "file bytes (measured)": a["size_bytes"],
            "accounted bytes": accounted, f"{metric} (measured)": a.get(metric, a.get("accuracy")),
            "latency batch 1 (ms)": lat.get("batch1"), "latency batch 64 (ms)": lat.get("batch64")}


def _opened(run_id: int):
    """The run rebuilt, once per session and run: a private workbench, so exports never touch shared models."""
    cached = ss.get("x_opened")
    if cached is None or cached[0] != run_id:
        with st.spinner(f"Rebuilding run #{run_id}…"):
            cached = ss["x_opened"] = (run_id, open_run(state.ledger(), run_id))
    return cached[1]


state.init()  # also here: a fresh server's first run may execute this page alone
st.title("Export")
report = state.evaluate()
if report is None:
    st.stop()
metric = metric_view.metric_of(report)
runs = [r for r in state.runs() if r["kind"] != "export" and r["status"] in ("done", "stopped")]
ids = [r["id"] for r in runs]
by_id = {r["id"]: r for r in runs}
wanted = ss.pop("export_run", None)            # "Export this run" on another page
if wanted is None and ss.get("x_run") not in ids:
    wanted = report.get("run_id")               # else: the configuration on Compress
if wanted in ids:
    ss["x_run"] = wanted
run_id = st.selectbox("Run to export", ids, key="x_run",
                      format_func=lambda i: f"#{i} · {by_id[i]['kind']} · "
                                            f"{by_id[i]['label'] or summarize_recipe(by_id[i]['recipe'])} · "
                                            f"{metric.format(by_id[i]['metrics'].get(metric.name))} · "
                                            f"{by_id[i]['metrics'].get('size_bytes', 0):,} B")
if run_id is None:
    st.stop()
run = by_id[run_id]
try:
    base, wb = _opened(run_id)
except PetError as exc:
    st.error(f"Run #{run_id} cannot be rebuilt:")
    st.code(str(exc), language=None, wrap_lines=True)
    st.stop()
recipe = Recipe.from_dict(run["recipe"]) if run["recipe"] else Recipe(model=run["model"], dataset=run["dataset"])
stem = f"{recipe.model.rsplit('/', 1)[-1].rsplit('.', 1)[0]}-{recipe.dataset.rsplit('/', 1)[-1]}-run{run_id}"
m = run["metrics"]
st.caption(f"Run #{run_id} ({run['kind']}, {run['status']}, by {run['owner']}): {metric.name} "
           f"{metric.format(m.get(metric.name))}, {m.get('size_bytes', 0):,} B accounted. Lineage: "
           + " → ".join(f"#{r['id']} {r['kind']}" for r in state.ledger().lineage(run_id)))

st.subheader("Recipe")
c1, c2 = st.columns(2)
c1.download_button("Recipe (YAML)", dumps(recipe, "yaml"), f"{stem}.yaml", "application/x-yaml",
                    icon=":material/download:")
c2.download_button("Recipe (JSON)", dumps(recipe, "json"), f"{stem}.json", "application/json",
                    icon=":material/download:")
st.code(dumps(recipe, "yaml"), language="yaml")
command = cli_command(recipe, f"{stem}.yaml", ss["source"].get("data_dir"))
st.markdown("Reproduce these numbers headless, or export exactly this run's weights:")
st.code(f"{command}\npython -m pet_core export --run {run_id} --format packed --out {stem}.petz", language="bash")

st.subheader("Weights and report")
state_dict = wb.model.state_dict()
# Written when clicked, not on every rerun (a big model takes seconds); a tied tensor is stored under each of
# its names, as safetensors refuses tensors that share memory.
st.download_button("Run's weights (safetensors)", lambda: save({k: v.detach().cpu().contiguous().clone()
                                                                   for k, v in state_dict.items()}),
                   f"{stem}.safetensors", icon=":material/download:")
tensor_bytes = sum(v.numel() * v.element_size() for v in state_dict.values())
st.caption(f"This file holds the run's **decoded** weights ({tensor_bytes:,} bytes of fp32 tensors, plus a header), "
           f"not yet the packed {m.get('size_bytes', 0):,} B the accounting reports: build the packed file below "
           "for that.")
if run["kind"] != "baseline":   # the HTML report names the metric (not measured: weights only)
    layers = wb.report()["layers"]
    figures = [sparsity_bars([r["name"] for r in layers if r["params"]],
                             [1 - r["nonzero"] / r["params"] for r in layers if r["params"]]),
               pareto_figure(run_points(runs, metric.name), metric=metric.to_dict())]
    st.download_button("Report (HTML)", html_report(wb.report(), figures, command), f"{stem}-report.html",
                       "text/html", icon=":material/download:")

st.subheader("Deployable artifacts (measured)")
st.caption("Each file is written, loaded back and run: its size is the file on disk, its accuracy and latency "
           "are measured (CPU, median of repeated runs). The numbers above are accounted, these are real.")
c1, c2 = st.columns(2)
fmt = c1.selectbox("Format", list(FORMATS), key="x_format", format_func=lambda f: FORMATS[f][0])
physical = c2.toggle("Remove pruned channels for real (Torch-Pruning)", key="x_physical",
                     help="channel pruning only: a smaller dense model with the same outputs")
if st.button("Build and measure", key="x_build", icon=":material/build:"):
    with st.spinner(f"Writing {fmt}, loading it back, timing it…"):
        try:
            source, label = wb, f"#{run_id} {fmt}"
            if physical:
                source, info = physical_workbench(wb)
                label = f"{label}, physically pruned"
                st.info(f"Physically pruned: {info['params_before']:,} → {info['params_after']:,} parameters.")
            path = session_dir() / "exports" / f"{stem}{FORMATS[fmt][1]}"
            artifact = make_artifact(fmt, source, base, path)
            ss.setdefault("artifacts", {})[label] = (run_id, {**artifact, "label": label})
            state.ledger().record("export", model=run["model"], model_hash=run["model_hash"], dataset=run["dataset"],
                                  dataset_hash=run["dataset_hash"], recipe=run["recipe"], parent_id=run_id,
                                  owner=state.user(), label=label, weights_path=str(path),
                                  metrics={**metric_fields(metric.to_dict(), {metric.name: artifact.get(
                                               metric.name, artifact.get("accuracy"))}),
                                           **{k: artifact[k] for k in ("format", "size_bytes", "latency_ms")}})
        except PetError as exc:
            st.error(f"{fmt} export failed:")
            st.code(str(exc), language=None, wrap_lines=True)
artifacts = {label: a for label, (rid, a) in ss.get("artifacts", {}).items() if rid == run_id}
if artifacts:
    st.dataframe(pd.DataFrame([artifact_row(a, m.get("size_bytes", 0), metric.name) for a in artifacts.values()]),
                 hide_index=True, width="stretch")
    for label, a in artifacts.items():
        with open(a["path"], "rb") as f:
            data = f.read()
        c1, c2 = st.columns([1, 1])
        c1.download_button(f"{label} ({len(data):,} B)", data, a["path"].rsplit("/", 1)[-1], key=f"dl_{label}",
                            icon=":material/download:")
        if a["format"] == "onnx" and c2.toggle("Open in Netron", key=f"x_netron_{label}"):
            from studio.netron import publish

            st.iframe(publish(data, a["path"].rsplit("/", 1)[-1]), height=560)

st.subheader("Load a recipe")
if flash := ss.pop("x_flash", None):
    st.success(flash)
upload = st.file_uploader("Recipe file (.yaml, .yml or .json)", type=["yaml", "yml", "json"])
if upload is not None and ss.get("recipe_upload_seen") != upload.file_id:
    ss["recipe_upload_seen"] = upload.file_id
    try:
        text = io.TextIOWrapper(io.BytesIO(upload.getvalue()), encoding="utf-8").read()
        new = loads(text, "json" if upload.name.endswith(".json") else "yaml")
        resolve(new.default, new.layers, state.workbench().names)
        state.set_recipe(new)
        ss["x_flash"] = "Loaded the recipe; Compress now shows it."
        st.rerun()
    except (PetError, UnicodeDecodeError) as exc:
        st.error("The recipe file was not loaded:")
        st.code(str(exc), language=None, wrap_lines=True)
