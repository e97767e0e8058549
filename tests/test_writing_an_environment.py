"""docs/environments.md's "Writing an environment" example runs as written: a new method is a
subclass with a handful of hooks, and the core gives it the episode, the clamp and recovery."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import REPO


@pytest.fixture(scope="module")
def example(cifar_root):
    text = (REPO / "docs" / "environments.md").read_text()
    section = text[text.index("## Writing an environment"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/environments.md", "exec"), namespace)  # noqa: S102 - our own docs
    return namespace


def test_the_example_env_plays_within_its_budget(example):
    env = example["env"]
    rng = np.random.default_rng(0)
    for episode in range(2):
        env.reset(seed=episode)
        while True:
            _, reward, terminated, _, info = env.step(rng.uniform(-1, 1, 1).astype(np.float32))
            if terminated:
                break
        assert info["cost_ratio"] <= 0.3 * (1 + 1e-9) and info["cost_name"] == "nonzero_weights"
        assert 0.0 <= reward <= 1.0 and info["params_ratio"] < 0.5
    model = env.unwrapped.compressed_model()
    weights = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    kept = sum(int(torch.count_nonzero(w)) for w in weights) / sum(w.numel() for w in weights)
    assert kept == pytest.approx(info["cost_ratio"], abs=1e-3)


def test_the_example_keeps_its_masks_through_fine_tuning(example):
    env = gym.make("MagnitudeSparse-ResNet20-v0", budget=0.3, reward_samples=200, ft_iters=3, ft_batch_size=16,
                   bn_batches=2, bn_batch_size=64)
    policy = [0.9] * env.unwrapped.num_steps
    reward, info = env.unwrapped.play_policy(policy, seed=5)  # the seed picks the fine-tuning batches
    model = env.unwrapped.compressed_model()
    for name, mask in env.unwrapped.masks.items():
        w = dict(model.named_modules())[name].weight
        assert torch.count_nonzero(w[mask == 0]) == 0
    again = __import__("pf_envs").replay("MagnitudeSparse-ResNet20-v0", env.spec.kwargs,
                                         {"applied": info["policy"], "seed": 5})
    assert again.reward == reward
