"""Discrimination-aware channel selection (Zhuang et al., NeurIPS 2018; PocketFlow's
``DisChnPrunedLearner``), on the channel groups of :mod:`learners.coupling`.

1. Auxiliary classifiers: the network is split into ``stages + 1`` blocks of about equal
   numbers of weight layers; after each of the first ``stages`` blocks an
   :class:`AuxiliaryHead` (BatchNorm -> ReLU -> global average pool -> linear) reads the
   block's output and is trained with cross-entropy on the frozen network's features
   (:func:`train_aux_heads`). The last block's discriminative loss is the network's own.
2. Greedy selection (:class:`DiscriminativeSelector`): for one channel group, every consumer
   (a layer that reads the group's channels) starts with no input channel; repeatedly the
   gradient of ``L = sum_c L_rec,c + lambda * L_aux`` with respect to the consumers'
   weights is taken with the unselected channels' weights at zero (``lambda``: ``aux_weight``,
   by default times the ratio of the two terms' gradient norms, so that ``aux_weight=1``
   weighs them equally), and the channels whose
   gradient has the largest Frobenius norm (summed over the group's consumers: one choice
   serves every layer coupled to the group) are added. ``L_rec,c`` is consumer ``c``'s
   relative reconstruction error ``||Y - X W^T||^2 / ||Y||^2`` of its original outputs
   (exact, from the sufficient statistics of :func:`learners.channel_pruning.collect_stats`);
   ``L_aux`` is the cross-entropy of the first auxiliary classifier after the group's last
   consumer (the network's output when none follows) on a fixed batch of training images,
   the rest of the network unpruned. Between additions the kept weights are refitted by least
   squares (the minimiser of ``L_rec``) and optionally given a few Adam steps on ``L``
   (DCP's layer-wise fine-tuning).
3. The additions do not depend on how many channels will be kept, so one run per group gives
   an ORDER of its channels: keeping ``k`` keeps the first ``k``. The order is computed once
   and serves every keep ratio (:class:`DiscriminationPruner`), which then reconstructs and
   removes channels exactly as :class:`learners.channel_pruning.ChannelPruner` does.

Differences from the paper, for cost: the base network is not fine-tuned with the auxiliary
losses (only the heads are trained), each group is selected on the original network (not on
the network pruned so far), the gradient is taken on one fixed batch, and several channels
may be added per gradient evaluation (``chunk``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from learners.channel_pruning import ChannelPruner, ConsumerStats
from learners.coupling import CoupledChannels

__all__ = [
    "AuxPoint", "AuxiliaryHead", "DiscriminationPruner", "DiscriminativeSelector", "GroupOrder",
    "find_aux_points", "point_features", "train_aux_heads",
]


class AuxiliaryHead(nn.Module):
    """DCP's auxiliary classifier: BatchNorm -> ReLU -> global average pool -> linear.

    ``forward(x, mask)`` multiplies the pooled features by ``mask`` (1 = channel kept): the
    same logits as a head whose input channels were physically removed.
    """

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(x)).mean((2, 3))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        z = self.features(x)
        return self.fc(z if mask is None else z * mask)

    @torch.no_grad()
    def pruned(self, kept: torch.Tensor) -> AuxiliaryHead:
        """A head reading only the ``kept`` input channels."""
        head = AuxiliaryHead(len(kept), self.fc.out_features)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(head.bn, name).copy_(getattr(self.bn, name)[kept])
        head.fc.weight.copy_(self.fc.weight[:, kept])
        head.fc.bias.copy_(self.fc.bias)
        return head.eval()


@dataclass(frozen=True)
class AuxPoint:
    """Where an auxiliary classifier attaches.

    Attributes:
        name: the module whose output the head reads (a block or an activation).
        channels: channels of that output.
        group: the channel group those channels belong to (None: not prunable).
        layers_before: weight layers executed up to and including this module.
    """

    name: str
    channels: int
    group: int | None
    layers_before: int


class _Stop(Exception):
    """Raised by a forward hook to end a forward pass at an auxiliary point."""


def _block_container(model: nn.Module) -> tuple[str, nn.Sequential] | None:
    """The ``nn.Sequential`` with the most children (the network's chain of blocks)."""
    best: tuple[str, nn.Sequential] | None = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Sequential) and (best is None or len(m) > len(best[1])):
            best = (name, m)
    return best


@torch.no_grad()
def find_aux_points(
    model: nn.Module,
    example: torch.Tensor,
    layers: Sequence[str],
    out_group: Mapping[str, int],
    stages: int,
) -> list[AuxPoint]:
    """Split the network into ``stages + 1`` blocks of about equal numbers of weight layers
    (PocketFlow: "evenly divided") and return the ``stages`` points between them.

    Candidate points are the children of the network's longest ``nn.Sequential`` (residual
    blocks, or the activations of a flat chain) that output a 4-D feature map; point ``p`` is
    the candidate whose count of weight layers executed so far is nearest to
    ``p * len(layers) / (stages + 1)``. Fewer points are returned where the network has fewer
    candidates.

    Args:
        model: the network (eval mode; not modified).
        example: one input batch for tracing the execution order.
        layers: names of the prunable weight layers (convs), in execution order; the classifier
            excluded.
        out_group: layer name -> channel group of its output channels.
        stages: number of auxiliary classifiers wanted (``dcp_nb_stages``).
    """
    if stages < 0:
        raise ValueError(f"stages must be >= 0, got {stages}")
    found = _block_container(model)
    if stages == 0 or found is None:
        return []
    prefix, container = found
    modules = dict(model.named_modules())
    weighted = set(layers)
    candidates = {f"{prefix}.{n}" if prefix else n for n, m in container.named_children()
                  if not isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm))}
    events: list[tuple[str, str, int]] = []  # (kind, name, channels) in completion order
    handles = []
    for name in weighted | candidates:
        def hook(mod, inp, out, name=name):
            kind = "layer" if name in weighted else "point"
            channels = out.shape[1] if isinstance(out, torch.Tensor) and out.ndim == 4 else -1
            events.append((kind, name, channels))
        handles.append(modules[name].register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    total = len(layers)
    count, last = 0, None
    options: list[AuxPoint] = []
    for kind, name, channels in events:
        if kind == "layer":
            count += 1
            last = name
        elif channels > 0 and 0 < count < total and last is not None:
            options.append(AuxPoint(name, channels, out_group.get(last), count))
    points: list[AuxPoint] = []
    for p in range(1, stages + 1):
        target = p * total / (stages + 1)
        later = [o for o in options if not points or o.layers_before > points[-1].layers_before]
        if not later:
            break
        points.append(min(later, key=lambda o: (abs(o.layers_before - target), o.layers_before)))
    return points


def _forward_to(
    model: nn.Module, images: torch.Tensor, point: str | None, params: Mapping[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """The output of module ``point`` (the network's output when None), stopping there."""
    if point is None:
        return functional_call(model, dict(params or {}), (images,)) if params else model(images)
    captured: list[torch.Tensor] = []

    def hook(mod, inp, out):
        captured.append(out)
        raise _Stop

    handle = dict(model.named_modules())[point].register_forward_hook(hook)
    try:
        if params:
            functional_call(model, dict(params), (images,))
        else:
            model(images)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"the forward pass never reached {point!r}")
    return captured[0]


@torch.no_grad()
def point_features(
    model: nn.Module, points: Sequence[AuxPoint], batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every point's output (and the labels) over ``batches`` of the frozen network."""
    modules = dict(model.named_modules())
    store: dict[str, list[torch.Tensor]] = {p.name: [] for p in points}
    labels: list[torch.Tensor] = []
    handles = [modules[p.name].register_forward_hook(lambda m, i, o, n=p.name: store[n].append(o.detach().clone()))
               for p in points]
    model.eval()
    try:
        last = points[-1].name if points else None
        for images, y in batches:
            labels.append(y)
            _forward_to(model, images, last)
    finally:
        for h in handles:
            h.remove()
    if not labels:
        raise ValueError("point_features got no images")
    return {n: torch.cat(v) for n, v in store.items()}, torch.cat(labels)


def train_aux_heads(
    model: nn.Module,
    points: Sequence[AuxPoint],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    *,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 0.02,
    seed: int = 0,
) -> tuple[dict[str, AuxiliaryHead], dict[str, float]]:
    """Train one :class:`AuxiliaryHead` per point with cross-entropy (Adam) on the frozen
    network's features of the images in ``batches`` (computed once and held in memory).

    Returns the heads (eval mode) and each head's mean training cross-entropy in its last
    epoch (keyed by point name).
    """
    if not points:
        return {}, {}
    feats, labels = point_features(model, points, batches)
    gen = torch.Generator().manual_seed(seed)
    heads: dict[str, AuxiliaryHead] = {}
    losses: dict[str, float] = {}
    for p in points:
        torch.manual_seed(seed)
        head = AuxiliaryHead(p.channels, num_classes)
        opt = torch.optim.Adam(head.parameters(), lr=lr)
        x = feats[p.name]
        last = float("nan")
        with torch.enable_grad():
            for _ in range(epochs):
                order = torch.randperm(len(x), generator=gen)
                total, n = 0.0, 0
                for start in range(0, len(x), batch_size):
                    idx = order[start : start + batch_size]
                    if len(idx) < 2:  # BatchNorm needs two samples in training mode
                        continue
                    loss = nn.functional.cross_entropy(head(x[idx]), labels[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total, n = total + loss.item() * len(idx), n + len(idx)
                last = total / max(n, 1)
        heads[p.name] = head.eval()
        losses[p.name] = last
    return heads, losses


@dataclass
class GroupOrder:
    """The outcome of the greedy selection of one group.

    Attributes:
        order: every channel of the group, in the order it was added (keep ``k``: the first ``k``).
        counts / rec_losses / aux_losses: at each gradient evaluation, the channels kept so far
            and the losses there (summed relative reconstruction error of the consumers after
            the refit, and the auxiliary cross-entropy); ``aux_scales``: the weight the
            auxiliary gradient had there (``aux_weight``, times the balancing factor).
        point: the auxiliary point whose loss was used (None: the network's output).
    """

    order: torch.Tensor
    counts: list[int]
    rec_losses: list[float]
    aux_losses: list[float]
    aux_scales: list[float]
    point: str | None


class DiscriminativeSelector:
    """Greedy discrimination-aware channel selection over a fixed network (see the module
    docstring).

    Args:
        model: the trained network (frozen, eval mode; not modified).
        groups: channel groups (:func:`learners.coupling.coupled_groups`).
        stats: consumer statistics (:func:`learners.channel_pruning.collect_stats`) of every
            consumer of the groups selected.
        points / heads: auxiliary points (:func:`find_aux_points`) and their trained heads.
        layers: prunable weight layers in execution order (the positions of consumers).
        images / labels: the fixed batch the auxiliary loss is taken on.
        aux_weight: ``lambda`` of ``L_rec + lambda L_aux`` (0: reconstruction only).
        balance: rescale the auxiliary gradient, at every evaluation, to the Frobenius norm of
            the reconstruction gradient before weighting it by ``aux_weight`` (the two losses'
            gradients differ by 2-50x on ResNet-20, cross-entropy larger: unbalanced, any
            ``aux_weight`` near 1 means the auxiliary loss alone).
        refit: least-squares refit of the kept weights between additions.
        ft_steps / ft_lr: Adam steps on ``L`` over the kept weights between additions.
        ridge: relative ridge of the least-squares refit.
    """

    def __init__(
        self,
        model: nn.Module,
        groups: Sequence[CoupledChannels],
        stats: Mapping[str, ConsumerStats],
        points: Sequence[AuxPoint],
        heads: Mapping[str, AuxiliaryHead],
        layers: Sequence[str],
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        aux_weight: float = 1.0,
        balance: bool = True,
        refit: bool = True,
        ft_steps: int = 0,
        ft_lr: float = 1e-3,
        ridge: float = 1e-4,
    ) -> None:
        self.model = model.eval()
        self.groups = list(groups)
        self.stats = stats
        self.points = list(points)
        self.heads = {k: h.eval() for k, h in heads.items()}
        self.position = {n: i + 1 for i, n in enumerate(layers)}
        self.images, self.labels = images, labels
        self.aux_weight, self.balance, self.refit, self.ft_steps, self.ft_lr, self.ridge = (
            float(aux_weight), bool(balance), bool(refit), int(ft_steps), float(ft_lr), ridge)
        self._lam = self.aux_weight
        self._modules = dict(model.named_modules())

    def point_of(self, gid: int) -> AuxPoint | None:
        """The first auxiliary point after every consumer of the group (None: the output)."""
        last = max(self.position.get(c, math.inf) for c in self.groups[gid].consumers)
        return next((p for p in self.points if p.layers_before >= last), None)

    def _losses(
        self, gid: int, point: AuxPoint | None, weights: dict[str, torch.Tensor], mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of relative reconstruction errors, auxiliary cross-entropy) at ``weights``."""
        rec = torch.zeros((), dtype=torch.float64)
        for name, w in weights.items():
            st = self.stats[name]
            flat = w.reshape(w.shape[0], -1).double()
            if st.bias is not None:
                flat = torch.cat([flat, st.bias.view(-1, 1)], 1)
            sq = st.yty - 2 * (flat * st.xty.T).sum() + ((flat @ st.xtx) * flat).sum()
            rec = rec + sq / max(st.yty, 1e-12)
        if self.aux_weight == 0:
            return rec, torch.zeros(())
        params = {f"{n}.weight": w for n, w in weights.items()}
        out = _forward_to(self.model, self.images, point.name if point else None, params)
        if point is not None:
            head_mask = mask if point.group == gid else None
            out = self.heads[point.name](out, head_mask)
        return rec, nn.functional.cross_entropy(out, self.labels)

    def order(self, gid: int, chunk: int = 1) -> GroupOrder:
        """Add the group's channels greedily, ``chunk`` per gradient evaluation."""
        g = self.groups[gid]
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        c = g.channels
        point = self.point_of(gid)
        if point is not None and point.name not in self.heads:
            raise ValueError(f"no auxiliary head for point {point.name!r}")
        originals = {n: self._modules[n].weight.detach() for n in g.consumers}
        kept = torch.zeros(c, dtype=torch.bool)
        current = {n: torch.zeros_like(w) for n, w in originals.items()}
        order: list[int] = []
        trace = GroupOrder(torch.empty(0, dtype=torch.long), [], [], [], [], point.name if point else None)
        while len(order) < c:
            mask = kept.to(torch.float32)
            leaves = {n: w.clone().requires_grad_(True) for n, w in current.items()}
            with torch.enable_grad():
                rec, aux = self._losses(gid, point, leaves, mask)
                g_rec = torch.autograd.grad(rec, list(leaves.values()))
                g_aux = (torch.autograd.grad(aux, list(leaves.values()), allow_unused=True)
                         if aux.requires_grad else [None] * len(leaves))
            g_aux = [torch.zeros_like(r) if a is None else a.double() for r, a in zip(g_rec, g_aux)]
            lam = self.aux_weight
            if self.balance and lam:
                n_aux = math.sqrt(sum(float((a * a).sum()) for a in g_aux))
                n_rec = math.sqrt(sum(float((r * r).sum()) for r in g_rec))
                lam = lam * n_rec / n_aux if n_aux > 0 else 0.0
            self._lam = lam
            trace.counts.append(len(order))
            trace.rec_losses.append(rec.item())
            trace.aux_losses.append(aux.item())
            trace.aux_scales.append(lam)
            score = torch.zeros(c, dtype=torch.float64)
            for r, a in zip(g_rec, g_aux):
                score += (r + lam * a).transpose(0, 1).reshape(c, -1).norm(dim=1)
            score[kept] = -math.inf
            take = min(chunk, c - len(order))
            new = score.argsort(descending=True, stable=True)[:take]
            order += new.tolist()
            kept[new] = True
            if len(order) < c:
                current = self._fit(gid, point, kept, originals, current)
        trace.order = torch.tensor(order, dtype=torch.long)
        return trace

    def _fit(
        self, gid: int, point: AuxPoint | None, kept: torch.Tensor,
        originals: dict[str, torch.Tensor], current: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """The kept weights after the refit (and the optional Adam steps), the rest zero."""
        idx = kept.nonzero().flatten()
        new: dict[str, torch.Tensor] = {}
        for name, w0 in originals.items():
            w = torch.zeros_like(w0)
            if self.refit:
                fit = self.stats[name].least_squares(idx, self.ridge)
                if self.stats[name].bias is not None:
                    fit = fit[:, :-1]
                w[:, idx] = fit.reshape(w0.shape[0], len(idx), *w0.shape[2:]).to(w0.dtype)
            else:
                w[:, idx] = w0[:, idx]
            new[name] = w
        if self.ft_steps:
            mask = kept.to(torch.float32)
            leaves = {n: w.clone().requires_grad_(True) for n, w in new.items()}
            opt = torch.optim.Adam(list(leaves.values()), lr=self.ft_lr)
            shape = lambda w: (1, -1) + (1,) * (w.ndim - 2)  # noqa: E731
            with torch.enable_grad():
                for _ in range(self.ft_steps):
                    masked = {n: w * mask.view(shape(w)) for n, w in leaves.items()}
                    rec, aux = self._losses(gid, point, masked, mask)
                    opt.zero_grad(set_to_none=True)
                    (rec + self._lam * aux.double()).backward()
                    opt.step()
            new = {n: (w * mask.view(shape(w))).detach() for n, w in leaves.items()}
        return new


class DiscriminationPruner(ChannelPruner):
    """:class:`learners.channel_pruning.ChannelPruner` whose selection is a fixed channel order
    per group (from :class:`DiscriminativeSelector`): keeping ``k`` channels keeps the first
    ``k``. Groups without an order (no one-to-one reader) fall back to the L1 ranking.
    Reconstruction and removal are ChannelPruner's."""

    def __init__(
        self,
        model: nn.Module,
        groups: Sequence[CoupledChannels],
        stats: dict[str, ConsumerStats] | None,
        orders: Mapping[int, torch.Tensor],
        *,
        reconstruct: bool = True,
        ridge: float = 1e-4,
    ) -> None:
        super().__init__(model, groups, stats, selection="l1", reconstruct=reconstruct, ridge=ridge)
        for gid, order in orders.items():
            c = self.groups[gid].channels
            if sorted(order.tolist()) != list(range(c)):
                raise ValueError(f"the order of group {gid} is not a permutation of its {c} channels")
        self.orders = dict(orders)

    def select(self, gid: int, keep: int) -> torch.Tensor:
        g = self.groups[gid]
        if gid not in self.orders or not 1 <= keep < g.channels:
            return super().select(gid, keep)
        return self.orders[gid][:keep].sort().values
