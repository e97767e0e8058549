"""Per-layer cost table: what every environment's observation, budget and reward is built from.

One :class:`LayerRow` per compressible layer (conv, depthwise conv, linear) in execution
order, with shapes, MACs and parameters, plus the channel groups that couple layers
(:class:`ChannelGroup`, found with Torch-Pruning's dependency graph): the output channels of
a producer, the depthwise convs that carry them through, residual adds that tie several
producers together, and the consumers whose input channels they are.

MACs are multiply-accumulates (one multiply and one add); a conv's MACs are
``out_h * out_w * out_channels * in_channels / groups * kernel_h * kernel_w``, a linear
layer's ``in_features * out_features``. FLOPs, as torch's FlopCounterMode counts them, are
2 x MACs. BatchNorm, activations, pooling and adds are not counted (as in AMC/PocketFlow).

>>> from pf_envs import zoo, layers
>>> table = layers.cost_table(zoo.create_model("mobilenet_v1"), input_size=32)
>>> print(table)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from learners.coupling import COMPRESSIBLE, CoupledChannels, coupled_groups, is_depthwise


@dataclass(frozen=True)
class LayerRow:
    """One compressible layer.

    Attributes:
        index: position in execution order among compressible layers.
        name: qualified module name (``features.3``).
        kind: ``conv``, ``depthwise`` or ``linear``.
        in_channels / out_channels: channels (features for linear layers).
        kernel: (kh, kw); (1, 1) for linear layers.
        stride: (sh, sw); (1, 1) for linear layers.
        groups: conv groups (1 for linear layers).
        in_hw / out_hw: spatial size of input and output; (1, 1) for linear layers.
        macs: multiply-accumulates for one input sample.
        params: weight + bias elements.
        in_group / out_group: id of the :class:`ChannelGroup` holding this layer's input /
            output channels, or ``None`` where those channels cannot be pruned (the network
            input; the classifier output; layers the dependency graph could not couple).
    """

    index: int
    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    macs: int
    params: int
    in_group: int | None = None
    out_group: int | None = None

    def macs_at(self, keep: Mapping[int, float]) -> float:
        """MACs when each channel group ``g`` keeps the fraction ``keep[g]`` (default 1)."""
        r_out = keep.get(self.out_group, 1.0) if self.out_group is not None else 1.0
        if self.kind == "depthwise":
            return self.macs * r_out
        r_in = keep.get(self.in_group, 1.0) if self.in_group is not None else 1.0
        return self.macs * r_in * r_out


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be removed together (one index set shared by all members).

    Attributes:
        id: position among groups, in execution order of the first producer.
        channels: number of channels in the group.
        producers: layers whose output channels these are (several where a residual add
            ties branches together).
        followers: depthwise convs that carry the channels through unchanged.
        consumers: layers (conv/linear, not depthwise) whose input channels these are; the
            ones whose outputs a pruning method reconstructs.
    """

    id: int
    channels: int
    producers: tuple[str, ...]
    followers: tuple[str, ...]
    consumers: tuple[str, ...]

    @property
    def members(self) -> tuple[str, ...]:
        return self.producers + self.followers + self.consumers


@dataclass
class CostTable:
    """Rows for every compressible layer plus the channel groups that couple them."""

    rows: list[LayerRow]
    groups: list[ChannelGroup]
    input_size: tuple[int, int]
    coupling: list[CoupledChannels] = field(default_factory=list, repr=False)
    _by_name: dict[str, LayerRow] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {r.name: r for r in self.rows}

    def __getitem__(self, name: str) -> LayerRow:
        return self._by_name[name]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def total_macs(self) -> int:
        return sum(r.macs for r in self.rows)

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.rows)

    def macs_at(self, keep: Mapping[int, float]) -> float:
        """Total MACs when group ``g`` keeps the fraction ``keep[g]`` of its channels."""
        return sum(r.macs_at(keep) for r in self.rows)

    def group_macs(self, group_id: int) -> int:
        """MACs of every layer whose input or output channels belong to the group."""
        return sum(r.macs for r in self.rows if group_id in (r.in_group, r.out_group))

    def __str__(self) -> str:
        head = (
            f"{'#':>3} {'name':<28} {'kind':<9} {'in':>5} {'out':>5} {'k':>3} {'s':>2} "
            f"{'in_hw':>7} {'out_hw':>7} {'MACs':>12} {'params':>10} {'g_in':>4} {'g_out':>5}"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.index:>3} {r.name[-28:]:<28} {r.kind:<9} {r.in_channels:>5} {r.out_channels:>5} "
                f"{r.kernel[0]:>3} {r.stride[0]:>2} {'%dx%d' % r.in_hw:>7} {'%dx%d' % r.out_hw:>7} "
                f"{r.macs:>12,} {r.params:>10,} {_g(r.in_group):>4} {_g(r.out_group):>5}"
            )
        lines.append("-" * len(head))
        lines.append(
            f"{len(self.rows)} layers, {self.total_macs:,} MACs ({self.total_macs / 1e6:.2f} M), "
            f"{self.total_params:,} params, {len(self.groups)} channel groups"
        )
        for g in self.groups:
            lines.append(
                f"  group {g.id:>2}: {g.channels:>5} ch  producers={list(g.producers)} "
                f"followers={list(g.followers)} consumers={list(g.consumers)}"
            )
        return "\n".join(lines)


def _g(v: int | None) -> str:
    return "-" if v is None else str(v)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _kind(m: nn.Module) -> str:
    if isinstance(m, nn.Linear):
        return "linear"
    return "depthwise" if is_depthwise(m) else "conv"


@torch.no_grad()
def _trace_shapes(
    model: nn.Module, example: torch.Tensor
) -> tuple[list[tuple[str, nn.Module, tuple, tuple]], str | None]:
    """Run one forward pass, recording (name, module, input shape, output shape) in order."""
    seen: list[tuple[str, nn.Module, tuple, tuple]] = []
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, COMPRESSIBLE):
            def hook(mod, inp, out, name=name):
                seen.append((name, mod, tuple(inp[0].shape), tuple(out.shape)))
                outputs[name] = out
            handles.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        final = model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out_layer = None
    if isinstance(final, torch.Tensor):
        for name, t in outputs.items():
            if t.data_ptr() == final.data_ptr() and t.shape == final.shape:
                out_layer = name
    if out_layer is None and seen:
        out_layer = seen[-1][0]
    return seen, out_layer


def _row(index: int, name: str, m: nn.Module, in_shape: tuple, out_shape: tuple) -> LayerRow:
    params = sum(p.numel() for p in m.parameters(recurse=False))
    if isinstance(m, nn.Linear):
        tokens = 1
        for d in out_shape[1:-1]:
            tokens *= d
        return LayerRow(
            index, name, "linear", m.in_features, m.out_features, (1, 1), (1, 1), 1,
            (1, 1), (1, 1), m.in_features * m.out_features * tokens, params,
        )
    kh, kw = _pair(m.kernel_size)
    oh, ow = out_shape[2], out_shape[3]
    macs = oh * ow * m.out_channels * (m.in_channels // m.groups) * kh * kw
    return LayerRow(
        index, name, _kind(m), m.in_channels, m.out_channels, (kh, kw), _pair(m.stride),
        m.groups, (in_shape[2], in_shape[3]), (oh, ow), macs, params,
    )


def cost_table(
    model: nn.Module,
    input_size: int | tuple[int, int] = 32,
    *,
    with_groups: bool = True,
    in_channels: int = 3,
) -> CostTable:
    """Build the cost table of ``model`` for a ``in_channels x input_size`` input.

    Args:
        model: any module whose compressible layers are ``nn.Conv2d`` / ``nn.Linear``.
        input_size: input height and width (int or pair).
        with_groups: also find channel groups (Torch-Pruning's dependency graph; slower).
        in_channels: input image channels.
    """
    hw = _pair(input_size)
    param = next(model.parameters())
    example = torch.randn(1, in_channels, *hw, device=param.device, dtype=param.dtype)
    traced, output_layer = _trace_shapes(model, example)
    rows: list[LayerRow] = []
    seen_modules: set[int] = set()
    for name, m, in_shape, out_shape in traced:
        if id(m) in seen_modules:
            raise ValueError(
                f"layer {name} runs more than once per forward pass; shared layers are not supported"
            )
        seen_modules.add(id(m))
        rows.append(_row(len(rows), name, m, in_shape, out_shape))
    groups: list[ChannelGroup] = []
    coupling: list[CoupledChannels] = []
    if with_groups:
        ignored = [output_layer] if output_layer else []
        coupling = coupled_groups(model, example, ignored=ignored, order=[r.name for r in rows])
        groups = [
            ChannelGroup(i, g.channels, g.producers, g.followers, g.consumers)
            for i, g in enumerate(coupling)
        ]
        out_of = {n: g.id for g in groups for n in g.producers + g.followers}
        in_of = {n: g.id for g in groups for n in g.consumers + g.followers}
        rows = [
            LayerRow(**{**r.__dict__, "in_group": in_of.get(r.name), "out_group": out_of.get(r.name)})
            for r in rows
        ]
    return CostTable(rows, groups, hw, coupling)


def count_macs(model: nn.Module, input_size: int | tuple[int, int] = 32) -> int:
    """Total conv + linear MACs of ``model`` for one sample (no coupling analysis)."""
    return cost_table(model, input_size, with_groups=False).total_macs
