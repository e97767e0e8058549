"""Per-layer cost table (pf_envs.layers) and the channel method's table of coupled channel groups."""

from __future__ import annotations

import torch
from torch import nn

from pf_envs import zoo
from pf_envs.envs.channel_prune import channel_table
from pf_envs.layers import cost_table, count_macs


def test_mobilenet_v1_table():
    table = channel_table(zoo.create_model("mobilenet_v1"), 32)
    kinds = [r.kind for r in table.rows]
    assert kinds.count("depthwise") == 13 and kinds.count("conv") == 14 and kinds[-1] == "linear"
    first, last = table.rows[0], table.rows[-1]
    assert first.name not in table.in_group and last.name not in table.out_group  # input, classifier output
    assert len(table.groups) == 14
    for g in table.groups[:13]:
        assert len(g.producers) == 1 and len(g.followers) == 1 and len(g.consumers) == 1
    assert table.groups[13].consumers == ("classifier",)
    dw = table.rows[1]
    assert dw.kind == "depthwise" and table.in_group[dw.name] == table.out_group[dw.name] == 0
    assert table.total_macs == 46_354_432 and "MACs" in str(table)


def test_resnet20_residual_coupling():
    table = channel_table(zoo.create_model("resnet20"), 32)
    stream = table.groups[0]
    assert stream.producers[0] == "conv1" and len(stream.producers) == 4
    assert "layers.3.shortcut.0" in stream.consumers
    inner = [g for g in table.groups if len(g.producers) == 1]
    assert len(inner) == 9  # the first conv of every block


def test_macs_at_is_exact_for_physical_pruning():
    import torch_pruning as tp

    model = zoo.create_model("resnet20").eval()
    table = channel_table(model, 32)
    # remove half the channels of two groups with Torch-Pruning directly
    keep = {1: 0.5, 5: 0.5}
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32))
    modules = dict(model.named_modules())
    for gid in keep:
        group = table.groups[gid]
        root = modules[group.producers[0]]
        dg.get_pruning_group(root, tp.prune_conv_out_channels, list(range(group.channels // 2))).prune()
    assert count_macs(model, 32) == table.macs_at(keep)


def test_custom_model_and_linear_tokens():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 5))
    table = cost_table(model, 16)
    assert [r.kind for r in table.rows] == ["conv", "linear"]
    assert table.rows[0].macs == 16 * 16 * 8 * 3 * 9
    assert table.rows[1].macs == 8 * 16 * 16 * 5
