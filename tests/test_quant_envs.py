"""UniformQuant and NonUniformQuant environments, generated from the registry table."""

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
from learners.quantization import QUANT_LAYERS, storage_bytes
from learners.training import evaluate

METHODS = ("UniformQuant", "NonUniformQuant")
MODEL_IDS = [i for m in METHODS for i in pf_envs.env_ids(m) if i != f"{m}-v0"]
QUANT_KWARGS = {k: v for k, v in SMALL_ENV_KWARGS.items() if k not in ("feature_images", "points_per_image")}
R20 = {m: f"{m}-ResNet20-v0" for m in METHODS}


def make(env_id: str, checkpoints, **kwargs) -> gym.Env:
    return make_env(env_id, checkpoints, QUANT_KWARGS, **kwargs)




def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def test_registry_ids():
    for m in METHODS:
        assert set(pf_envs.env_ids(m)) == {f"{m}-v0"} | {
            f"{m}-{x}-v0" for x in ("MobileNetV1", "MobileNetV2", "ResNet20", "ResNet56")}
    assert all(i in gym.registry for i in MODEL_IDS)


@pytest.mark.parametrize("env_id", MODEL_IDS)
def test_env_checkers_and_a_dry_run(env_id, cifar_root, checkpoints):
    env = make(env_id, checkpoints)
    u = env.unwrapped
    gym_check_env(u, skip_render_check=True)
    sb3_check_env(u, warn=True)
    _, info = play(env, lambda t: 1.0, dry_run=True)
    assert info["avg_weight_bits"] <= 4.0 + 1e-9 and len(info["weight_bits"]) == u.num_steps == len(u.layer_names)
    assert u.observation_space.shape == (14,) and len(u.observation_features()) == 14


@pytest.mark.parametrize("method", METHODS)
def test_scored_episode_info_matches_the_candidate(method, cifar_root, checkpoints):
    env = make(R20[method], checkpoints, avg_bits=3.5)
    reward, info = play(env, lambda t: 0.5 if t % 2 else -0.7)
    u = env.unwrapped
    q = u.compressed_model()
    layers = dict(q.named_modules())
    for name, bits in zip(u.layer_names, info["weight_bits"]):
        layer = layers[name]
        assert isinstance(layer, QUANT_LAYERS) and layer.spec.weight_bits == bits and layer.spec.act_bits == 8
        w = layer.quantized_weight().detach()
        rows = w.reshape(1, -1) if method == "NonUniformQuant" else w.reshape(w.shape[0], -1)
        assert max(len(torch.unique(r)) for r in rows) <= 2**bits
    assert info["model_size_bytes"] == storage_bytes(q) and 0 < info["size_ratio"] < 3.6 / 32 + 0.02
    assert info["avg_weight_bits"] <= 3.5 + 1e-9
    assert sum(b * n for b, n in zip(info["weight_bits"], u.layer_weights)) / sum(u.layer_weights) == pytest.approx(
        info["avg_weight_bits"])
    assert reward == info["accuracy"] == evaluate(q, u.reward_data)
    assert info["flops_ratio"] == 1.0 and info["params_ratio"] == 1.0
    assert 0 < info["bitops_ratio"] <= 1.0 and info["budget_kind"] == "avg_bits"


@pytest.mark.parametrize("bn_mode,bound", [("shift", 0.004), ("reestimate", 0.01)])
def test_eight_bits_everywhere_keeps_the_float_accuracy(bn_mode, bound, cifar_root, checkpoints):
    env = make(R20["UniformQuant"], checkpoints, avg_bits=8.0, reward_samples=500, bn_batches=4, bn_mode=bn_mode)
    _, info = play(env, lambda t: 1.0)
    assert info["weight_bits"] == [8] * env.unwrapped.num_steps
    assert abs(info["accuracy"] - info["accuracy_original"]) <= bound


def test_bn_shift_keeps_the_original_statistics_where_nothing_changes(cifar_root, checkpoints):
    """With activations in float and 8-bit weights the quantizers barely move any BatchNorm
    input: ``bn_mode="shift"`` leaves the statistics next to the original ones, while a fresh
    re-estimate on 128 images moves them by its sampling error."""
    def stats(mode: str) -> dict:
        env = make(R20["UniformQuant"], checkpoints, avg_bits=8.0, bn_batches=2, act_bits=32, bn_mode=mode)
        play(env, lambda t: 1.0)
        return env.unwrapped.compressed_model().state_dict()

    original = env_model_state(checkpoints)
    keys = [k for k in original if k.endswith("running_mean")]
    shift, fresh = stats("shift"), stats("reestimate")
    err = {m: max(float((s[k] - original[k]).abs().max()) for k in keys)
           for m, s in (("shift", shift), ("fresh", fresh))}
    assert err["shift"] < err["fresh"] / 5


def env_model_state(checkpoints) -> dict:
    env = make(R20["UniformQuant"], checkpoints, bn_batches=0)
    return env.unwrapped.model.state_dict()


def test_bn_batches_zero_keeps_the_statistics_and_still_calibrates_activations(cifar_root, checkpoints):
    env = make(R20["UniformQuant"], checkpoints, avg_bits=8.0, bn_batches=0)
    _, info = play(env, lambda t: 1.0)
    model, cand = env.unwrapped.model.state_dict(), env.unwrapped.compressed_model().state_dict()
    assert all(torch.equal(model[k], cand[k]) for k in model if "running_" in k)
    assert abs(info["accuracy"] - info["accuracy_original"]) <= 0.01


BUDGETS = [("avg_bits", 2.0), ("avg_bits", 3.3), ("bitops_budget", 0.26), ("bitops_budget", 0.6)]
SHAPES = [("UniformQuant-ResNet20-v0", 8, False), ("UniformQuant-MobileNetV1-v0", 8, False),
          ("NonUniformQuant-ResNet20-v0", "search", True)]


@pytest.mark.parametrize("env_id,act_bits,random_order", SHAPES)
@pytest.mark.parametrize("kind,budget", BUDGETS)
def test_budget_never_exceeded(env_id, act_bits, random_order, kind, budget, cifar_root, checkpoints):
    """Random and extreme policies, every budget kind, fixed and searched activation bits,
    fixed and random visit order: the budget holds and every value is a whole bit-width."""
    env = make(env_id, checkpoints, **{kind: budget}, act_bits=act_bits, random_order=random_order)
    u = env.unwrapped
    rng = np.random.default_rng(0)
    policies = [lambda t: -1.0, lambda t: 1.0, lambda t: 1.0 if t % 2 else -1.0, lambda t: -1.0 if t % 2 else 1.0]
    policies += [lambda t, r=rng.uniform(-1, 1, 200): r[t] for _ in range(12)]
    for i, policy in enumerate(policies):
        _, info = play(env, policy, seed=i, dry_run=True)
        measured = info["avg_weight_bits"] / 32 if kind == "avg_bits" else info["bitops_ratio"]
        assert info["cost_ratio"] == pytest.approx(measured)
        assert measured <= u.budget * (1 + 1e-9), (i, info["policy"])
        assert all(u.min_bits <= b <= u.max_bits and b == int(b) for b in info["policy"])
    _, info = play(env, lambda t: 1.0, dry_run=True)  # the greedy policy spends (nearly) all of it
    assert info["cost_ratio"] >= 0.9 * u.budget or info["policy"] == [u.max_bits] * u.num_steps


def test_act_bits_search_adds_a_step_per_layer(cifar_root, checkpoints):
    env = make(R20["UniformQuant"], checkpoints, act_bits="search", bitops_budget=0.2)
    u = env.unwrapped
    assert u.num_steps == 2 * len(u.layer_names)
    _, info = play(env, lambda t: 0.2)
    q = u.compressed_model()
    for name, a in zip(u.layer_names, info["act_bits"]):
        assert q.get_submodule(name).act_quantizer.bits == a
    assert info["bitops_ratio"] <= 0.2 + 1e-9 and info["budget_kind"] == "bitops"
    float_acts = make(R20["UniformQuant"], checkpoints, act_bits=32, bitops_budget=2.0).unwrapped
    candidate = float_acts.policy_model([2.0] * float_acts.num_steps)
    assert all(isinstance(candidate.get_submodule(n).act_quantizer, nn.Identity) for n in float_acts.layer_names)


def test_random_order_is_drawn_from_the_seed_and_replays(cifar_root, checkpoints):
    env = make(R20["UniformQuant"], checkpoints, random_order=True, avg_bits=3.0)
    u = env.unwrapped
    env.reset(seed=1)
    first = list(u.visit_order)
    env.reset(seed=1)
    assert u.visit_order == first and sorted(first) == list(range(u.num_steps))
    env.reset(seed=2)
    assert u.visit_order != first
    _, info = play(env, lambda t: 0.9 - 0.1 * t, seed=5, dry_run=True)
    steps_bits = list(u.applied)
    assert [info["policy"][unit] for unit in u.visit_order] == steps_bits  # policy in unit order
    again_reward, again = u.play_policy(info["policy"], seed=5, dry_run=True)
    assert again["policy"] == info["policy"]
    fixed = make(R20["UniformQuant"], checkpoints, avg_bits=3.0).unwrapped
    fixed.reset(seed=1)
    assert fixed.visit_order == list(range(fixed.num_steps))


def test_nan_action_and_bad_kwargs(cifar_root, checkpoints):
    env = make(R20["UniformQuant"], checkpoints)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.unwrapped.step(np.array([np.nan], np.float32))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"avg_bitz": 4}, "avg_bits"),
        ({"max_bits": 9}, r"max_bits must be an integer in \[1, 8\]"),
        ({"min_bits": 0}, r"min_bits must be an integer in \[1, 8\]"),
        ({"min_bits": 6, "max_bits": 4}, "min_bits=6 must be < max_bits=4"),
        ({"min_bits": 2.5}, "min_bits must be an integer"),
        ({"avg_bits": 1.5}, r"avg_bits=1.5 is unreachable.*min_bits=2"),
        ({"avg_bits": 0}, r"avg_bits must be a finite number in \(0, 32\]"),
        ({"bitops_budget": 0.01}, r"bitops_budget=0.01 is unreachable"),
        ({"avg_bits": 4, "bitops_budget": 0.5}, "not both"),
        ({"act_bits": "serach"}, "act_bits must be an integer"),
        ({"act_bits": 12}, "act_bits must be an integer"),
        ({"random_order": 1}, "random_order must be True or False"),
        ({"ft_iters": -1}, "ft_iters must be an integer >= 0"),
        ({"bn_mode": "shfit"}, "unknown bn_mode 'shfit'; choose one of"),
    ],
)
def test_bad_kwargs(kwargs, match, cifar_root, checkpoints):
    with pytest.raises((TypeError, ValueError), match=match):
        make(R20["UniformQuant"], checkpoints, **kwargs)


@pytest.mark.parametrize("method", METHODS)
def test_replay_and_compressed_files_round_trip(method, cifar_root, checkpoints, tmp_path):
    env_id = R20[method]
    env = make(env_id, checkpoints, avg_bits=3.0)
    reward, info = play(env, lambda t: 0.6 if t % 3 else -0.4, seed=3)
    env_kwargs = {k: v for k, v in env.spec.kwargs.items() if k != "model"}
    out = pf_envs.replay(env_id, env_kwargs, {"applied": info["policy"], "seed": 3, "reward": reward})
    assert out.reward == reward == out.recorded_reward and out.info["weight_bits"] == info["weight_bits"]
    original = env.unwrapped.compressed_model().state_dict()
    assert all(torch.equal(original[k], v) for k, v in out.model.state_dict().items())
    # the candidate of a policy (before recovery) loads the recovered state dict
    fresh = env.unwrapped.policy_model(info["policy"])
    fresh.load_state_dict(out.model.state_dict())
    assert evaluate(fresh, env.unwrapped.reward_data) == reward
    path = tmp_path / "q.pt"
    pf_envs.save_compressed(out.model, path, env_id=env_id, env_kwargs=env_kwargs, policy=info["policy"],
                            model_fingerprint=env.unwrapped.model_fingerprint)
    loaded, record = pf_envs.load_compressed(path)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), out.model.eval()(x))
    assert env.unwrapped.retrain_hook(loaded, 10) is None
    with pytest.raises(ValueError, match="cut by the budget"):
        pf_envs.replay(env_id, env_kwargs, [8.0] * env.unwrapped.num_steps)


def _harness(tmp_path, plan: dict[str, list[str]]) -> None:
    from pf_agents import search

    kwargs = {"model": tiny_model(), "avg_bits": 3.0, **QUANT_KWARGS, "reward_samples": 100, "bn_batches": 1}
    for method, agents in plan.items():
        env = gym.make(f"{method}-v0", **kwargs)
        assert env.unwrapped.num_steps == 4
        for agent in agents:
            agent_kwargs = {"warmup_episodes": 1} if agent in ("ddpg", "td3", "sac") else {}
            result = search(f"{method}-v0", agent=agent, episodes=2, logdir=tmp_path / method, progress=False,
                            env_kwargs=kwargs, agent_kwargs=agent_kwargs)
            # the uniform agent's policy is deterministic: scored once
            assert len(result.history) == (1 if agent == "uniform" else 2), agent
            assert result.best["info"]["avg_weight_bits"] <= 3.0 + 1e-9
            assert (result.run_dir / "best.json").is_file()
        runs = list((tmp_path / method).iterdir())
        assert any(p.name.startswith("events") for r in runs for p in r.rglob("*")), "no TensorBoard events"


def test_custom_model_through_the_search_harness(cifar_root, tmp_path):
    """The search harness, its records and TensorBoard run unchanged on both methods."""
    _harness(tmp_path, {"UniformQuant": ["random"], "NonUniformQuant": ["ddpg"]})


@pytest.mark.slow
def test_every_agent_through_the_search_harness(cifar_root, tmp_path):
    from pf_agents.registry import AGENTS

    _harness(tmp_path, {"UniformQuant": list(AGENTS), "NonUniformQuant": ["uniform", "tpe"]})


def test_nonuniform_codebooks_are_cached_per_layer_and_bits(cifar_root, checkpoints):
    env = make(R20["NonUniformQuant"], checkpoints, avg_bits=3.0)
    u = env.unwrapped
    name = u.layer_names[5]
    c = u.codebook(name, 3)
    assert len(c) == 8 and np.all(np.diff(c) > 0) and u.codebook(name, 3) is c
    q = u.policy_model([3.0] * u.num_steps)
    assert np.allclose(q.get_submodule(name).codebook.centroids.detach().numpy(), c)


def test_core_random_order_on_the_toy_env():
    """The core's random visit order (any method): a permutation per reset from the seed, the
    budget kept, the reward and cost of a policy independent of the order it was visited in,
    and the fixed order unchanged (same observations as an env without the flag)."""
    from pf_envs.envs.toy import ToyEnv

    class RandomToy(ToyEnv):
        random_order = True

        def _evaluate(self):  # a method that visits in random order reads the policy in unit order
            applied, self.applied = self.applied, self.policy
            try:
                return super()._evaluate()
            finally:
                self.applied = applied

    env, fixed = RandomToy(units=9, budget=0.4), ToyEnv(units=9, budget=0.4)
    orders = set()
    for seed in range(6):
        rng = np.random.default_rng(seed)
        actions = rng.uniform(-1, 1, 9)
        obs, _ = env.reset(seed=seed)
        orders.add(tuple(env.visit_order))
        assert obs[:-3].tolist() == env._static[env.visit_order[0]].tolist()
        for t, a in enumerate(actions):
            obs, reward, terminated, _, info = env.step(np.array([a], np.float32))
            assert info["unit"] == env.visit_order[t]
        assert info["cost_ratio"] <= 0.4 + 1e-9
        assert [info["policy"][u] for u in env.visit_order] == env.applied
        replayed, again = fixed.play_policy(info["policy"])  # the same policy in the fixed order
        assert replayed == reward and again["cost_ratio"] == pytest.approx(info["cost_ratio"])
        r2, info2 = env.play_policy(info["policy"], seed=seed + 100)  # another order, same values
        assert r2 == reward and info2["policy"] == info["policy"]
    assert len(orders) > 1
    a = ToyEnv(units=9, budget=0.4)
    a.reset(seed=0)
    assert a.visit_order == list(range(9)) and "unit" not in a.step(np.array([0.3], np.float32))[4]
