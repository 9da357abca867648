"""GPT-2 small (124M parameters, random weights) stays interactive: each engine step against the
torch one-liners doing the same work, measured interleaved in the same run (median of a few).

    python -m bench.gpt2_scale            # prints the table, writes bench/results/gpt2_scale.txt
    python bench/run.py --only gpt2_scale  # the same rows in bench/results.json and RESULTS.md

The model is built from ``GPT2Config()`` after ``torch.manual_seed(0)`` (nothing is downloaded);
without ``transformers`` the benchmark says so and measures nothing. Rows, ours vs the one-liner:

* ``analyze``: every target's statistics, histogram and channel norms vs ``mean/std/aminmax/
  count_nonzero/histc/vector_norm`` over the same tensors;
* first global threshold: ``ScoreIndex`` built over every weight plus the cuts at 50% vs one
  ``torch.kthvalue`` over the concatenated |w| (concatenation not timed: the baseline's best case);
  then a new sparsity (``global_cuts`` on the built index);
* peak memory of the threshold: in a fresh process holding the baseline and a working copy,
  the resident set (``/proc/self/statm``, sampled every 2 ms) while the index is built and asked;
* int4 quantisation: ``quantize`` vs ``(w / s).round().clamp() * s`` with ``s = absmax / 7``, on
  one (768, 2304) Conv1D weight and on every weight;
* size accounting (``tensor_size``) and the Huffman size (``huffman_tensor_bytes``) of a 50%
  + int4 model vs ``count_nonzero`` and a ``bincount`` of the codes per tensor;
* a slider move without evaluation: ``Workbench.apply`` to a new global sparsity with int4, then
  ``report()`` (the Huffman size on request above 20 M weights), and the same with ``sizes()`` and
  ``size_bytes_huffman()``, vs kthvalue + mask + the one-liner int4 per weight;
* the peak memory of a session: a fresh process builds the model and a workbench, applies and
  reports twice; its resident-set growth over the model's fp32 bytes.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import Context, Goal, Result, machine, measure_pair, median, setup_torch, timed  # noqa: E402

RESULT_TXT = Path(__file__).resolve().parent / "results" / "gpt2_scale.txt"
INT4 = {"bits": 4, "scheme": "symmetric", "granularity": "per_channel"}
NEW_SPARSITIES = [0.31, 0.47, 0.52, 0.63, 0.71, 0.86, 0.93]


def gpt2():
    """GPT-2 small from its config, seeded; None without transformers."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return GPT2LMHeadModel(GPT2Config()).eval()


def _weights(model) -> list[torch.Tensor]:
    from pet_core.layers import targets
    return [t.weight for t in targets(model).values()]


def _one_liner_stats(ws: list[torch.Tensor]) -> None:
    for w in ws:
        w.mean(), w.std(), torch.aminmax(w), torch.count_nonzero(w), torch.histc(w, 60)
        torch.linalg.vector_norm(w, 1, dim=1), torch.linalg.vector_norm(w, 2, dim=1)


def _one_liner_int4(w: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    s = w.abs().amax(1, keepdim=True) / 7
    q = (w / s).round().clamp(-7, 7) * s
    return q if keep is None else q * keep


def _row(name: str, ours: list[float], base: list[float], desc: str, goal: str | None = None,
         limit: float | None = None, notes: str = "") -> Result:
    """A result whose goal is ``ours <= limit x base`` (ratio = base / ours, > 1: ours faster)."""
    goals = [] if goal is None else [Goal(goal, median(ours) <= limit * median(base))]
    return Result(name, median(ours), "ms", baseline=median(base), min=min(ours), baseline_min=min(base),
                  baseline_desc=desc, goals=goals, notes=notes, reps=len(ours), group="gpt2_scale")


class PeakRSS:
    """The resident set before a block and its peak during it (``/proc/self/statm``, every 2 ms)."""

    PAGE = 4096

    @classmethod
    def rss(cls) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * cls.PAGE

    def __enter__(self) -> "PeakRSS":
        self.before = self.peak = self.rss()
        self._done = threading.Event()
        self._watcher = threading.Thread(target=self._sample)
        self._watcher.start()
        return self

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._watcher.join()


def memory_probe() -> dict:
    """In this (fresh) process: baseline + working copy, then the peak resident bytes while the
    global index is built and asked for 7 sparsities, over the model's fp32 bytes."""
    import gc

    from pet_core.methods.magnitude import ScoreIndex, global_cuts

    model = gpt2()
    work = copy.deepcopy(model)
    ws = _weights(model)
    weight_bytes = sum(w.numel() * 4 for w in ws)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    gc.collect()
    with PeakRSS() as rss:
        index = ScoreIndex([[w] for w in ws])
        for s in NEW_SPARSITIES:
            global_cuts(index, s)
    del work
    return dict(before=rss.before, peak=rss.peak, extra=rss.peak - rss.before, index=index.nbytes,
                weight_bytes=weight_bytes, model_bytes=model_bytes)


def session_memory_probe() -> dict:
    """In this (fresh) process, after the imports: the peak resident bytes of a whole session (the
    baseline, a workbench, 50% + int4 applied and reported, then a new sparsity), over the model's
    fp32 bytes. What the app holds per session for one model."""
    import gc

    from pet_core.memory import release_freed_memory
    from pet_core.recipe import Recipe
    from pet_core.workbench import Workbench

    release_freed_memory()           # as the app's server, the CLI and job workers do
    import transformers              # the model code is imported once per process, not per session

    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=8, n_head=1, vocab_size=10))
    gc.collect()
    with PeakRSS() as rss:
        model = gpt2()
        model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        wb = Workbench(model)
        for sparsity in (0.5, 0.6):
            wb.apply(Recipe(default={"prune": {"sparsity": sparsity}, "quantize": INT4}))
            wb.report()
    return dict(before=rss.before, peak=rss.peak, extra=rss.peak - rss.before, model_bytes=model_bytes)


def bench_gpt2_scale(ctx: Context) -> list[Result]:
    model = gpt2()
    if model is None:
        ctx.log("gpt2_scale: transformers is not installed; nothing measured")
        return []
    from pet_core.analysis import analyze
    from pet_core.layers import targets
    from pet_core.methods.magnitude import ScoreIndex, count_to_prune, global_cuts
    from pet_core.methods.quantize import QuantizeConfig, quantize
    from pet_core.packed.tensor_blob import huffman_tensor_bytes
    from pet_core.size import tensor_size

    reps, warmup = (1, 0) if ctx.quick else (3, 1)
    ws = _weights(model)
    n = sum(w.numel() for w in ws)
    rows: list[Result] = []

    t_ours, t_base = measure_pair(lambda: analyze(model), lambda: _one_liner_stats(ws), reps, warmup)
    rows.append(_row("analyze (GPT-2 small, every target)", t_ours, t_base,
                     "mean, std, aminmax, count_nonzero, histc(60), L1/L2 row norms per weight",
                     "<= 1.5x the one-liners", 1.5, f"{len(ws)} targets, {n:,} weights"))

    flat = torch.cat([w.abs().reshape(-1) for w in ws])                   # (n,) for the baseline only
    k = count_to_prune(n, 0.5)
    index_box: list = []

    def build() -> None:
        index_box[:] = [ScoreIndex([[w] for w in ws])]
        global_cuts(index_box[0], 0.5)

    t_ours, t_base = measure_pair(build, lambda: torch.kthvalue(flat, k), reps, 0)
    index = index_box[0]
    value = float(torch.kthvalue(flat, k).values)
    cuts = global_cuts(index, 0.5)
    pruned = sum(int((w.abs() < c.value).sum()) + c.ties for w, c in zip(ws, cuts))
    rows.append(_row("first global threshold, 50% (ScoreIndex build + cuts)", t_ours, t_base,
                     "torch.kthvalue over the concatenated |w| (concatenation not timed)",
                     "<= 1.2x torch.kthvalue", 1.2,
                     f"threshold {cuts[0].value!r} {'==' if cuts[0].value == value else '!='} kthvalue's "
                     f"{value!r}; pruned {pruned:,} = k {k:,}: {pruned == k}; index {index.nbytes / 1e6:.0f} MB"))
    flat = None                                                             # (n,) freed

    new = iter(NEW_SPARSITIES * (reps + warmup + 2))
    t_new = [timed(lambda: global_cuts(index, next(new))) for _ in NEW_SPARSITIES]
    rows.append(Result("new global sparsity after the first (global_cuts)", median(t_new), "ms",
                       min=min(t_new), reps=len(t_new), group="gpt2_scale",
                       goals=[Goal("<= 50 ms", median(t_new) <= 50)],
                       notes=f"sparsities {NEW_SPARSITIES}: each a new bucket of the index"))

    probe = subprocess.run([sys.executable, __file__, "--memory"], capture_output=True, text=True, timeout=900)
    if probe.returncode == 0:
        mem = json.loads(probe.stdout.strip().splitlines()[-1])
        extra = mem["extra"] / mem["model_bytes"]
        rows.append(Result("threshold peak memory over baseline + working copy", extra, "x model fp32",
                           group="gpt2_scale", reps=1,
                           goals=[Goal("<= 0.5x (session <= 2.5x: baseline 1x + copy 1x + this)", extra <= 0.5)],
                           notes=f"peak RSS growth {mem['extra'] / 1e6:.0f} MB while building and asking the "
                                 f"index (index itself {mem['index'] / 1e6:.0f} MB) over {mem['model_bytes'] / 1e6:.0f} "
                                 f"MB of fp32 parameters; process RSS before {mem['before'] / 1e6:.0f} MB (torch, "
                                 f"transformers, baseline, copy), peak {mem['peak'] / 1e6:.0f} MB"))
    else:
        ctx.log(f"  memory probe failed: {probe.stderr[-500:]}")
    probe = subprocess.run([sys.executable, __file__, "--session-memory"], capture_output=True, text=True,
                           timeout=900)
    if probe.returncode == 0:
        mem = json.loads(probe.stdout.strip().splitlines()[-1])
        extra = mem["extra"] / mem["model_bytes"]
        rows.append(Result("session peak memory (baseline + workbench, 50% + int4 applied twice)", extra,
                           "x model fp32", group="gpt2_scale", reps=1, goals=[Goal("<= 2.5x", extra <= 2.5)],
                           notes=f"peak RSS growth {mem['extra'] / 1e6:.0f} MB over {mem['model_bytes'] / 1e6:.0f} MB "
                                 f"of fp32 parameters, from building the model to the second report (after "
                                 f"importing torch, transformers' GPT-2 code and pet_core: {mem['before'] / 1e6:.0f} MB)"))
    else:
        ctx.log(f"  session memory probe failed: {probe.stderr[-500:]}")

    c_attn = targets(model)["transformer.h.0.attn.c_attn"].weight              # (2304, 768), a transposed view
    cfg = QuantizeConfig(**INT4)
    t_ours, t_base = measure_pair(lambda: quantize(c_attn, cfg), lambda: _one_liner_int4(c_attn), reps * 3, warmup)
    rows.append(_row("int4 quantise one (768, 2304) Conv1D weight", t_ours, t_base,
                     "(w / s).round().clamp(-7, 7) * s, s = absmax / 7 per channel",
                     notes="quantize(): codes, scales and values (bit-identical to the former code)"))
    t_ours, t_base = measure_pair(lambda: [quantize(w, cfg) for w in ws], lambda: [_one_liner_int4(w) for w in ws],
                                  reps, warmup)
    rows.append(_row("int4 quantise every weight", t_ours, t_base, "the same one-liner per weight"))

    from pet_core.recipe import Recipe
    from pet_core.workbench import Workbench
    wb = Workbench(model, None, None)
    wb.apply(Recipe(default={"prune": {"sparsity": 0.5}, "quantize": INT4}))
    stored = [t for name in wb.names for t in wb.coded_tensors(name)]
    sizes = [tensor_size(t) for t in stored]
    t_ours, t_base = measure_pair(lambda: [tensor_size(t) for t in stored],
                                  lambda: [torch.count_nonzero(t.values) for t in stored], reps, warmup)
    rows.append(_row("size accounting, 50% + int4 (tensor_size per tensor)", t_ours, t_base,
                     "torch.count_nonzero per tensor", notes="the layout search: dense, bitmask, 16 gap widths"))
    t_ours, t_base = measure_pair(lambda: [huffman_tensor_bytes(t, s.encoding) for t, s in zip(stored, sizes)],
                                  lambda: [np.bincount(t.codes.reshape(-1).numpy() + 8, minlength=16) for t in stored],
                                  reps, warmup)
    rows.append(_row("Huffman size, 50% + int4 (huffman_tensor_bytes per tensor)", t_ours, t_base,
                     "numpy.bincount of the codes per tensor"))

    moves = iter(NEW_SPARSITIES * (reps + warmup + 2))

    def move() -> None:
        wb.apply(Recipe(default={"prune": {"sparsity": next(moves)}, "quantize": INT4}))
        wb.sizes()
        wb.size_bytes_huffman()

    naive = iter(NEW_SPARSITIES * (reps + warmup + 2))
    absw = [w.abs() for w in ws]

    def one_liners() -> None:
        t = torch.kthvalue(torch.cat([a.reshape(-1) for a in absw]), count_to_prune(n, next(naive))).values
        for w, a in zip(ws, absw):
            keep = a > t
            q = _one_liner_int4(w, keep)
            torch.count_nonzero(q)

    def slider() -> None:           # what a move costs the app, less evaluation: the Huffman size on request
        wb.apply(Recipe(default={"prune": {"sparsity": next(moves)}, "quantize": INT4}))
        wb.report()

    t_move, t_base = measure_pair(slider, one_liners, reps, warmup)
    rows.append(Result("slider move without evaluation (apply + report; Huffman on request)", median(t_move), "ms",
                       baseline=median(t_base), min=min(t_move), baseline_min=min(t_base), reps=len(t_move),
                       baseline_desc="kthvalue over cat |w|, mask, one-liner int4 and count_nonzero per weight",
                       goals=[Goal("<= 1000 ms", median(t_move) <= 1000)], group="gpt2_scale",
                       notes="Workbench.apply to a new global sparsity with int4 (every layer rewritten), then "
                             "report() as the Compress page asks for it (no dataset: no evaluation)"))
    t_ours, t_base = measure_pair(move, one_liners, reps, warmup)
    rows.append(_row("slider move without evaluation (apply + sizes + Huffman)", t_ours, t_base,
                     "kthvalue over cat |w|, mask, one-liner int4 and count_nonzero per weight",
                     notes=f"Workbench.apply to a new global sparsity with int4 ({len(wb.names)} layers, all "
                           "rewritten), then sizes() and size_bytes_huffman()"))
    return rows


def table(rows: list[Result]) -> str:
    lines = ["| row | ours | one-liner | ours / one-liner | goal | met |", "|---|---:|---:|---:|---|:-:|"]
    for r in rows:
        d = r.as_dict()
        unit = r.unit
        ours = f"{r.value:,.1f} {unit}" if unit == "ms" else f"{r.value:.3g} {unit}"
        base = "–" if r.baseline is None else f"{r.baseline:,.1f} {unit}"
        times = "–" if r.baseline is None else f"{r.value / r.baseline:.2f}×"
        met = "" if "met" not in d else ("yes" if d["met"] else "**no**")
        lines.append(f"| {r.name} | {ours} | {base} | {times} | {d.get('goal', '')} | {met} |")
    lines += [""] + [f"- {r.name}: {r.notes}" + (f" Baseline: {r.baseline_desc}." if r.baseline_desc else "")
                     for r in rows if r.notes or r.baseline_desc]
    return "\n".join(lines)


def main() -> int:
    if "--memory" in sys.argv:
        setup_torch()
        print(json.dumps(memory_probe()))
        return 0
    if "--session-memory" in sys.argv:
        setup_torch()
        print(json.dumps(session_memory_probe()))
        return 0
    setup_torch()
    ctx = Context(quick="--quick" in sys.argv, log=lambda m: print(m, flush=True))
    info = machine()
    start = time.perf_counter()
    rows = bench_gpt2_scale(ctx)
    head = (f"# GPT-2 small at scale\n\n`python -m bench.gpt2_scale` on {info['cpu']}, {info['cores_usable']} cores "
            f"usable, torch {info['torch']} ({info['torch_threads']} threads), {info['date']}, load average "
            f"{info['load_avg']} at start (others' work shares the cores: compare the ratios, measured interleaved "
            f"in the same run). {time.perf_counter() - start:.0f} s.\n")
    text = head + "\n" + (table(rows) if rows else "transformers is not installed: nothing measured.") + "\n"
    print(text)
    RESULT_TXT.parent.mkdir(parents=True, exist_ok=True)
    RESULT_TXT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
