"""Per-layer cost table: what every environment's observation, budget and reward is built from.

One :class:`LayerRow` per compressible layer (conv, depthwise conv, linear) in execution
order, with shapes, MACs and parameters. The channel groups that couple layers (and the MACs
of a model under per-group keep ratios) belong to the channel method:
:func:`pf_envs.envs.channel_prune.channel_table`.

MACs are multiply-accumulates (one multiply and one add); a conv's MACs are
``out_h * out_w * out_channels * in_channels / groups * kernel_h * kernel_w``, a linear
layer's ``in_features * out_features``. FLOPs, as torch's FlopCounterMode counts them, are
2 x MACs. BatchNorm, activations, pooling and adds are not counted (as in AMC/PocketFlow).

>>> from pf_envs import zoo, layers
>>> table = layers.cost_table(zoo.create_model("mobilenet_v1"), input_size=32)
>>> table.total_macs
46354432
>>> print(table)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from learners.modules import COMPRESSIBLE, is_depthwise


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


@dataclass
class CostTable:
    """Rows for every compressible layer of a model, for one input size.

    Attributes:
        rows: one :class:`LayerRow` per layer, in execution order.
        input_size: (height, width) of the input the table was traced with.
        output_layer: the layer whose output is the model's output (the classifier), if found.
        in_channels: input image channels.
    """

    rows: list[LayerRow]
    input_size: tuple[int, int]
    output_layer: str | None = None
    in_channels: int = 3
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

    def row_lines(self, extra: dict[str, tuple[str, str]] | None = None) -> list[str]:
        """The table as text lines; ``extra[name]`` adds two columns to a row (g_in, g_out)."""
        head = (
            f"{'#':>3} {'name':<28} {'kind':<9} {'in':>5} {'out':>5} {'k':>3} {'s':>2} "
            f"{'in_hw':>7} {'out_hw':>7} {'MACs':>12} {'params':>10}" + (f" {'g_in':>4} {'g_out':>5}" if extra else "")
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            cols = f" {extra[r.name][0]:>4} {extra[r.name][1]:>5}" if extra else ""
            lines.append(
                f"{r.index:>3} {r.name[-28:]:<28} {r.kind:<9} {r.in_channels:>5} {r.out_channels:>5} "
                f"{r.kernel[0]:>3} {r.stride[0]:>2} {'%dx%d' % r.in_hw:>7} {'%dx%d' % r.out_hw:>7} "
                f"{r.macs:>12,} {r.params:>10,}{cols}"
            )
        lines.append("-" * len(head))
        lines.append(
            f"{len(self.rows)} layers, {self.total_macs:,} MACs ({self.total_macs / 1e6:.2f} M), "
            f"{self.total_params:,} params"
        )
        return lines

    def __str__(self) -> str:
        return "\n".join(self.row_lines())


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
    in_channels: int = 3,
) -> CostTable:
    """Build the per-layer cost table of ``model`` for a ``in_channels x input_size`` input
    (one forward pass; the model is not modified)."""
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
    return CostTable(rows, hw, output_layer, in_channels)


def count_macs(model: nn.Module, input_size: int | tuple[int, int] = 32) -> int:
    """Total conv + linear MACs of ``model`` for one sample."""
    return cost_table(model, input_size).total_macs
