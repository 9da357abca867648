"""Deployment variants: file bytes, accuracy and CPU latency of one compressed model, six ways.

For ``lenet_300_100``, ``mnist_cnn`` and ``resnet_mini`` on MNIST (sklearn digits when MNIST is
absent, said so in the rows), one recipe: 50% ``l1_channel`` pruning of every layer except the
classifier (``layers: {<last Linear>: {prune: null}}``) + int8 symmetric per_channel quantization.
The variants:

* **eager fp32**: the dense baseline (no recipe), torch eager;
* **masked**: the workbench's working copy (pruned channels zeroed, weights fake-quantised), eager;
* **physical**: ``pet_core.physical.physically_prune`` of the masked model (channels removed), eager;
* **ONNX fp32 / int8 (dynamic) / int8 (static QDQ)**: ``pet_core.export.artifacts.make_artifact`` of
  the masked model, and the same three exported from the physically pruned model;
* **packed→loaded**: ``pet_core.packed.save_packed`` then ``load_packed``, eager.

Bytes are measured files: safetensors (``pet_core.model_io.save_state_dict``) for the eager
variants, the ONNX file, the packed file. Accuracy is the full test set. Latency: batch 1 and 64
(real test images), 1 and 2 threads (``torch.set_num_threads`` / onnxruntime ``intra_op`` threads
via ``onnx_session``). Every variant of a model is timed interleaved with all the others, in
rotating order, in blocks of ``BLOCK`` timed calls, each block after one untimed call (it absorbs
the previous runtime's spinning worker threads); medians of >= 40 calls after warm-up.
"""

from __future__ import annotations

import datetime as _dt
import gc
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from bench.common import Context, Goal, Result, load_avg, median, p90, timed
from bench.engine import _load
from pet_core.export import onnx_export as ox
from pet_core.export.artifacts import calibration_batches, make_artifact
from pet_core.layers import compressible_layers
from pet_core.model_io import save_state_dict
from pet_core.packed import load_packed
from pet_core.physical import channel_keep_masks, physically_prune
from pet_core.recipe import Recipe
from pet_core.workbench import Workbench

MODELS = ("lenet_300_100", "mnist_cnn", "resnet_mini")
LARGER = ("mnist_cnn", "resnet_mini")  # more MACs per image than lenet_300_100 (see the MACs column)
BATCHES = (1, 64)
THREADS = (1, 2)
BLOCK = 5             # timed calls per variant per round
ROUNDS = 8            # -> 40 timed calls per variant and setting
WARMUP = 5            # untimed calls per variant before the rounds
PHYS_GOAL = 1.6       # resnet_mini: physically pruned >= 1.6x lower latency than dense eager
FASTER_BY = 0.05      # "faster" for int8 vs fp32: a median at least 5% lower (below that: load noise)
GROUP = "deploy_variants"

# (key, label, source) in table order
VARIANTS = [
    ("eager", "eager fp32", "dense baseline"),
    ("masked", "masked", "recipe"),
    ("physical", "physically pruned", "recipe"),
    ("onnx", "ONNX fp32", "masked"),
    ("onnx-int8", "ONNX int8 (dynamic)", "masked"),
    ("onnx-int8-static", "ONNX int8 (static QDQ)", "masked"),
    ("phys-onnx", "ONNX fp32", "physical"),
    ("phys-onnx-int8", "ONNX int8 (dynamic)", "physical"),
    ("phys-onnx-int8-static", "ONNX int8 (static QDQ)", "physical"),
    ("packed", "packed → loaded", "recipe"),
]


class SectionResult(Result):
    """A Result that also carries a markdown section (and its table as data) for RESULTS.md."""

    section: str = ""
    table: list | None = None

    def as_dict(self) -> dict[str, Any]:
        d = super().as_dict()
        if self.section:
            d["section"] = self.section
        if self.table is not None:
            d["table"] = self.table
        return d


def recipe_for(model_name: str, dataset: str, model: nn.Module) -> Recipe:
    last = [n for n, m in compressible_layers(model).items() if isinstance(m, nn.Linear)][-1]
    return Recipe.from_dict({
        "pet_recipe": 1, "model": model_name, "dataset": dataset,
        "default": {"prune": {"method": "l1_channel", "scope": "layer", "sparsity": 0.5},
                    "quantize": {"bits": 8, "scheme": "symmetric", "granularity": "per_channel"}},
        "layers": {last: {"prune": None}},
    })


def macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of the Linear/Conv layers for one image (biases not counted)."""
    total = [0]

    def hook(m, _inp, out):
        if isinstance(m, nn.Linear):
            total[0] += m.in_features * m.out_features * (out.numel() // out.shape[-1]) // out.shape[0]
        else:
            total[0] += out[0].numel() * (m.in_channels // m.groups) * int(np.prod(m.kernel_size))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def file_bytes(model: nn.Module, folder: Path, name: str) -> int:
    path = folder / f"{name}.safetensors"
    save_state_dict(model, path)
    return path.stat().st_size


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, block: int, warmup: int) -> dict[str, list[float]]:
    """ms per call of each fn: rounds of (1 untimed + ``block`` timed calls) per fn, rotating order."""
    names = list(fns)
    for n in names:
        for _ in range(warmup):
            fns[n]()
    gc.collect()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        order = names[k:] + names[:k]
        if r % 2:
            order.reverse()
        for n in order:
            fn = fns[n]
            fn()
            times[n] += [timed(fn) for _ in range(block)]
    return times


def one_model(model_name: str, ctx: Context, tmp: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    torch.set_num_threads(1)  # set-up and accuracy runs: 1 thread (2 stall on a loaded 2-core machine)
    base, label, note = _load(model_name, ctx)
    ds = base.dataset
    wb = Workbench(base.model, ds.x_test, ds.y_test)
    wb.apply(recipe_for(model_name, ds.name, base.model))
    rows: dict[str, dict[str, Any]] = {k: {"variant": lab, "source": src} for k, lab, src in VARIANTS}

    # --- build every variant, measure bytes and accuracy --------------------------------------
    keep = channel_keep_masks(wb)
    phys, pinfo = physically_prune(wb.model, keep, ds.x_test[:64])
    with torch.no_grad():
        phys_diff = float((phys(ds.x_test[:256]) - wb.model(ds.x_test[:256])).abs().max())
    pwb = Workbench(phys, ds.x_test, ds.y_test)
    models: dict[str, nn.Module] = {"eager": base.model.eval(), "masked": wb.model.eval(), "physical": phys}
    rows["eager"].update(bytes=file_bytes(base.model, tmp, f"{model_name}-eager"), accuracy=wb.baseline_accuracy)
    rows["masked"].update(bytes=file_bytes(wb.model, tmp, f"{model_name}-masked"), accuracy=wb.evaluate())
    rows["physical"].update(bytes=file_bytes(phys, tmp, f"{model_name}-physical"), accuracy=wb.evaluate(phys))
    ctx.log(f"  {model_name}: variants built, eager accuracies done ({time.perf_counter() - t0:.1f} s)")

    calib = calibration_batches(ds.x_train)
    artifact_latency: dict[str, dict] = {}   # make_artifact's own (non-interleaved) latency, a cross-check
    onnx_paths: dict[str, Path] = {}
    for prefix, w in (("", wb), ("phys-", pwb)):
        for fmt in ("onnx", "onnx-int8", "onnx-int8-static"):
            key = prefix + fmt
            path = tmp / f"{model_name}-{key}.onnx"
            art = make_artifact(fmt, w, base, path, calibration=calib, threads=1)
            rows[key].update(bytes=art["size_bytes"], accuracy=art["accuracy"])
            artifact_latency[key] = art["latency_ms"]
            onnx_paths[key] = path
    art = make_artifact("packed", wb, base, tmp / f"{model_name}.petpack", threads=1)
    rows["packed"].update(bytes=art["size_bytes"], accuracy=art["accuracy"])
    artifact_latency["packed"] = art["latency_ms"]
    packed_model, _ = load_packed(tmp / f"{model_name}.petpack")
    packed_model.eval()
    ref, got = wb.model.state_dict(), packed_model.state_dict()
    bit_equal = set(ref) == set(got) and all(torch.equal(ref[k], got[k]) for k in ref)
    models["packed"] = packed_model
    ctx.log(f"  {model_name}: files written and evaluated ({time.perf_counter() - t0:.1f} s)")

    # --- latency: every variant interleaved, per (threads, batch) -----------------------------
    rounds, block, warmup = (2, 3, 1) if ctx.quick else (ROUNDS, BLOCK, WARMUP)
    lat: dict[str, dict[str, dict[str, float]]] = {k: {} for k in rows}
    try:
        for threads in THREADS:
            torch.set_num_threads(threads)
            sessions = {k: ox.onnx_session(p, threads) for k, p in onnx_paths.items()}
            for b in BATCHES:
                xt = ds.x_test[:b].contiguous()
                xn = np.ascontiguousarray(xt.numpy(), dtype=np.float32)
                fns: dict[str, Callable[[], Any]] = {}
                for k in rows:
                    if k in models:
                        fns[k] = (lambda m: lambda: m(xt))(models[k])
                    else:
                        s = sessions[k]
                        fns[k] = (lambda s, n: lambda: s.run(None, {n: xn}))(s, s.get_inputs()[0].name)
                with torch.inference_mode():
                    times = interleaved(fns, rounds, block, warmup)
                for k, ts in times.items():
                    lat[k][f"b{b}_t{threads}"] = dict(median=median(ts), p90=p90(ts), min=min(ts), reps=len(ts))
            del sessions
    finally:
        torch.set_num_threads(1)
    for k in rows:
        rows[k]["latency_ms"] = lat[k]
    ctx.log(f"  {model_name}: latency done ({time.perf_counter() - t0:.1f} s)")
    return dict(model=model_name, label=label, note=note, rows=rows, physical_info=pinfo, phys_diff=phys_diff,
                macs_dense=macs(base.model, ds.x_test), macs_physical=macs(phys, ds.x_test),
                params_dense=sum(p.numel() for p in base.model.parameters()),
                params_physical=sum(p.numel() for p in phys.parameters()),
                packed_bit_equal=bit_equal, artifact_latency=artifact_latency,
                seconds=time.perf_counter() - t0)


# --- report -------------------------------------------------------------------------------------

def _ms(x: float) -> str:
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.0f}"


def section(results: list[dict[str, Any]], start_load: str, end_load: str, reps: int, block: int) -> str:
    when = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    lines = [f"## Deployment variants: bytes, accuracy, CPU latency (`{GROUP}`, {when})", ""]
    lines += [
        "Recipe for every non-eager row: 50% `l1_channel` pruning on every layer except the classifier "
        "(`layers: {<last Linear>: {prune: null}}`) + int8 symmetric per_channel quantization, post-training "
        "(no fine-tuning). *eager fp32* is the dense baseline. *ONNX … / masked* rows are exported from the "
        "masked working copy, *ONNX … / physical* rows from the physically pruned model "
        "(`make_artifact` over a workbench on it). Dynamic int8 quantises MatMul (Linear) only; convolutions "
        "stay fp32 there (see `quantize_onnx_dynamic`); static QDQ covers the convolutions except a 1-channel stem.",
        "",
        "Bytes are files on disk: safetensors (fp32) for eager / masked / physical, the ONNX file, the packed "
        "file. Accuracy on the full test set. Latency: median ms per forward over "
        f"{reps} timed calls per cell after warm-up, all variants of a model interleaved (rotating order, blocks "
        f"of {block} timed calls each after one untimed call); threads = `torch.set_num_threads` / onnxruntime "
        "`intra_op_num_threads` (`onnx_session`: spinning off at 1 thread, on at 2).",
        "",
        "**GPU: none lent in this session — GPU rows not measured.** CPU only (torch CPU build, "
        "onnxruntime CPUExecutionProvider).",
        "",
        f"**Machine load:** other sessions were running on this 2-core machine: load average {start_load} at "
        f"the start of this benchmark and {end_load} at its end (1/5/15 min). Absolute times are inflated and "
        "noisy; interleaving gives every variant the same load, so the comparisons between rows are the "
        "reliable part. torch's OpenMP pool at 2 threads is the most exposed: when one of its two threads is "
        "descheduled, every parallel region waits for it, so torch's 2-thread cells can be far slower than its "
        "1-thread ones (listed under each table); onnxruntime's pool, whose calling thread takes over unstarted "
        "work, degrades much less.",
    ]
    for res in results:
        m = res["model"]
        pi = res["physical_info"]
        lines += ["", f"### {m} ({res['label']})", ""]
        if res["note"]:
            lines += [res["note"].strip(), ""]
        lines += ["| variant | from | bytes | accuracy | b1, 1 thr | b64, 1 thr | b1, 2 thr | b64, 2 thr |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for k, _, _ in VARIANTS:
            r = res["rows"][k]
            lat = r["latency_ms"]
            cells = [_ms(lat[f"b{b}_t{t}"]["median"]) for t in THREADS for b in BATCHES]
            acc = "–" if r["accuracy"] is None else f"{r['accuracy'] * 100:.2f}%"
            lines.append(f"| {r['variant']} | {r['source']} | {r['bytes']:,} | {acc} | " + " | ".join(cells) + " |")
        skipped = "; ".join(f"{', '.join(s['layers'])}: {s['channels']} channels kept ({s['reason'].split(';')[0]})"
                            for s in pi["skipped"]) or "none"
        lines += ["", f"Latency in ms (medians). Physically pruned: params {res['params_dense']:,} → "
                  f"{res['params_physical']:,}, MACs/image {res['macs_dense']:,} → {res['macs_physical']:,}; "
                  f"max |physical − masked| logit difference {res['phys_diff']:.2g}; channels not removed: {skipped}. "
                  f"Packed file loads bit-equal to the masked model: {'yes' if res['packed_bit_equal'] else '**NO**'}. "
                  + _slow_two(res) + _const_note(res)
                  + "make_artifact's own non-interleaved medians at 1 thread (b1 / b64 ms), a cross-check: "
                  + ", ".join(f"{k} {_ms(v['batch1'])} / {_ms(v['batch64'])}"
                              for k, v in res["artifact_latency"].items()) + "."]
    return "\n".join(lines) + "\n"


def _slow_two(res: dict) -> str:
    """Torch variants whose 2-thread median exceeds their 1-thread median (load, see above)."""
    slow = [f"{res['rows'][k]['variant']} b{b} ({_ms(_lat(res, k, b, 2)['median'])} vs "
            f"{_ms(_lat(res, k, b, 1)['median'])})"
            for k in ("eager", "masked", "physical", "packed") for b in BATCHES
            if _lat(res, k, b, 2)["median"] > 1.2 * _lat(res, k, b, 1)["median"]]
    return (f"torch 2 threads > 1.2× slower than 1 thread: {', '.join(slow)}. " if slow else "")


def _const_note(res: dict) -> str:
    if not any(f["kind"] == "const_kernel" for f in res["physical_info"]["folded"]):
        return ""
    return ("The physically pruned model has `ConstInputConv2d` layers (removed constant channels into "
            "zero-padded convs); it ran forward before export, so their cached per-position constant maps "
            "were exported as initializers (a never-run copy exports instead an extra Conv on an all-ones "
            "plane per layer: a smaller file, more work per call; both match torch). ")


def _lat(res: dict, key: str, b: int, t: int) -> dict[str, float]:
    return res["rows"][key]["latency_ms"][f"b{b}_t{t}"]


def bench_deploy(ctx: Context) -> list[Result]:
    start_load = load_avg()
    results = []
    old_threads = torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory(prefix="pet-deploy-") as tmp:
            for name in MODELS:
                results.append(one_model(name, ctx, Path(tmp)))
    finally:
        torch.set_num_threads(old_threads)
    end_load = load_avg()
    rows: list[Result] = []
    by = {r["model"]: r for r in results}
    reps = _lat(results[0], "eager", 1, 1)["reps"]

    # (a) resnet_mini: physically pruned vs dense eager
    rn = by["resnet_mini"]
    for b in (64, 1):
        v, base = _lat(rn, "physical", b, 1), _lat(rn, "eager", b, 1)
        two_v, two_b = _lat(rn, "physical", b, 2), _lat(rn, "eager", b, 2)
        rows.append(SectionResult(
            name=f"resnet_mini 50% channel pruning latency, physically pruned (batch {b}, 1 thread)",
            value=v["median"], unit="ms", baseline=base["median"], p90=v["p90"], min=v["min"],
            baseline_p90=base["p90"], baseline_min=base["min"], reps=v["reps"], group=GROUP,
            goals=[Goal(f"≥ {PHYS_GOAL}× lower latency", base["median"] / v["median"] >= PHYS_GOAL)],
            baseline_desc="dense eager fp32 resnet_mini, same batch and threads, interleaved in the same run",
            notes=(rn["note"] + f"physically_prune of the masked model (50% l1_channel + int8 per_channel; "
                   f"{rn['label']}), torch eager; params {rn['params_dense']:,} → {rn['params_physical']:,}, MACs "
                   f"{rn['macs_dense']:,} → {rn['macs_physical']:,}; accuracy "
                   f"{rn['rows']['physical']['accuracy']:.4f} vs dense {rn['rows']['eager']['accuracy']:.4f} "
                   f"(post-training, no fine-tuning). At 2 threads: {two_v['median']:.3g} vs {two_b['median']:.3g} ms "
                   f"({two_b['median'] / two_v['median']:.3g}×)."),
        ))

    # (b) ONNX int8 vs fp32 per model (from the masked model)
    for res in results:
        m = res["model"]
        for kind, label in (("onnx-int8", "dynamic"), ("onnx-int8-static", "static QDQ")):
            v, base = _lat(res, kind, 64, 1), _lat(res, "onnx", 64, 1)
            others = ", ".join(
                f"b{b} {t} thr {_lat(res, 'onnx', b, t)['median'] / _lat(res, kind, b, t)['median']:.3g}×"
                for t in THREADS for b in BATCHES if (b, t) != (64, 1))
            goals = ([Goal(f"int8 faster than fp32 on at least the larger models (≥ {FASTER_BY:.0%} lower median)",
                           base["median"] >= (1 + FASTER_BY) * v["median"])] if m in LARGER else [])
            why = ("" if m in LARGER else "smallest model by MACs: the goal does not require it; ")
            rows.append(SectionResult(
                name=f"ONNX int8 ({label}) vs fp32, {m} (batch 64, 1 thread)",
                value=v["median"], unit="ms", baseline=base["median"], p90=v["p90"], min=v["min"],
                baseline_p90=base["p90"], baseline_min=base["min"], reps=v["reps"], group=GROUP, goals=goals,
                baseline_desc="ONNX fp32 of the same masked model, onnxruntime, interleaved in the same run",
                notes=(res["note"] + why + f"onnxruntime CPU, exported from the masked model ({res['label']}); "
                       f"accuracy {res['rows'][kind]['accuracy']:.4f} vs fp32 {res['rows']['onnx']['accuracy']:.4f}; "
                       f"bytes {res['rows'][kind]['bytes']:,} vs {res['rows']['onnx']['bytes']:,}. "
                       f"fp32/int8 at the other settings: {others}."),
            ))
    table = [dict(model=r["model"], dataset=r["label"], **{k: r["rows"][k] for k, _, _ in VARIANTS}) for r in results]
    rows[0].section = section(results, start_load, end_load, reps, 3 if ctx.quick else BLOCK)
    rows[0].table = table
    return rows
