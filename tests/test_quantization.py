"""The quantizers of learners/quantization.py: uniform fake quantization, codebooks, the layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from learners.quantization import (
    ActivationQuantizer,
    Codebook,
    LayerQuant,
    QuantConv2d,
    QuantLinear,
    activation_ranges,
    assign,
    fit_codebook,
    quantize_model,
    storage_bytes,
    uniform_weight_quantizer,
)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_uniform_weights_have_at_most_2_to_the_bits_levels_per_channel(bits):
    torch.manual_seed(bits)
    w = torch.randn(6, 4, 3, 3)
    q = uniform_weight_quantizer(bits)(w)
    for c in range(6):
        levels = torch.unique(q[c])
        assert len(levels) <= 2**bits
        steps = torch.diff(levels)  # evenly spaced: every gap a multiple of the channel's step
        if len(steps):
            ratio = steps / steps.min()
            assert torch.allclose(ratio, ratio.round(), atol=1e-3)
        # the channel's range is kept within one step (zero point nudged to an integer)
        step = (w[c].max() - torch.clamp(w[c].min(), max=0)) / (2**bits - 1)
        assert (q[c] - w[c]).abs().max() <= step * 1.0001


def test_uniform_error_shrinks_with_bits_and_gradients_pass_straight_through():
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    errors = [(uniform_weight_quantizer(b)(w) - w).pow(2).mean().item() for b in range(2, 9)]
    assert all(a > b for a, b in zip(errors, errors[1:]))
    w.requires_grad_(True)
    g = torch.randn(16, 32)
    (uniform_weight_quantizer(4)(w) * g).sum().backward()
    assert torch.equal(w.grad, g)  # every weight is inside its channel's range: identity gradient


def test_activation_quantizer_learns_its_range_in_training_only_and_fast_path_matches():
    a = ActivationQuantizer(4)
    with pytest.raises(RuntimeError, match="range"):
        a.eval()(torch.ones(3))
    a.train()(torch.linspace(0, 6, 100))
    assert a.calibrated
    obs = a.fake_quant.activation_post_process
    lo, hi = float(obs.min_val), float(obs.max_val)
    a.eval()
    x = torch.randn(2, 4, 8, 8) * 10
    with torch.no_grad():
        fast = a(x)
    assert torch.equal(fast, a.fake_quant(x))  # the inference path gives the kernel's values exactly
    assert (float(obs.min_val), float(obs.max_val)) == (lo, hi)  # frozen in eval mode
    assert len(torch.unique(fast)) <= 16 and fast.max() <= hi + 1e-5


def test_fit_codebook_is_kmeans_better_than_linear_levels():
    rng = np.random.default_rng(0)
    w = rng.standard_normal(5000).astype(np.float32)
    c = fit_codebook(w, 3)
    assert len(c) == 8 and np.all(np.diff(c) > 0)
    kmeans_err = np.min((w[:, None] - c[None]) ** 2, axis=1).mean()
    linear = np.linspace(w.min(), w.max(), 8)
    linear_err = np.min((w[:, None] - linear[None]) ** 2, axis=1).mean()
    assert kmeans_err < linear_err
    assert np.array_equal(fit_codebook(np.array([0.5, -1.0, 0.5, 2.0]), 4), np.array([-1.0, 0.5, 2.0], np.float32))
    with pytest.raises(ValueError, match="finite"):
        fit_codebook(np.array([np.nan, 1.0]), 2)
    with pytest.raises(ValueError, match=r"\[1, 8\]"):
        fit_codebook(w, 9)


def test_codebook_gradient_is_the_sum_of_its_weights_gradients():
    torch.manual_seed(0)
    w = torch.randn(4, 5)
    book = Codebook.fit(w, 2)
    assert torch.equal(book.indices.long(), assign(w, book.centroids))
    assert torch.allclose(book(), book.centroids.detach()[book.indices.long()])
    g = torch.randn(4, 5)
    (book() * g).sum().backward()
    expected = torch.zeros(4).scatter_add_(0, book.indices.long().reshape(-1), g.reshape(-1))
    assert torch.allclose(book.centroids.grad, expected)


@pytest.mark.parametrize("mode", ["uniform", "codebook"])
def test_quantize_model_layers_train_save_and_load(mode):
    model = _net()
    specs = {"0": LayerQuant(4, 8, mode), "3": LayerQuant(2, 8, mode), "8": LayerQuant(3, None, mode)}
    x = torch.randn(8, 3, 16, 16)
    ranges = activation_ranges(model, list(specs), [x])
    q = quantize_model(model, specs, act_ranges=ranges)
    assert isinstance(q[0], QuantConv2d) and isinstance(q[8], QuantLinear) and isinstance(model[0], nn.Conv2d)
    assert isinstance(q[8].act_quantizer, nn.Identity)
    q.train()
    loss = nn.functional.cross_entropy(q(x), torch.arange(8))
    loss.backward()
    trained = [p for p in q.parameters() if p.grad is not None]
    assert len(trained) == len(list(q.parameters()))
    q.eval()
    with torch.no_grad():
        out = q(x)
        for name, spec in specs.items():
            w = q.get_submodule(name).quantized_weight()
            per = w.reshape(1, -1) if mode == "codebook" else w.reshape(w.shape[0], -1)
            assert max(len(torch.unique(row)) for row in per) <= 2**spec.weight_bits
    fresh = quantize_model(model, specs)
    fresh.load_state_dict(q.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), out)
    if mode == "codebook":
        assert "0.weight" not in q.state_dict() and "0.codebook.centroids" in q.state_dict()


def test_storage_bytes_counts_bits_scales_and_codebooks():
    model = _net()
    fp32 = storage_bytes(model)
    assert fp32 == 4 * sum(p.numel() for p in model.parameters())
    uni = quantize_model(model, {"0": LayerQuant(4, 8)})
    other = sum(p.numel() for p in model.parameters()) - 216
    assert storage_bytes(uni) == (216 * 4 + 64 * 8 + 32 * other + 7) // 8
    book = quantize_model(model, {"0": LayerQuant(2, 8, "codebook")})
    assert storage_bytes(book) == (216 * 2 + 32 * 4 + 32 * other + 7) // 8


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="weight_bits"):
        LayerQuant(0)
    with pytest.raises(ValueError, match="act_bits"):
        LayerQuant(4, 16)
    with pytest.raises(ValueError, match="weight_mode"):
        LayerQuant(4, 8, "log")
    with pytest.raises(KeyError, match="not a layer"):
        quantize_model(_net(), {"features.9": LayerQuant(4)})
    with pytest.raises(TypeError, match="BatchNorm2d"):
        quantize_model(_net(), {"1": LayerQuant(4)})
