"""Random search: every episode plays independent uniform actions in [-1, 1]."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from pf_agents.base import BlackBoxAgent


class RandomAgent(BlackBoxAgent):
    """Uniform random actions; episode ``i`` draws from ``(seed, i)``, so a resumed run
    plays exactly what an uninterrupted one would have."""

    name = "random"
    DEFAULTS: ClassVar[dict[str, Any]] = {}

    def run(self) -> None:
        while not self.budget.exhausted:
            rng = np.random.default_rng([self.seed, self.budget.done])
            self.play(np.asarray(rng.uniform(-1.0, 1.0, self.steps)))
