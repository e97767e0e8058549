"""Bayesian optimisation with a Gaussian process (GPyOpt) over the per-step action vector.

The first ``initial_points`` episodes are uniform random (seeded like the random agent);
after that each episode plays the maximiser of the acquisition (expected improvement by
default) of a GP fitted to every episode so far. A resumed run refits on its records.

Cost: every episode refits the GP's hyperparameters (``optimize_restarts`` restarts of
L-BFGS, GPyOpt's default 5) and optimises the acquisition on all episodes so far, so an episode
costs ~0.5-2 s of CPU and grows with the episodes (docs/surrogate.md, "Speed"): on a surrogate
env it is the agent, not the env, that takes the time. ``optimize_restarts=1`` refits from the
current hyperparameters only (GPyOpt's cheaper setting; another algorithm setting, so another
search).
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np

from pf_agents.base import BlackBoxAgent


class GPAgent(BlackBoxAgent):
    name = "gp"
    DEFAULTS: ClassVar[dict[str, Any]] = {"initial_points": 10, "acquisition": "EI", "exploration_weight": 2.0,
                                          "optimize_restarts": 5}

    def run(self) -> None:
        try:
            import GPyOpt
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise ImportError(
                "the gp agent needs GPyOpt (pip install GPyOpt GPy 'setuptools<81' matplotlib)"
            ) from exc
        domain = [{"name": f"a{i}", "type": "continuous", "domain": (-1.0, 1.0)} for i in range(self.steps)]
        xs = [np.asarray(ep["raw_actions"], float) for ep in self.history]
        ys = [float(ep["reward"]) for ep in self.history]
        while not self.budget.exhausted:
            i = self.budget.done
            if i < int(self.config["initial_points"]) or len(xs) < 2:
                x = np.random.default_rng([self.seed, i]).uniform(-1.0, 1.0, self.steps)
            else:
                np.random.seed((self.seed * 1_000_003 + i) % (2**32))  # GPyOpt draws from np.random
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    bo = GPyOpt.methods.BayesianOptimization(
                        f=None, domain=domain, X=np.vstack(xs), Y=-np.asarray(ys).reshape(-1, 1),
                        acquisition_type=self.config["acquisition"], normalize_Y=True,
                        exact_feval=False, acquisition_weight=float(self.config["exploration_weight"]),
                        optimize_restarts=int(self.config["optimize_restarts"]),
                    )
                    x = np.clip(bo.suggest_next_locations()[0], -1.0, 1.0)
            reward, _ = self.play(np.asarray(x))
            xs.append(np.asarray(x, float))
            ys.append(reward)
