"""The environment core shared by every compression method: the episode and the budget.

An episode walks the method's compression units (layers, channel groups, a layer's weights
or activations) one step each, in a fixed order or, where the method sets
:attr:`CompressionEnv.random_order` (PocketFlow's quantization search), in an order drawn from
the env's seed at every reset (:attr:`CompressionEnv.visit_order`). The agent's action in ``[-1, 1]`` is mapped
linearly to the unit's value range (:class:`pf_envs.budget.UnitSpace`: keep ratio, sparsity,
bits), rounded to the unit's grid, clamped so that the budget stays reachable
(:func:`pf_envs.budget.clamp`, AMC's rule for any monotone :class:`pf_envs.budget.Cost`), and
applied; the applied value is what the next observation and ``info`` report. The reward is 0
until the last step, where the candidate is built, recovered and scored.

A method (a subclass) provides, once, in ``__init__``: the units' value spaces, the cost,
the budget and each unit's static features (:meth:`CompressionEnv._setup_budget`); and the
scoring of a finished policy (:meth:`CompressionEnv._evaluate`). Optional hooks refine the
rounding, the per-step and final ``info`` and the dynamic features. Environments on real
models subclass :class:`pf_envs.model_env.ModelCompressionEnv`, which adds the model, the
data, the baseline and the recovery. ``docs/environments.md`` ("Writing an environment")
has a complete minimal example.

Every step's ``info`` has ``raw_action`` (the agent's action, clipped to [-1, 1]),
``applied`` (the value after rounding and clamping), ``applied_action`` (that value mapped
back to [-1, 1]: what a learning agent should store) and ``clamped`` (whether the budget cut
the value asked for). The last step's ``info`` adds ``policy`` (every applied value),
``cost_ratio`` (the policy's cost / the reference cost), ``budget``, ``cost_name``, the
method's own keys (ChannelPrune: ``flops_ratio``, ``keep_ratios``, ...) and, unless the
episode is a dry run, the measurements (``accuracy``, ``accuracy_original``, ``macs``,
``flops_ratio``, ``params_ratio``, ``reward_components``, ...).

``reset(options={"dry_run": True})`` plays an episode without scoring it (reward 0.0, no
``accuracy`` in ``info``): the final ``info`` still has the applied policy and its cost
ratio, so a baseline can search the budget geometry for free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, SupportsFloat

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from pf_envs.budget import Cost, UnitSpace, clamp, floor_ratio, policy_cost
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


class VisitCost:
    """A :class:`~pf_envs.budget.Cost` that takes values in visit order (``order[i]`` is the unit
    visited at step ``i``) and prices them in unit order: the clamp and the dynamic features
    see an episode in random order as a prefix of steps, as with the fixed order."""

    def __init__(self, cost: Cost, order: Sequence[int]) -> None:
        self.cost, self.order = cost, list(order)
        self.name, self.increasing, self.reference = cost.name, cost.increasing, cost.reference

    def __call__(self, values: Sequence[float]) -> float:
        units = [0.0] * len(self.order)
        for i, v in zip(self.order, values):
            units[i] = v
        return self.cost(units)


def minmax(features: np.ndarray) -> np.ndarray:
    """Scale each column to [0, 1] over the rows; constant columns become 0."""
    lo, hi = features.min(0), features.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return ((features - lo) / span).astype(np.float32)


def _numeric_action(action: Any, step: int) -> np.ndarray:
    """``action`` as a flat float64 array, if it is a number or a numeric array (int or float;
    a tensor or a list of numbers too); a string, bytes, a bool, None or an array of any of
    them is refused with a ``TypeError`` instead of being coerced to a number."""
    kind = "" if isinstance(action, (str, bytes, bool, np.bool_)) or action is None else None
    if kind is None:
        try:
            arr = np.asarray(action)
        except (TypeError, ValueError):  # ragged lists and other shapes numpy cannot hold
            arr = np.asarray(None)
        kind = arr.dtype.kind
        if kind in "iuf":
            return arr.astype(np.float64).reshape(-1)
    raise TypeError(
        f"action at step {step} is {action!r} ({type(action).__name__}): an action must be a number or a "
        "numeric array (int or float) holding one number in [-1, 1], not a string, bytes, a bool or None"
    )


class CompressionEnv(gym.Env[np.ndarray, np.ndarray]):
    """Base class: one step per compression unit, clamped actions, sparse final reward.

    Subclasses call :meth:`_setup_budget` in ``__init__`` and implement :meth:`_evaluate`.

    Attributes:
        unit_spaces: each unit's :class:`~pf_envs.budget.UnitSpace`.
        cost: the budgeted :class:`~pf_envs.budget.Cost`.
        budget: the fraction of ``cost.reference`` a policy may keep.
        applied / raw_actions: this episode's applied values and (clipped) actions so far, in
            the order the steps visited the units (:attr:`visit_order`).
        visit_order: the unit of each step this episode (``range(num_steps)`` unless
            :attr:`random_order`); :attr:`policy` holds the applied values in unit order.
        model_fingerprint: SHA-1 prefix of the base model's weights (None: no model); the
            search harness records it so that a run is never resumed against other weights.
        recovery_fingerprint: SHA-1 prefix of every setting that decides the reward, and the
            env's recipe version; the harness refuses to resume a run under another one.
        last_timing: seconds spent in each phase of the last scored episode.
    """

    metadata: dict[str, Any] = {"render_modes": []}
    #: The budget's keyword argument (in error messages).
    budget_kwarg: ClassVar[str] = "budget"
    #: What bounds the cheap end of every unit (in error messages), e.g. ``min_keep``.
    floor_kwarg: ClassVar[str] = "the smallest values"
    #: Extra final-``info`` key holding ``cost_ratio`` (ChannelPrune: ``flops_ratio``).
    ratio_key: ClassVar[str | None] = None
    #: Names of the dynamic observation features (after the static ones).
    DYNAMIC_FEATURES: ClassVar[tuple[str, ...]] = ("reduced", "rest", "prev_value")
    #: Names of the static observation features, one per column of the static table.
    STATIC_FEATURES: ClassVar[tuple[str, ...]] = ()
    #: Visit the units in a new order each episode, drawn from the env's seed at reset (a
    #: method sets it in ``__init__``, e.g. from a kwarg); False: unit order, every episode.
    #: A method that sets it reads the finished episode's values as :attr:`policy` (unit
    #: order), not :attr:`applied` (step order); its hooks get unit indices.
    random_order: bool = False

    model_fingerprint: str | None = None
    recovery_fingerprint: str | None = None

    def __init__(self, reward: str = "accuracy") -> None:
        super().__init__()
        self.reward_name = reward
        self._reward_fn = get_reward(reward)
        self.unit_spaces: list[UnitSpace] = []
        self.cost: Cost | None = None
        self.budget = 1.0
        self._static: np.ndarray = np.zeros((1, 1), np.float32)
        self._t = 0
        self._done = True
        self._dry_run = False
        self.raw_actions: list[float] = []
        self.applied: list[float] = []
        self.visit_order: list[int] = []
        self._visit_spaces: list[UnitSpace] = []
        self._visit_cost: Cost | None = None
        self.last_timing: dict[str, float] = {}

    # -- set-up --------------------------------------------------------------------------------
    def _setup_budget(
        self, unit_spaces: Sequence[UnitSpace], cost: Cost, budget: float, static: np.ndarray | Sequence
    ) -> None:
        """Declare the units, the cost, the budget (a fraction of ``cost.reference``) and the
        static features (one row per unit, raw: min-max normalised here).

        Raises:
            ValueError: the budget cannot be met even with every unit at its cheapest value.
        """
        static = np.asarray(static, np.float64)
        if len(unit_spaces) == 0 or static.ndim != 2 or len(static) != len(unit_spaces):
            raise ValueError(f"{type(self).__name__}: needs at least one unit and one static row per unit")
        if self.STATIC_FEATURES and len(self.STATIC_FEATURES) != static.shape[1]:
            raise ValueError(f"{type(self).__name__}: {static.shape[1]} static features per unit but "
                             f"STATIC_FEATURES names {len(self.STATIC_FEATURES)}")
        self.unit_spaces, self.cost, self.budget = list(unit_spaces), cost, float(budget)
        floor = self._floor_ratio()
        if floor > self.budget + 1e-9:
            raise ValueError(
                f"{self.budget_kwarg}={budget} is unreachable for {self._subject()}: with every unit at "
                f"{self.floor_kwarg} the policy still keeps {floor:.3f} of its {cost.name}"
                f"{self._unreachable_note()}; choose "
                f"{self.budget_kwarg} >= {math.ceil(floor * 1000) / 1000} or lower {self.floor_kwarg}"
            )
        self._static = minmax(static)
        self._rest = [self._later_cost(t) / cost.reference for t in range(len(self.unit_spaces))]
        self._set_visit_order(list(range(len(self.unit_spaces))))
        n = self._static.shape[1] + len(self.DYNAMIC_FEATURES)
        self.observation_space = spaces.Box(0.0, 1.0, (n,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    def _floor_ratio(self) -> float:
        """The smallest reachable cost ratio (the budget must be at least this): every unit at
        its cheapest value. An env whose cost is not monotone in a unit (PruneQuant's
        precisions) overrides it with the cheapest policy its clamp can reach."""
        assert self.cost is not None
        return floor_ratio(self.cost, self.unit_spaces)

    def _subject(self) -> str:
        return type(self).__name__

    def _unreachable_note(self) -> str:
        """Said after "still keeps X of its cost" when the budget is unreachable (e.g. which
        layers no unit can compress, and why); empty by default."""
        return ""

    def _set_visit_order(self, order: list[int]) -> None:
        """Visit the units in ``order`` this episode (the clamp, the features and the ``rest``
        of each step follow it; the fixed unit order keeps the method's own ``_later_cost``)."""
        assert self.cost is not None
        self.visit_order = order
        if order == list(range(len(self.unit_spaces))):
            self._visit_spaces, self._visit_cost = self.unit_spaces, self.cost
            self._visit_rest = self._rest
            return
        self._visit_spaces = [self.unit_spaces[u] for u in order]
        self._visit_cost = VisitCost(self.cost, order)
        ref = self.cost.reference
        inc = self.cost.increasing
        self._visit_rest = []
        for t in range(len(order)):
            head = [s.end(True, inc) for s in self._visit_spaces[: t + 1]]
            dear = policy_cost(self._visit_cost, self._visit_spaces, head, rest="dear")
            cheap = policy_cost(self._visit_cost, self._visit_spaces, head, rest="cheap")
            self._visit_rest.append((dear - cheap) / ref)

    @property
    def policy(self) -> list[float]:
        """The applied values of this (finished) episode in unit order."""
        if len(self.applied) != self.num_steps:
            raise RuntimeError("the episode is not finished: the policy has a value per unit only at its end")
        values = [0.0] * self.num_steps
        for u, v in zip(self.visit_order, self.applied):
            values[u] = v
        return values

    @property
    def num_steps(self) -> int:
        """Steps per episode (compression units)."""
        return len(self.unit_spaces)

    # -- the budget geometry, public (baselines and replay use it) -----------------------------
    @property
    def budget_limit(self) -> float:
        """The largest cost a policy may have."""
        assert self.cost is not None
        return self.budget * self.cost.reference

    def policy_cost_ratio(self, values: Sequence[float]) -> float:
        """The cost ratio of a whole policy (one value per unit), as the final info reports it."""
        assert self.cost is not None
        if len(values) != self.num_steps:
            raise ValueError(f"a policy of {type(self).__name__} has {self.num_steps} values, got {len(values)}")
        return float(self.cost(list(values))) / self.cost.reference

    def value_to_action(self, t: int, value: float) -> float:
        """The action in [-1, 1] that maps to ``value`` at step ``t`` (before the clamp)."""
        return float(np.clip(self.unit_spaces[t].to_action(value), -1.0, 1.0))

    def round_value(self, t: int, value: float) -> float:
        """The allowed value of unit ``t`` that ``value`` rounds to."""
        return self._round(t, value)

    # -- hooks ---------------------------------------------------------------------------------
    def _begin_episode(self) -> None:
        """Per-episode state reset (must be cheap)."""

    def _round(self, t: int, value: float) -> float:
        """The allowed value of unit ``t`` nearest to ``value`` (default: the grid's)."""
        return self.unit_spaces[t].round(value)

    def _clamp(self, t: int, wanted: float) -> float:
        """The value step ``t`` applies for the allowed value ``wanted``: AMC's clamp
        (:func:`pf_envs.budget.clamp`, every later unit at its cheapest). A method whose cost is
        not monotone in some unit (PruneQuant: int8 <-> fp32 conversions) overrides it."""
        return clamp(t, wanted, self.applied, self._visit_spaces, self._visit_cost, self.budget_limit)

    def _unit_info(self, t: int, applied: float) -> dict[str, Any]:
        """Extra step ``info`` once unit ``t`` got ``applied`` (e.g. ChannelPrune's counts)."""
        return {}

    def _later_cost(self, t: int) -> float:
        """The cost the units after ``t`` can still give up: their cost at their dearest minus at
        their cheapest, with every unit up to ``t`` at its cheapest (AMC's ``rest`` feature, for
        costs that do not vanish at the cheap end; ChannelPrune overrides it with AMC's own:
        the MACs of every layer touching a later group). Called once per step at set-up: the
        feature does not depend on the episode."""
        assert self.cost is not None
        head = [s.end(True, self.cost.increasing) for s in self.unit_spaces[: t + 1]]
        return policy_cost(self.cost, self.unit_spaces, head, rest="dear") - policy_cost(
            self.cost, self.unit_spaces, head, rest="cheap")

    def _normalise_value(self, t: int, value: float) -> float:
        """A value as an observation feature in [0, 1] (values already in [0, 1] unchanged)."""
        s = self.unit_spaces[t]
        if 0.0 <= s.low and s.high <= 1.0:
            return float(value)
        return (float(value) - s.low) / (s.high - s.low)

    def _dynamic_features(self, t: int) -> list[float]:
        """AMC's dynamic features: cost removed so far, cost of later units (fractions of the
        reference) and the previous applied value."""
        assert self.cost is not None
        ref = self.cost.reference
        removed = 1.0 - policy_cost(self._visit_cost, self._visit_spaces, self.applied, rest="dear") / ref
        rest = self._visit_rest[t] if self._t < self.num_steps else 0.0
        prev = (self._normalise_value(self.visit_order[len(self.applied) - 1], self.applied[-1])
                if self.applied else 1.0)
        return [removed, rest, prev]

    def _policy_info(self) -> dict[str, Any]:
        """Extra final ``info`` about the applied policy (also in dry runs)."""
        return {}

    def _evaluate(self) -> tuple[Measurements, dict[str, Any]]:
        """Build, recover and score the candidate of the finished episode."""
        raise NotImplementedError

    # -- Gymnasium API -------------------------------------------------------------------------
    def _observation(self) -> np.ndarray:
        t = min(self._t, self.num_steps - 1)
        dyn = np.clip(np.asarray(self._dynamic_features(t), np.float32), 0.0, 1.0)
        return np.concatenate([self._static[self.visit_order[t]], dyn]).astype(np.float32)

    def observation_features(self) -> tuple[str, ...]:
        """Names of the observation's entries, in order."""
        return tuple(self.STATIC_FEATURES) + tuple(self.DYNAMIC_FEATURES)

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
        if self.random_order:
            self._set_visit_order([int(u) for u in self.np_random.permutation(self.num_steps)])
        self._begin_episode()
        return self._observation(), {"step": 0, "num_steps": self.num_steps}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("the episode is over (or never started): call reset() first")
        a = _numeric_action(action, self._t)
        if a.size != 1:
            raise ValueError(f"action must hold exactly one number, got shape {np.shape(action)}")
        if not np.isfinite(a[0]):
            raise ValueError(
                f"action is {a[0]} at step {self._t}: actions must be finite numbers in [-1, 1] "
                "(check the agent for NaN outputs, e.g. a diverged network)"
            )
        assert self.cost is not None
        t = self._t
        u = self.visit_order[t]  # the unit of this step (t itself unless random_order)
        raw = float(np.clip(a[0], -1.0, 1.0))
        wanted = self._round(u, self.unit_spaces[u].to_value(raw))
        applied = float(self._clamp(t, wanted))
        self.raw_actions.append(raw)
        self.applied.append(applied)
        self._t += 1
        info = {
            "step": t, "raw_action": raw, "applied": applied, "applied_action": self.value_to_action(u, applied),
            "clamped": applied != wanted, **({"unit": u} if self.random_order else {}), **self._unit_info(u, applied),
        }
        if self._t < self.num_steps:
            return self._observation(), 0.0, False, False, info
        self._done = True
        ratio = self.policy_cost_ratio(self.policy)
        info.update(policy=self.policy, cost_ratio=ratio, budget=self.budget, cost_name=self.cost.name)
        if self.ratio_key:
            info[self.ratio_key] = ratio
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
                macs=measured.macs,
                reward_name=self.reward_name,
                reward_components=components,
                **extra,
            )
        info["dry_run"] = self._dry_run
        return self._observation(), reward, True, False, info

    # -- policy replay ---------------------------------------------------------------------------
    def play_policy(
        self, values: Sequence[float], *, seed: int | None = None, dry_run: bool = False
    ) -> tuple[float, dict[str, Any]]:
        """Play the episode whose applied values are ``values`` (a recorded policy: the
        ``applied`` list of an ``episodes.jsonl`` line or ``best.json``), without an agent;
        returns (reward, final info). ``seed`` is the recorded episode's reset seed (it decides
        the fine-tuning batches when the env fine-tunes, and the visit order under
        ``random_order``). ``values`` are in unit order (the final info's ``policy``); each step
        plays the value of the unit it visits. ``compressed_model()`` then returns the
        candidate (model envs).

        Raises:
            ValueError: ``values`` is not a policy this env can play as given (wrong length, a
                value that is not allowed, or over the budget: recorded under other settings).
        """
        values = [float(v) for v in values]
        if len(values) != self.num_steps:
            raise ValueError(
                f"the policy has {len(values)} values but {self._subject()} has {self.num_steps} steps: "
                "it was recorded on another model or with other settings"
            )
        self.reset(seed=seed, options={"dry_run": True} if dry_run else None)
        info: dict[str, Any] = {}
        reward: SupportsFloat = 0.0
        for t in range(self.num_steps):
            u = self.visit_order[t]
            v = values[u]
            _, reward, terminated, _, info = self.step(np.array([self.value_to_action(u, v)], np.float32))
            if not math.isclose(info["applied"], v, rel_tol=1e-6, abs_tol=1e-9):
                self._done = True
                raise ValueError(
                    f"step {t}: the recorded value {v} plays as {info['applied']} here "
                    f"({'cut by the budget' if info['clamped'] else 'not an allowed value'}); the policy "
                    f"was recorded with other settings ({self.budget_kwarg}, rounding, model)"
                )
        return float(reward), info
