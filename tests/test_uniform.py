"""The uniform baseline spends the budget: equal values on the grid, within one grid step."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from conftest import SMALL_ENV_KWARGS

from baselines.uniform import equal_value_policy
from pf_agents import search


def _one_step_ratio(core, values) -> float:
    """The largest cost ratio one unit's next grid step up would add."""
    worst = 0.0
    for t, space in enumerate(core.unit_spaces):
        i = space.grid.index(values[t])
        if i + 1 < len(space.grid):
            up = list(values)
            up[t] = space.grid[i + 1]
            worst = max(worst, core.policy_cost_ratio(up) - core.policy_cost_ratio(values))
    return worst


def _check(core, values):
    ratio = core.policy_cost_ratio(values)
    assert ratio <= core.budget + 1e-12
    assert core.budget - ratio <= _one_step_ratio(core, values) + 1e-12
    # as equal as the grid allows: every value within one grid step of every other
    steps = [max(np.diff(s.grid)) for s in core.unit_spaces]
    assert max(values) - min(values) <= 2 * max(steps) + 1e-12
    return ratio


@pytest.mark.parametrize("kwargs", [{"units": 8, "budget": 0.5, "grid": 0.15},
                                    {"units": 5, "budget": 0.33, "grid": 0.1},
                                    {"units": 9, "budget": 0.71, "grid": 0.05}])
def test_uniform_lands_within_one_grid_step_of_the_budget_on_toy(kwargs, tmp_path):
    core = gym.make("Toy-v0", **kwargs).unwrapped
    values, _ = equal_value_policy(core)
    ratio = _check(core, values)
    result = search("Toy-v0", agent="uniform", episodes=1, logdir=tmp_path, env_kwargs=kwargs, progress=False)
    assert result.best["applied"] == pytest.approx(values)
    assert result.best["info"]["flops_ratio"] == pytest.approx(ratio)
    assert result.best["agent_info"]["policy"] == "equal_value"


@pytest.mark.parametrize("budget", [0.3, 0.4, 0.5])
def test_uniform_spends_the_budget_on_resnet20(budget, cifar_root, checkpoints, tmp_path):
    """ResNet-20's 16/32/64-channel groups on a grid of 4: the old definition (largest constant
    action the clamp never cuts) left 0.34 of the MACs unspent at 0.40; now within one step."""
    ckpt = checkpoints("resnet20")
    kwargs = {**SMALL_ENV_KWARGS, "flops_budget": budget, **({"checkpoint": ckpt} if ckpt else {})}
    core = gym.make("ChannelPrune-ResNet20-v0", **kwargs).unwrapped
    values, _ = equal_value_policy(core)
    ratio = _check(core, values)
    old = search("ChannelPrune-ResNet20-v0", agent="uniform", episodes=1, logdir=tmp_path / "old", env_kwargs=kwargs,
                 agent_kwargs={"policy": "unclamped_action"}, progress=False)
    assert old.best["info"]["flops_ratio"] < ratio  # the old one spends less
    assert len(set(old.best["raw_actions"])) == 1  # one constant action, as it was defined


@pytest.mark.parametrize("units,budget", [(1, 0.77), (8, 0.77), (17, 0.43)])
def test_uniform_on_a_continuous_space_spends_the_budget(units, budget, tmp_path):
    """No grid: float32 actions move a value by ~1e-7 and the clamp may trim that much; the
    agent must still play its policy."""
    kwargs = {"units": units, "budget": budget, "grid": 0.0}
    result = search("Toy-v0", agent="uniform", episodes=1, logdir=tmp_path, env_kwargs=kwargs, progress=False)
    assert result.best["applied"] == pytest.approx([budget] * units, abs=1e-6)
    assert budget - 1e-6 <= result.best["info"]["flops_ratio"] <= budget * (1 + 1e-9)
