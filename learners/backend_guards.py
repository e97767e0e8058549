"""Work-arounds for bugs of PyTorch's CPU kernels that compressed models run into.

Channel pruning makes layer shapes that trained networks never have. One of them crashes
PyTorch's oneDNN (mkldnn) CPU backend: the weight gradient of a 1x1 convolution with stride > 1
and 2 to 7 input channels, when its input is channels-last (the layout the data pipeline
hands out, for faster CPU convolutions), corrupts the heap. The process dies with "free():
invalid next size", "double free or corruption" or a segmentation fault, at that backward
pass or at a later free. Measured with torch 2.14.1 on an AVX2 x86 CPU. Crashing shapes:
``Conv2d(4, 16, 1, stride=2)`` on 64 x 4 x 32 x 32, and also 2, 6 or 7 input channels and
8 or 32 outputs. These do not crash: 1 or >= 8 input channels, stride 1, 3x3 kernels, an NCHW
input, and inference without gradients. ResNet shortcut convolutions are such layers once the
residual width is pruned to a quarter. Fine-tuning a ResNet-20 pruned that far crashed in its
first step.

:func:`guard_strided_pointwise` gives each such convolution an NCHW-contiguous input (a
forward pre-hook; numerically the same). Every training loop of the project calls it on the
model it trains.
"""

from __future__ import annotations

import torch
from torch import nn

#: Input channels of a strided 1x1 convolution for which the oneDNN bug was seen (2..7).
AFFECTED_IN_CHANNELS = range(2, 8)
_FLAG = "_pf_nchw_input_guard"


def needs_guard(module: nn.Module) -> bool:
    """A 1x1 ``nn.Conv2d`` with a stride above 1 and 2..7 input channels (see the module docs)."""
    return (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and max(module.stride) > 1
            and module.in_channels in AFFECTED_IN_CHANNELS)


def _nchw_input(module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    if isinstance(x, torch.Tensor) and x.dim() == 4 and not x.is_contiguous():
        return (x.contiguous(), *args[1:])
    return args


def guard_strided_pointwise(model: nn.Module) -> int:
    """Give every convolution of ``model`` that :func:`needs_guard` an NCHW-contiguous input
    (a forward pre-hook, registered once per module). Returns how many convolutions are guarded."""
    count = 0
    for m in model.modules():
        if needs_guard(m):
            if not getattr(m, _FLAG, False):
                m.register_forward_pre_hook(_nchw_input)
                setattr(m, _FLAG, True)
            count += 1
    return count
