"""What counts as a compressible layer, shared by the cost tables and every learner."""

from __future__ import annotations

from torch import nn

#: Layers whose weights the compression methods act on (and whose MACs the cost tables count).
COMPRESSIBLE = (nn.Conv2d, nn.Linear)


def is_depthwise(m: nn.Module) -> bool:
    """A conv whose every output channel sees exactly one input channel."""
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
