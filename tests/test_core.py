"""The env core: AMC's clamp for every cost kind, with a stub method per kind, under random
and extreme actions; the Gymnasium contract; bad actions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from torch import nn

from pf_envs.budget import BitOps, LatencyTable, NonzeroWeights, UnitSpace, WeightBits, clamp, floor_ratio
from pf_envs.core import CompressionEnv
from pf_envs.envs.channel_prune import ChannelMACs, channel_table
from pf_envs.rewards import Measurements


class StubEnv(CompressionEnv):
    """A method reduced to its budget: units, a cost, a budget; the reward is the cost ratio."""

    STATIC_FEATURES = ("index", "index_squared")

    def __init__(self, spaces, cost, budget: float) -> None:
        super().__init__()
        static = np.stack([np.arange(len(spaces)), np.arange(len(spaces)) ** 2], 1)
        self._setup_budget(spaces, cost, budget, static)

    def _evaluate(self) -> tuple[Measurements, dict[str, Any]]:
        r = self.policy_cost_ratio(self.applied)
        return Measurements(1.0 - r, 1.0, 0.0, r, r), {}


def _channel_stub(budget: float) -> StubEnv:
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10),
    )
    table = channel_table(model, 16)
    groups = list(range(len(table.groups)))
    spaces = [UnitSpace(0.25, 1.0, tuple(k / table.groups[g].channels
                                          for k in range(table.groups[g].channels // 4, table.groups[g].channels + 1)))
              for g in groups]
    return StubEnv(spaces, ChannelMACs(table, groups), budget)


def _stub(kind: str, budget: float) -> StubEnv:
    params = [1200.0, 300.0, 4500.0, 800.0, 60.0]
    bits = UnitSpace(2.0, 8.0, tuple(float(b) for b in range(2, 9)))
    if kind == "macs":
        return _channel_stub(budget)
    if kind == "nonzero_weights":  # sparsity: the cost SHRINKS as the value grows
        return StubEnv([UnitSpace(0.0, 0.95)] * len(params), NonzeroWeights(params), budget)
    if kind == "nonzero_weights_grid":
        grid = tuple(np.round(np.arange(0, 0.951, 0.05), 6))
        return StubEnv([UnitSpace(0.0, 0.95, grid)] * len(params), NonzeroWeights(params), budget)
    if kind == "weight_bits":
        return StubEnv([bits] * len(params), WeightBits(params, reference_bits=8), budget)
    if kind == "bitops":  # layer l has units 2l (weights) and 2l+1 (activations); the last layer's
        macs = [5e5, 2e6, 1e6]  # activations stay at 8 bits
        return StubEnv([bits] * 5, BitOps(macs, [0, 2, 4], [1, 3, None], units=5, reference_bits=8), budget)
    if kind == "latency":
        tables = [{2.0: 0.5 + i, 4.0: 0.9 + i, 8.0: 2.0 + 2 * i} for i in range(4)]
        return StubEnv([bits] * 4, LatencyTable(tables, overhead_ms=0.3), budget)
    raise AssertionError(kind)


KINDS = ["macs", "nonzero_weights", "nonzero_weights_grid", "weight_bits", "bitops", "latency"]


def _play(env: CompressionEnv, actions) -> dict:
    env.reset(seed=0)
    for a in actions:
        _, _, terminated, _, info = env.step(np.array([a], np.float32))
        if terminated:
            return info
    raise AssertionError("the episode did not end")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("frac", [0.02, 0.4, 0.8])
def test_budget_is_never_exceeded(kind, frac):
    full = _stub(kind, 1.0)
    floor = floor_ratio(full.cost, full.unit_spaces)
    budget = floor + frac * (1.0 - floor)  # from just above the floor to nearly everything
    env = _stub(kind, budget)
    rng = np.random.default_rng(0)
    n = env.num_steps
    policies = [rng.uniform(-1, 1, n) for _ in range(60)]
    policies += [np.ones(n), -np.ones(n), np.where(np.arange(n) % 2, 1.0, -1.0), rng.choice([-1.0, 1.0], n),
                 np.full(n, 0.999), np.linspace(1, -1, n), np.linspace(-1, 1, n)]
    policies += [rng.uniform(-5, 5, n) for _ in range(5)]  # out of range: clipped to [-1, 1]
    for actions in policies:
        info = _play(env, actions)
        assert info["cost_ratio"] <= budget * (1 + 1e-9) + 1e-12, (kind, actions, info["policy"])
        assert env.policy_cost_ratio(info["policy"]) == pytest.approx(info["cost_ratio"])
        for t, v in enumerate(info["policy"]):  # every value is an allowed one
            s = env.unit_spaces[t]
            assert s.low - 1e-12 <= v <= s.high + 1e-12
            if s.grid is not None:
                assert min(abs(g - v) for g in s.grid) < 1e-12


@pytest.mark.parametrize("kind", KINDS)
def test_clamp_takes_the_closest_value_that_keeps_the_budget_reachable(kind):
    """At every step the applied value is the one asked for, or the allowed value nearest to it
    on the cheap side with which the budget stays reachable: one step dearer would not."""
    env = _stub(kind, 0.6)
    cost, spaces = env.cost, env.unit_spaces
    rng = np.random.default_rng(1)
    for _ in range(30):
        env.reset(seed=0)
        for t in range(env.num_steps):
            a = float(np.float32(rng.uniform(-1, 1)))  # what the env receives
            wanted = env.round_value(t, spaces[t].to_value(a))
            prefix = list(env.applied)
            _, _, _, _, info = env.step(np.array([a], np.float32))
            v = info["applied"]
            tail = [s.end(True, cost.increasing) for s in spaces[t + 1 :]]
            assert cost(prefix + [v] + tail) <= env.budget_limit * (1 + 1e-9) + 1e-9
            if info["clamped"]:
                assert v != wanted
                if spaces[t].grid is not None:
                    g = list(spaces[t].grid)
                    j = g.index(v) + (1 if cost.increasing else -1)
                    if 0 <= j < len(g) and (g[j] <= wanted if cost.increasing else g[j] >= wanted):
                        assert cost(prefix + [g[j]] + tail) > env.budget_limit
            else:
                assert v == wanted


def test_clamp_bisects_a_continuous_range():
    cost = NonzeroWeights([10.0, 10.0])
    spaces = [UnitSpace(0.0, 0.9)] * 2
    # unit 1 at its cheapest (0.9 sparsity) keeps 1; a 0.5 budget leaves 9 for unit 0: sparsity 0.1
    assert clamp(0, 0.0, [], spaces, cost, limit=10.0) == pytest.approx(0.1, abs=1e-7)
    assert clamp(0, 0.5, [], spaces, cost, limit=10.0) == 0.5  # fits as asked


def test_unreachable_budget_is_a_clear_error():
    with pytest.raises(ValueError, match="unreachable.*choose budget >= 0.25"):
        StubEnv([UnitSpace(2.0, 8.0)] * 2, WeightBits([1.0, 1.0], reference_bits=8), 0.2)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_actions_are_refused(bad):
    env = _stub("weight_bits", 0.6)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([bad], np.float32))
    with pytest.raises(ValueError, match="exactly one number"):
        env.step(np.zeros(2, np.float32))


@pytest.mark.parametrize("bad", ["0.5", "abc", b"0.5", True, np.True_, None, [None], ["0.5"],
                                 np.array([True]), np.array(["0.5"]), np.array([0.5 + 0j])])
def test_actions_that_are_not_numbers_are_refused(bad):
    env = _stub("weight_bits", 0.6)
    env.reset(seed=0)
    with pytest.raises(TypeError, match=r"action at step 0 is .*must be a number or a numeric array") as err:
        env.step(bad)
    assert "nan" not in str(err.value).replace("numeric", "")
    assert env.raw_actions == []  # nothing was applied


@pytest.mark.parametrize("good", [0.5, 1, np.float32(0.5), np.int64(0), [0.5], np.array([0.5], np.float16)])
def test_numbers_and_numeric_arrays_are_actions(good):
    import torch

    for action in (good, torch.tensor([0.5])):
        env = _stub("weight_bits", 0.6)
        env.reset(seed=0)
        env.step(action)
        assert len(env.raw_actions) == 1


def test_step_before_reset_and_after_the_end():
    env = _stub("latency", 0.8)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(1, np.float32))
    _play(env, np.zeros(env.num_steps))
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(1, np.float32))


def test_dry_run_reports_the_policy_without_scoring():
    env = _stub("bitops", 0.5)
    env.reset(options={"dry_run": True})
    for _ in range(env.num_steps):
        _, reward, terminated, _, info = env.step(np.ones(1, np.float32))
    assert terminated and reward == 0.0 and info["dry_run"] and "accuracy" not in info
    assert len(info["policy"]) == env.num_steps and info["cost_name"] == "bitops"
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"dryrun": True})


def test_observations_and_features():
    env = _stub("nonzero_weights", 0.5)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert env.observation_features() == ("index", "index_squared", "reduced", "rest", "prev_value")
    assert len(env.observation_features()) == obs.shape[0]
    removed = []
    for _ in range(env.num_steps):
        obs, *_ = env.step(np.array([0.5], np.float32))
        assert env.observation_space.contains(obs)
        removed.append(obs[2])
    assert removed == sorted(removed)  # cost removed so far only grows


def test_play_policy_replays_applied_values_and_refuses_foreign_ones():
    env = _stub("weight_bits", 0.6)
    info = _play(env, np.random.default_rng(3).uniform(-1, 1, env.num_steps))
    reward, again = env.play_policy(info["policy"])
    assert again["policy"] == info["policy"] and reward == pytest.approx(1 - info["cost_ratio"])
    with pytest.raises(ValueError, match="steps"):
        env.play_policy(info["policy"][:-1])
    with pytest.raises(ValueError, match="cut by the budget|not an allowed value"):
        env.play_policy([8.0] * env.num_steps)
