"""WeightSparse environments, generated from the registry table."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import SMALL_ENV_KWARGS, make_env, play
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from torch import nn

import pf_deploy
import pf_envs
from learners.training import evaluate
from pf_envs.envs.weight_sparse import SparsitySpace, WeightSparseEnv
from pf_envs.rewards import Measurements, acc_log_sparsity

MODEL_IDS = [i for i in pf_envs.env_ids("WeightSparse") if i != "WeightSparse-v0"]
SMALL = {k: v for k, v in SMALL_ENV_KWARGS.items() if k in WeightSparseEnv.SETTINGS}
SMALL.update(reg_iters=0, reg_images=16)


def make(env_id: str, checkpoints, **kwargs) -> gym.Env:
    return make_env(env_id, checkpoints, SMALL, **kwargs)




def prunable_nonzeros(model: nn.Module, layers: list[str]) -> int:
    modules = dict(model.named_modules())
    return sum(int(torch.count_nonzero(modules[n].weight)) for n in layers)


def test_registry_ids():
    assert set(MODEL_IDS) == {f"WeightSparse-{m}-v0" for m in ("MobileNetV1", "MobileNetV2", "ResNet20", "ResNet56")}
    assert "WeightSparse-v0" in gym.registry and all(i in gym.registry for i in MODEL_IDS)


@pytest.mark.parametrize("env_id", MODEL_IDS)
def test_env_checkers(env_id, cifar_root, checkpoints):
    env = make(env_id, checkpoints)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)
    reward, info = play(env, lambda t: 0.0)
    assert isinstance(reward, float) and 0.0 <= info["accuracy"] <= 1.0
    u = env.unwrapped
    assert info["sparsity"] >= 0.75 - 1e-9 and info["cost_ratio"] <= 0.25 + 1e-9
    # depthwise kernels are not steps and stay dense
    depthwise = [m for m in u.compressed_model().modules()
                 if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels]
    assert all(int(torch.count_nonzero(m.weight)) == m.weight.numel() for m in depthwise)
    assert len(u.layers) == u.num_steps and not any(n in u.layers for n, m in u.model.named_modules()
                                                   if isinstance(m, nn.Conv2d) and m.groups > 1)


@pytest.mark.parametrize("env_id", MODEL_IDS)
@pytest.mark.parametrize("sparsity", [0.3, 0.75, 0.9, 0.95])
def test_budget_never_exceeded(env_id, sparsity, cifar_root, checkpoints):
    env = make(env_id, checkpoints, sparsity=sparsity)
    u = env.unwrapped
    rng = np.random.default_rng(0)
    policies = [lambda t: -1.0, lambda t: 1.0, lambda t: 1.0 if t % 2 else -1.0, lambda t: -1.0 if t % 2 else 1.0]
    policies += [lambda t, r=rng.uniform(-1, 1, 200): r[t] for _ in range(20)]
    total = sum(u.layer_params)
    for i, policy in enumerate(policies):
        _, info = play(env, policy, seed=i, dry_run=True)
        assert info["cost_ratio"] <= (1 - sparsity) * (1 + 1e-9), (i, info["sparsities"])
        # the masks' own counts: never more nonzero weights than the budget allows
        assert info["kept_prunable_params"] <= (1 - sparsity) * total + 1e-6
        assert info["sparsity"] >= sparsity - 1e-9
        space = u.unit_spaces[0]
        assert all(space.low - 1e-12 <= s <= space.high + 1e-12 for s in info["policy"])


def test_action_semantics_are_pocketflows_piecewise_rule(cifar_root, checkpoints):
    """a = -1, 0, +1 -> max(0, 1 - 3(1 - s)), s, 1 - (1 - s)/3 (PocketFlow's 0, 0.5, 1)."""
    for s in (0.5, 0.75, 0.9):
        space = SparsitySpace.around(s)
        assert space.to_value(-1) == pytest.approx(max(0, 1 - 3 * (1 - s)))
        assert space.to_value(0) == pytest.approx(s) and space.to_value(1) == pytest.approx(1 - (1 - s) / 3)
        assert space.to_value(-0.5) == pytest.approx((space.low + s) / 2)
        for a in (-1, -0.3, 0, 0.4, 1):
            assert space.to_action(space.to_value(a)) == pytest.approx(a)
    assert SparsitySpace.around(0.5).low == 0.0
    env = make("WeightSparse-ResNet20-v0", checkpoints, sparsity=0.75)
    env.reset(seed=0)
    for a, want in ((0.0, 0.75), (-1.0, 0.25), (1.0, 1 - 0.25 / 3)):  # early steps: nothing clamped
        *_, info = env.step(np.array([a], np.float32))
        assert info["applied"] == pytest.approx(want) and not info["clamped"]
        assert info["applied_action"] == pytest.approx(a)


def test_clamp_raises_late_layers_sparsity(cifar_root, checkpoints):
    """Every layer at the densest value: the clamp makes the late layers sparse enough."""
    env = make("WeightSparse-ResNet20-v0", checkpoints, sparsity=0.9)
    _, info = play(env, lambda t: -1.0, dry_run=True)
    assert info["sparsities"][0] == pytest.approx(0.7, abs=1e-2) and max(info["sparsities"]) > 0.9
    assert info["sparsity"] == pytest.approx(0.9, abs=1e-3)


def test_candidate_is_sparse_and_matches_info(cifar_root, checkpoints):
    env = make("WeightSparse-ResNet20-v0", checkpoints, sparsity=0.8, ft_iters=2, ft_batch_size=16)
    reward, info = play(env, lambda t: np.sin(t))
    u = env.unwrapped
    model = u.compressed_model()
    kept = prunable_nonzeros(model, u.layers)
    assert kept == info["kept_prunable_params"] <= 0.2 * sum(u.layer_params) + 1e-6  # masks held through fine-tuning
    measured = u.layer_sparsities(model)
    assert [measured[n] for n in u.layers] == pytest.approx(info["sparsities"])
    assert info["nonzero_params"] == sum(int(torch.count_nonzero(p)) for p in model.parameters())
    assert info["params_ratio"] == pytest.approx(info["nonzero_params"] / u.total_params)
    assert info["sparse_bytes"] < info["dense_bytes"] and info["flops_ratio"] == 1.0
    assert evaluate(model, u.reward_data) == info["accuracy"] == reward
    assert set(info) >= {"sparsities", "sparsity", "sparsity_target", "accuracy", "nonzero_params", "sparse_bytes"}


def test_layerwise_regression_is_used_and_keeps_the_masks(cifar_root, checkpoints):
    base = make("WeightSparse-ResNet20-v0", checkpoints).unwrapped
    reg = make("WeightSparse-ResNet20-v0", checkpoints, reg_iters=2).unwrapped
    policy = [0.75] * base.num_steps
    a, b = base.policy_model(policy), reg.policy_model(policy)
    assert prunable_nonzeros(a, base.layers) == prunable_nonzeros(b, reg.layers)
    assert not torch.equal(a.conv1.weight, b.conv1.weight)
    assert base.recovery_fingerprint != reg.recovery_fingerprint


def test_acc_log_sparsity_reward(cifar_root, checkpoints):
    env = make("WeightSparse-ResNet20-v0", checkpoints, reward="acc_log_sparsity")
    reward, info = play(env, lambda t: 0.0)
    assert reward == pytest.approx(-(1 - info["accuracy"]) * np.log(info["nonzero_params"]))
    with pytest.raises(ValueError, match="nonzero parameter count"):
        acc_log_sparsity(Measurements(0.9, 0.9, 1.0, 1.0, 1.0))


def test_nan_action_is_a_clear_error(cifar_root, checkpoints):
    env = make("WeightSparse-ResNet20-v0", checkpoints)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.unwrapped.step(np.array([np.nan], np.float32))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sparsty": 0.5}, "sparsity"),
        ({"sparsity": 1.0}, r"sparsity must be a finite number in \[0, 1\)"),
        ({"sparsity": -0.1}, r"sparsity must be a finite number in \[0, 1\)"),
        ({"sparsity": "0.5"}, r"sparsity must be a finite number"),
        ({"sparsity": float("nan")}, r"sparsity must be a finite number"),
        ({"reg_iters": -1}, "reg_iters must be an integer >= 0"),
        ({"reg_iters": 2.0}, "reg_iters must be an integer"),
        ({"reg_images": 0}, "reg_images must be an integer >= 1"),
        ({"reg_lr": 0.0}, "reg_lr must be a finite number > 0"),
        ({"reward": "speed"}, "acc_log_sparsity"),
        ({"flops_budget": 0.5}, "unknown keyword"),
    ],
)
def test_bad_kwargs(kwargs, match, cifar_root, checkpoints):
    with pytest.raises((TypeError, ValueError), match=match):
        make("WeightSparse-ResNet20-v0", checkpoints, **kwargs)


def test_replay_rebuilds_the_same_candidate(cifar_root, checkpoints):
    env = make("WeightSparse-ResNet20-v0", checkpoints, sparsity=0.85)
    reward, info = play(env, lambda t: 0.5 if t % 2 else -0.7, seed=3)
    env_kwargs = {k: v for k, v in env.spec.kwargs.items() if k != "model"}
    out = pf_envs.replay("WeightSparse-ResNet20-v0", env_kwargs, {"applied": info["policy"], "seed": 3})
    assert out.reward == reward and out.info["sparsities"] == info["sparsities"]
    original = env.unwrapped.compressed_model().state_dict()
    assert all(torch.equal(original[k], v) for k, v in out.model.state_dict().items())


def test_saved_compressed_model_keeps_the_zeros(cifar_root, checkpoints, tmp_path):
    env = make("WeightSparse-ResNet20-v0", checkpoints, sparsity=0.9)
    _, info = play(env, lambda t: np.cos(t))
    u = env.unwrapped
    model = u.compressed_model()
    env_kwargs = {k: v for k, v in env.spec.kwargs.items() if k != "model"}
    pf_envs.save_compressed(model, tmp_path / "ws.pt", env_id="WeightSparse-ResNet20-v0", env_kwargs=env_kwargs,
                            policy=info["policy"], model_fingerprint=u.model_fingerprint)
    loaded, record = pf_envs.load_compressed(tmp_path / "ws.pt")
    assert prunable_nonzeros(loaded, u.layers) == info["kept_prunable_params"]
    assert all(torch.equal(loaded.state_dict()[k], v.float()) for k, v in model.state_dict().items())
    assert evaluate(loaded, u.reward_data) == info["accuracy"]


def test_retrain_hook_keeps_the_policys_sparsity(cifar_root, checkpoints):
    """The re-training contract: policy_model -> hook(model, step) after every optimizer step;
    at the end every layer has exactly the policy's sparsity."""
    env = make("WeightSparse-ResNet20-v0", checkpoints, sparsity=0.8)
    u = env.unwrapped
    _, info = play(env, lambda t: 0.6 * np.sin(t), dry_run=True)
    model = u.policy_model(info["policy"])
    assert prunable_nonzeros(model, u.layers) == info["kept_prunable_params"]  # the saved starting point is sparse
    steps = 12
    hook = u.retrain_hook(model, steps)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()
    batches = u.data.train.subset(16 * steps, seed=0).batches(16)
    for step, (x, y) in enumerate(batches, 1):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        hook(model, step)
        if step == 1:  # before t_b the layers are dense and free
            assert prunable_nonzeros(model, u.layers) > info["kept_prunable_params"]
    assert hook.frozen
    measured = u.layer_sparsities(model)
    assert [measured[n] for n in u.layers] == pytest.approx(info["sparsities"])
    from pf_envs.model_env import ModelCompressionEnv

    assert ModelCompressionEnv.retrain_hook(u, model, steps) is None  # the default of other methods


def test_custom_model(cifar_root):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )
    env = gym.make("WeightSparse-v0", model=model, **SMALL)
    assert env.unwrapped.layers == ["0", "6", "11"]
    _, info = play(env, lambda t: 1.0)
    assert info["sparsity"] >= 0.75 - 1e-9


def test_search_harness_records_and_every_agent(cifar_root, checkpoints, tmp_path):
    """One short harness run per agent on a tiny slice: records, best policy and replay work unchanged."""
    from pf_agents import search
    from pf_agents.records import read_run

    kwargs = {**SMALL, "reward_samples": 50, "bn_batches": 1, "bn_batch_size": 16, "sparsity": 0.9}
    best = {}
    for agent, agent_kwargs in (("uniform", {}), ("random", {}), ("ddpg", {"warmup_episodes": 1}),
                                ("gp", {"initial_points": 2}), ("tpe", {"n_startup_trials": 1})):
        result = search("WeightSparse-ResNet20-v0", agent=agent, episodes=3 if agent != "uniform" else 1,
                        logdir=tmp_path, progress=False, env_kwargs=kwargs, agent_kwargs=agent_kwargs)
        best[agent] = result.best
        assert result.best["info"]["sparsity"] >= 0.9 - 1e-9
    assert best["uniform"]["info"]["sparsities"] == pytest.approx([0.9] * len(best["uniform"]["applied"]), abs=1e-3)
    run = read_run(next(tmp_path.glob("*random*")))
    assert len(run.episodes) == 3
    out = pf_deploy.replay_run(next(tmp_path.glob("*random*")))
    assert out.reward == best["random"]["reward"]
