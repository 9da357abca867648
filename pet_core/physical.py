"""Physical channel pruning: turn channel masks into a smaller dense model that computes the same.

The dependency graph comes from Torch-Pruning (``torch-pruning``), which traces the autograd graph:
a conv's output channels are tied to its BatchNorm, the next layer's input channels, the
flatten→linear feature block (one column per spatial position) and every member of a residual sum.
Evaluated with torch 2.13 on every zoo model, it prunes exactly the indices we give
(``DependencyGraph.get_pruning_group(layer, fn, idxs=...)``), so we use it for the surgery rather
than re-implementing graph tracing. It does not keep the function exact; we add that:

* **Coupled groups (residual sums): intersection.** A channel of a residual sum is removed only
  when every producing layer (e.g. ``stem.conv`` and ``block1.conv2``) pruned it; otherwise it is
  kept with its zeroed weights. Only then is the summed channel a constant.
* **Constants are folded, not dropped.** A pruned conv channel outputs 0, but BatchNorm makes it
  ``beta - gamma*mean/sqrt(var+eps)``, and ReLU, pooling and residual adds keep it a (possibly
  non-zero) constant. We read each consumer's input on ``example_input`` in the masked model, check
  the removed channels are constant there (else the group is skipped with a reason) and fold them:
  a Linear or unpadded conv adds them to its bias; a zero-padded conv sees a constant plane whose
  border is 0, so its share differs at the borders and becomes ``ConstInputConv2d.const_kernel``.
* Groups with no consuming layer reach the model output (the classifier) and are skipped.

The result equals the input model with the ``keep=False`` channels' weight rows and bias entries
zeroed (which the workbench's channel-pruned working copy already is).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from pet_core.errors import PetError
from pet_core.layers import compressible_layers
from pet_core.methods.base import PruneMethod

RULE = "coupled layers (residual sums): a channel is removed only when every member pruned it (intersection)"


class ConstInputConv2d(nn.Conv2d):
    """Conv2d plus the exact contribution of removed constant input channels under zero padding.

    ``const_kernel`` (out, 1, kh, kw) is Σ_i c_i·W[:, i] over the removed channels i with constant
    value c_i; convolving it with an all-ones plane (padded with 0 like the input) gives a
    per-position bias equal to the removed channels' share of the original conv.
    """

    def __init__(self, conv: nn.Conv2d, const_kernel: torch.Tensor, input_size: tuple[int, ...]):
        if conv.groups != 1:
            raise PetError("constant folding supports ungrouped convolutions only")
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, 1, conv.bias is not None, conv.padding_mode)
        self.load_state_dict(conv.state_dict())
        self.const_kernel = nn.Parameter(const_kernel.detach().clone())  # (out, 1, kh, kw)
        # derived from const_kernel and the input size, so not saved; rebuilt when either changes
        self.register_buffer("const_bias", torch.zeros(0), persistent=False)
        self._key: tuple = ()
        self.forward(torch.zeros((1, self.in_channels) + tuple(input_size)))  # build it for that size

    def const_map(self, x: torch.Tensor) -> torch.Tensor:
        """The removed channels' contribution (1, out, H', W') for ``x``'s spatial size."""
        ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)  # (1, 1, H, W)
        return self._conv_forward(ones, self.const_kernel, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._conv_forward(x, self.weight, self.bias)
        if self.training:
            return y + self.const_map(x)  # recomputed so that gradients reach const_kernel
        # in eval mode the map only changes with the input size or the kernel (in-place updates and
        # load_state_dict bump its version): a buffer saves a conv per call
        key = (tuple(x.shape[2:]), x.dtype, x.device, self.const_kernel._version)
        if torch.jit.is_tracing():  # sizes are tensors here; comparing them specialises the trace
            with warnings.catch_warnings():  # to this size, as reading the buffer does anyway
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                stale = key != self._key
            return y + (self.const_map(x) if stale else self.const_bias)
        if key != self._key:
            with torch.inference_mode(False), torch.no_grad():
                self.const_bias = self.const_map(x)
            self._key = key
        return y + self.const_bias


def _mask_copy(layers: dict[str, nn.Module], keep: dict) -> dict[str, torch.Tensor]:
    """Check ``keep`` and zero the removed channels' weight rows and bias entries (the target model)."""
    out = {}
    for name, mask in keep.items():
        mask = torch.as_tensor(mask)
        if name not in layers:
            raise PetError(f"physical pruning: {name!r} is not a Linear/Conv layer of the model")
        m = layers[name]
        if mask.dtype != torch.bool or tuple(mask.shape) != (m.weight.shape[0],):
            raise PetError(f"physical pruning: keep[{name!r}] must be a bool tensor of shape "
                           f"({m.weight.shape[0]},), got {mask.dtype} {tuple(mask.shape)}")
        with torch.no_grad():
            m.weight.mul_(mask.view(-1, *[1] * (m.weight.dim() - 1)).to(m.weight.dtype))
            if m.bias is not None:
                m.bias.mul_(mask.to(m.bias.dtype))
        out[name] = mask
    return out


def _capture_inputs(model: nn.Module, modules: dict[str, nn.Module], example: torch.Tensor) -> dict[str, torch.Tensor]:
    """The first positional input each of ``modules`` sees in one forward pass."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda _m, args, n=n: seen.setdefault(n, args[0].detach()))
             for n, m in modules.items()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _constants(x: torch.Tensor, module: nn.Module, idxs: list[int]) -> torch.Tensor | None:
    """The constant values (len(idxs),) of input features ``idxs``, or None if they vary."""
    if isinstance(module, nn.Linear):
        vals = x.reshape(-1, x.shape[-1])[:, idxs]                   # (N, k)
    else:
        vals = x[:, idxs].transpose(0, 1).reshape(len(idxs), -1).T   # (B*H*W, k)
    c = vals[0]
    return c if torch.allclose(vals, c.expand_as(vals), rtol=1e-5, atol=1e-6) else None


def _fold(module: nn.Module, idxs: list[int], c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(bias delta (out,), const kernel (out, 1, *k) or None) replacing inputs ``idxs`` fixed at ``c``."""
    w = module.weight.detach()
    if isinstance(module, nn.Linear):
        return w[:, idxs] @ c, None                                   # (out,)
    kernel = torch.einsum("oi...,i->o...", w[:, idxs], c).unsqueeze(1)  # (out, 1, *k)
    pad = module.padding
    if module.padding_mode == "zeros" and (pad == "same" if isinstance(pad, str) else any(pad)):
        return torch.zeros(w.shape[0], dtype=w.dtype), kernel  # borders see the padding's zeros
    return kernel.flatten(1).sum(1), None   # unpadded (or non-zero padded): the constant is seen everywhere


def _plan(dg, names: dict, layers: dict, keep: dict) -> tuple[list, list[dict]]:
    """Pruning groups (root, members, group) of the channels to remove by the intersection rule."""
    plans, skipped, covered = [], [], set()
    for name, mask in keep.items():
        pruned = [int(i) for i in torch.nonzero(~mask).flatten()]
        if name in covered or not pruned:
            continue
        fn = dg.get_pruner_of_module(module := layers[name]).prune_out_channels
        group = dg.get_pruning_group(module, fn, idxs=pruned)
        producers = [(names[it.dep.target.module], it) for it in group.items
                     if dg.is_out_channel_pruning_fn(it.dep.handler) and names.get(it.dep.target.module) in layers]
        members = sorted({n for n, _ in producers})
        covered.update(members)
        removable = set(pruned)
        for member, it in producers:  # root_idxs map a member's channel back to the root's
            for idx, root in zip(it.idxs, it.root_idxs):
                if member not in keep or bool(keep[member][idx]):
                    removable.discard(root)
        if len(removable) < len(pruned):
            skipped.append(dict(layers=members, channels=len(pruned) - len(removable), reason=(
                f"coupled by a residual sum; {RULE}; pruned per layer: "
                + ", ".join(f"{m} {int((~keep[m]).sum()) if m in keep else 0}" for m in members))))
        if len(removable) >= module.weight.shape[0]:
            skipped.append(dict(layers=members, channels=len(removable), reason="would remove every channel"))
        elif removable:
            plans.append((name, members, dg.get_pruning_group(module, fn, idxs=sorted(removable))))
    return plans, skipped


def _fold_constants(dg, work: nn.Module, names: dict, plans: list, example: torch.Tensor):
    """Check every plan's removed channels are constants at their consumers; fold them.

    Returns (accepted plans, folds {consumer: [bias delta (out,), const kernel or None, input
    size]} in the consumer's original output space, skipped groups). Runs before any pruning.
    """
    # consumers: layers whose *input* shrinks; BatchNorm and Torch-Pruning's own op nodes use one
    # function for in and out channels (they shrink with the channel) and are not consumers
    consumers = {}
    for root, _, group in plans:
        consumers[root] = [(names.get(it.dep.target.module), list(it.idxs)) for it in group.items
                           if dg.is_in_channel_pruning_fn(it.dep.handler)
                           and not dg.is_out_channel_pruning_fn(it.dep.handler)]
    seen = _capture_inputs(work, {n: work.get_submodule(n) for c in consumers.values() for n, _ in c if n}, example)
    accepted, folds, skipped = [], {}, []
    for root, members, group in plans:
        reason, parts = None, []
        if not consumers[root]:
            reason = "reaches the model output (no consuming layer): removing it would change the output"
        for cname, idxs in consumers[root]:
            module = work.get_submodule(cname) if cname else None
            if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) or getattr(module, "groups", 1) != 1:
                reason = f"unsupported consuming layer {cname or '?'} ({type(module).__name__})"
                break
            c = _constants(seen[cname], module, idxs)
            if c is None:
                reason = f"removed channels are not constant at {cname}'s input (e.g. padded average pooling)"
                break
            delta, kernel = _fold(module, idxs, c)
            if kernel is not None and not isinstance(module, nn.Conv2d):
                reason = f"constant into zero-padded {type(module).__name__} {cname} is not supported"
                break
            parts.append((cname, delta, kernel))
        if reason:
            skipped.append(dict(layers=members, channels=len(group[0].idxs), reason=reason))
            continue
        accepted.append((root, members, group))
        for cname, delta, kernel in parts:
            acc = folds.setdefault(cname, [torch.zeros_like(delta), None, tuple(seen[cname].shape[2:])])
            acc[0] += delta
            if kernel is not None:
                acc[1] = kernel if acc[1] is None else acc[1] + kernel
    return accepted, folds, skipped


def physically_prune(model: nn.Module, keep: dict[str, torch.Tensor],
                     example_input: torch.Tensor) -> tuple[nn.Module, dict[str, Any]]:
    """A new, smaller dense model without the ``keep=False`` output channels (the input is untouched).

    Args:
        model: an ``nn.Module`` (not TorchScript) whose Linear/Conv layers are named in ``keep``.
        keep: layer name -> bool tensor (out,), False for channels to remove.
        example_input: a batch the model accepts (B, ...): traces the graph and checks constants.

    Returns:
        (pruned model in eval mode, info) with params before/after, per-layer channels before/after,
        removed groups, skipped groups with reasons and the folds made.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise PetError("physical pruning needs an nn.Module; TorchScript models cannot be restructured")
    import torch_pruning as tp  # imported here: the rest of pet_core does not need it
    work = copy.deepcopy(model).eval()
    layers = compressible_layers(work)
    before = {n: tuple(m.weight.shape[:2]) for n, m in layers.items()}  # (out, in)
    keep = _mask_copy(layers, keep)
    with torch.no_grad():
        reference_shape = work(example_input).shape
    dg = tp.DependencyGraph().build_dependency(work, example_inputs=example_input)
    names = {m: n for n, m in work.named_modules()}
    plans, skipped = _plan(dg, names, layers, keep)
    accepted, folds, not_constant = _fold_constants(dg, work, names, plans, example_input)
    removed_out = {names[it.dep.target.module]: set(it.idxs)  # to pick the kept rows of folded constants
                   for _, _, group in accepted for it in group.items
                   if dg.is_out_channel_pruning_fn(it.dep.handler) and names.get(it.dep.target.module) in layers}
    for _, _, group in accepted:  # channel spaces of different groups are disjoint: order is free
        group.prune()
    folded = _apply_folds(work, folds, before, removed_out)
    with torch.no_grad():
        if work(example_input).shape != reference_shape:  # a group feeding a layer *and* the output
            raise PetError("physical pruning changed the model's output shape; keep the output layer's channels")
    after = {n: tuple(work.get_submodule(n).weight.shape[:2]) for n in before}  # ConstInputConv2d too
    return work.eval(), dict(
        params_before=sum(p.numel() for p in model.parameters()),
        params_after=sum(p.numel() for p in work.parameters()),
        layers={n: dict(zip(("out_before", "in_before", "out_after", "in_after"), before[n] + after[n]))
                for n in before},
        groups=[dict(layers=m, channels=len(g[0].idxs)) for _, m, g in accepted],
        skipped=skipped + not_constant, folded=folded, rule=RULE)


def _apply_folds(work: nn.Module, folds: dict, before: dict, removed_out: dict) -> list[dict]:
    """Add the folded constants to the (already pruned) consumers, in their kept output space."""
    done = []
    for name, (delta, kernel, size) in folds.items():
        module = work.get_submodule(name)
        kept = [i for i in range(before[name][0]) if i not in removed_out.get(name, ())]
        delta, kernel = delta[kept], None if kernel is None or not kernel.any() else kernel[kept]
        with torch.no_grad():
            if module.bias is None and delta.any():  # ReLU(0) = 0 folds nothing: no new bias then
                module.bias = nn.Parameter(torch.zeros(len(kept), dtype=module.weight.dtype))
            if module.bias is not None:
                module.bias += delta.to(module.bias.dtype)
        if kernel is not None:
            parent_name, _, attr = name.rpartition(".")
            setattr(work.get_submodule(parent_name), attr, ConstInputConv2d(module, kernel, size))
        if kernel is not None or delta.any():
            done.append(dict(layer=name, kind="bias" if kernel is None else "const_kernel"))
    return done


def channel_keep_masks(wb) -> dict[str, torch.Tensor]:
    """Keep masks (out,) from a workbench's working copy, for its channel-pruned layers.

    A channel is removed when its whole weight row and its bias entry are zero in a layer whose
    recipe prunes channels (l1_channel / l2_channel). The classifier's output layer (the last
    Linear/Conv to run) is never included.
    """
    # hooks fire in execution order: the last layer to see an input is the output layer
    out_layer = list(_capture_inputs(wb.model, {n: t.module for n, t in wb.layers.items()}, wb.x_eval[:1]))[-1]
    masks = {}
    for name in wb.names:
        prune = wb.specs[name].of_kind(PruneMethod)
        if name == out_layer or prune is None or not prune[0].structured:
            continue
        t = wb.layers[name]
        w = t.weight
        keep = w.reshape(w.shape[0], -1).ne(0).any(1)  # (out,)
        if t.bias is not None:
            keep |= t.bias.ne(0)
        masks[name] = keep
    return masks


def physical_workbench(wb):
    """A workbench over the physically pruned working copy: the same outputs, fewer parameters.

    Exporters take a workbench, so this is how a pruned model "exports and loads like any other".
    Raises PetError when the recipe prunes no channels.
    """
    from pet_core.workbench import Workbench   # workbench does not import this module: no cycle

    keep = channel_keep_masks(wb)
    if not keep:
        raise PetError("nothing to remove physically: the recipe prunes no channels (use l1_channel or l2_channel)")
    model, info = physically_prune(wb.model, keep, wb.x_eval[:2])
    return Workbench(model, wb.x_eval, wb.y_eval, task=wb.task), info
