"""The environment core shared by every compression method.

An episode walks the model's compression units (layers, or groups of coupled layers) in a
fixed order, one step each. The agent's action in ``[-1, 1]`` is mapped to the method's
range (keep ratio, sparsity, bits), clamped so that the budget stays reachable, rounded,
and applied; the applied value is what the next observation and ``info`` report. The
reward is 0 until the last step, where the candidate is built, recovered and scored.

Subclasses provide the units and their static features, the mapping and the clamp, and the
evaluation of a finished policy; this class holds the Gymnasium contract: spaces, seeding,
input checks, observations, ``info`` and the reward registry.

Every step's ``info`` has ``raw_action`` (the agent's action, clipped to [-1, 1]),
``applied`` (the value in the method's units after clamping and rounding) and
``applied_action`` (that value mapped back to [-1, 1]: what a learning agent should store).

``reset(options={"dry_run": True})`` plays an episode without scoring it (reward 0.0, no
``accuracy`` in ``info``): the final ``info`` still has the applied policy and its
``flops_ratio``, so a baseline can search the budget geometry for free.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from pf_envs.heap import trim_heap
from pf_envs.rewards import Measurements, get_reward

RESET_OPTIONS = ("dry_run",)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``cuda`` when asked for and available, else CPU (``auto`` picks CUDA if present)."""
    name = str(device or "cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        return torch.device("cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from None


def check_kwargs(env_name: str, unknown: dict[str, Any], valid: list[str]) -> None:
    """Reject unknown keyword arguments with the list of valid ones."""
    if unknown:
        raise TypeError(
            f"{env_name} got unknown keyword argument(s) {sorted(unknown)}; valid ones are "
            f"{sorted(valid)} (see help(pf_envs.envs) or the README)"
        )


def minmax(features: np.ndarray) -> np.ndarray:
    """Scale each column to [0, 1] over the rows; constant columns become 0."""
    lo, hi = features.min(0), features.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return ((features - lo) / span).astype(np.float32)


class CompressionEnv(gym.Env[np.ndarray, np.ndarray]):
    """Base class: one step per compression unit, clamped actions, sparse final reward.

    Subclasses set ``self._static`` (units x static features, already in [0, 1]) and
    implement :meth:`_action_to_value`, :meth:`_apply`, :meth:`_dynamic_features`,
    :meth:`_begin_episode` and :meth:`_evaluate`.
    """

    metadata: dict[str, Any] = {"render_modes": []}
    n_dynamic: int = 3

    def __init__(self, reward: str = "accuracy") -> None:
        super().__init__()
        self.reward_name = reward
        self._reward_fn = get_reward(reward)
        self._static: np.ndarray = np.zeros((1, 1), np.float32)
        self._t = 0
        self._done = True
        self._dry_run = False
        self.raw_actions: list[float] = []
        self.applied: list[float] = []

    def _init_spaces(self) -> None:
        n = self._static.shape[1] + self.n_dynamic
        self.observation_space = spaces.Box(0.0, 1.0, (n,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    @property
    def num_steps(self) -> int:
        """Steps per episode (compression units)."""
        return len(self._static)

    # -- hooks -------------------------------------------------------------------------------
    def _begin_episode(self) -> None:
        """Per-episode state reset (must be cheap)."""

    def _action_to_value(self, action: float) -> float:
        raise NotImplementedError

    def _value_to_action(self, value: float) -> float:
        """Inverse of :meth:`_action_to_value` (for reporting the applied action)."""
        raise NotImplementedError

    def _apply(self, t: int, value: float) -> tuple[float, dict[str, Any]]:
        """Clamp, round and record ``value`` for unit ``t``; return (applied, step info)."""
        raise NotImplementedError

    def _dynamic_features(self, t: int) -> list[float]:
        raise NotImplementedError

    def _evaluate(self) -> tuple[Measurements, dict[str, Any]]:
        """Build, recover and score the candidate of the finished episode."""
        raise NotImplementedError

    def _policy_info(self) -> dict[str, Any]:
        """What the final ``info`` says about the applied policy (also in dry runs)."""
        return {"applied": list(self.applied)}

    # -- Gymnasium API -----------------------------------------------------------------------
    def _observation(self) -> np.ndarray:
        t = min(self._t, self.num_steps - 1)
        dyn = np.clip(np.asarray(self._dynamic_features(t), np.float32), 0.0, 1.0)
        return np.concatenate([self._static[t], dyn]).astype(np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = sorted(set(options) - set(RESET_OPTIONS))
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}; valid: {list(RESET_OPTIONS)}")
        self._dry_run = bool(options.get("dry_run", False))
        self._t = 0
        self._done = False
        self.raw_actions, self.applied = [], []
        self._begin_episode()
        return self._observation(), {"step": 0, "num_steps": self.num_steps}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("the episode is over (or never started): call reset() first")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.size != 1:
            raise ValueError(f"action must hold exactly one number, got shape {np.shape(action)}")
        if not np.isfinite(a[0]):
            raise ValueError(
                f"action is {a[0]} at step {self._t}: actions must be finite numbers in [-1, 1] "
                "(check the agent for NaN outputs, e.g. a diverged network)"
            )
        raw = float(np.clip(a[0], -1.0, 1.0))
        applied, info = self._apply(self._t, self._action_to_value(raw))
        self.raw_actions.append(raw)
        self.applied.append(applied)
        self._t += 1
        applied_action = float(np.clip(self._value_to_action(applied), -1.0, 1.0))
        info = {"step": self._t - 1, "raw_action": raw, "applied": applied, "applied_action": applied_action, **info}
        if self._t < self.num_steps:
            return self._observation(), 0.0, False, False, info
        self._done = True
        info.update(self._policy_info())
        reward = 0.0
        if not self._dry_run:
            measured, extra = self._evaluate()
            trim_heap()  # freed candidate models go back to the OS: memory stays flat over a search
            reward, components = self._reward_fn(measured)
            reward = float(reward)
            info.update(
                accuracy=measured.accuracy,
                accuracy_original=measured.accuracy_original,
                flops_ratio=measured.flops_ratio,
                params_ratio=measured.params_ratio,
                flops=measured.flops,
                reward_name=self.reward_name,
                reward_components=components,
                **extra,
            )
        info["dry_run"] = self._dry_run
        return self._observation(), reward, True, False, info
