"""Widget values <-> recipe: pure functions, so the Compress page stays thin and testable.

The recipe is the single source of truth. Widgets are filled from it when a recipe is loaded
(Pareto point, uploaded file, shared link) and read back into it on every change.
"""

from __future__ import annotations

from typing import Any

PRUNE_METHODS = ("off", "magnitude", "l1_channel", "l2_channel")
CODINGS = ("none", "quantize", "share")
LOW_RANK_MODES = ("off", "energy", "rank")
BITS_CHOICES = (1, 2, 3, 4, 5, 6, 7, 8, 16)
TABLE_BITS = ("default", "off") + tuple(str(b) for b in BITS_CHOICES)

# Widget keys and their values when the recipe says nothing.
CONTROL_DEFAULTS: dict[str, Any] = {
    "c_prune_method": "off", "c_prune_by": "sparsity", "c_sparsity": 0.5, "c_threshold": 0.05,
    "c_scope": "global", "c_coding": "none", "c_bits": 8, "c_scheme": "symmetric",
    "c_granularity": "per_channel", "c_clusters": 16, "c_low_rank": "off", "c_energy": 0.9, "c_rank": 16,
}


def controls_from_default(default: dict[str, Any]) -> dict[str, Any]:
    """Widget values for a recipe's ``default`` section."""
    c = dict(CONTROL_DEFAULTS)
    if p := default.get("prune"):
        c["c_prune_method"] = p.get("method", "magnitude")
        c["c_scope"] = p.get("scope", "global")
        if "threshold" in p:
            c["c_prune_by"], c["c_threshold"] = "threshold", p["threshold"]
        else:
            c["c_prune_by"], c["c_sparsity"] = "sparsity", p["sparsity"]
    if q := default.get("quantize"):
        c.update(c_coding="quantize", c_bits=q.get("bits", 8), c_scheme=q.get("scheme", "symmetric"),
                 c_granularity=q.get("granularity", "per_channel"))
    elif s := default.get("share"):
        c.update(c_coding="share", c_clusters=s.get("clusters", 16))
    if lr := default.get("low_rank"):
        if "rank" in lr:
            c.update(c_low_rank="rank", c_rank=lr["rank"])
        else:
            c.update(c_low_rank="energy", c_energy=lr["energy"])
    return c


def default_from_controls(c: dict[str, Any]) -> dict[str, Any]:
    """The recipe's ``default`` section from widget values."""
    default: dict[str, Any] = {}
    if c["c_prune_method"] != "off":
        prune = {"method": c["c_prune_method"], "scope": c["c_scope"]}
        if c["c_prune_by"] == "threshold":
            prune["threshold"] = float(c["c_threshold"])
        else:
            prune["sparsity"] = round(float(c["c_sparsity"]), 4)
        default["prune"] = prune
    if c["c_coding"] == "quantize":
        default["quantize"] = {"bits": int(c["c_bits"]), "scheme": c["c_scheme"], "granularity": c["c_granularity"]}
    elif c["c_coding"] == "share":
        default["share"] = {"clusters": int(c["c_clusters"])}
    if c["c_low_rank"] == "energy":
        default["low_rank"] = {"energy": round(float(c["c_energy"]), 4)}
    elif c["c_low_rank"] == "rank":
        default["low_rank"] = {"rank": int(c["c_rank"])}
    return default


# --- per-layer override table -------------------------------------------------------------------

TABLE_COLUMNS = ("layer", "type", "params", "skip", "sparsity", "bits", "clusters", "rank")


def _is_table_row(steps: dict[str, Any]) -> bool:
    """Whether an override can be shown as a table row (else it is kept as an advanced override)."""
    if all(steps.get(s, 0) is None for s in ("prune", "quantize", "share", "low_rank")):
        return True
    for step, value in steps.items():
        if value is None:
            if step != "quantize":
                return False
            continue
        allowed = {"prune": {"sparsity"}, "quantize": {"bits"}, "share": {"clusters"}, "low_rank": {"rank"}}[step]
        if set(value) - allowed:
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
        skip = bool(steps) and all(steps.get(s, 0) is None for s in ("prune", "quantize", "share", "low_rank"))
        q = steps.get("quantize", 0)
        bits = "off" if q is None and "quantize" in steps and not skip else (str(q["bits"]) if q else "default")
        rows.append({
            "layer": info["name"], "type": info["type"], "params": info["params"], "skip": skip,
            "sparsity": None if skip else (steps.get("prune") or {}).get("sparsity"),
            "bits": "default" if skip else bits,
            "clusters": None if skip else (steps.get("share") or {}).get("clusters"),
            "rank": None if skip else (steps.get("low_rank") or {}).get("rank"),
        })
    return rows


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v)   # None or NaN (pandas empty cell)


def layers_from_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Table rows back to ``layers`` overrides (only rows that differ from the default)."""
    layers: dict[str, Any] = {}
    for r in rows:
        if r.get("skip"):
            layers[r["layer"]] = {"prune": None, "quantize": None, "share": None, "low_rank": None}
            continue
        steps: dict[str, Any] = {}
        if not _blank(r.get("sparsity")):
            steps["prune"] = {"sparsity": float(r["sparsity"])}
        bits = r.get("bits") or "default"
        if bits == "off":
            steps["quantize"] = None
        elif bits != "default":
            steps["quantize"] = {"bits": int(bits)}
        if not _blank(r.get("clusters")):
            steps["share"] = {"clusters": int(r["clusters"])}
        if not _blank(r.get("rank")):
            steps["low_rank"] = {"rank": int(r["rank"])}
        if steps:
            layers[r["layer"]] = steps
    return layers


# --- fine-tuning ---------------------------------------------------------------------------------

FINETUNE_DEFAULTS: dict[str, Any] = {
    "f_epochs": 2.0, "f_lr": 1e-3, "f_batch_size": 128, "f_optimizer": "adam", "f_schedule": "cosine",
    "f_qat": True, "f_distill": False, "f_temperature": 4.0, "f_alpha": 0.7,
    "f_l1": False, "f_l1_strength": 1e-5,
    "f_gradual": False, "f_initial_sparsity": 0.0, "f_start_epoch": 0.0, "f_end_epoch": 1.0, "f_frequency": 50,
    "f_lottery": False, "f_rounds": 3, "f_rewind": "early",
    "f_lora": False, "f_lora_rank": 4, "f_lora_alpha": 8.0, "f_lora_layers": "*",
}


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
