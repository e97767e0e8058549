"""Weight and activation quantization of conv / linear layers: uniform and codebook (k-means).

Two weight quantizers, both per layer, both trained with the layer in the loop:

* **uniform** (Jacob et al. 2018): ``2^bits`` evenly spaced levels between each output
  channel's min and max weight (zero exactly representable), straight-through gradients:
  :class:`torch.ao.quantization.FakeQuantize` with a per-channel min/max observer of the
  current weights (:func:`uniform_weight_quantizer`);
* **codebook** (Han et al. 2016, "Deep Compression"): ``2^bits`` shared values per layer
  (k-means on the layer's weights, scikit-learn, quantile initialisation), every weight the
  index of its nearest value; the codebook is a parameter whose gradient is the sum of the
  gradients of the weights that share each value (:class:`Codebook`).

Activations (a layer's input) are quantized per tensor, uniform affine, with a moving-average
min/max observer that learns only in training mode (fine-tuning, BatchNorm re-estimation) and
is frozen for evaluation (:func:`activation_quantizer`).

:func:`quantize_model` swaps the chosen ``nn.Conv2d`` / ``nn.Linear`` layers of a copy for
:class:`QuantConv2d` / :class:`QuantLinear`, which keep their quantizers as sub-modules: the
quantized model trains, saves (``state_dict``) and loads like any other module.

>>> from learners.quantization import LayerQuant, quantize_model
>>> qmodel = quantize_model(model, {"features.0": LayerQuant(weight_bits=4, act_bits=8)})  # doctest: +SKIP

Plain PyTorch and scikit-learn: nothing here knows about Gymnasium.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver
from torch.nn import functional as F

#: Quantizer kinds of :class:`LayerQuant`.
WEIGHT_MODES = ("uniform", "codebook")
#: Bit-widths the quantizers take: PyTorch's 8-bit fake-quantize dtypes hold at most 2^8 levels.
MIN_BITS, MAX_BITS = 1, 8
#: Weights sampled per layer to fit a codebook (k-means on all of a 1M-weight layer costs
#: seconds; on this sample tens of milliseconds, and the centroids of 1-D data barely move).
KMEANS_SAMPLE = 20_000


def _check_bits(bits: int, what: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{what} must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    return int(bits)


def uniform_weight_quantizer(bits: int) -> FakeQuantize:
    """Per-output-channel uniform affine fake quantization of a weight tensor to ``bits``:
    each channel's range is its current min and max (the observer averages with constant 1,
    i.e. takes the newest weights), straight-through gradients inside the range."""
    bits = _check_bits(bits, "weight bits")
    return FakeQuantize(
        observer=MovingAveragePerChannelMinMaxObserver, quant_min=0, quant_max=2**bits - 1,
        dtype=torch.quint8, qscheme=torch.per_channel_affine, ch_axis=0, averaging_constant=1.0,
    )


class ActivationQuantizer(nn.Module):
    """Per-tensor uniform affine fake quantization of a layer's input to ``bits``.

    The range is a moving average of each batch's min/max (PyTorch's
    :class:`~torch.ao.quantization.MovingAverageMinMaxObserver`, constant 0.01), updated only
    in training mode; in eval mode it is frozen. :meth:`set_range` starts it from known values
    (e.g. the original model's activation ranges) so that a fresh quantized model evaluates
    sensibly before any training pass.
    """

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = _check_bits(bits, "activation bits")
        self.fake_quant = FakeQuantize(
            observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=2**self.bits - 1,
            dtype=torch.quint8, qscheme=torch.per_tensor_affine,
        )

    @torch.no_grad()
    def set_range(self, low: float, high: float) -> None:
        """Start the observer at ``[low, high]`` and derive the scale and zero point from it."""
        obs = self.fake_quant.activation_post_process
        obs.min_val.copy_(torch.tensor(float(low)))
        obs.max_val.copy_(torch.tensor(float(high)))
        scale, zero_point = obs.calculate_qparams()
        self.fake_quant.scale.resize_(scale.shape).copy_(scale)
        self.fake_quant.zero_point.resize_(zero_point.shape).copy_(zero_point)

    @property
    def calibrated(self) -> bool:
        """Whether the range has been set (by :meth:`set_range` or a training-mode batch)."""
        return bool(torch.isfinite(self.fake_quant.activation_post_process.min_val).item())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.fake_quant.enable_observer()
        else:
            self.fake_quant.disable_observer()
            if not self.calibrated:
                raise RuntimeError(
                    "an activation quantizer was used in eval mode before its range was set: run training-mode "
                    "batches through the model (fine-tuning or BatchNorm re-estimation) or call set_range() first"
                )
        if torch.is_grad_enabled():
            return self.fake_quant(x)  # fine-tuning: PyTorch's kernel, with its straight-through mask
        if self.training:  # BatchNorm re-estimation: the observer learns, as in FakeQuantize.forward
            fq = self.fake_quant
            fq.activation_post_process(x.detach())
            scale, zero_point = fq.calculate_qparams()
            fq.scale.resize_(scale.shape).copy_(scale)
            fq.zero_point.resize_(zero_point.shape).copy_(zero_point)
        return self._fake_quant_inference(x)

    def _fake_quant_inference(self, x: torch.Tensor) -> torch.Tensor:
        """The same values as ``self.fake_quant(x)`` without its gradient mask: PyTorch's
        ``fake_quantize_per_tensor_affine`` kernel also writes the straight-through mask, and
        costs 113 ms on a 200x16x32x32 activation on one core against 26 ms here
        (docs/quantization.md); in-place ops on one new tensor, the kernel's formula
        ``(clamp(round(x / scale) + zp, qmin, qmax) - zp) * scale``, round half to even."""
        fq = self.fake_quant
        if not fq.fake_quant_enabled[0]:
            return x
        scale = fq.scale.to(x.dtype)
        zp = fq.zero_point.to(x.dtype)
        y = x * (1.0 / scale)
        y.round_().add_(zp).clamp_(fq.quant_min, fq.quant_max).sub_(zp).mul_(scale)
        return y

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def fit_codebook(weights: torch.Tensor | np.ndarray, bits: int, *, seed: int = 0,
                 sample: int = KMEANS_SAMPLE) -> np.ndarray:
    """The ``2^bits`` shared values (ascending) of a layer's weights: scikit-learn's k-means
    (one run, Lloyd) started from the weights' quantiles, fitted on at most ``sample`` of them
    drawn with ``seed``. A layer with fewer distinct weights than values gets them all."""
    from sklearn.cluster import KMeans

    bits = _check_bits(bits, "codebook bits")
    w = np.asarray(weights.detach().cpu().numpy() if isinstance(weights, torch.Tensor) else weights,
                   np.float64).reshape(-1)
    if w.size == 0 or not np.all(np.isfinite(w)):
        raise ValueError("fit_codebook needs a non-empty tensor of finite weights")
    distinct = np.unique(w)
    k = 2**bits
    if len(distinct) <= k:
        return distinct.astype(np.float32)
    if w.size > sample:
        w = np.random.default_rng(seed).choice(w, sample, replace=False)
    init = np.quantile(w, (np.arange(k) + 0.5) / k).reshape(-1, 1)
    init = np.unique(init, axis=0)
    if len(init) < k:  # repeated quantiles (many equal weights): spread the rest linearly
        extra = np.linspace(w.min(), w.max(), k - len(init) + 2)[1:-1].reshape(-1, 1)
        init = np.unique(np.vstack([init, extra]), axis=0)
    km = KMeans(n_clusters=len(init), init=init, n_init=1, max_iter=100, tol=1e-6, random_state=seed)
    km.fit(w.reshape(-1, 1))
    return np.sort(km.cluster_centers_.reshape(-1)).astype(np.float32)


def assign(weights: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """The index of the nearest value of ``centroids`` (ascending) for every weight."""
    c = centroids.detach().reshape(-1)
    if c.numel() == 1:
        return torch.zeros_like(weights, dtype=torch.long)
    mids = (c[1:] + c[:-1]) / 2
    return torch.bucketize(weights.detach().reshape(-1), mids).reshape(weights.shape)


class Codebook(nn.Module):
    """A layer's weights as ``centroids[indices]`` (Han et al.): ``centroids`` (the shared
    values) is the trainable parameter, each receiving the summed gradient of its weights;
    ``indices`` (one per weight, the smallest unsigned integer type that holds them) are fixed.

    Args:
        centroids: the shared values, ascending (:func:`fit_codebook`).
        indices: the value of each weight (its shape is the weight's).
    """

    def __init__(self, centroids: torch.Tensor, indices: torch.Tensor) -> None:
        super().__init__()
        centroids = torch.as_tensor(centroids, dtype=torch.float32).reshape(-1)
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= centroids.numel()):
            raise ValueError(f"codebook indices must be in [0, {centroids.numel()})")
        self.centroids = nn.Parameter(centroids.clone())
        dtype = torch.uint8 if centroids.numel() <= 256 else torch.int32
        self.register_buffer("indices", indices.to(dtype))

    @classmethod
    def fit(cls, weight: torch.Tensor, bits: int, *, seed: int = 0,
            centroids: np.ndarray | None = None) -> Codebook:
        """The codebook of ``weight`` at ``bits`` (``centroids``: reuse values already fitted)."""
        values = fit_codebook(weight, bits, seed=seed) if centroids is None else np.asarray(centroids, np.float32)
        c = torch.from_numpy(values)
        return cls(c, assign(weight, c))

    @property
    def bits(self) -> int:
        """Bits per index (``ceil(log2(number of values))``, at least 1)."""
        return max(1, math.ceil(math.log2(self.centroids.numel())))

    def forward(self) -> torch.Tensor:
        return self.centroids[self.indices.long()]

    def extra_repr(self) -> str:
        return f"values={self.centroids.numel()}, weights={self.indices.numel()}"


@dataclass(frozen=True)
class LayerQuant:
    """How one layer is quantized.

    Attributes:
        weight_bits: bits per weight (uniform levels or codebook index), 1..8.
        act_bits: bits of the layer's input, 1..8, or None (not quantized).
        weight_mode: ``uniform`` or ``codebook``.
    """

    weight_bits: int
    act_bits: int | None = 8
    weight_mode: str = "uniform"

    def __post_init__(self) -> None:
        _check_bits(self.weight_bits, "weight_bits")
        if self.act_bits is not None:
            _check_bits(self.act_bits, "act_bits")
        if self.weight_mode not in WEIGHT_MODES:
            raise ValueError(f"weight_mode must be one of {list(WEIGHT_MODES)}, got {self.weight_mode!r}")


class _QuantMixin:
    """Shared by :class:`QuantConv2d` and :class:`QuantLinear`: the weight and input quantizers."""

    weight_quantizer: nn.Module | None
    codebook: Codebook | None
    act_quantizer: nn.Module

    def _init_quant(self, spec: LayerQuant, codebook_values: np.ndarray | None, seed: int) -> None:
        self.spec = spec
        self.act_quantizer = ActivationQuantizer(spec.act_bits) if spec.act_bits is not None else nn.Identity()
        if spec.weight_mode == "uniform":
            self.weight_quantizer = uniform_weight_quantizer(spec.weight_bits)
            self.codebook = None
            with torch.no_grad():  # sizes the per-channel buffers, so that state dicts load into a fresh copy
                self.weight_quantizer(self.weight)
        else:
            self.weight_quantizer = None
            self.codebook = Codebook.fit(self.weight.detach(), spec.weight_bits, seed=seed, centroids=codebook_values)
            del self.weight  # the codebook holds the weights now (no stale float copy to train or save)

    def quantized_weight(self) -> torch.Tensor:
        """The weights the layer computes with (differentiable)."""
        if self.codebook is not None:
            return self.codebook()
        return self.weight_quantizer(self.weight)

    def weight_storage_bits(self) -> int:
        """Bits that store the layer's quantized weights: the weights at their bit-width plus,
        per output channel, a 32-bit scale and a 32-bit zero point (uniform), or the codebook's
        32-bit values (codebook). Biases are not included."""
        if self.codebook is not None:
            return self.codebook.indices.numel() * self.spec.weight_bits + 32 * self.codebook.centroids.numel()
        w = self.weight
        return w.numel() * self.spec.weight_bits + 64 * w.shape[0]


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """An ``nn.Conv2d`` that quantizes its input and its weights on every forward pass."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, spec: LayerQuant, *, codebook_values: np.ndarray | None = None,
                   seed: int = 0) -> QuantConv2d:
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            q.weight.copy_(conv.weight)
            if conv.bias is not None:
                q.bias.copy_(conv.bias)
        q.train(conv.training)
        q._init_quant(spec, codebook_values, seed)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.act_quantizer(x), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", quant={self.spec}"


class QuantLinear(_QuantMixin, nn.Linear):
    """An ``nn.Linear`` that quantizes its input and its weights on every forward pass."""

    @classmethod
    def from_float(cls, linear: nn.Linear, spec: LayerQuant, *, codebook_values: np.ndarray | None = None,
                   seed: int = 0) -> QuantLinear:
        q = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            q.weight.copy_(linear.weight)
            if linear.bias is not None:
                q.bias.copy_(linear.bias)
        q.train(linear.training)
        q._init_quant(spec, codebook_values, seed)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.act_quantizer(x), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", quant={self.spec}"


QUANT_LAYERS = (QuantConv2d, QuantLinear)


def quantize_model(
    model: nn.Module,
    specs: Mapping[str, LayerQuant],
    *,
    act_ranges: Mapping[str, tuple[float, float]] | None = None,
    codebooks: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
) -> nn.Module:
    """A copy of ``model`` whose layers named in ``specs`` (conv or linear) are quantized.

    Args:
        specs: layer name -> :class:`LayerQuant`.
        act_ranges: layer name -> (min, max) of its input, to start the activation quantizers
            from (e.g. :func:`activation_ranges` of the original model); layers without one
            calibrate on the first training-mode batch.
        codebooks: layer name -> codebook values already fitted (codebook layers; the others
            are fitted here with ``seed``).

    Raises:
        KeyError / TypeError: a name that is not a conv or linear layer of ``model``.
    """
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    for name, spec in specs.items():
        if name not in modules:
            raise KeyError(f"quantize_model: {name!r} is not a layer of the model")
        layer = modules[name]
        values = (codebooks or {}).get(name)
        if isinstance(layer, nn.Conv2d) and not isinstance(layer, QUANT_LAYERS):
            q = QuantConv2d.from_float(layer, spec, codebook_values=values, seed=seed)
        elif isinstance(layer, nn.Linear) and not isinstance(layer, QUANT_LAYERS):
            q = QuantLinear.from_float(layer, spec, codebook_values=values, seed=seed)
        else:
            raise TypeError(f"quantize_model: {name!r} is a {type(layer).__name__}, not an unquantized "
                            "nn.Conv2d or nn.Linear")
        if act_ranges and name in act_ranges and isinstance(q.act_quantizer, ActivationQuantizer):
            q.act_quantizer.set_range(*act_ranges[name])
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else out, child, q)
    return out


@torch.no_grad()
def activation_ranges(model: nn.Module, names: list[str], batches) -> dict[str, tuple[float, float]]:
    """The min and max of each named layer's input over ``batches`` (image tensors or
    ``(images, labels)`` pairs), the model in eval mode (it is not modified)."""
    modules = dict(model.named_modules())
    lo: dict[str, float] = {n: math.inf for n in names}
    hi: dict[str, float] = {n: -math.inf for n in names}
    handles = []
    for n in names:
        def hook(mod, inp, out, n=n):
            lo[n] = min(lo[n], float(inp[0].min()))
            hi[n] = max(hi[n], float(inp[0].max()))
        handles.append(modules[n].register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        for b in batches:
            model(b[0] if isinstance(b, (tuple, list)) else b)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [n for n in names if not math.isfinite(lo[n])]
    if missing:
        raise ValueError(f"activation_ranges: layers {missing} did not run on the batches")
    return {n: (lo[n], hi[n]) for n in names}


def storage_bytes(model: nn.Module) -> int:
    """Bytes that store ``model``: every quantized layer's weights at their bits plus scales
    and zero points, or indices plus codebook (:meth:`QuantConv2d.weight_storage_bits`);
    every other parameter (biases, BatchNorm, unquantized layers) at 32 bits."""
    bits = 0
    counted: set[int] = set()
    for m in model.modules():
        if isinstance(m, QUANT_LAYERS):
            bits += m.weight_storage_bits()
            counted.update(id(p) for p in (m.weight_quantizer.parameters() if m.weight_quantizer else ()))
            if m.codebook is not None:
                counted.add(id(m.codebook.centroids))
            else:
                counted.add(id(m.weight))
    bits += 32 * sum(p.numel() for p in model.parameters() if id(p) not in counted)
    return math.ceil(bits / 8)
