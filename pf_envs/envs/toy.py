"""Toy: a tiny deterministic compression env with a closed-form reward (no data, no model).

It is a complete method on the env core (:class:`pf_envs.core.CompressionEnv`) - units with a
value range and a grid, a monotone cost, a budget kept by AMC's clamp, a sparse reward at the
last step - but an episode takes well under a millisecond, so the agents and the search
harness are tested on it. It is also the smallest example of writing an environment
(``docs/environments.md``).

>>> import gymnasium as gym, pf_envs
>>> env = gym.make("Toy-v0", units=6, budget=0.5)
>>> obs, info = env.reset(seed=0)

Unit ``i`` costs ``cost_i * value_i`` (``cost_i`` from a fixed pattern); the reward is
``0.9 - sum_i s_i * (1 - value_i) ** 2`` with fixed per-unit sensitivities ``s_i``: cutting a
sensitive unit costs more accuracy, so the best policy under a budget is not uniform.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from pf_envs.budget import LinearCost, UnitSpace
from pf_envs.cache import cache_key
from pf_envs.core import CompressionEnv
from pf_envs.rewards import REWARDS, Measurements
from pf_envs.settings import Setting, check_settings, plain

#: Bumped when the toy's reward or cost changes (part of its recovery fingerprint).
TOY_VERSION = 2
BASE_ACCURACY = 0.9

SETTINGS: dict[str, Setting] = {
    "units": Setting("int", default=8, low=1, high=1000, doc="steps per episode"),
    "budget": Setting("float", default=0.5, low=0, high=1, low_open=True,
                      doc="fraction of the total cost a policy may keep"),
    "min_value": Setting("float", default=0.2, low=0, high=1, low_open=True, high_open=True,
                         doc="smallest value of a unit"),
    "grid": Setting("float", default=0.05, low=0, high=1, high_open=True,
                    doc="values are multiples of this (0: continuous)"),
    "reward": Setting("choice", default="accuracy", choices=tuple(REWARDS), doc="reward function"),
}


def toy_costs(units: int) -> np.ndarray:
    """Per-unit cost at value 1 (a fixed, uneven pattern)."""
    return np.asarray([1.0 + (7 * i + 3) % 5 for i in range(units)], np.float64)


def toy_sensitivities(units: int) -> np.ndarray:
    """Per-unit accuracy lost per squared unit of compression (a fixed, uneven pattern)."""
    return np.asarray([0.02 + 0.06 * ((5 * i + 1) % 4) / 3 for i in range(units)], np.float64)


class ToyEnv(CompressionEnv):
    """A synthetic env: ``units`` steps, a linear cost, a closed-form reward.

    Args:
        units: steps per episode.
        budget: fraction of the total cost a policy may keep, in (0, 1].
        min_value: smallest value (keep ratio) of a unit, in (0, 1).
        grid: values are multiples of this from ``min_value`` up to 1 (0: continuous).
        reward: reward name (see ``pf_envs.rewards.REWARDS``).
    """

    STATIC_FEATURES: ClassVar[tuple[str, ...]] = ("step", "cost", "sensitivity")
    ratio_key: ClassVar[str | None] = "flops_ratio"
    floor_kwarg: ClassVar[str] = "min_value"

    def __init__(
        self,
        units: int = 8,
        budget: float = 0.5,
        min_value: float = 0.2,
        grid: float = 0.05,
        reward: str = "accuracy",
        **unknown: Any,
    ) -> None:
        settings = {"units": units, "budget": budget, "min_value": min_value, "grid": grid, "reward": reward}
        check_settings("Toy", SETTINGS, {**settings, **unknown})
        super().__init__(reward=reward)
        self.units, self.min_value, self.grid = int(units), float(min_value), float(grid)
        self.costs = toy_costs(self.units)
        self.sensitivities = toy_sensitivities(self.units)
        if self.grid > 0:
            steps = np.arange(0, int(np.floor((1.0 - self.min_value) / self.grid + 1e-9)) + 1)
            values = tuple(sorted({float(round(self.min_value + k * self.grid, 12)) for k in steps} | {1.0}))
        else:
            values = None
        space = UnitSpace(self.min_value, 1.0, values)
        static = np.stack([np.arange(self.units), self.costs, self.sensitivities], 1)
        self._setup_budget([space] * self.units, LinearCost(self.costs, name="toy_cost"), float(budget), static)
        self.recovery_fingerprint = cache_key("toy", version=TOY_VERSION, **{k: plain(v) for k, v in settings.items()})

    def _evaluate(self) -> tuple[Measurements, dict[str, Any]]:
        v = np.asarray(self.applied)
        acc = BASE_ACCURACY - float(np.dot(self.sensitivities, (1.0 - v) ** 2))
        ratio = self.policy_cost_ratio(self.applied)
        return Measurements(acc, BASE_ACCURACY, ratio * self.cost.reference, ratio, ratio), {}

    def best_policy(self) -> tuple[list[float], float]:
        """The optimum of the closed form under the budget, ignoring the grid (for tests)."""
        from scipy.optimize import minimize

        n, c, s = self.units, self.costs, self.sensitivities
        res = minimize(
            lambda v: float(np.dot(s, (1 - v) ** 2)), np.full(n, self.budget), jac=lambda v: -2 * s * (1 - v),
            bounds=[(self.min_value, 1.0)] * n, method="SLSQP",
            constraints=[{"type": "ineq", "fun": lambda v: self.budget * c.sum() - float(c @ v)}],
        )
        return list(res.x), BASE_ACCURACY - float(res.fun)
