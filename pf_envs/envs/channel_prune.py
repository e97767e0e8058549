"""ChannelPrune: He et al. channel pruning as a Gymnasium environment (AMC / PocketFlow).

>>> import gymnasium as gym, pf_envs
>>> env = gym.make("ChannelPrune-ResNet20-v0", flops_budget=0.5, ft_iters=0)
>>> obs, info = env.reset(seed=0)
>>> while True:
...     obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
...     if terminated:
...         break
>>> info["accuracy"], info["flops_ratio"]  # doctest: +SKIP

One step per prunable channel group (a layer's output channels with everything coupled to
them). The action in ``[-1, 1]`` maps linearly to a keep ratio in ``[min_keep, 1]``; the
ratio is capped so that the FLOPs budget stays reachable with every later group at its
minimum (AMC's clamp), rounded to a multiple of ``channel_round`` channels, and applied.
After the last step the candidate is pruned physically (LASSO selection + least-squares
reconstruction), fine-tuned for ``ft_iters`` SGD steps, its BatchNorm statistics are
re-estimated, and its accuracy on ``reward_samples`` images of the held-out ``val`` split is
the reward (or a function of it: ``reward=``).

Observation (11 values in [0, 1], AMC's layer embedding): step index, output channels of the
layer that reads the group, the group's channels, input height and width, stride, kernel
size, MACs touched by the group (all min-max normalised over the steps), MACs removed so far
and MACs of later groups (fractions of the total), and the previous applied keep ratio.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from learners.channel_pruning import SELECTIONS, ChannelPruner, ConsumerStats, collect_stats
from learners.coupling import CoupledChannels, LeftOutChannels, coupled_groups
from pf_envs.budget import UnitSpace
from pf_envs.cache import cache_key, cached, decode_names
from pf_envs.layers import CostTable, LayerRow, cost_table
from pf_envs.model_env import COMMON_SETTINGS, ModelCompressionEnv
from pf_envs.settings import Setting, bind_settings, table_signature

OBSERVATION_FEATURES: tuple[str, ...] = (
    "step", "out_channels", "channels", "in_h", "in_w", "stride", "kernel", "group_macs",
    "reduced", "rest", "prev_keep_ratio",
)

SETTINGS: dict[str, Setting] = {
    **COMMON_SETTINGS,
    "flops_budget": Setting("float", default=0.5, low=0, high=1, low_open=True,
                            doc="fraction of the original MACs the compressed model may keep"),
    "min_keep": Setting("float", default=0.2, low=0, high=1, low_open=True, doc="smallest keep ratio of any group"),
    "channel_round": Setting("int", default=None, low=1, optional=True,
                             doc="kept channel counts are multiples of this"),
    "selection": Setting("choice", default="lasso", choices=tuple(SELECTIONS), doc="channel selection: lasso or l1"),
    "reconstruct": Setting("bool", default=True, doc="refit the reading layers by least squares"),
    "feature_images": Setting("int", default=1000, low=1, doc="training images sampled for selection/reconstruction"),
    "points_per_image": Setting("int", default=10, low=1, doc="spatial points per image sampled"),
}


@dataclass
class ChannelTable:
    """The channel method's cost table: the model's layers (:class:`pf_envs.layers.CostTable`),
    the channel groups that couple them (:class:`learners.coupling.CoupledChannels`, found with
    Torch-Pruning's dependency graph: a producer's output channels, the depthwise convs that
    carry them through, residual adds that tie several producers together, and the consumers
    whose input channels they are), and the model's MACs under per-group keep ratios.

    Attributes:
        layers: the per-layer table.
        groups: the channel groups, in execution order of their first producer (group ``g`` is
            ``groups[g]``).
        in_group / out_group: layer name -> the group holding its input / output channels
            (absent where those channels cannot be pruned: the network input, the classifier
            output, layers the dependency graph could not couple).
        left_out: channel groups that are not prunable although a layer produces them (a
            grouped, non-depthwise convolution among their members), with the layers that
            keep those channels and why.
    """

    layers: CostTable
    groups: list[CoupledChannels]
    in_group: dict[str, int]
    out_group: dict[str, int]
    left_out: list[LeftOutChannels] = field(default_factory=list)

    def left_out_text(self) -> str:
        """One clause per left-out group: ``conv1, conv2 keep all their 16 channels: ...``
        (empty when every produced channel is in a prunable group)."""
        return "; ".join(f"{', '.join(g.layers)} keep {g.channels} channels: {g.reason}" for g in self.left_out)

    def __post_init__(self) -> None:
        # (macs, input group, output group, depthwise) per layer: macs_at runs in every clamp
        self._terms = [(r.macs, self.in_group.get(r.name), self.out_group.get(r.name), r.kind == "depthwise")
                       for r in self.layers.rows]

    @property
    def rows(self) -> list[LayerRow]:
        return self.layers.rows

    def __getitem__(self, name: str) -> LayerRow:
        return self.layers[name]

    @property
    def total_macs(self) -> int:
        return self.layers.total_macs

    def macs_at(self, keep: Mapping[int, float]) -> float:
        """Total MACs when group ``g`` keeps the fraction ``keep[g]`` of its channels (default 1):
        a layer's MACs scale with the kept fraction of its output channels and, unless it is
        depthwise, of its input channels (exact for physical pruning)."""
        total = 0.0
        for macs, g_in, g_out, depthwise in self._terms:
            r_out = keep.get(g_out, 1.0) if g_out is not None else 1.0
            if depthwise:
                total += macs * r_out
            else:
                total += macs * (keep.get(g_in, 1.0) if g_in is not None else 1.0) * r_out
        return total

    def group_macs(self, group_id: int) -> int:
        """MACs of every layer whose input or output channels belong to the group."""
        return sum(r.macs for r in self.rows if group_id in (self.in_group.get(r.name), self.out_group.get(r.name)))

    def __str__(self) -> str:
        def g(v: int | None) -> str:
            return "-" if v is None else str(v)

        extra = {r.name: (g(self.in_group.get(r.name)), g(self.out_group.get(r.name))) for r in self.rows}
        lines = self.layers.row_lines(extra)
        lines[-1] += f", {len(self.groups)} channel groups"
        for i, grp in enumerate(self.groups):
            lines.append(f"  group {i:>2}: {grp.channels:>5} ch  producers={list(grp.producers)} "
                         f"followers={list(grp.followers)} consumers={list(grp.consumers)}")
        for left in self.left_out:
            lines.append(f"  left out: {left.channels:>5} ch  layers={list(left.layers)}: {left.reason}")
        return "\n".join(lines)


def channel_table(model: nn.Module, input_size: int | tuple[int, int] = 32, *, in_channels: int = 3) -> ChannelTable:
    """The :class:`ChannelTable` of ``model`` (the model is not modified).

    >>> from pf_envs import zoo
    >>> print(channel_table(zoo.create_model("mobilenet_v1"), 32))  # doctest: +SKIP
    """
    layers = cost_table(model, input_size, in_channels=in_channels)
    param = next(model.parameters())
    example = torch.randn(1, in_channels, *layers.input_size, device=param.device, dtype=param.dtype)
    ignored = [layers.output_layer] if layers.output_layer else []
    left_out: list[LeftOutChannels] = []
    groups = coupled_groups(model, example, ignored=ignored, order=[r.name for r in layers.rows], left_out=left_out)
    out_of = {n: i for i, grp in enumerate(groups) for n in grp.producers + grp.followers}
    in_of = {n: i for i, grp in enumerate(groups) for n in grp.consumers + grp.followers}
    position = {r.name: r.index for r in layers.rows}
    left_out.sort(key=lambda g: [position.get(n, len(position)) for n in g.layers])
    return ChannelTable(layers, groups, in_of, out_of, left_out)


class ChannelMACs:
    """MACs of the model when step ``t``'s channel group keeps the fraction ``values[t]``
    (groups that are not steps keep everything): a :class:`pf_envs.budget.Cost`."""

    name = "macs"
    increasing = True

    def __init__(self, table: ChannelTable, step_groups: Sequence[int]) -> None:
        self.table, self.step_groups = table, list(step_groups)
        self.reference = float(table.total_macs)

    def __call__(self, values: Sequence[float]) -> float:
        return self.table.macs_at(dict(zip(self.step_groups, values)))


#: The env's ``__init__`` signature, made from its settings table.
_SIGNATURE = table_signature(SETTINGS)


class ChannelPruneEnv(ModelCompressionEnv):
    """Channel pruning under a FLOPs budget.

    Args:
        model: a zoo name (``mobilenet_v1``, ``resnet20``, ...) or your own ``nn.Module``
            (trained; conv/linear layers; it is copied, never modified).
        dataset: ``cifar10`` or ``imagenet``.
        checkpoint: state-dict file for a zoo model (default: the shipped checkpoint).
        data_root: dataset folder (default: ``$PF_DATA_DIR``, then the cache folder).
        input_size: input height/width: must be the data's (32 or 224); leave it unset.
        flops_budget: fraction of the original MACs the compressed model may keep, in (0, 1].
        min_keep: smallest keep ratio of any group, in (0, 1] (AMC: 0.2).
        channel_round: kept channel counts are multiples of this (default: the zoo's, 8 for
            MobileNets, 4 for CIFAR ResNets; 8 for custom models).
        selection: ``lasso`` (He et al.) or ``l1`` (L1 norm of the reading layer's weights).
        reconstruct: refit the reading layers by least squares (He et al.); ``False`` keeps
            the original weights of the kept channels.
        ft_iters: SGD iterations of fast fine-tuning before scoring (0 = AMC-style,
            reconstruction and BN re-estimation only).
        ft_batch_size / ft_lr: fine-tuning batch size and initial learning rate (cosine to 0;
            default: the zoo's for the model, 0.001 for MobileNet-V1, 0.01 for the others and
            for custom models).
        reward: reward name (see ``pf_envs.rewards.REWARDS``): ``accuracy`` (default),
            ``acc_log_flops`` (AMC), ``pocketflow_flops``, ``accuracy_drop`` (HAQ).
        reward_split: split the reward is measured on: ``val`` (held out from training;
            default) or ``test`` (final reports only).
        reward_samples: images of that split used (a fixed subset; default 5,000).
        bn_batches / bn_batch_size: training batches used to re-estimate BatchNorm statistics.
        bn_augment: re-estimate them on augmented training images (default), the images the
            base model's own statistics were collected on during training; on plain images the
            statistics no longer match what the trained layers expect (the shipped CIFAR-10
            MobileNet-V1 loses 2.9 points of test accuracy that way with nothing pruned; once
            pruned and reconstructed the difference is small: 0.0-0.4 under uniform 30-50%).
        feature_images / points_per_image: training images and spatial points per image
            sampled for channel selection and reconstruction.
        device: ``cpu`` (default), ``cuda`` (falls back to CPU when unavailable) or ``auto``.
        cache: keep layer statistics and the baseline accuracy on disk (``PF_CACHE_DIR``).

    Attributes (beyond :class:`pf_envs.model_env.ModelCompressionEnv`'s):
        table: the :class:`ChannelTable` (layers, channel groups, MACs).
        step_groups: the channel group of each step.
        model_fingerprint: SHA-1 prefix of the original model's weights; the search harness
            records it so that a run is never resumed against other weights.
        recovery_fingerprint: SHA-1 prefix of every setting that decides the reward (all
            kwargs as resolved, defaults included, and ``RECOVERY_VERSION``); the harness
            records it so that a run is never resumed with another recovery, e.g. after a
            default changed.
        accuracy_original: the original model's accuracy on the reward split.
    """

    SETTINGS: ClassVar[dict[str, Setting]] = SETTINGS
    METHOD: ClassVar[str] = "ChannelPrune"
    STATIC_FEATURES: ClassVar[tuple[str, ...]] = OBSERVATION_FEATURES[:8]
    DYNAMIC_FEATURES: ClassVar[tuple[str, ...]] = OBSERVATION_FEATURES[8:]
    budget_kwarg: ClassVar[str] = "flops_budget"
    floor_kwarg: ClassVar[str] = "min_keep"
    ratio_key: ClassVar[str | None] = "flops_ratio"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = bind_settings(_SIGNATURE, (self, *args), kwargs)
        settings["__class__"] = ChannelPruneEnv  # what this signature's locals() held: fingerprints unchanged
        super().__init__(settings, settings["unknown"])

    __init__.__signature__ = _SIGNATURE  # made from SETTINGS: the keywords and their defaults

    # -- the method ------------------------------------------------------------------------------
    def _setup_method(self) -> None:
        s = self.settings
        self.min_keep = float(s["min_keep"])
        self.flops_budget = float(s["flops_budget"])
        round_default = self.spec.channel_round if self.spec is not None else 8
        self.channel_round = int(s["channel_round"] if s["channel_round"] is not None else round_default)
        self.table = channel_table(self.model, self.input_size)
        if self.table.left_out:
            warnings.warn(f"{type(self).__name__}: {self.model_name} has channels left out of every prunable "
                          f"group, which no policy can prune: {self.table.left_out_text()}", stacklevel=4)
        self.step_groups = [i for i, g in enumerate(self.table.groups) if g.channels > self.channel_round]
        if not self.step_groups:
            raise ValueError(f"{self.model_name} has no prunable channel group (every group has at most "
                             f"channel_round={self.channel_round} channels)")
        self.min_counts = {g: self._min_count(g) for g in self.step_groups}
        spaces = [self._space(g) for g in self.step_groups]
        static = [self._static_row(i, g) for i, g in enumerate(self.step_groups)]
        self._setup_budget(spaces, ChannelMACs(self.table, self.step_groups), self.flops_budget, static)
        self.pruner = self._make_pruner()

    def _unreachable_note(self) -> str:
        if not self.table.left_out:
            return ""
        return f" (channels left out of every prunable group are always kept: {self.table.left_out_text()})"

    def _make_pruner(self) -> ChannelPruner:
        """The pruner that selects, reconstructs and removes channels: the seam where a method
        that differs only in its channel selection (DisChnPrune) supplies its own."""
        s = self.settings
        return ChannelPruner(
            self.model, self.table.groups, self._stats(),
            selection=s["selection"], reconstruct=bool(s["reconstruct"]),
        )

    def _needs_stats(self) -> bool:
        """Whether the consumer statistics are used (LASSO selection or reconstruction)."""
        s = self.settings
        return s["selection"] == "lasso" or bool(s["reconstruct"])

    def _resolved_settings(self) -> dict[str, Any]:
        return {"channel_round": self.channel_round}

    def _min_count(self, gid: int) -> int:
        c, r = self.table.groups[gid].channels, self.channel_round
        return min(c, max(r, math.ceil(self.min_keep * c / r) * r))

    def _space(self, gid: int) -> UnitSpace:
        """Keep ratios of a group: ``min_keep`` .. 1, counts on multiples of ``channel_round``
        from the smallest allowed count, plus the whole group."""
        c, r, lo = self.table.groups[gid].channels, self.channel_round, self.min_counts[gid]
        counts = sorted({lo, c} | {k for k in range(r, c + 1, r) if k >= lo})
        return UnitSpace(self.min_keep, 1.0, tuple(k / c for k in counts))

    def _stats(self) -> dict[str, ConsumerStats] | None:
        """Consumer statistics for LASSO selection and reconstruction (cached on disk)."""
        s = self.settings
        direct = [  # groups whose readers see the channels one-to-one (no flatten in between)
            g for g in self.table.groups if all(self.table[c].in_channels == g.channels for c in g.consumers)
        ]
        consumers = sorted({c for g in direct for c in g.consumers})
        if not (self._needs_stats() and consumers):
            return None
        key = cache_key(
            "chnprune-stats", model=self.model_fingerprint, consumers=consumers, images=int(s["feature_images"]),
            points=int(s["points_per_image"]), data=self.data.source, size=self.input_size,
        )
        feature_split = self.data.train.subset(int(s["feature_images"]), seed=1)
        return cached(
            key,
            lambda: {
                n: st.__dict__ for n, st in collect_stats(
                    self.model, consumers, (x for x, _ in feature_split.batches(100)),
                    points_per_image=int(s["points_per_image"]), seed=0,
                ).items()
            },
            enabled=self.cache_enabled,
            decode=lambda raw: {n: ConsumerStats(**d) for n, d in decode_names(raw, consumers).items()},
        )

    def _static_row(self, t: int, gid: int) -> list[float]:
        group = self.table.groups[gid]
        reader = self.table[group.consumers[0] if group.consumers else group.producers[0]]
        return [
            t, reader.out_channels, group.channels, reader.in_hw[0], reader.in_hw[1],
            reader.stride[0], reader.kernel[0], self.table.group_macs(gid),
        ]

    # -- core hooks --------------------------------------------------------------------------------
    def _round(self, t: int, value: float) -> float:
        """The nearest multiple of ``channel_round`` channels (at least the group's minimum);
        above the last multiple of a group that has no whole number of them, the nearer of that
        multiple and the whole group."""
        gid = self.step_groups[t]
        c, r = self.table.groups[gid].channels, self.channel_round
        count = int(round(value * c / r)) * r
        top, x = (c // r) * r, value * c
        if top < c and x > top:  # e.g. 18 channels on a grid of 8: 16 or 18, whichever is nearer
            count = c if c - x < x - top else top
        return min(c, max(self.min_counts[gid], count)) / c

    def _count(self, t: int, value: float) -> int:
        return int(round(value * self.table.groups[self.step_groups[t]].channels))

    def _unit_info(self, t: int, applied: float) -> dict[str, Any]:
        gid = self.step_groups[t]
        return {"group": gid, "keep_count": self._count(t, applied), "channels": self.table.groups[gid].channels}

    def _later_cost(self, t: int) -> float:
        """AMC's ``rest``: the MACs of every layer that touches a later step's group."""
        later = set(self.step_groups[t + 1 :])
        return float(sum(r.macs for r in self.table.rows
                         if {self.table.in_group.get(r.name), self.table.out_group.get(r.name)} & later))

    def _policy_info(self) -> dict[str, Any]:
        return {
            "keep_ratios": list(self.applied),
            "keep_counts": [self._count(t, v) for t, v in enumerate(self.applied)],
            "flops_budget": self.flops_budget,
        }

    def _build_candidate(self) -> nn.Module:
        counts = {g: self._count(t, v) for t, (g, v) in enumerate(zip(self.step_groups, self.applied))}
        pruned, _ = self.pruner.prune(counts)
        return pruned

    def _candidate_macs(self, candidate: nn.Module) -> float:
        return float(self.cost(self.applied))  # exact for physical pruning (tests/test_layers.py)

    @property
    def total_macs(self) -> float:
        return float(self.table.total_macs)
