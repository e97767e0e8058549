"""The uniform policy: one action for every step, the largest that meets the budget.

The constant action is found by bisection over dry-run episodes (free: no scoring), as the
largest one that no step's budget clamp has to cut (``info["clamped"]``). That policy is
then scored once; being deterministic, it is not repeated (set ``repeats`` to re-score it
with other fine-tuning seeds).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from pf_agents.base import BlackBoxAgent


class UniformAgent(BlackBoxAgent):
    name = "uniform"
    DEFAULTS: ClassVar[dict[str, Any]] = {"repeats": 1, "bisection_steps": 40}

    def constant_action(self) -> float:
        """The largest constant action whose episode is never clamped by the budget."""
        lo, hi = -1.0, 1.0
        if not self._clamped(hi):
            return hi
        for _ in range(int(self.config["bisection_steps"])):
            mid = 0.5 * (lo + hi)
            if self._clamped(mid):
                hi = mid
            else:
                lo = mid
        return lo

    def _clamped(self, a: float) -> bool:
        self.env.reset(options={"dry_run": True})
        clamped = False
        while True:
            *_, terminated, truncated, info = self.env.step(np.array([a], np.float32))
            clamped = clamped or bool(info.get("clamped", False))
            if terminated or truncated:
                return clamped

    def run(self) -> None:
        a = self.constant_action()
        self.env.agent_info = {"constant_action": a}
        while not self.budget.exhausted and self.budget.done < int(self.config["repeats"]):
            self.play(np.full(self.steps, a, np.float32))
