"""learners/sparsity.py: magnitude masks, layer-wise regression, the cubic re-training schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from learners.sparsity import (
    GradualPruning,
    MaskKeeper,
    apply_masks,
    csr_bytes,
    cubic_sparsity,
    layerwise_regression,
    magnitude_mask,
    magnitude_masks,
    prunable_layers,
    pruned_count,
    sparse_size_bytes,
)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU(),  # depthwise
        nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()


def test_prunable_layers_skip_depthwise():
    assert prunable_layers(small_net()) == ["0", "6", "11"]


@pytest.mark.parametrize("n,s,k", [(100, 0.75, 75), (10, 0.75, 8), (7, 0.0, 0), (7, 1.0, 7), (3, 1 / 3, 1)])
def test_pruned_count_never_keeps_more_than_the_sparsity_allows(n, s, k):
    assert pruned_count(n, s) == k and n - k <= n * (1 - s) + 1e-9
    with pytest.raises(ValueError, match="sparsity"):
        pruned_count(n, 1.5)


def test_magnitude_mask_zeroes_the_smallest_weights():
    w = torch.tensor([[0.5, -0.1, 0.3], [-0.9, 0.05, 0.2]])
    mask = magnitude_mask(w, 0.5)
    assert mask.tolist() == [[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    assert magnitude_mask(w, 0.0).sum() == 6


def test_mask_keeper_keeps_pruned_weights_at_zero():
    net = small_net()
    masks = magnitude_masks(net, {"0": 0.8, "11": 0.5})
    apply_masks(net, masks)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    keep = MaskKeeper(masks)
    net.train()
    for step in range(3):
        loss = nn.functional.cross_entropy(net(torch.randn(8, 3, 8, 8)), torch.randint(0, 10, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        keep(net, step + 1)
    for name, mask in masks.items():
        w = dict(net.named_modules())[name].weight
        assert int(torch.count_nonzero(w)) == int(mask.sum())


def test_layerwise_regression_moves_outputs_towards_the_original():
    original = small_net()
    pruned = small_net()
    masks = magnitude_masks(pruned, {"0": 0.7, "6": 0.7, "11": 0.7})
    apply_masks(pruned, masks)
    images = torch.randn(32, 3, 8, 8)
    errors = layerwise_regression(pruned, original, masks, images, steps=30, lr=1e-2)
    assert set(errors) == set(masks)
    assert all(after < before for before, after in errors.values()), errors
    for name, mask in masks.items():  # the masks held
        assert torch.all(dict(pruned.named_modules())[name].weight[mask == 0] == 0)
    assert layerwise_regression(pruned, original, masks, images, steps=0) == {}


def test_cubic_schedule():
    assert cubic_sparsity(0, 0.9, 10, 50) == 0.0
    assert cubic_sparsity(10, 0.9, 10, 50) == 0.0
    assert cubic_sparsity(30, 0.9, 10, 50) == pytest.approx(0.9 - 0.9 * 0.5**3)
    assert cubic_sparsity(50, 0.9, 10, 50) == 0.9 == cubic_sparsity(99, 0.9, 10, 50)
    values = [cubic_sparsity(t, 0.8, 10, 50) for t in range(0, 60)]
    assert values == sorted(values)  # never decreases


def _train_with(hook: GradualPruning, net: nn.Module, steps: int, seen: list[dict[str, float]]) -> None:
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    net.train()
    gen = torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        x = torch.randn(8, 3, 8, 8, generator=gen)
        loss = nn.functional.cross_entropy(net(x), torch.randint(0, 10, (8,), generator=gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        hook(net, step)
        modules = dict(net.named_modules())
        seen.append({n: 1 - int(torch.count_nonzero(modules[n].weight)) / modules[n].weight.numel()
                     for n in hook.targets})


def test_gradual_pruning_ramps_then_freezes_at_the_targets():
    net = small_net()
    targets = {"0": 0.75, "6": 0.9, "11": 0.5}
    hook = GradualPruning(targets, total_steps=100, update_every=5)
    seen: list[dict[str, float]] = []
    _train_with(hook, net, 100, seen)
    assert all(s == 0.0 for row in seen[:10] for s in row.values())  # dense until t_b = 10
    mid = seen[29]["6"]
    assert 0.0 < mid < 0.9 and mid <= cubic_sparsity(30, 0.9, 10, 50) + 1e-9
    for row in seen[49:]:  # from t_e on: exactly the targets
        for name, s in targets.items():
            n = dict(net.named_modules())[name].weight.numel()
            assert row[name] == pytest.approx(pruned_count(n, s) / n)
    assert hook.frozen and hook.updates == 9  # steps 15, 20, ..., 45 and the freeze at 50


def test_gradual_pruning_lets_pruned_weights_grow_back_before_t_e():
    net = small_net()
    hook = GradualPruning({"6": 0.6}, total_steps=100, update_every=5)
    pruned_sets = []
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    net.train()
    gen = torch.Generator().manual_seed(1)
    for step in range(1, 61):
        x = torch.randn(8, 3, 8, 8, generator=gen)
        loss = nn.functional.cross_entropy(net(x), torch.randint(0, 10, (8,), generator=gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        hook(net, step)
        if hook.masks and step % 5 == 0:
            pruned_sets.append(set(torch.nonzero(hook.masks["6"].flatten() == 0).flatten().tolist()))
    regrown = [len(a - b) for a, b in zip(pruned_sets, pruned_sets[1:])]
    assert sum(regrown) > 0, "no pruned weight ever came back before t_e"


def test_gradual_pruning_checks_its_arguments():
    with pytest.raises(ValueError, match="total_steps"):
        GradualPruning({"a": 0.5}, 0)
    with pytest.raises(ValueError, match="begin < end"):
        GradualPruning({"a": 0.5}, 10, begin=0.6, end=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        GradualPruning({"a": 1.5}, 10)
    with pytest.raises(KeyError, match="no layer"):
        GradualPruning({"nope": 0.5}, 10)(small_net(), 10)


def test_csr_size():
    w = torch.zeros(4, 3, 3, 3)
    w[0, 0, 0, 0] = w[3, 2, 2, 2] = 1.0
    assert csr_bytes(w) == 2 * (4 + 2) + 4 * 5
    net = small_net()
    dense = sum(p.numel() for k, p in net.state_dict().items() if p.is_floating_point()) * 4
    masks = magnitude_masks(net, {"0": 0.9, "6": 0.9, "11": 0.9})
    apply_masks(net, masks)
    size = sparse_size_bytes(net, ["0", "6", "11"])
    assert size < dense
    w6 = net[6].weight
    assert csr_bytes(w6) == int(torch.count_nonzero(w6)) * 6 + 4 * (w6.shape[0] + 1)
    assert math.isclose(size - csr_bytes(net[0].weight) - csr_bytes(w6) - csr_bytes(net[11].weight),
                        dense - 4 * (net[0].weight.numel() + w6.numel() + net[11].weight.numel()))


def test_hooks_see_through_a_data_parallel_wrapper():
    net = small_net()
    wrapped = nn.DataParallel(net)  # names gain a "module." prefix; the hook finds the layers anyway
    hook = GradualPruning({"6": 0.5}, total_steps=2, begin=0.0, end=0.5)
    hook(wrapped, 1)
    assert int(torch.count_nonzero(net[6].weight)) == net[6].weight.numel() // 2
