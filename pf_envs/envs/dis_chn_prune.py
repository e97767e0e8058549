"""DisChnPrune: discrimination-aware channel pruning (Zhuang et al., NeurIPS 2018; PocketFlow's
``DisChnPrunedLearner``) as a Gymnasium environment.

>>> import gymnasium as gym, pf_envs
>>> env = gym.make("DisChnPrune-ResNet20-v0", flops_budget=0.5, ft_iters=0)   # doctest: +SKIP

Everything but the channel selection is ChannelPrune's (:mod:`pf_envs.envs.channel_prune`):
one step per channel group, the same action, keep-ratio grid, FLOPs budget and clamp, the
same observation, least-squares reconstruction, physical removal and recovery. The channels
a group keeps are chosen by :mod:`learners.dis_chn_pruning`: auxiliary classifiers after
``aux_stages`` evenly spaced points of the network (trained once per env on the frozen
network and cached on disk), then per group a greedy addition of the input channels whose
weights have the largest gradient norm of reconstruction + auxiliary loss. The greedy order
does not depend on the keep ratio, so it is computed once per env (and cached on disk) and
every episode costs what a ChannelPrune episode costs; the price is paid when the env is
built the first time (see ``docs/dis_chn_prune.md`` for the cost of each knob).

Final info: ChannelPrune's, plus ``aux_losses`` (cross-entropy of every auxiliary classifier,
input channels pruned as the candidate's, and of the network's output, on the selection
batch, after recovery), ``aux_losses_original`` (the same for the original network) and
``aux_points`` (the modules the classifiers read).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from learners.channel_pruning import ChannelPruner
from learners.dis_chn_pruning import (
    AuxiliaryHead,
    AuxPoint,
    DiscriminationPruner,
    DiscriminativeSelector,
    GroupOrder,
    find_aux_points,
    train_aux_heads,
)
from pf_envs.cache import cache_key, cached
from pf_envs.envs.channel_prune import SETTINGS as CHANNEL_SETTINGS
from pf_envs.envs.channel_prune import ChannelPruneEnv
from pf_envs.rewards import Measurements
from pf_envs.settings import Setting, bind_settings, table_signature

#: Bumped when the selection's algorithm changes (cached orders are keyed by it).
SELECTION_VERSION = 2

SETTINGS: dict[str, Setting] = {
    **{k: v for k, v in CHANNEL_SETTINGS.items() if k != "selection"},
    "aux_stages": Setting("int", default=3, low=0,
                          doc="auxiliary classifiers (PocketFlow dcp_nb_stages; 0: output loss only)"),
    "aux_images": Setting("int", default=1000, low=2, doc="training images the auxiliary classifiers are trained on"),
    "aux_epochs": Setting("int", default=10, low=1,
                          doc="epochs of auxiliary-classifier training (Adam, on cached features)"),
    "aux_weight": Setting("float", default=1.0, low=0, doc="lambda of L_rec + lambda * L_aux (0: reconstruction only)"),
    "aux_balance": Setting("bool", default=True,
                           doc="scale the auxiliary gradient to the reconstruction gradient's norm first"),
    "select_images": Setting("int", default=64, low=1,
                             doc="training images of the batch the auxiliary loss is taken on"),
    "select_steps": Setting("int", default=8, low=1, doc="gradient evaluations per channel group (at most)"),
    "select_refit": Setting("bool", default=True, doc="least-squares refit of the kept weights between additions"),
    "select_ft_steps": Setting("int", default=0, low=0, doc="Adam steps on L_rec + lambda L_aux between additions"),
}


#: The env's ``__init__`` signature, made from its settings table.
_SIGNATURE = table_signature(SETTINGS)


class DisChnPruneEnv(ChannelPruneEnv):
    """Discrimination-aware channel pruning under a FLOPs budget: ChannelPrune with DCP's
    channel selection.

    Args (ChannelPrune's, without ``selection``; see :class:`ChannelPruneEnv`), plus:
        aux_stages: auxiliary classifiers, at points splitting the weight layers into
            ``aux_stages + 1`` blocks of about equal length (PocketFlow: 3).
        aux_images: training images (fixed subset) whose features train the classifiers.
        aux_epochs: epochs of Adam (lr 0.02, batch 64) over those features.
        aux_weight: ``lambda`` in ``L_rec + lambda * L_aux``.
        aux_balance: at every gradient evaluation, rescale the auxiliary gradient to the
            Frobenius norm of the reconstruction gradient before weighting it (``aux_weight=1``:
            both count equally); False: the plain sum (on ResNet-20 the cross-entropy gradient
            is 2-50x the relative reconstruction error's, so it decides alone).
        select_images: training images (fixed subset) of the batch on which the auxiliary loss
            and its gradient are taken at every evaluation.
        select_steps: gradient evaluations per group: channels are added
            ``max(channel_round, ceil(channels / select_steps))`` at a time (the paper: one).
        select_refit: refit the kept weights by least squares between additions.
        select_ft_steps: Adam steps (lr 1e-3) on ``L_rec + lambda L_aux`` over the kept weights
            between additions (DCP's layer-wise fine-tuning; 0: none).

    Attributes (beyond ChannelPrune's):
        aux_points: the :class:`learners.dis_chn_pruning.AuxPoint` of every classifier.
        heads: the trained classifiers, by point name.
        aux_train_losses: each classifier's training cross-entropy (last epoch).
        group_orders: the :class:`learners.dis_chn_pruning.GroupOrder` of every step's group.
    """

    SETTINGS: ClassVar[dict[str, Setting]] = SETTINGS
    METHOD: ClassVar[str] = "DisChnPrune"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = bind_settings(_SIGNATURE, (self, *args), kwargs)
        super(ChannelPruneEnv, self).__init__(settings, settings["unknown"])

    __init__.__signature__ = _SIGNATURE  # made from SETTINGS: the keywords and their defaults

    # -- the selection -----------------------------------------------------------------------------
    def _needs_stats(self) -> bool:
        return True  # the reconstruction loss is part of the selection

    def _make_pruner(self) -> ChannelPruner:
        s = self.settings
        stats = self._stats() or {}
        layers = [r.name for r in self.table.rows if r.name != self.table.layers.output_layer]
        example = torch.zeros(1, 3, self.input_size, self.input_size)
        self.aux_points: list[AuxPoint] = find_aux_points(
            self.model, example, layers, self.table.out_group, int(s["aux_stages"]))
        self.heads, self.aux_train_losses = self._heads()
        select = self.data.train.subset(int(s["select_images"]), seed=4)
        self._select_batch = next(iter(select.batches(len(select))))
        selector = DiscriminativeSelector(
            self.model, self.table.groups, stats, self.aux_points, self.heads, layers, *self._select_batch,
            aux_weight=float(s["aux_weight"]), balance=bool(s["aux_balance"]), refit=bool(s["select_refit"]),
            ft_steps=int(s["select_ft_steps"]),
        )
        direct = [g for g in self.step_groups if selector.groups[g].consumers
                  and all(c in stats for c in selector.groups[g].consumers)]
        key = cache_key(
            "dcp-orders", version=SELECTION_VERSION, heads=self._heads_key(), groups=direct,
            stats=[self.model_fingerprint, int(s["feature_images"]), int(s["points_per_image"])],
            select=[int(s["select_images"]), int(s["select_steps"]), bool(s["select_refit"]),
                    int(s["select_ft_steps"]), float(s["aux_weight"]), bool(s["aux_balance"])],
            round=self.channel_round,
        )
        def decode(raw: Any) -> list[GroupOrder]:
            if not isinstance(raw, list) or len(raw) != len(direct):
                raise ValueError(f"expected the orders of {len(direct)} groups, found {type(raw).__name__}")
            return [GroupOrder(**d) for d in raw]

        orders = cached(key, lambda: [self._order(selector, g).__dict__ for g in direct],
                        enabled=self.cache_enabled, decode=decode)
        self.group_orders = dict(zip(direct, orders))
        return DiscriminationPruner(
            self.model, self.table.groups, stats, {g: o.order for g, o in self.group_orders.items()},
            reconstruct=bool(s["reconstruct"]),
        )

    def _order(self, selector: DiscriminativeSelector, gid: int) -> GroupOrder:
        c = self.table.groups[gid].channels
        chunk = max(self.channel_round, math.ceil(c / int(self.settings["select_steps"])))
        return selector.order(gid, chunk)

    def _heads_key(self) -> str:
        s = self.settings
        return cache_key(
            "dcp-heads", model=self.model_fingerprint, points=[p.name for p in self.aux_points],
            images=int(s["aux_images"]), epochs=int(s["aux_epochs"]), data=self.data.source,
            size=self.input_size, classes=self.data.num_classes,
        )

    def _heads(self) -> tuple[dict[str, AuxiliaryHead], dict[str, float]]:
        """The auxiliary classifiers, trained once and cached on disk."""
        s = self.settings
        points = self.aux_points

        def train() -> dict[str, Any]:
            split = self.data.train.subset(int(s["aux_images"]), seed=5)
            heads, losses = train_aux_heads(
                self.model, points, split.batches(200), self.data.num_classes, epochs=int(s["aux_epochs"]))
            return {"heads": {n: h.state_dict() for n, h in heads.items()}, "losses": losses}

        def decode(raw: Any) -> tuple[dict[str, AuxiliaryHead], dict[str, float]]:
            heads = {}
            for p in points:
                head = AuxiliaryHead(p.channels, self.data.num_classes)
                head.load_state_dict(raw["heads"][p.name])  # RuntimeError on other shapes
                heads[p.name] = head.eval()
            return heads, {n: float(v) for n, v in raw["losses"].items()}

        return cached(self._heads_key(), train, enabled=self.cache_enabled, decode=decode)

    # -- the episode -------------------------------------------------------------------------------
    def _build_candidate(self) -> nn.Module:
        counts = {g: self._count(t, v) for t, (g, v) in enumerate(zip(self.step_groups, self.applied))}
        pruned, self._kept = self.pruner.prune(counts)
        return pruned

    @torch.no_grad()
    def aux_losses(self, model: nn.Module, kept: dict[int, torch.Tensor] | None = None) -> list[float]:
        """Cross-entropy of every auxiliary classifier (its input channels cut to ``kept``, the
        channels ``model`` keeps of each group) and of ``model``'s output, on the selection batch."""
        images, labels = self._select_batch
        modules = dict(model.named_modules())
        feats: dict[str, torch.Tensor] = {}
        handles = [modules[p.name].register_forward_hook(lambda m, i, o, n=p.name: feats.__setitem__(n, o))
                   for p in self.aux_points]
        model.eval()
        try:
            logits = model(images.to(next(model.parameters()).device)).cpu()
        finally:
            for h in handles:
                h.remove()
        out = []
        for p in self.aux_points:
            head = self.heads[p.name]
            if kept is not None and p.group in kept and len(kept[p.group]) < p.channels:
                head = head.pruned(kept[p.group])
            out.append(float(nn.functional.cross_entropy(head(feats[p.name].cpu()), labels)))
        return out + [float(nn.functional.cross_entropy(logits, labels))]

    def _evaluate(self) -> tuple[Measurements, dict[str, Any]]:
        measured, extra = super()._evaluate()
        if not hasattr(self, "_aux_original"):
            self._aux_original = self.aux_losses(self.model)
        extra.update(
            aux_losses=self.aux_losses(self.compressed_model(), self._kept),
            aux_losses_original=list(self._aux_original),
            aux_points=[p.name for p in self.aux_points] + ["output"],
        )
        return measured, extra
