"""Toy-v0: the synthetic env the agent and harness tests run on."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import pf_envs
from pf_envs.envs.toy import BASE_ACCURACY, toy_costs, toy_sensitivities


def test_registered_like_the_others():
    assert "Toy-v0" in pf_envs.ENV_IDS and "Toy-v0" in gym.registry


@pytest.mark.parametrize("kwargs", [{}, {"units": 3, "budget": 0.3, "grid": 0.1}, {"units": 12, "grid": 0.0}])
def test_passes_both_env_checkers(kwargs):
    env = gym.make("Toy-v0", **kwargs)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)


def test_reward_is_the_closed_form_and_deterministic():
    env = gym.make("Toy-v0", units=5, budget=0.6)
    rng = np.random.default_rng(0)
    for _ in range(20):
        actions = rng.uniform(-1, 1, 5)
        outcomes = []
        for seed in (0, 1):
            env.reset(seed=seed)
            for a in actions:
                _, reward, terminated, _, info = env.step(np.array([a], np.float32))
            outcomes.append((reward, info["policy"]))
        assert outcomes[0] == outcomes[1]
        v = np.asarray(outcomes[0][1])
        expected = BASE_ACCURACY - float(toy_sensitivities(5) @ (1 - v) ** 2)
        assert outcomes[0][0] == pytest.approx(expected)
        assert info["flops_ratio"] == pytest.approx(float(toy_costs(5) @ v) / toy_costs(5).sum())
        assert info["flops_ratio"] <= 0.6 + 1e-9


def test_best_policy_beats_uniform():
    env = gym.make("Toy-v0", units=8, budget=0.5, grid=0.0).unwrapped
    policy, best = env.best_policy()
    uniform, _ = env.play_policy([0.5] * 8)
    assert best > uniform + 0.01
    reward, info = env.play_policy(policy)
    assert reward == pytest.approx(best, abs=1e-6) and info["cost_ratio"] <= 0.5 + 1e-6


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"units": 0}, "units must be an integer"),
        ({"units": 2.5}, "units must be an integer"),
        ({"budget": True}, "budget must be a finite number"),
        ({"budget": "0.5"}, "budget must be a finite number"),
        ({"budget": 0.1}, "unreachable"),
        ({"grid": 1.5}, r"grid must be a finite number in \[0, 1\)"),
        ({"unit": 3}, "unknown keyword"),
        ({"reward": "speed"}, "accuracy"),
    ],
)
def test_bad_kwargs(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        gym.make("Toy-v0", **kwargs)


def test_numpy_scalars_fingerprint_like_the_numbers_they_hold():
    """A run started with numpy-typed kwargs records plain numbers in config.json; resuming
    from those must find the same recovery fingerprint."""
    a = gym.make("Toy-v0", units=np.int64(4), budget=np.float32(0.5)).unwrapped.recovery_fingerprint
    b = gym.make("Toy-v0", units=4, budget=0.5).unwrapped.recovery_fingerprint
    assert a == b
