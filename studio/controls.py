"""Widget values <-> recipe, generated from the method registry: pure functions, so the Compress
page stays thin and testable, and a new method gets its controls without touching a page.

The recipe is the single source of truth. Widgets are filled from it when a recipe is loaded
(Pareto point, uploaded file, shared link) and read back into it on every change.

Widget keys: ``c_<kind>`` picks the method of one kind of step (``c_prune``, ``c_code``,
``c_factor``; "off" for none), ``c_<step>_<field>`` holds a field, and ``c_<step>_by`` says which
field of a one-of pair (sparsity or threshold, energy or rank) is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator

from pet_core.methods import METHODS
from pet_core.methods.base import CodeMethod, FactorMethod, Method, PruneMethod, StepConfig
from pet_core.steps import STEPS, kind_of, method_of

# Each kind of step as one group of controls, in the page's column order.
KIND_UI = {
    PruneMethod: dict(key="c_prune", title="Pruning", off="off", picker="selectbox"),
    CodeMethod: dict(key="c_code", title="Weights stored as", off="fp32", picker="radio"),
    FactorMethod: dict(key="c_factor", title="Low rank (SVD)", off="off", picker="radio"),
}


@dataclass
class Control:
    """One widget: its kind (``st.<widget>``), key, label and keyword arguments (value excluded)."""

    widget: str
    key: str
    label: str
    kwargs: dict = field(default_factory=dict)


@dataclass
class Group:
    """The methods of one kind: the picker's options and their labels."""

    key: str
    title: str
    picker: str
    options: list[str]
    labels: dict[str, str]
    help: str


def groups() -> list[Group]:
    """One group per kind of step, options "off" then the registered methods in registry order."""
    out = []
    for kind, ui in KIND_UI.items():
        methods = [m for m in METHODS.values() if isinstance(m, kind)]
        labels = {"off": ui["off"], **{m.name: m.choice_label or m.name for m in methods}}
        help_ = "; ".join(f"{m.name}: {m.summary}" for m in methods)
        out.append(Group(ui["key"], ui["title"], ui["picker"], ["off", *(m.name for m in methods)], labels, help_))
    return out


def _key(step: str, name: str) -> str:
    return f"c_{step}_{name}"


def _shown_fields(method: Method) -> list:
    return [f for f in method.config.data_fields() if f.name != "method" and not f.metadata["ui"].get("hidden")]


def _start_value(f) -> Any:
    return f.default if f.default is not None else f.metadata["ui"].get("default")


def control_defaults() -> dict[str, Any]:
    """Every widget's value when the recipe says nothing."""
    c: dict[str, Any] = {g.key: "off" for g in groups()}
    for m in METHODS.values():
        for f in _shown_fields(m):
            c.setdefault(_key(m.step, f.name), _start_value(f))
        for a, _ in m.config.ONE_OF:
            c.setdefault(_key(m.step, "by"), a)
    return c


def controls_from_default(default: dict[str, StepConfig]) -> dict[str, Any]:
    """Widget values for a recipe's ``default`` section."""
    c = control_defaults()
    for step, cfg in default.items():
        method = method_of(step, cfg)
        c[KIND_UI[kind_of(step)]["key"]] = method.name
        for f in _shown_fields(method):
            if getattr(cfg, f.name) is not None:
                c[_key(step, f.name)] = getattr(cfg, f.name)
        for a, b in cfg.ONE_OF:
            c[_key(step, "by")] = a if getattr(cfg, a) is not None else b
    return c


def _normalised(f, value: Any) -> Any:
    if f.metadata["kind"] is int:
        return int(value)
    if f.metadata["kind"] is float:
        return round(float(value), 4) if f.metadata["hi"] != math.inf else float(value)
    return value


def default_from_controls(c: dict[str, Any]) -> dict[str, Any]:
    """The recipe's ``default`` section from widget values."""
    default: dict[str, Any] = {}
    for g in groups():
        if c[g.key] == "off":
            continue
        method = METHODS[c[g.key]]
        fields_: dict[str, Any] = {}
        if len(STEPS[method.step]) > 1:
            fields_["method"] = method.name
        unused = {b if c[_key(method.step, "by")] == a else a for a, b in method.config.ONE_OF}
        for f in _shown_fields(method):
            if f.name not in unused:
                fields_[f.name] = _normalised(f, c[_key(method.step, f.name)])
        default[method.step] = fields_
    return default


def method_controls(method: Method, c: dict[str, Any]) -> Iterator[Control]:
    """The widgets of a picked method, in field order; a one-of pair as a "By" radio, then its field.

    A generator: the caller draws each control and stores its value in ``c`` before asking for the
    next, so the field shown after "By" is the one just chosen.
    """
    pairs = {a: (a, b) for a, b in method.config.ONE_OF}
    seconds = {b for _, b in method.config.ONE_OF}
    for f in _shown_fields(method):
        if f.name in seconds:
            continue
        if f.name in pairs:
            yield Control("radio", _key(method.step, "by"), "By", dict(options=list(pairs[f.name]), horizontal=True))
            chosen = c[_key(method.step, "by")]
            f = next(x for x in _shown_fields(method) if x.name == chosen)
        yield field_control(method.step, f)


def field_control(step: str, f) -> Control:
    """The widget a field's rules call for (its ``ui`` hints first)."""
    m, ui = f.metadata, f.metadata["ui"]
    label = ui.get("label") or f.name.replace("_", " ").capitalize()
    kw: dict[str, Any] = dict(help=ui.get("help") or m["help"])
    if m["choices"] is not None:
        if m["kind"] is str:
            return Control("radio", _key(step, f.name), label, dict(kw, options=list(m["choices"]), horizontal=True))
        return Control("select_slider", _key(step, f.name), label, dict(kw, options=list(m["choices"])))
    lo = ui.get("min", m["lo"])
    hi = ui.get("max", m["hi"])
    is_int = m["kind"] is int
    step_ = ui.get("step", 1 if is_int else 0.01)
    if hi != math.inf and (not is_int or hi - lo <= 4096) and "format" not in ui and ui.get("widget") != "number_input":
        return Control("slider", _key(step, f.name), label,
                       dict(kw, min_value=int(lo) if is_int else float(lo), max_value=int(hi) if is_int else float(hi),
                            step=step_))
    kw.update(min_value=int(lo) if is_int else float(lo), step=step_)
    if hi != math.inf:
        kw["max_value"] = int(hi) if is_int else float(hi)
    if "format" in ui:
        kw["format"] = ui["format"]
    return Control("number_input", _key(step, f.name), label, kw)


# --- per-layer override table -------------------------------------------------------------------
# One column per step whose default method names a ``table_field`` (sparsity, bits, clusters, rank):
# an empty cell keeps the default; a choice column also offers "off" (the step switched off).

def table_columns() -> dict[str, tuple[str, Any]]:
    """{column: (step, field)} of the per-layer table."""
    out = {}
    for step, methods in STEPS.items():
        name = methods[0].table_field
        if name:
            out[name] = (step, next(f for f in methods[0].config.data_fields() if f.name == name))
    return out


def _is_table_row(steps: dict[str, Any]) -> bool:
    """Whether an override can be shown as a table row (else it is kept as an advanced override)."""
    if all(steps.get(s, 0) is None for s in STEPS):
        return True
    columns = {step: f for step, f in table_columns().values()}
    for step, value in steps.items():
        if step not in columns:
            return False
        if value is None:
            if columns[step].metadata["choices"] is None:
                return False
            continue
        if set(value) - {columns[step].name}:
            return False
    return True


def split_layers(layers: dict[str, Any], layer_names: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(table overrides by exact layer name, advanced overrides kept as they are: globs, other fields)."""
    table, extra = {}, {}
    for pattern, steps in layers.items():
        if pattern in layer_names and _is_table_row(steps):
            table[pattern] = steps
        else:
            extra[pattern] = steps
    return table, extra


def table_rows(layer_info: list[dict[str, Any]], table: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for ``st.data_editor``: one per compressible layer, empty cells meaning 'default'."""
    rows = []
    for info in layer_info:
        steps = table.get(info["name"], {})
        skip = bool(steps) and all(steps.get(s, 0) is None for s in STEPS)
        row = {"layer": info["name"], "type": info["type"], "params": info["params"], "skip": skip}
        for column, (step, f) in table_columns().items():
            choice = f.metadata["choices"] is not None
            value = steps.get(step, 0)
            if skip:
                row[column] = "default" if choice else None
            elif choice:
                row[column] = "off" if value is None else (str(value[f.name]) if value else "default")
            else:
                row[column] = (value or {}).get(f.name)
        rows.append(row)
    return rows


def column_specs() -> dict[str, dict[str, Any]]:
    """How each table column is edited: {column: {"options": [...]} or {"min", "max", "step"}}."""
    out = {}
    for column, (_, f) in table_columns().items():
        m = f.metadata
        if m["choices"] is not None:
            out[column] = {"options": ["default", "off", *map(str, m["choices"])], "help": m["help"]}
        else:
            hi = m["ui"].get("max", m["hi"])
            out[column] = {"min": m["lo"], "max": None if hi == math.inf else hi,
                           "step": 1 if m["kind"] is int else m["ui"].get("step", 0.01), "help": m["help"]}
    return out


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v)   # None or NaN (pandas empty cell)


def layers_from_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Table rows back to ``layers`` overrides (only rows that differ from the default)."""
    layers: dict[str, Any] = {}
    for r in rows:
        if r.get("skip"):
            layers[r["layer"]] = {s: None for s in STEPS}
            continue
        steps: dict[str, Any] = {}
        for column, (step, f) in table_columns().items():
            value = r.get(column)
            if f.metadata["choices"] is not None:
                value = value or "default"
                if value == "off":
                    steps[step] = None
                elif value != "default":
                    steps[step] = {f.name: f.metadata["kind"](value)}
            elif not _blank(value):
                steps[step] = {f.name: f.metadata["kind"](value)}
        if steps:
            layers[r["layer"]] = steps
    return layers


# --- fine-tuning ---------------------------------------------------------------------------------

FINETUNE_DEFAULTS: dict[str, Any] = {
    "f_epochs": 2.0, "f_lr": 3e-3, "f_batch_size": 128, "f_optimizer": "adam", "f_schedule": "cosine",
    "f_qat": True, "f_distill": False, "f_temperature": 4.0, "f_alpha": 0.7,
    "f_l1": False, "f_l1_strength": 1e-5,
    "f_gradual": False, "f_initial_sparsity": 0.0, "f_start_epoch": 0.0, "f_end_epoch": 1.0, "f_frequency": 50,
    "f_lottery": False, "f_rounds": 3, "f_rewind": "early",
    "f_lora": False, "f_lora_rank": 4, "f_lora_alpha": 8.0, "f_lora_layers": "*",
}


DEFAULT_STEPS = 500   # visibly recovers: lenet_300_100/digits 31% -> 97% in ~3 s, the MNIST CNN in ~1 min on 2 cores


def fit_length(c: Any, source_key: str, n_train: int) -> None:
    """Set the epochs (``c`` is the session state) to about :data:`DEFAULT_STEPS` optimiser steps, or to
    the steps a preset asked for (``f_steps_wanted``), whenever the model or dataset changes; a length
    the person typed for this source is kept."""
    from pet_core.finetune.trainer import epochs_for_steps

    steps = c.pop("f_steps_wanted", None)
    if steps or c.get("f_epochs_for") != source_key:
        epochs = epochs_for_steps(n_train, int(c["f_batch_size"]), int(steps or DEFAULT_STEPS))
        c["f_epochs"] = min(100.0, max(0.1, epochs))
        c["f_epochs_for"] = source_key


def finetune_from_controls(c: dict[str, Any]) -> dict[str, Any]:
    """The recipe's ``finetune`` section from the Fine-tune page's widgets."""
    techniques: dict[str, Any] = {}
    if c["f_qat"]:
        techniques["qat"] = {}
    if c["f_distill"]:
        techniques["distill"] = {"temperature": float(c["f_temperature"]), "alpha": float(c["f_alpha"])}
    if c["f_l1"]:
        techniques["l1"] = {"strength": float(c["f_l1_strength"])}
    if c["f_gradual"]:
        techniques["gradual"] = {"initial_sparsity": float(c["f_initial_sparsity"]),
                                 "start_epoch": float(c["f_start_epoch"]), "end_epoch": float(c["f_end_epoch"]),
                                 "frequency": int(c["f_frequency"])}
    if c["f_lottery"]:
        techniques["lottery"] = {"rounds": int(c["f_rounds"]), "rewind": c["f_rewind"]}
    if c["f_lora"]:
        techniques["lora"] = {"rank": int(c["f_lora_rank"]), "alpha": float(c["f_lora_alpha"]),
                              "layers": c["f_lora_layers"]}
    return {"epochs": float(c["f_epochs"]), "optimizer": c["f_optimizer"], "lr": float(c["f_lr"]),
            "schedule": c["f_schedule"], "batch_size": int(c["f_batch_size"]), "seed": 0,
            "techniques": techniques}
