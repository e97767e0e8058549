"""What counts as a compressible layer, shared by the cost tables and every learner, and which
weights are not finite."""

from __future__ import annotations

import torch
from torch import nn

#: Layers whose weights the compression methods act on (and whose MACs the cost tables count).
COMPRESSIBLE = (nn.Conv2d, nn.Linear)


def is_depthwise(m: nn.Module) -> bool:
    """A conv whose every output channel sees exactly one input channel."""
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def non_finite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``state`` (a state dict) that hold a NaN or an
    infinity."""
    return [
        k for k, v in state.items()
        if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all())
    ]
