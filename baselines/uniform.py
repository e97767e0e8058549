"""The uniform policy: one action for every step, the largest that meets the budget.

The constant action is found by bisection over dry-run episodes (free: no scoring), as the
largest one that no step's budget clamp has to cut (``info["clamped"]``). That policy is
then scored once; being deterministic, it is not repeated (set ``repeats`` to re-score it
with other fine-tuning seeds).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from pf_agents.base import BlackBoxAgent


def clamped(env, actions: np.ndarray) -> bool:
    """Whether the budget clamp cuts any step of ``actions`` (a dry-run episode: nothing is scored)."""
    env.reset(options={"dry_run": True})
    cut = False
    for a in actions:
        *_, terminated, truncated, info = env.step(np.array([a], np.float32))
        cut = cut or bool(info.get("clamped", False))
        if terminated or truncated:
            break
    return cut


def largest_unclamped(env, make: Callable[[float], np.ndarray], steps: int = 40) -> float | None:
    """The largest ``x`` in [-1, 1] whose policy ``make(x)`` no budget clamp cuts, by bisection
    over dry-run episodes; None if even ``make(-1)`` is cut. ``make`` must grow with ``x``."""
    if not clamped(env, make(1.0)):
        return 1.0
    if clamped(env, make(-1.0)):
        return None
    lo, hi = -1.0, 1.0
    for _ in range(int(steps)):
        mid = 0.5 * (lo + hi)
        if clamped(env, make(mid)):
            hi = mid
        else:
            lo = mid
    return lo


class UniformAgent(BlackBoxAgent):
    name = "uniform"
    DEFAULTS: ClassVar[dict[str, Any]] = {"repeats": 1, "bisection_steps": 40}

    def constant_action(self) -> float:
        """The largest constant action whose episode is never clamped by the budget."""
        a = largest_unclamped(self.env, lambda x: np.full(self.steps, x, np.float32),
                              int(self.config["bisection_steps"]))
        return -1.0 if a is None else a

    def run(self) -> None:
        a = self.constant_action()
        self.env.agent_info = {"constant_action": a}
        while not self.budget.exhausted and self.budget.done < int(self.config["repeats"]):
            self.play(np.full(self.steps, a, np.float32))
