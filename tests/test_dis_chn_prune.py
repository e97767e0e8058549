"""DisChnPrune environments (generated from the registry table) and the discrimination-aware
selection of learners/dis_chn_pruning.py."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import SMALL_ENV_KWARGS, make_env, play
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from torch import nn

import pf_envs
from learners.channel_pruning import collect_stats
from learners.coupling import coupled_groups
from learners.dis_chn_pruning import (
    AuxiliaryHead,
    DiscriminationPruner,
    DiscriminativeSelector,
    find_aux_points,
)
from learners.training import evaluate
from pf_envs.layers import count_macs

METHOD = "DisChnPrune"
MODEL_IDS = [i for i in pf_envs.env_ids(METHOD) if i != f"{METHOD}-v0"]
RESNET = f"{METHOD}-ResNet20-v0"
# Tiny selection: classifiers trained one epoch on 64 images, two gradient evaluations of 8
# images per group.
SMALL = {**SMALL_ENV_KWARGS, "aux_images": 64, "aux_epochs": 1, "select_images": 8, "select_steps": 2}


def make(env_id: str, checkpoints, **kwargs) -> gym.Env:
    return make_env(env_id, checkpoints, SMALL, **kwargs)




@pytest.fixture(scope="module")
def resnet_env(cifar_root, checkpoints):
    return make(RESNET, checkpoints)


def test_registry_ids():
    assert set(MODEL_IDS) == {f"{METHOD}-{m}-v0" for m in ("MobileNetV1", "MobileNetV2", "ResNet20", "ResNet56")}
    assert f"{METHOD}-v0" in gym.registry and all(i in gym.registry for i in MODEL_IDS)


@pytest.mark.parametrize("env_id", MODEL_IDS)
def test_env_checkers(env_id, cifar_root, checkpoints):
    env = make(env_id, checkpoints, select_steps=1)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)
    reward, info = play(env, lambda t: 0.0)
    assert isinstance(reward, float) and 0.0 <= info["accuracy"] <= 1.0
    assert info["flops_ratio"] <= env.unwrapped.flops_budget + 1e-9
    u = env.unwrapped
    assert len(info["aux_losses"]) == len(u.aux_points) + 1 == len(info["aux_points"])
    assert all(np.isfinite(info["aux_losses"])) and all(np.isfinite(info["aux_losses_original"]))
    # every step's group that has one-to-one readers got a greedy order of all its channels
    for gid, order in u.group_orders.items():
        assert sorted(order.order.tolist()) == list(range(u.table.groups[gid].channels))


@pytest.mark.parametrize("env_id", MODEL_IDS)
def test_budget_never_exceeded(env_id, cifar_root, checkpoints):
    rng = np.random.default_rng(0)
    policies = [lambda t: -1.0, lambda t: 1.0, lambda t: 1.0 if t % 2 else -1.0, lambda t: -1.0 if t % 2 else 1.0]
    policies += [lambda t, r=rng.uniform(-1, 1, 100): r[t] for _ in range(10)]
    for budget in (0.3, 0.5, 0.8):
        env = make(env_id, checkpoints, select_steps=1, flops_budget=budget)
        for i, policy in enumerate(policies):
            _, info = play(env, policy, seed=i, dry_run=True)
            assert info["flops_ratio"] <= budget + 1e-9, (i, info["keep_ratios"])
            assert all(0.0 < k <= 1.0 for k in info["keep_ratios"])


def test_same_units_budget_and_observations_as_channel_prune(resnet_env, checkpoints):
    """Only the selection differs: same steps, grid, clamp, observations and MACs; different
    channels kept (the residual groups included), every reader of a group cut alike."""
    cp = gym.make("ChannelPrune-ResNet20-v0", **{**SMALL_ENV_KWARGS, "flops_budget": 0.5})
    dcp = resnet_env
    assert cp.unwrapped.step_groups == dcp.unwrapped.step_groups
    for env in (cp, dcp):
        env.reset(seed=3)
    rng = np.random.default_rng(1)
    for _ in range(dcp.unwrapped.num_steps):
        a = rng.uniform(-1, 1, (1,)).astype(np.float32)
        o1, _, term, _, i1 = cp.step(a)
        o2, _, _, _, i2 = dcp.step(a)
        assert np.array_equal(o1, o2) and i1["applied"] == i2["applied"]
    assert term and i1["flops_ratio"] == i2["flops_ratio"] and i1["keep_counts"] == i2["keep_counts"]
    counts = dict(zip(cp.unwrapped.step_groups, i1["keep_counts"]))
    _, kept_cp = cp.unwrapped.pruner.prune(counts)
    _, kept_dcp = dcp.unwrapped.pruner.prune(counts)
    cut = [g for g in counts if counts[g] < dcp.unwrapped.table.groups[g].channels]
    assert any(not torch.equal(kept_cp[g], kept_dcp[g]) for g in cut)
    pruned = dcp.unwrapped.compressed_model()
    residual = dcp.unwrapped.table.groups[5]  # the 32-channel stream of stage 2: four readers
    assert len(residual.consumers) == 4
    widths = {dict(pruned.named_modules())[c].in_channels for c in residual.consumers}
    assert widths == {counts[5]}


def test_compressed_model_is_smaller_and_matches_info(resnet_env):
    _, info = play(resnet_env, lambda t: 0.3 if t % 3 else -0.5)
    u = resnet_env.unwrapped
    pruned = u.compressed_model()
    assert count_macs(pruned, 32) == pytest.approx(info["flops_ratio"] * u.total_macs, rel=1e-9)
    assert sum(p.numel() for p in pruned.parameters()) == pytest.approx(info["params_ratio"] * u.total_params)
    assert evaluate(pruned, u.reward_data) == info["accuracy"]
    assert info["aux_points"] == ["layers.1", "layers.3", "layers.6", "output"]
    # pruning raises the discriminative losses of the classifiers it cuts into
    assert info["aux_losses"][-1] > info["aux_losses_original"][-1]


def test_greedy_order_serves_every_keep_count(resnet_env):
    """Keeping k channels keeps the first k of the group's order: the kept sets are nested."""
    pruner = resnet_env.unwrapped.pruner
    assert isinstance(pruner, DiscriminationPruner)
    for gid in (0, 4, 9):
        c = pruner.groups[gid].channels
        prev = set()
        for k in range(4, c + 1, 4):
            kept = set(pruner.select(gid, k).tolist())
            assert len(kept) == k and prev <= kept
            prev = kept


def test_aux_points_split_the_network_evenly(cifar_root, checkpoints):
    u = make("DisChnPrune-MobileNetV1-v0", checkpoints, select_steps=1).unwrapped
    points = u.aux_points
    assert len(points) == 3
    counts = [p.layers_before for p in points]
    assert counts == sorted(counts) and all(abs(c - (i + 1) * 27 / 4) <= 1 for i, c in enumerate(counts))
    assert all(p.group is not None and u.table.groups[p.group].channels == p.channels for p in points)
    assert make(RESNET, checkpoints, aux_stages=0).unwrapped.aux_points == []


def _redundant_model() -> tuple[nn.Module, torch.Tensor]:
    """conv(3->6) -> ReLU -> conv(6->4) -> pool -> linear, where channel 5 duplicates channel 0."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1, bias=False),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )
    with torch.no_grad():
        model[0].weight[5] = model[0].weight[0]
        model[2].weight[:, 0] *= 3  # the duplicated channel matters most
        model[2].weight[:, 5] = model[2].weight[:, 0]
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), torch.randn(64, 3, 8, 8)


def test_greedy_selection_skips_a_redundant_channel():
    """With reconstruction only, the least-squares refit makes a channel that duplicates a
    selected one worthless: it is chosen after every other one (an L1 ranking of the reader's
    weights takes both duplicates first)."""
    model, x = _redundant_model()
    groups = coupled_groups(model, x[:1], ignored=["6"], order=["0", "2", "6"])
    gid = next(i for i, g in enumerate(groups) if g.consumers == ("2",))
    stats = collect_stats(model, ["2"], [x], points_per_image=64)
    labels = torch.randint(0, 3, (64,))
    sel = DiscriminativeSelector(model, groups, stats, [], {}, ["0", "2"], x, labels, aux_weight=0.0)
    result = sel.order(gid, chunk=1)
    order = result.order.tolist()
    assert order[0] in (0, 5) and order[-1] in (0, 5)
    assert result.rec_losses[0] == pytest.approx(1.0) and result.rec_losses[-1] < 1e-3
    assert all(a >= b - 1e-9 for a, b in zip(result.rec_losses, result.rec_losses[1:]))
    l1 = DiscriminationPruner(model, groups, stats, {}, reconstruct=False).select(gid, 2).tolist()
    assert l1 == [0, 5]


def test_a_dead_channel_is_chosen_last():
    """A channel that is zero everywhere has a zero gradient under both losses."""
    model, x = _redundant_model()
    with torch.no_grad():
        model[0].weight[3] = 0
    groups = coupled_groups(model, x[:1], ignored=["6"], order=["0", "2", "6"])
    gid = next(i for i, g in enumerate(groups) if g.consumers == ("2",))
    stats = collect_stats(model, ["2"], [x], points_per_image=64)
    sel = DiscriminativeSelector(model, groups, stats, [], {}, ["0", "2"], x, model(x).argmax(1))
    assert sel.order(gid).order.tolist()[-1] == 3


def test_auxiliary_loss_changes_the_selection(resnet_env, checkpoints):
    """aux_weight=0 (reconstruction only) and the default give different orders: the
    auxiliary classifiers' gradient is part of the criterion."""
    rec_only = make(RESNET, checkpoints, aux_weight=0.0).unwrapped
    ours = resnet_env.unwrapped
    assert rec_only.group_orders.keys() == ours.group_orders.keys()
    assert any(not torch.equal(rec_only.group_orders[g].order, o.order) for g, o in ours.group_orders.items())
    assert all(max(o.aux_losses) == 0.0 for o in rec_only.group_orders.values())
    assert all(min(o.aux_losses) > 0.0 for o in ours.group_orders.values())
    # balanced (the default): the auxiliary gradient's weight is the ratio of the two norms
    scales = [x for o in ours.group_orders.values() for x in o.aux_scales]
    assert all(x > 0 for x in scales) and len(set(scales)) > 1


def test_auxiliary_head_masks_like_removal():
    torch.manual_seed(0)
    head = AuxiliaryHead(6, 3).eval()
    with torch.no_grad():
        head.bn.running_mean.normal_()
        head.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 6, 5, 5)
    kept = torch.tensor([0, 2, 3])
    mask = torch.zeros(6)
    mask[kept] = 1
    assert torch.allclose(head(x, mask), head.pruned(kept)(x[:, kept]), atol=1e-6)


def test_find_aux_points_on_a_flat_chain():
    model, x = _redundant_model()
    points = find_aux_points(model, x[:1], ["0", "2"], {"0": 0, "2": 1}, stages=3)
    assert [p.name for p in points] == ["1"] and points[0].group == 0 and points[0].channels == 6


def test_classifiers_and_orders_are_cached_on_disk(cifar_root, checkpoints, tmp_path, monkeypatch):
    import pf_envs.envs.dis_chn_prune as dcp
    from learners.dis_chn_pruning import DiscriminativeSelector as Selector

    monkeypatch.setenv("PF_CACHE_DIR", str(tmp_path))
    first = make(RESNET, checkpoints, select_steps=1).unwrapped

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(dcp, "train_aux_heads", fail)
    monkeypatch.setattr(Selector, "order", fail)
    second = make(RESNET, checkpoints, select_steps=1).unwrapped
    assert {g: o.order.tolist() for g, o in first.group_orders.items()} == \
        {g: o.order.tolist() for g, o in second.group_orders.items()}
    assert first.aux_train_losses == second.aux_train_losses
    with pytest.raises(AssertionError, match="recomputed"):
        make(RESNET, checkpoints, select_steps=1, aux_weight=0.5)  # another selection: not cached


def test_nan_action_is_a_clear_error(resnet_env):
    resnet_env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        resnet_env.unwrapped.step(np.array([np.nan], np.float32))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"selection": "lasso"}, "unknown keyword argument.*selection"),
        ({"aux_stages": -1}, "aux_stages must be an integer >= 0"),
        ({"aux_stages": 1.5}, "aux_stages must be an integer >= 0"),
        ({"aux_images": 1}, "aux_images must be an integer >= 2"),
        ({"aux_epochs": 0}, "aux_epochs must be an integer >= 1"),
        ({"aux_weight": float("nan")}, "aux_weight must be a finite number >= 0"),
        ({"aux_weight": -1.0}, "aux_weight must be a finite number >= 0"),
        ({"select_images": 0}, "select_images must be an integer >= 1"),
        ({"select_steps": 0}, "select_steps must be an integer >= 1"),
        ({"select_refit": "yes"}, "select_refit must be True or False"),
        ({"aux_balance": 1}, "aux_balance must be True or False"),
        ({"select_ft_steps": -2}, "select_ft_steps must be an integer >= 0"),
        ({"flops_budget": 0.01}, "unreachable"),
        ({"aux_stagse": 2}, "aux_stages"),
    ],
)
def test_bad_kwargs(kwargs, match, cifar_root, checkpoints):
    with pytest.raises((TypeError, ValueError), match=match):
        make(RESNET, checkpoints, **kwargs)


def test_custom_model(cifar_root):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )
    env = gym.make(f"{METHOD}-v0", model=model, **{**SMALL, "aux_stages": 1})
    u = env.unwrapped
    assert u.num_steps == 2 and [p.name for p in u.aux_points] == ["2"]
    _, info = play(env, lambda t: -1.0)
    assert info["flops_ratio"] <= 0.5 + 1e-9 and u.compressed_model()[0].out_channels < 32


def test_replay_and_compressed_files(resnet_env, tmp_path):
    """Replay (no agent) rebuilds the same candidate; save/load_compressed round-trips it."""
    reward, info = play(resnet_env, lambda t: 0.4 if t % 2 else -0.6, seed=11)
    env_kwargs = {k: v for k, v in resnet_env.spec.kwargs.items() if k != "model"}
    out = pf_envs.replay(RESNET, env_kwargs, {"applied": info["keep_ratios"], "seed": 11, "reward": reward})
    assert out.reward == reward and out.info["keep_counts"] == info["keep_counts"]
    original = resnet_env.unwrapped.compressed_model().state_dict()
    assert all(torch.equal(original[k], v) for k, v in out.model.state_dict().items())
    path = tmp_path / "m.pt"
    pf_envs.save_compressed(out.model, path, env_id=RESNET, env_kwargs=env_kwargs, policy=out.policy,
                            model_fingerprint=out.model_fingerprint)
    model, record = pf_envs.load_compressed(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), out.model.eval()(x))
    policy_model = resnet_env.unwrapped.policy_model(info["keep_ratios"])
    assert [p.shape for p in policy_model.parameters()] == [p.shape for p in out.model.parameters()]


def test_search_harness_runs_unchanged(cifar_root, checkpoints, tmp_path):
    from pf_agents import search

    ckpt = checkpoints("resnet20")
    kwargs = {**SMALL, **({"checkpoint": ckpt} if ckpt else {})}
    for agent in ("uniform", "random"):
        result = search(RESNET, agent=agent, episodes=2, seed=0, logdir=tmp_path / agent, env_kwargs=kwargs,
                        progress=False)
        assert result.best["info"]["flops_ratio"] <= 0.5 + 1e-9
        assert "aux_losses" in result.best["info"]


@pytest.mark.slow
@pytest.mark.parametrize("agent", ["ddpg", "td3", "sac", "gp", "tpe"])
def test_every_agent_runs(agent, cifar_root, checkpoints, tmp_path):
    from test_search import FAST_AGENT_KWARGS

    from pf_agents import search

    ckpt = checkpoints("resnet20")
    kwargs = {**SMALL, **({"checkpoint": ckpt} if ckpt else {})}
    result = search(RESNET, agent=agent, episodes=3, seed=0, logdir=tmp_path, env_kwargs=kwargs, progress=False,
                    agent_kwargs=FAST_AGENT_KWARGS[agent])
    assert result.best["info"]["flops_ratio"] <= 0.5 + 1e-9
