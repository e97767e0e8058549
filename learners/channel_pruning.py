"""Channel pruning (He et al., ICCV 2017) that physically removes channels.

For every channel group (a producer's output channels plus everything coupled to them) the
layers that READ those channels - the consumers - are what is reconstructed:

1. Features, once per model: input patches ``X`` and the original outputs ``Y`` of every
   consumer, at ``points_per_image`` random spatial positions over a few hundred training
   images, kept only as sufficient statistics (``X^T X``, ``X^T Y``), so memory does not grow
   with the sample count and every later step is a small dense solve.
2. Selection: LASSO on the per-channel contributions ``Z_i = X_i W_i^T``
   (``min_b ||Y - sum_i b_i Z_i||^2 + alpha ||b||_1``), solved over its whole regularisation
   path with LARS on the Gram matrix ``Z^T Z``. The path gives, for every channel count ``c``,
   the largest ``alpha`` at which exactly ``c`` channels survive - what He et al.'s binary
   search on ``alpha`` looks for - for all counts at once. Groups coupled by residual adds
   have several consumers; their normalised Gram matrices are summed, so one index set serves
   them all. ``selection="l1"`` ranks channels by the L1 norm of the consumers' weights.
3. Reconstruction: the kept weights of every consumer are refitted by (ridge-stabilised)
   least squares to reproduce the original outputs from the kept inputs.
4. Removal: Torch-Pruning's pruning functions remove the channels from producers, their
   BatchNorms, depthwise followers and consumers of a copy of the model.

Features come from the original model (as in AMC), so selections are cached per
(group, channel count): a search revisits them for free.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from learners.coupling import CoupledChannels, remove_channels

SELECTIONS: tuple[str, ...] = ("lasso", "l1")


@dataclass
class ConsumerStats:
    """Sufficient statistics of one consumer layer's reconstruction problem.

    ``xtx``/``xty`` are over the columns of the unfolded input (``C * kh * kw``, channel
    major, plus a trailing constant column when the layer has a bias).
    """

    name: str
    weight: torch.Tensor  # original weight, float64, O x C x kh x kw (or O x C)
    bias: torch.Tensor | None
    xtx: torch.Tensor  # D x D, float64
    xty: torch.Tensor  # D x O, float64
    yty: float
    samples: int

    @property
    def kernel_area(self) -> int:
        return int(np.prod(self.weight.shape[2:])) if self.weight.ndim == 4 else 1

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1]

    def columns(self, channels: torch.Tensor) -> torch.Tensor:
        """Unfolded-input columns of the given input channels (+ the bias column)."""
        k = self.kernel_area
        cols = (channels.view(-1, 1) * k + torch.arange(k).view(1, -1)).reshape(-1)
        if self.bias is not None:
            cols = torch.cat([cols, torch.tensor([self.xtx.shape[0] - 1])])
        return cols

    def flat_weight(self) -> torch.Tensor:
        """O x D weight matrix matching the columns of ``xtx`` (bias last)."""
        w = self.weight.reshape(self.weight.shape[0], -1)
        return torch.cat([w, self.bias.view(-1, 1)], 1) if self.bias is not None else w

    def gram(self) -> tuple[torch.Tensor, torch.Tensor]:
        """LASSO Gram matrix ``G_ij = <Z_i, Z_j>`` and ``Z^T y`` over input channels."""
        c, k = self.in_channels, self.kernel_area
        d = c * k
        w = self.weight.reshape(self.weight.shape[0], d)
        g = (self.xtx[:d, :d] * (w.T @ w)).reshape(c, k, c, k).sum((1, 3))
        # Features come from the original model, so y - bias = sum_i Z_i and Z^T y = G 1.
        return g, g.sum(1)

    def error(self, channels: torch.Tensor, weight: torch.Tensor) -> float:
        """Relative squared error ``||Y - X_K W^T||^2 / ||Y||^2`` of a weight on kept columns."""
        cols = self.columns(channels)
        a = self.xtx[cols][:, cols]
        b = self.xty[cols]
        w = weight.to(torch.float64)
        sq = self.yty - 2 * (w * b.T).sum() + (w @ a * w).sum()
        return float(sq / max(self.yty, 1e-12))

    def least_squares(self, channels: torch.Tensor, ridge: float = 1e-4) -> torch.Tensor:
        """Weights on the kept columns that best reproduce the original outputs (O x |cols|)."""
        cols = self.columns(channels)
        a = self.xtx[cols][:, cols]
        lam = ridge * float(a.diagonal().mean().clamp_min(1e-12))
        a = a + lam * torch.eye(len(cols), dtype=a.dtype)
        # Ridge towards the original weights, not towards zero: where samples are few the
        # fit stays near the trained solution instead of shrinking it.
        w0 = self.flat_weight()[:, cols]
        rhs = self.xty[cols] + lam * w0.T
        return torch.cholesky_solve(rhs, torch.linalg.cholesky(a)).T


def _sample_positions(n: int, length: int, points: int, generator: torch.Generator) -> torch.Tensor:
    """``points`` distinct positions out of ``length`` for each of ``n`` images (N x p)."""
    if points >= length:
        return torch.arange(length).expand(n, length)
    return torch.rand(n, length, generator=generator).argsort(1)[:, :points]


@torch.no_grad()
def collect_stats(
    model: nn.Module,
    consumers: Sequence[str],
    batches: Iterable[torch.Tensor],
    *,
    points_per_image: int = 10,
    seed: int = 0,
) -> dict[str, ConsumerStats]:
    """Run ``model`` (eval mode) over ``batches`` of images and accumulate the statistics of
    the reconstruction problem of every layer named in ``consumers``."""
    modules = dict(model.named_modules())
    gen = torch.Generator().manual_seed(seed)
    acc: dict[str, list] = {}
    handles = []

    def hook(module: nn.Module, inputs, output, name: str) -> None:
        x = inputs[0]
        if isinstance(module, nn.Conv2d):
            cols = nn.functional.unfold(
                x, module.kernel_size, module.dilation, module.padding, module.stride
            )  # N x (C k k) x L
            y = output.flatten(2)  # N x O x L
            pos = _sample_positions(x.shape[0], cols.shape[2], points_per_image, gen)
            xs = cols.gather(2, pos.unsqueeze(1).expand(-1, cols.shape[1], -1))
            ys = y.gather(2, pos.unsqueeze(1).expand(-1, y.shape[1], -1))
            xs = xs.transpose(1, 2).reshape(-1, cols.shape[1])
            ys = ys.transpose(1, 2).reshape(-1, y.shape[1])
        else:
            xs, ys = x.reshape(-1, x.shape[-1]), output.reshape(-1, output.shape[-1])
        xs, ys = xs.double(), ys.double()
        if module.bias is not None:
            xs = torch.cat([xs, torch.ones(len(xs), 1, dtype=xs.dtype)], 1)
        if name not in acc:
            acc[name] = [torch.zeros(xs.shape[1], xs.shape[1], dtype=torch.float64),
                         torch.zeros(xs.shape[1], ys.shape[1], dtype=torch.float64), 0.0, 0]
        a = acc[name]
        a[0] += xs.T @ xs
        a[1] += xs.T @ ys
        a[2] += float((ys * ys).sum())
        a[3] += len(xs)

    for name in consumers:
        m = modules[name]
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            raise TypeError(f"consumer {name} is a {type(m).__name__}, not a Conv2d/Linear")
        handles.append(m.register_forward_hook(lambda mod, i, o, name=name: hook(mod, i, o, name)))
    was_training = model.training
    model.eval()
    try:
        for images in batches:
            model(images)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if consumers and not acc:
        raise ValueError("collect_stats got no images: the feature batches were empty")
    stats = {}
    for name in consumers:
        m = modules[name]
        xtx, xty, yty, n = acc[name]
        stats[name] = ConsumerStats(
            name, m.weight.detach().double().clone(),
            None if m.bias is None else m.bias.detach().double().clone(), xtx, xty, yty, n,
        )
    return stats


def lasso_path_selections(gram: torch.Tensor, zty: torch.Tensor, samples: int) -> dict[int, torch.Tensor]:
    """For every channel count ``c``, the channels the LASSO keeps at the largest penalty where
    exactly ``c`` of them are non-zero (computed once over the LARS path).

    Counts the path steps over (two channels entering at one knot) take the ``c`` largest
    coefficients of the first knot with more; ties and channels the path never reached are
    ordered by their contribution energy ``G_ii``.
    """
    from sklearn.linear_model import lars_path_gram

    n = gram.shape[0]
    scale = float(gram.diagonal().mean().clamp_min(1e-30))
    with warnings.catch_warnings():  # degenerate regressors (fewer samples than channels) are expected
        warnings.simplefilter("ignore")
        _, _, coefs = lars_path_gram(
            (zty / scale).numpy(), (gram / scale).numpy(), n_samples=max(samples, n + 1),
            method="lasso", max_iter=8 * n,
        )
    energy = gram.diagonal().numpy()
    counts = np.count_nonzero(coefs, axis=0)
    picks: dict[int, torch.Tensor] = {n: torch.arange(n)}
    for c in range(1, n):
        exact = np.flatnonzero(counts == c)
        if len(exact):
            active = np.flatnonzero(coefs[:, exact[0]])
        else:
            later = np.flatnonzero(counts >= c)
            col = np.abs(coefs[:, later[0] if len(later) else -1])
            active = np.lexsort((-energy, -col))[:c]
        picks[c] = torch.from_numpy(np.sort(active)).long()
    return picks


class ChannelPruner:
    """He et al. channel pruning over a fixed model: select, reconstruct, remove.

    Args:
        model: the trained model (not modified; copies are pruned).
        groups: prunable channel groups (:func:`learners.coupling.coupled_groups`).
        stats: consumer statistics (:func:`collect_stats`) for every consumer of every group;
            needed for ``selection="lasso"`` and for ``reconstruct=True``.
        selection: ``lasso`` (He et al.) or ``l1`` (largest L1 norm of consumer weights).
        reconstruct: refit consumers' kept weights by least squares.
        ridge: relative ridge of the least-squares refit (times the mean diagonal of X^T X).
    """

    def __init__(
        self,
        model: nn.Module,
        groups: Sequence[CoupledChannels],
        stats: dict[str, ConsumerStats] | None = None,
        *,
        selection: str = "lasso",
        reconstruct: bool = True,
        ridge: float = 1e-4,
    ) -> None:
        if selection not in SELECTIONS:
            raise ValueError(f"unknown selection {selection!r}; choose one of {list(SELECTIONS)}")
        self.model = model
        self.groups = list(groups)
        self._modules = dict(model.named_modules())
        # A group is "direct" when every consumer reads its channels one-to-one (no flatten or
        # concat in between); only those get LASSO selection and least-squares refits.
        self.direct = [
            all(self._modules[c].weight.shape[1] == g.channels for c in g.consumers) and bool(g.consumers)
            for g in self.groups
        ]
        needs_stats = selection == "lasso" or reconstruct
        missing = [
            c for g, ok in zip(self.groups, self.direct) if ok and needs_stats
            for c in g.consumers if stats is None or c not in stats
        ]
        if missing:
            raise ValueError(f"statistics missing for consumers {missing[:5]}; run collect_stats first")
        self.stats = stats or {}
        self.selection = selection
        self.reconstruct = reconstruct
        self.ridge = ridge
        self._picks: dict[int, dict[int, torch.Tensor]] = {}

    def _importance_l1(self, gid: int) -> torch.Tensor:
        g = self.groups[gid]
        score = torch.zeros(g.channels, dtype=torch.float64)
        if self.direct[gid]:
            for name in g.consumers:
                w = self._modules[name].weight.detach().double().abs()
                per_channel = w.transpose(0, 1).reshape(w.shape[1], -1).sum(1)
                score += per_channel / per_channel.sum().clamp_min(1e-30)
        else:  # no one-to-one reader to judge by: the producers' filter norms
            for name in g.producers:
                w = self._modules[name].weight.detach().double().abs()
                per = w.reshape(w.shape[0], -1).sum(1)
                score += per / per.sum().clamp_min(1e-30)
        return score

    def select(self, gid: int, keep: int) -> torch.Tensor:
        """Sorted indices of the ``keep`` channels of group ``gid`` to keep."""
        g = self.groups[gid]
        if not 1 <= keep <= g.channels:
            raise ValueError(f"group {gid} has {g.channels} channels; cannot keep {keep}")
        if keep == g.channels:
            return torch.arange(keep)
        if self.selection == "l1" or not self.direct[gid]:
            order = self._importance_l1(gid).argsort(descending=True, stable=True)
            return order[:keep].sort().values
        if gid not in self._picks:
            gram = torch.zeros(g.channels, g.channels, dtype=torch.float64)
            zty = torch.zeros(g.channels, dtype=torch.float64)
            samples = 0
            for name in g.consumers:
                gc, bc = self.stats[name].gram()
                norm = float(bc.sum().clamp_min(1e-30))  # = ||y_c||^2: weigh consumers equally
                gram += gc / norm
                zty += bc / norm
                samples = max(samples, self.stats[name].samples)
            self._picks[gid] = lasso_path_selections(gram, zty, samples)
        return self._picks[gid][keep]

    def consumer_weight(self, name: str, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight (and bias) of consumer ``name`` restricted to the kept input channels,
        refitted by least squares when ``reconstruct`` is on."""
        m = self._modules[name]
        w = m.weight.detach()
        if not self.reconstruct:
            return w[:, kept].clone(), None if m.bias is None else m.bias.detach().clone()
        st = self.stats[name]
        fit = st.least_squares(kept, self.ridge)
        bias = None
        if st.bias is not None:
            fit, bias = fit[:, :-1], fit[:, -1].to(w.dtype)
        shape = (w.shape[0], len(kept), *w.shape[2:])
        return fit.reshape(shape).to(w.dtype), bias

    def prune(self, keep: dict[int, int]) -> tuple[nn.Module, dict[int, torch.Tensor]]:
        """A physically smaller copy of the model keeping ``keep[g]`` channels of group ``g``.

        Returns the pruned model (eval mode) and the kept channel indices of every group.
        """
        kept = {gid: self.select(gid, int(k)) for gid, k in keep.items()}
        pruned = copy.deepcopy(self.model)
        modules = dict(pruned.named_modules())
        with torch.no_grad():
            for gid, idx in kept.items():
                if len(idx) == self.groups[gid].channels or not self.direct[gid]:
                    continue
                for name in self.groups[gid].consumers:
                    w, b = self.consumer_weight(name, idx)
                    full = modules[name].weight
                    full.zero_()
                    full[:, idx] = w
                    if b is not None:
                        modules[name].bias.copy_(b)
        removals = []
        for gid, idx in kept.items():
            mask = torch.ones(self.groups[gid].channels, dtype=torch.bool)
            mask[idx] = False
            removals.append((self.groups[gid], mask.nonzero().flatten().tolist()))
        remove_channels(pruned, removals)
        return pruned.eval(), kept
