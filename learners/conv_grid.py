"""Isolated convolution timings over channel counts, fp32 and int8, in ONNX Runtime.

ONNX Runtime's CPU kernels are not smooth in the channel counts: on this project's x86 host
(AVX512-VNNI, ORT 1.32, one thread) an fp32 3x3 convolution at 16x16 pixels takes the same time
for 12 and 16 input channels (MLAS's NCHWc layout pads channels to blocks of 8), and its int8
version (QDQ, u8s8) is *faster* with 16 output channels than with 8 or 12 (24.4 / 27.6 /
30.8 us) and with 32 than with 28 (28.8 / 36.5 us). A latency table interpolated between
uniform widths (:mod:`pf_envs.envs.prune_quant`) misses that: two layers with the same MACs
but other counts differ by tens of percent. :func:`conv_grid_ms` measures a set of
convolution shapes, each as a two-node graph (``Conv`` + ``Relu``, the graph input has the
convolution's input channels), in interleaved rounds (a burst of load slows every shape a
little, not one a lot), and keeps each one's minimum.

>>> shapes = [ConvShape(3, 1, 1, False, 16, 16, cin, cout) for cin in (8, 16) for cout in (8, 16)]
>>> times = conv_grid_ms(shapes, options={"activation_type": "uint8", "reduce_range": True})  # doctest: +SKIP
>>> times[shapes[0]]                                                        # doctest: +SKIP
(0.0186, 0.0276)                                                            # (fp32 ms, int8 ms)

No gymnasium here.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from learners import onnx_export as ox
from learners import ort_int8 as oq
from learners.ort_latency import interleaved_end_to_end


@dataclass(frozen=True, order=True)
class ConvShape:
    """One convolution: kernel, stride, padding (square), depthwise or not, input height and
    width, input and output channels (a depthwise shape has ``cin == cout``)."""

    kernel: int
    stride: int
    padding: int
    depthwise: bool
    height: int
    width: int
    cin: int
    cout: int

    def __post_init__(self) -> None:
        if min(self.kernel, self.stride, self.height, self.width, self.cin, self.cout) < 1 or self.padding < 0:
            raise ValueError(f"{self}: sizes must be >= 1 and padding >= 0")
        if self.depthwise and self.cin != self.cout:
            raise ValueError(f"{self}: a depthwise convolution has as many output channels as input channels")

    def key(self) -> str:
        """A stable text form (JSON keys, cache records)."""
        return (f"k{self.kernel}s{self.stride}p{self.padding}{'dw' if self.depthwise else ''}"
                f"-{self.height}x{self.width}-{self.cin}-{self.cout}")

    def module(self) -> nn.Module:
        """The timed graph: ``Conv2d`` (with bias, as a folded BatchNorm leaves it) + ``ReLU``."""
        conv = nn.Conv2d(self.cin, self.cout, self.kernel, self.stride, self.padding,
                         groups=self.cin if self.depthwise else 1)
        return nn.Sequential(conv, nn.ReLU()).eval()


def conv_of(module: nn.Conv2d, height: int, width: int, cin: int | None = None, cout: int | None = None) -> ConvShape:
    """The :class:`ConvShape` of a ``Conv2d`` layer seen at ``height`` x ``width`` input pixels,
    with ``cin`` / ``cout`` channels instead of its own (a pruned variant of it).

    Raises:
        ValueError: grouped convolutions other than depthwise, non-square kernels, strides or
            paddings (the zoo has none).
    """
    depthwise = module.groups > 1
    if depthwise and module.groups != module.in_channels:
        raise ValueError(f"{module}: grouped convolutions other than depthwise are not timed")
    k, s, p = module.kernel_size, module.stride, module.padding
    if isinstance(p, str) or len({*k}) != 1 or len({*s}) != 1 or len({*p}) != 1:
        raise ValueError(f"{module}: only square kernels, strides and paddings are timed")
    cin = int(cin if cin is not None else module.in_channels)
    cout = int(cout if cout is not None else module.out_channels)
    if depthwise:
        cin = cout
    return ConvShape(int(k[0]), int(s[0]), int(p[0]), depthwise, int(height), int(width), cin, cout)


def conv_grid_ms(
    shapes: Sequence[ConvShape],
    *,
    options: Mapping[str, Any] | None = None,
    runs: int = 50,
    rounds: int = 5,
    threads: int = 1,
    chunk: int = 200,
    progress: Callable[[int, int], None] | None = None,
) -> dict[ConvShape, tuple[float, float]]:
    """``{shape: (fp32 ms, int8 ms)}``: each shape exported, pre-processed, quantized by ORT's
    static quantizer (QDQ, ``options`` as :func:`learners.ort_int8.quantize_int8` takes them;
    ranges from random images, which do not change the time) and both graphs timed at batch 1,
    ``runs`` runs each in ``rounds`` interleaved rounds (``chunk`` shapes at a time), the
    minimum kept. ``progress(done, total)`` is called after each chunk."""
    todo = sorted(set(shapes))
    out: dict[ConvShape, tuple[float, float]] = {}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="pf-conv-grid-") as tmp:
        for start in range(0, len(todo), max(1, int(chunk))):
            part = todo[start : start + max(1, int(chunk))]
            paths: dict[str, Path] = {}
            for j, shape in enumerate(part):
                folder = Path(tmp) / f"c{start + j}"
                folder.mkdir()
                with torch.no_grad():
                    fp32 = ox.export_onnx(shape.module(), folder / "m.onnx", input_size=(shape.height, shape.width),
                                          channels=shape.cin)
                prep = oq.preprocess(fp32, folder / "m.prep.onnx")
                x = rng.standard_normal((2, shape.cin, shape.height, shape.width)).astype(np.float32)
                ranges = oq.calibrate(prep, [x])
                int8 = oq.quantize_int8(prep, folder / "m.int8.onnx", ranges, **dict(options or {}))
                paths[f"{j}-fp32"], paths[f"{j}-int8"] = prep, int8
            timed = interleaved_end_to_end(paths, runs=runs, rounds=rounds, threads=threads)
            for j, shape in enumerate(part):
                out[shape] = (timed[f"{j}-fp32"].min_ms, timed[f"{j}-int8"].min_ms)
            if progress is not None:
                progress(min(start + len(part), len(todo)), len(todo))
    return out
