"""Per-session state: the source (model, dataset), the recipe, the workbench; runs live in the ledger.

* The recipe in ``st.session_state`` is the single source of truth. Widgets are views of it: their
  keys carry the recipe's version (``widget_key``), they start from the recipe's values, and a change
  writes the recipe. Loading a recipe (a link, a file, a Pareto point) bumps the version, so every
  widget is rebuilt from it. Nothing in the background writes the recipe or a widget.
* Baselines are shared by all sessions (read-only by contract) behind one lock *per model key*:
  loading model A never waits for model B. A zoo model that is not in the model cache yet is trained
  in a worker process (``studio.jobs``) while the page shows its progress.
* Every configuration evaluated is a run in the ledger (``pet_core.ledger``), owned by the session's
  user name, so runs survive reloads and restarts and the CLI sees them too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import streamlit as st

from pet_core.errors import PetError
from pet_core.evaluation.engine import ESTIMATE_FIRST_ABOVE_S
from pet_core.layers import compressible_layers
from pet_core.ledger import Ledger
from pet_core.loader import Baseline, is_zoo_name, open_workbench
from pet_core.pareto import recipe_key, summarize_recipe
from pet_core.recipe import Recipe, from_token, to_token
from pet_core.runs import NO_DATASET
from pet_core.steps import resolve
from pet_core.workbench import Workbench
from studio.baselines import shared_baseline, show_pretraining
from studio.controls import FINETUNE_DEFAULTS
from studio.text import plain

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist"
LINK_DATASETS = ("digits", "mnist")
ss = st.session_state
# What a new session starts with: something visible to move, not "no compression".
START_RECIPE = Recipe(default={"prune": {"method": "magnitude", "scope": "global", "sparsity": 0.7},
                               "quantize": {"bits": 8, "scheme": "symmetric", "granularity": "per_channel"}})


def default_mnist_dir() -> str:
    return os.environ.get("PET_MNIST_DIR") or (str(DEFAULT_MNIST) if DEFAULT_MNIST.is_dir() else "")


def init() -> None:
    """Run at the top of every page: defaults, the user name, a recipe from the link."""
    ss.setdefault("source", {"model": "lenet_300_100", "dataset": "digits", "data_dir": None, "task": None})
    ss.setdefault("recipe_version", 0)
    if "user" not in ss:
        ss["user"] = clean_user(st.query_params.get("user", "me"))
    if "recipe" not in ss:
        set_recipe(START_RECIPE)
    for key, value in FINETUNE_DEFAULTS.items():
        # Fine-tune settings are the page's own, not the recipe's: re-assigning keeps them when the
        # page is not shown (Streamlit drops a widget's value otherwise).
        ss[key] = ss[key] if key in ss else value
    if not ss.get("_link_read"):
        ss["_link_read"] = True
        token = st.query_params.get("recipe")
        if token:
            try:
                _open_link(token)
            except PetError as exc:
                ss["_link_error"] = str(exc)
    if err := ss.pop("_link_error", None):
        st.error("The shared link's recipe was not loaded:")
        st.code(err, language=None, wrap_lines=True)   # text from a link is data, never markup


def _open_link(token: str) -> None:
    """A link names a zoo model and digits or mnist, never a path on the server."""
    recipe = from_token(token)
    if not is_zoo_name(recipe.model) or recipe.dataset not in LINK_DATASETS:
        raise PetError(f"a link can name a zoo model and {' or '.join(LINK_DATASETS)} only, "
                       f"not {plain(recipe.model)[:80]!r} on {plain(recipe.dataset)[:80]!r}")
    data_dir = default_mnist_dir() if recipe.dataset == "mnist" else None
    if recipe.dataset == "mnist" and not data_dir:
        raise PetError("the link asks for MNIST, which this server does not have")
    base = shared_baseline(recipe.model, recipe.dataset, data_dir)
    if base is not None:
        resolve(recipe.default, recipe.layers, list(compressible_layers(base.model)))
    set_source(recipe.model, recipe.dataset, data_dir)
    set_recipe(recipe)


def clean_user(name: Any) -> str:
    """A user name: letters, digits, ``-_.``, at most 32 characters; "me" when empty."""
    text = "".join(ch for ch in str(name) if ch.isalnum() or ch in "-_.")[:32]
    return text or "me"


def user() -> str:
    return ss.get("user", "me")


# --- source and baseline ----------------------------------------------------------------------


def source_key() -> str:
    s = ss["source"]
    return f"{s['model']}|{s['dataset']}|{s.get('data_dir') or ''}|{s.get('task') or ''}"


def set_source(model: str, dataset: str, data_dir: str | None = None, *, task: str | None = None) -> None:
    """The session's model and dataset (``NO_DATASET``: weights only); ``task`` overrides the model's."""
    ss["source"] = {"model": model, "dataset": dataset, "data_dir": data_dir or None, "task": task}


def weights_only() -> bool:
    """True when the session's model was loaded without a dataset: nothing can be measured."""
    return ss["source"]["dataset"] == NO_DATASET


def continue_from_run(run: dict[str, Any]) -> None:
    """Make the model run ``run`` produced the session's baseline, starting from that run's recipe."""
    extra = run.get("extra") or {}
    ss.pop("user_baseline", None)
    set_source(f"run:{run['id']}", run["dataset"], extra.get("data_dir"))
    recipe = Recipe.from_dict(run["recipe"]).replace(model=f"run:{run['id']}", finetune={})
    set_recipe(recipe)


def switch_zoo_source(model: str, dataset: str, data_dir: str | None = None) -> bool:
    """Switch to a zoo model on a dataset; a bad dataset is an error that keeps the old source."""
    try:
        shared_baseline(model, dataset, data_dir or None, train=False)
    except PetError as exc:
        st.error(f"Could not load {plain(model, 80)} on {plain(dataset, 80)}:")
        st.code(str(exc), language=None, wrap_lines=True)
        return False
    ss.pop("user_baseline", None)
    set_source(model, dataset, data_dir)
    return True


def baseline() -> Baseline | None:
    """The session's baseline; None (with a message) while it trains or when it cannot be loaded."""
    s = ss["source"]
    user_base = ss.get("user_baseline")
    if user_base is not None and s["model"] == user_base.model_name:
        return user_base
    try:
        base = shared_baseline(s["model"], s["dataset"], s.get("data_dir"))
    except PetError as exc:
        st.error(f"Could not load {plain(Path(s['model']).name, 80)} on {plain(Path(s['dataset']).name, 80)}:")
        st.code(str(exc), language=None, wrap_lines=True)
        return None
    if base is None:
        show_pretraining()
    return base


def workbench() -> Workbench | None:
    """This session's workbench over the current baseline (a private working copy)."""
    base = baseline()
    if base is None:
        return None
    wb = ss.get("workbench")
    if wb is None or ss.get("workbench_of") != id(base.model):
        wb = open_workbench(base)          # weights only: no eval data, the metric is not measured
        ss["workbench"], ss["workbench_of"] = wb, id(base.model)
        ss.pop("report", None)
    return wb


# --- the recipe ---------------------------------------------------------------------------------


def recipe() -> Recipe:
    return ss["recipe"]


def set_recipe(new: Recipe) -> None:
    """Load ``new`` as the session's recipe: every widget is rebuilt from it (new version)."""
    ss["recipe"] = new
    ss["recipe_version"] = ss.get("recipe_version", 0) + 1


def write_recipe(new: Recipe) -> None:
    """A widget changed the recipe: keep the widgets (same version), store the new recipe."""
    ss["recipe"] = new


def widget_key(name: str) -> str:
    """The key of a recipe widget for the current recipe version."""
    return f"{name}@{ss['recipe_version']}"


def summary() -> str:
    return summarize_recipe(recipe().to_dict())


def keep_in_address() -> None:
    """Keep the user name and (where a link may carry it) the recipe in the address on every page,
    so a reload or a bookmark of any page comes back as the same user with the same settings."""
    if st.query_params.get("user") != user():
        st.query_params["user"] = user()
    s = ss["source"]
    if is_zoo_name(s["model"]) and s["dataset"] in LINK_DATASETS:
        token = to_token(recipe().replace(model=s["model"], dataset=s["dataset"]))
        if st.query_params.get("recipe") != token:
            st.query_params["recipe"] = token


def share_link() -> str:
    return f"?recipe={to_token(recipe().replace(model=ss['source']['model'], dataset=ss['source']['dataset']))}"


def recipe_key_now() -> str:
    """Identifies the session's model, dataset and recipe: artifacts built for another are stale."""
    return source_key() + recipe_key(recipe().to_dict())


# --- runs (the ledger) ----------------------------------------------------------------------------


def ledger() -> Ledger:
    """The workspace's run ledger, shared by all sessions (each call opens its own connection)."""
    from pet_core.ledger import ledger_path

    return _ledger(str(ledger_path()))


@st.cache_resource(show_spinner=False)
def _ledger(path: str) -> Ledger:
    """One ``Ledger`` per file: a changed ``PET_WORKSPACE`` (tests) gets its own."""
    return Ledger(path)


SLOW_EXACT_S = ESTIMATE_FIRST_ABOVE_S   # an exact number expected to take longer: an estimate first (Compress)


def exact_runner(wb: Workbench):
    """This session's background exact evaluator of ``wb`` (``pet_core.evaluation.progressive``)."""
    from pet_core.evaluation.progressive import ExactRunner

    runner = ss.get("exact_runner")
    if runner is None or runner.wb is not wb:
        if runner is not None:
            runner.close()
        runner = ss["exact_runner"] = ExactRunner(wb)
    return runner


def _record(report: dict[str, Any], book: Ledger, base: Baseline, owner: str) -> str | None:
    """Record an exact report as a run (its id goes into the report); the reason when it could not be."""
    from pet_core.runs import record_evaluation

    try:
        report["run_id"] = record_evaluation(book, base, report, owner=owner)
    except PetError as exc:   # the numbers still show; say why they were not kept
        return str(exc)
    return None


def _with_exact(report: dict[str, Any], value: float) -> dict[str, Any]:
    """``report`` with its estimate replaced by the exact ``value``."""
    name = report["metric"]["name"]
    total = report["evaluation"]["total"]
    return {**report, "compressed": {**report["compressed"], name: value},
            "evaluation": {"exact": True, "value": value, "n": total, "total": total,
                           "backend": report["evaluation"].get("backend")}}


def evaluate(*, progressive: bool = False) -> dict[str, Any] | None:
    """Apply the session's recipe and return the report; the configuration is recorded as a run.

    ``progressive`` (the Compress page): when the exact number would take long, the report holds an
    estimate on a fixed subset (``report["evaluation"]["exact"]`` False) and the exact evaluation runs
    in the background, recorded as a run when it is ready (:func:`exact_ready` polls it). Otherwise
    the report is exact, waiting for a background evaluation of this configuration if one runs. A
    configuration any session evaluated before is exact at once (the engine's shared values).
    """
    wb = workbench()
    if wb is None:
        return None
    # Post-training numbers: the finetune section does not change them.
    r = recipe().replace(model=ss["source"]["model"], dataset=ss["source"]["dataset"], finetune={})
    key = (source_key(), recipe_key(r.to_dict()), user())
    runner = exact_runner(wb)
    cached = ss.get("report")
    if cached is not None and cached[0] == key and cached[1] is wb:
        report = cached[2]
        if (report.get("evaluation") or {}).get("exact", True):
            return report
        if not progressive:
            runner.wait()
        if (done := _finish(report)) is not None or progressive:
            return done or report
        # the background evaluation failed or was cancelled: evaluate here
    try:
        with runner.changing():
            wb.apply(r)
    except PetError as exc:
        st.error("This recipe cannot be applied:")
        st.code(str(exc), language=None, wrap_lines=True)
        return None
    book, base, owner = ledger(), baseline(), user()
    if progressive and wb.cached_metric() is None and wb.exact_is_slow(SLOW_EXACT_S):
        report = wb.report(estimate=wb.estimate(), huffman=False)   # the Huffman size comes with the exact number
        if not report["evaluation"]["exact"]:
            ss["report"] = (key, wb, report)
            runner.submit(wb.state_key(), on_done=lambda value: _record_exact(wb, report, value, book, base, owner))
            return report
        report = wb.report(report["compressed"][report["metric"]["name"]])
    else:
        report = wb.report()
    if why := _record(report, book, base, owner):
        st.warning(f"This configuration was not recorded in the run ledger: {plain(why)}")
    ss["report"] = (key, wb, report)
    return report


def _record_exact(wb: Workbench, report: dict[str, Any], value: float, book: Ledger, base: Baseline,
                  owner: str) -> tuple[dict[str, Any], str | None]:
    """In the runner's thread, holding the working copy (no Streamlit here): the exact report with its
    Huffman size, recorded; why not, if it was not."""
    exact = _with_exact(report, value)
    if wb.huffman_by_default():
        exact["compressed"]["size_bytes_huffman"] = wb.size_bytes_huffman()
    return exact, _record(exact, book, base, owner)


def _finish(report: dict[str, Any]) -> dict[str, Any] | None:
    """The exact report of the session's estimated ``report`` once the background evaluation recorded it."""
    runner = ss.get("exact_runner")
    if runner is None or runner.running():
        return None
    if runner.error:
        st.warning(f"The exact evaluation failed: {plain(runner.error)}")
    if runner.outcome is None or runner.outcome[0].get("recipe") != report.get("recipe"):
        return None
    exact, why = runner.outcome
    cached = ss.get("report")
    if cached is not None and cached[2] is report:
        ss["report"] = (cached[0], cached[1], exact)
    if why:
        st.warning(f"This configuration was not recorded in the run ledger: {plain(why)}")
    return exact


def poll_seconds() -> float:
    """How often Compress asks for the pending exact number: about the time it takes, within 0.5–2 s
    (each poll is a small rerun that competes with the evaluation for the server's cores)."""
    wb = ss.get("workbench")
    predicted = None if wb is None or not wb.measures else wb.engine.predicted_exact_seconds()
    return min(2.0, max(0.5, predicted or 0.5))


def exact_ready() -> bool:
    """True when the session's estimated report has its exact number (or nothing is pending)."""
    cached = ss.get("report")
    if cached is None or (cached[2].get("evaluation") or {}).get("exact", True):
        return True
    runner = ss.get("exact_runner")
    return runner is None or not runner.running()


def layer_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The Compress table's rows of ``report`` (the session's latest), once per report."""
    from studio.layer_view import layer_rows as rows_of, relative_errors

    cached = ss.get("layer_rows")
    if cached is None or cached[0] is not report:
        cached = ss["layer_rows"] = (report, rows_of(report, relative_errors(workbench())))
    return cached[1]


def recipe_identity() -> str:
    """The session's source and the post-training part of its recipe: what a layer's numbers depend on."""
    r = recipe().replace(finetune={})
    return source_key() + recipe_key({k: v for k, v in r.to_dict().items() if k not in ("model", "dataset")})


def job_source(base: Baseline) -> dict[str, Any]:
    """What a worker process needs to load this session's baseline itself (with the same trust)."""
    s = ss["source"]
    return {"model": s["model"], "dataset": s["dataset"], "data_dir": s.get("data_dir"), "arch": base.arch,
            "task": s.get("task"), "trust_code": bool(base.info.get("trusted"))}


def source_identity() -> dict[str, Any] | None:
    from pet_core.runs import identity

    base = baseline()
    return None if base is None else identity(base)


def runs(everyone: bool = False, kinds: list[str] | None = None) -> list[dict[str, Any]]:
    """This source's runs of its metric from the ledger (this user's, or everyone's), baseline first;
    ``kinds`` None: the runs that describe a model (not a sensitivity analysis)."""
    from pet_core.runs import run_metric

    ident = source_identity()
    if ident is None:
        return []
    metric = baseline().metric.name       # runs of another metric (another task's head) are not mixed in
    from pet_core.ledger import MODEL_KINDS

    rows = ledger().runs(model_hash=ident["model_hash"], dataset_hash=ident["dataset_hash"],
                         kinds=MODEL_KINDS if kinds is None else kinds)
    rows = [r for r in rows if r["kind"] == "export" or run_metric(r)["name"] == metric]
    if not everyone:
        rows = [r for r in rows if r["kind"] == "baseline" or r["owner"] == user()]
    rows.sort(key=lambda r: (r["kind"] != "baseline", r["id"]))
    return rows
