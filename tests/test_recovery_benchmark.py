"""The recovery benchmark's recipes are env kwargs the env accepts."""

from __future__ import annotations

import sys

import gymnasium as gym
import pytest
from conftest import REPO, SMALL_ENV_KWARGS

sys.path.insert(0, str(REPO / "benchmarks"))
from recovery import DEFAULT_RECIPES, parse_recipe  # noqa: E402


def test_parse_recipe():
    assert parse_recipe("plain BN:ft_iters=0,bn_augment=False") == ("plain BN", {"ft_iters": 0, "bn_augment": False})
    assert parse_recipe("defaults") == ("defaults", {})


@pytest.mark.parametrize("recipe", DEFAULT_RECIPES)
def test_default_recipes_make_envs(recipe, cifar_root, checkpoints):
    name, kwargs = parse_recipe(recipe)
    ckpt = checkpoints("resnet20")
    extra = {"checkpoint": ckpt} if ckpt else {}
    env = gym.make("ChannelPrune-ResNet20-v0", **{**SMALL_ENV_KWARGS, **kwargs, **extra})
    for k, v in kwargs.items():
        assert getattr(env.unwrapped, k) == v, (name, k)
    env.close()
