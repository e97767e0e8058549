"""Weight sparsity (Zhu & Gupta 2017; PocketFlow's WeightSparseLearner): magnitude masks,
layer-wise regression, and the cubic sparsity schedule of re-training.

- :func:`prunable_layers`: the layers whose weights are pruned: every convolution and linear
  layer except depthwise convolutions (they hold few weights and every one of them is a whole
  filter; PocketFlow keeps them dense too).
- :func:`magnitude_mask` / :func:`magnitude_masks`: zero the ``ceil(s * n)`` weights of
  smallest magnitude of a layer (a plain 0/1 tensor multiplied into the weight: no
  re-parametrisation as in ``torch.nn.utils.prune``, so state dicts stay plain and hold the
  zeros; a layer's magnitude ranks are computed once (:func:`magnitude_ranks`) and each
  sparsity's mask is then one comparison, :func:`mask_from_ranks`).
- :class:`MaskKeeper`: ``hook(model, step)`` that re-applies fixed masks after every optimizer
  step (fast fine-tuning keeps the sparsity).
- :func:`layerwise_regression`: a few optimizer steps per pruned layer, in execution order,
  moving its kept weights so that its outputs match the ORIGINAL layer's outputs on the same
  images, the layer's inputs coming from the already-regressed pruned network (so each layer
  also corrects the error of the layers before it).
- :func:`cubic_sparsity` / :class:`GradualPruning`: the training schedule after a search,
  ``s_t = s_f - s_f (1 - (t - t_b) / (t_e - t_b))^3`` from ``t_b`` to ``t_e`` (10% and 50% of
  the steps by default), masks re-computed from the weights' magnitudes every
  ``update_every`` steps (pruned weights may grow back until ``t_e``), applied after every
  step, frozen after ``t_e``.
- :func:`sparse_size_bytes`: bytes of a CSR encoding of the model (values + indices).

Plain PyTorch; nothing here knows about Gymnasium.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from learners.modules import COMPRESSIBLE, is_depthwise

__all__ = [
    "GradualPruning", "MaskKeeper", "apply_masks", "csr_bytes", "cubic_sparsity", "layerwise_regression",
    "magnitude_mask", "magnitude_masks", "magnitude_ranks", "mask_from_ranks", "pruned_count", "prunable_layers",
    "sparse_size_bytes",
]


def prunable_layers(model: nn.Module) -> list[str]:
    """Names of the layers whose weights are pruned (conv and linear, not depthwise), in
    module order."""
    return [n for n, m in model.named_modules() if isinstance(m, COMPRESSIBLE) and not is_depthwise(m)]


def pruned_count(numel: int, sparsity: float) -> int:
    """Weights zeroed for ``sparsity`` of ``numel``: ``ceil(s * n)`` (never fewer, so the kept
    weights never exceed ``(1 - s) n``; a 1e-9 slack absorbs float error in ``s * n``)."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"a sparsity must be in [0, 1], got {sparsity}")
    return min(int(numel), max(0, math.ceil(sparsity * numel - 1e-9)))


def magnitude_ranks(weight: torch.Tensor) -> torch.Tensor:
    """Each weight's position (int64, the weight's shape) in the order of increasing magnitude;
    ties in the order of the flat index (a stable sort), so masks are reproducible."""
    order = torch.argsort(weight.detach().abs().flatten(), stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel(), device=order.device)
    return ranks.view(weight.shape)


def mask_from_ranks(ranks: torch.Tensor, sparsity: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 0/1 mask zeroing the :func:`pruned_count` weights of lowest rank (:func:`magnitude_ranks`):
    a layer's ranks are computed once, and every sparsity's mask is then one comparison."""
    return (ranks >= pruned_count(ranks.numel(), sparsity)).to(dtype)


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A 0/1 mask (the weight's dtype) zeroing the :func:`pruned_count` weights of smallest
    magnitude (ties: the lower flat index first)."""
    return mask_from_ranks(magnitude_ranks(weight), sparsity, weight.dtype)


def _modules(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    names = list(names)
    inner = getattr(model, "module", None)  # DistributedDataParallel / DataParallel: the wrapped model
    if isinstance(inner, nn.Module) and names and names[0] not in dict(model.named_modules()):
        model = inner
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise KeyError(f"the model has no layer(s) {missing}; it is not the model the masks were made for")
    return {n: modules[n] for n in names}


def magnitude_masks(model: nn.Module, sparsities: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """One :func:`magnitude_mask` per layer name of ``sparsities``."""
    modules = _modules(model, sparsities)
    return {n: magnitude_mask(modules[n].weight, s) for n, s in sparsities.items()}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the masked weights of ``model`` (in place)."""
    for name, module in _modules(model, masks).items():
        module.weight.mul_(masks[name].to(module.weight.device))


class MaskKeeper:
    """``hook(model, step)``: re-apply fixed masks after every optimizer step (the step's
    update of a pruned weight is undone, so pruned weights stay zero)."""

    def __init__(self, masks: Mapping[str, torch.Tensor]) -> None:
        self.masks = dict(masks)

    def __call__(self, model: nn.Module, step: int) -> None:
        apply_masks(model, self.masks)


def layerwise_regression(
    model: nn.Module,
    original: nn.Module,
    masks: Mapping[str, torch.Tensor],
    images: torch.Tensor,
    *,
    steps: int = 20,
    lr: float = 1e-3,
) -> dict[str, tuple[float, float]]:
    """Move each masked layer's kept weights (and bias) towards reproducing the original
    layer's outputs, ``steps`` Adam steps per layer on ``images``, in execution order.

    One forward pass of ``original`` records every masked layer's output; one forward pass of
    ``model`` (in eval mode) then regresses each masked layer on the inputs it actually gets
    there (from the layers before it, already regressed) before passing its new output on.
    The loss is the mean squared error divided by the mean square of the target (scale-free
    across layers). Masks are re-applied after every step. ``model`` is changed in place;
    returns ``{layer: (relative error before, after)}``.
    """
    if steps <= 0 or not masks:
        return {}
    targets: dict[str, torch.Tensor] = {}
    orig_modules = _modules(original, masks)
    handles = [m.register_forward_hook(lambda mod, inp, out, n=n: targets.__setitem__(n, out.detach()))
               for n, m in orig_modules.items()]
    was_training = original.training
    try:
        original.eval()
        with torch.no_grad():
            original(images)
    finally:
        for h in handles:
            h.remove()
        original.train(was_training)

    errors: dict[str, tuple[float, float]] = {}

    def layer(module: nn.Module, x: torch.Tensor) -> torch.Tensor:  # the layer alone, no hooks
        if isinstance(module, nn.Conv2d):
            return module._conv_forward(x, module.weight, module.bias)
        return nn.functional.linear(x, module.weight, module.bias)

    def regress(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor, name: str) -> torch.Tensor:
        x, target = inputs[0].detach(), targets[name]
        scale = target.pow(2).mean().clamp_min(1e-12)
        mask = masks[name].to(module.weight.device)
        params = [p for p in (module.weight, module.bias) if p is not None]
        saved = [p.requires_grad for p in params]
        before = float((output.detach() - target).pow(2).mean() / scale)
        with torch.enable_grad():
            for p in params:
                p.requires_grad_(True)
            opt = torch.optim.Adam(params, lr=lr)
            for _ in range(steps):
                loss = (layer(module, x) - target).pow(2).mean() / scale
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    module.weight.mul_(mask)
        for p, s in zip(params, saved):
            p.requires_grad_(s)
            p.grad = None
        with torch.no_grad():
            out = layer(module, x)
        errors[name] = (before, float((out - target).pow(2).mean() / scale))
        return out

    modules = _modules(model, masks)
    handles = [m.register_forward_hook(lambda mod, inp, out, n=n: regress(mod, inp, out, n))
               for n, m in modules.items()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return errors


# -- the re-training schedule -------------------------------------------------------------------
def cubic_sparsity(step: float, final: float, begin: float, end: float, initial: float = 0.0) -> float:
    """Zhu & Gupta's schedule: ``initial`` until step ``begin``, then
    ``s_f + (s_i - s_f) (1 - (t - t_b) / (t_e - t_b))^3`` (with ``s_i = 0``:
    ``s_f - s_f (1 - ...)^3``), ``final`` from step ``end`` on."""
    if step <= begin:
        return float(initial)
    if step >= end:
        return float(final)
    frac = (step - begin) / (end - begin)
    return float(final + (initial - final) * (1.0 - frac) ** 3)


class GradualPruning:
    """The re-training hook of a sparse policy: ``hook(model, step)`` after every optimizer step.

    Each layer of ``targets`` (name -> final sparsity) follows :func:`cubic_sparsity` from step
    ``begin * total_steps`` to ``end * total_steps``. Every ``update_every`` steps in between
    its mask is re-computed from the magnitudes of the layer's dense weights, and at the first
    step at or after ``t_e`` the final masks are computed and frozen. Until then the hook keeps
    a dense copy of the pruned layers' weights to which every optimizer update is added, those
    of pruned weights too (made at zero: a straight-through update, as in dynamic network
    surgery, Guo et al. 2016), so a pruned weight that the gradients keep pushing grows back
    at the next update with the value it accumulated. After every step the current masks are
    applied (pruned weights set to zero): from ``t_e`` on the model has exactly the target
    sparsities. ``step`` counts optimizer steps (1 after the first; 0-based counting works the
    same).

    Args:
        targets: final sparsity of each pruned layer (the policy's applied values).
        total_steps: optimizer steps of the whole re-training.
        begin / end: ``t_b`` and ``t_e`` as fractions of ``total_steps`` (0.1 and 0.5).
        update_every: steps between mask updates while ramping (default: PocketFlow's 500, or
            fewer so that the ramp has at least 10 updates).
        initial: sparsity before ``t_b`` (0: the issue's formula; the layers are dense and
            free to regrow until ``t_b``).
    """

    def __init__(
        self,
        targets: Mapping[str, float],
        total_steps: int,
        *,
        begin: float = 0.1,
        end: float = 0.5,
        update_every: int | None = None,
        initial: float = 0.0,
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0.0 <= begin < end <= 1.0:
            raise ValueError(f"need 0 <= begin < end <= 1 (fractions of the steps), got begin={begin}, end={end}")
        bad = {n: s for n, s in targets.items() if not 0.0 <= float(s) <= 1.0}
        if bad:
            raise ValueError(f"target sparsities must be in [0, 1], got {bad}")
        self.targets = {n: float(s) for n, s in targets.items()}
        self.total_steps = int(total_steps)
        self.t_begin = begin * total_steps
        self.t_end = max(1.0, end * total_steps)
        ramp = self.t_end - self.t_begin
        self.update_every = int(update_every) if update_every else max(1, min(500, int(ramp // 10)))
        if self.update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {update_every}")
        self.initial = float(initial)
        self.masks: dict[str, torch.Tensor] = {}
        self.frozen = False
        self._last_update: float | None = None
        self._dense: dict[str, torch.Tensor] | None = None
        self._last: dict[str, torch.Tensor] = {}
        self.updates = 0

    def sparsity_at(self, step: float) -> dict[str, float]:
        """Every layer's scheduled sparsity at ``step``."""
        return {n: cubic_sparsity(step, s, self.t_begin, self.t_end, min(self.initial, s))
                for n, s in self.targets.items()}

    @torch.no_grad()
    def __call__(self, model: nn.Module, step: int) -> None:
        modules = _modules(model, self.targets)
        if not self.frozen:
            # the dense weights: a pruned weight keeps receiving the optimizer's updates (made
            # at zero) here, so it can grow back when the masks are re-computed
            if self._dense is None:
                self._dense = {n: m.weight.detach().clone() for n, m in modules.items()}
            else:
                for n, m in modules.items():
                    self._dense[n] += m.weight - self._last[n]
            due = self._last_update is None or step - self._last_update >= self.update_every
            if step >= self.t_end:
                self.masks = {n: magnitude_mask(self._dense[n], s) for n, s in self.targets.items()}
                self.frozen, self._last_update, self.updates = True, step, self.updates + 1
            elif (step > self.t_begin and due) or (self.initial > 0 and self._last_update is None):
                self.masks = {n: magnitude_mask(self._dense[n], s) for n, s in self.sparsity_at(step).items()}
                self._last_update, self.updates = step, self.updates + 1
            for n, m in modules.items():
                m.weight.copy_(self._dense[n] * self.masks[n] if n in self.masks else self._dense[n])
            if self.frozen:
                self._dense, self._last = None, {}
            else:
                self._last = {n: m.weight.detach().clone() for n, m in modules.items()}
        else:
            apply_masks(model, self.masks)


# -- size ------------------------------------------------------------------------------------------
def csr_bytes(weight: torch.Tensor, value_bytes: int = 4) -> int:
    """Bytes of ``weight`` (viewed as ``out x rest``) in CSR: ``value_bytes`` per nonzero value,
    a column index per nonzero (uint16 where the row is at most 65,536 long, else int32), and
    ``rows + 1`` int32 row offsets."""
    rows = weight.shape[0]
    cols = weight.numel() // max(rows, 1)
    nnz = int(torch.count_nonzero(weight))
    index_bytes = 2 if cols <= 65536 else 4
    return nnz * (value_bytes + index_bytes) + 4 * (rows + 1)


def sparse_size_bytes(model: nn.Module, layers: Sequence[str], value_bytes: int = 4) -> int:
    """Bytes of ``model`` with the weights of ``layers`` in CSR (:func:`csr_bytes`) and every
    other parameter and buffer dense (``value_bytes`` each; integer buffers such as BatchNorm's
    batch counter excluded)."""
    sparse = {f"{n}.weight" for n in layers}
    total = 0
    for name, p in model.state_dict().items():
        if name in sparse:
            total += csr_bytes(p, value_bytes)
        elif p.is_floating_point():
            total += p.numel() * value_bytes
    return total
