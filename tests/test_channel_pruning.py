"""The channel-pruning learner (no Gymnasium): selection, reconstruction, physical removal."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from learners.channel_pruning import ChannelPruner, collect_stats, lasso_path_selections
from learners.coupling import coupled_groups, remove_channels
from pf_envs import zoo
from pf_envs.envs.channel_prune import channel_table
from pf_envs.layers import count_macs


@pytest.fixture(scope="module")
def resnet(cifar, checkpoints):
    path = checkpoints("resnet20")
    model = zoo.load("resnet20", checkpoint=path)
    table = channel_table(model, 32)
    consumers = sorted({c for g in table.groups for c in g.consumers})
    images = (x for x, _ in cifar.train.subset(128, seed=1).batches(64))
    stats = collect_stats(model, consumers, images, points_per_image=8, seed=0)
    return model, table, stats


def test_stats_shapes(resnet):
    _, table, stats = resnet
    s = stats["layers.4.conv1"]
    assert s.xtx.shape == (32 * 9, 32 * 9) and s.xty.shape == (32 * 9, 32) and s.samples == 128 * 8
    fc = stats["classifier"]  # linear with bias: a trailing constant column
    assert fc.xtx.shape == (65, 65) and fc.samples == 128


def test_least_squares_beats_plain_selection(resnet):
    model, table, stats = resnet
    pruner = ChannelPruner(model, table.groups, stats, selection="lasso")
    for gid in (4, 8):
        name = table.groups[gid].consumers[0]
        st = stats[name]
        kept = pruner.select(gid, table.groups[gid].channels // 2)
        plain = st.error(kept, st.flat_weight()[:, st.columns(kept)])
        refit = st.error(kept, st.least_squares(kept))
        assert refit < plain
        assert st.error(torch.arange(st.in_channels), st.flat_weight()) < 1e-6  # nothing removed


def test_lasso_selects_exact_counts(resnet):
    model, table, stats = resnet
    pruner = ChannelPruner(model, table.groups, stats, selection="lasso")
    for gid, group in enumerate(table.groups):
        for keep in (1, group.channels // 4, group.channels // 2, group.channels - 1, group.channels):
            idx = pruner.select(gid, keep)
            assert len(idx) == keep and len(set(idx.tolist())) == keep
            assert idx.min() >= 0 and idx.max() < group.channels


def test_lasso_path_prefers_dominant_channels():
    torch.manual_seed(0)
    x = torch.randn(2000, 6, dtype=torch.float64)
    w = torch.tensor([[5.0, 0.01, 3.0, 0.02, 0.0, 1.0]], dtype=torch.float64)
    z = x * w  # contributions of each channel to one output
    gram = z.T @ z
    picks = lasso_path_selections(gram, gram.sum(1), 2000)
    assert picks[1].tolist() == [0] and picks[2].tolist() == [0, 2] and picks[3].tolist() == [0, 2, 5]


@pytest.mark.parametrize("selection,reconstruct", [("lasso", True), ("l1", False), ("l1", True)])
def test_prune_is_physical_and_macs_match(resnet, selection, reconstruct):
    model, table, stats = resnet
    pruner = ChannelPruner(model, table.groups, stats, selection=selection, reconstruct=reconstruct)
    keep = {gid: max(4, g.channels // 2) for gid, g in enumerate(table.groups)}
    pruned, kept = pruner.prune(keep)
    fractions = {gid: k / table.groups[gid].channels for gid, k in keep.items()}
    assert count_macs(pruned, 32) == table.macs_at(fractions)
    assert sum(p.numel() for p in pruned.parameters()) < 0.4 * sum(p.numel() for p in model.parameters())
    assert pruned.conv1.in_channels == 3 and pruned.classifier.out_features == 10
    with torch.no_grad():
        assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.conv1.out_channels == 16  # the original is untouched


def test_remove_channels_through_flatten():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)
    )
    groups = coupled_groups(model, torch.randn(1, 3, 4, 4), ignored=["4"])
    assert len(groups) == 1 and groups[0].channels == 8
    remove_channels(model, [(groups[0], [0, 3, 5])])
    assert model[0].out_channels == 5 and model[1].num_features == 5 and model[4].in_features == 5 * 16
    assert model(torch.randn(2, 3, 4, 4)).shape == (2, 5)
