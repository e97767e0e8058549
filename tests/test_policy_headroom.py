"""The headroom benchmark's policy families (dry runs only: nothing is scored)."""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import pytest
from conftest import REPO, SMALL_ENV_KWARGS

sys.path.insert(0, str(REPO / "benchmarks"))
from policy_headroom import play, two_level  # noqa: E402

from baselines.uniform import largest_unclamped

ENV_ID = "ChannelPrune-ResNet20-v0"


@pytest.fixture(scope="module")
def env(cifar_root, checkpoints):
    ckpt = checkpoints("resnet20")
    e = gym.make(ENV_ID, **{**SMALL_ENV_KWARGS, "flops_budget": 0.5, **({"checkpoint": ckpt} if ckpt else {})})
    yield e
    e.close()


def test_two_level_puts_high_first_or_last():
    assert two_level(5, 2, 0.5, -1.0, front=True).tolist() == [0.5, 0.5, -1.0, -1.0, -1.0]
    assert two_level(5, 2, 0.5, -1.0, front=False).tolist() == [-1.0, -1.0, -1.0, 0.5, 0.5]


@pytest.mark.parametrize("k", [None, 3])
def test_largest_unclamped_is_the_edge_of_the_budget_clamp(env, k):
    n = env.unwrapped.num_steps
    make = (lambda h: np.full(n, h, np.float32)) if k is None else (lambda h: two_level(n, k, max(h, -1.0), -1.0, True))
    h = largest_unclamped(env, make)
    assert h is not None and -1.0 <= h <= 1.0
    inside = play(env, make(h), dry_run=True)
    assert not inside["clamped_any"]
    assert len(inside["policy"]) == n
    if h < 1.0:  # a little more is cut by the clamp: the policy uses the budget
        assert play(env, make(min(1.0, h + 0.01)), dry_run=True)["clamped_any"]
