"""What every search agent shares: the episode budget and the agent base classes.

Agents see only the Gymnasium API and the env's documented ``info`` keys. The harness
(:mod:`pf_agents.search`) wraps the environment in an :class:`EpisodeRecorder`, which
reseeds every episode, records it and counts it against the budget; an agent just plays
episodes until ``budget.exhausted``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np


class EpisodeBudget:
    """How many scored episodes the run may still play."""

    def __init__(self, done: int, total: int) -> None:
        self.done = done
        self.total = total

    @property
    def exhausted(self) -> bool:
        return self.done >= self.total

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.done)


def episode_seed(seed: int, episode: int) -> int:
    """The reset seed of episode ``episode`` of a run seeded ``seed`` (stable across resumes)."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0] % (2**31 - 1))


class EpisodeRecorder(gym.Wrapper):
    """Reseeds each episode from (run seed, episode index) and reports each scored episode.

    ``on_episode(record)`` receives a dict with the episode index, its seed, the reward,
    raw and applied actions (per step), the final ``info`` and the wall time. Dry-run
    episodes (``reset(options={"dry_run": True})``) are neither reseeded nor reported.

    :meth:`replay` queues recorded episodes that an agent resumed from an older state has
    to see again (a learning agent killed between an episode's record and its own save):
    each is played as a free dry run with the recorded actions, its last step returns the
    recorded reward and final info, and it is neither reported nor counted again.
    """

    def __init__(self, env: gym.Env, seed: int, budget: EpisodeBudget, on_episode: Callable[[dict], None]) -> None:
        super().__init__(env)
        self.run_seed = seed
        self.budget = budget
        self.on_episode = on_episode
        self.agent_info: dict[str, Any] = {}
        self._replay: list[dict[str, Any]] = []
        self._replaying: dict[str, Any] | None = None
        #: replayed steps where the agent asked for another action than the recorded one
        self.replay_mismatches = 0
        self._reset_episode(None, False)

    def replay(self, records: list[dict[str, Any]]) -> None:
        """Queue recorded episodes (records of this run, in order) to be replayed before any
        new episode is played; see the class docstring."""
        self._replay = [dict(r) for r in records]

    @property
    def pending_replays(self) -> int:
        """Recorded episodes still to be replayed (the one in progress included)."""
        return len(self._replay)

    def _reset_episode(self, seed: int | None, dry: bool) -> None:
        self._seed, self._dry = seed, dry
        self._raw: list[float] = []
        self._applied: list[float] = []
        self._applied_action: list[float] = []
        self._t0 = time.time()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        dry = bool((options or {}).get("dry_run", False))
        self._replaying = None
        if not dry and self._replay:
            self._replaying = self._replay[0]
            seed = self._replaying.get("seed")
            self._reset_episode(seed, True)
            return self.env.reset(seed=seed, options={**(options or {}), "dry_run": True})
        if not dry:
            seed = episode_seed(self.run_seed, self.budget.done)
        self._reset_episode(seed, dry)
        return self.env.reset(seed=seed, options=options)

    def _replay_step(self, action):
        rec = self._replaying
        assert rec is not None
        t = len(self._raw)
        recorded = float(rec["raw_actions"][t])
        asked = float(np.clip(np.asarray(action, np.float64).reshape(-1)[0], -1.0, 1.0))
        if abs(asked - recorded) > 1e-5:
            self.replay_mismatches += 1
        obs, _, terminated, truncated, info = self.env.step(np.array([recorded], np.float32))
        self._raw.append(info.get("raw_action"))
        want = rec["applied"][t] if t < len(rec["applied"]) else None
        if want is not None and info.get("applied") is not None and abs(float(info["applied"]) - float(want)) > 1e-6:
            raise ValueError(
                f"replaying recorded episode {rec['episode']} at step {t}: the env applies {info['applied']} where "
                f"the record says {want}, so it is not the env the run was recorded with; resume with the recorded "
                "env settings or start a new run"
            )
        if not (terminated or truncated):
            return obs, 0.0, terminated, truncated, info
        self._replay.pop(0)
        self._replaying = None
        info = {**info, **rec.get("info", {}), "dry_run": False, "replayed": True}
        return obs, float(rec["reward"]), terminated, truncated, info

    def step(self, action):
        if self._replaying is not None:
            return self._replay_step(action)
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._raw.append(info.get("raw_action"))
        self._applied.append(info.get("applied"))
        self._applied_action.append(info.get("applied_action"))
        if (terminated or truncated) and not self._dry and not info.get("dry_run", False):
            final = {k: v for k, v in info.items() if k not in ("step", "raw_action", "applied", "applied_action")}
            record = {
                "episode": self.budget.done,
                "seed": self._seed,
                "reward": float(reward),
                "raw_actions": list(self._raw),
                "applied": list(self._applied),
                "applied_actions": list(self._applied_action),
                "info": final,
                "wall_time_s": round(time.time() - self._t0, 3),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            if self.agent_info:
                record["agent_info"] = dict(self.agent_info)
            self.budget.done += 1
            self.on_episode(record)
        return obs, reward, terminated, truncated, info


class Agent:
    """Base of every search agent.

    Args:
        env: the recorder-wrapped environment.
        seed: run seed.
        run_dir: the run folder (agents may keep state there, e.g. a model to resume from).
        history: episodes already recorded in this run (resume); empty for a new run.
        budget: the episode budget shared with the recorder.
        **kwargs: agent settings (see each agent's ``DEFAULTS``).
    """

    name: ClassVar[str] = "agent"
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    #: whether the agent may write its own TensorBoard curves into the run folder (the harness
    #: sets it from ``search(tensorboard=...)``)
    tensorboard: bool = True

    def __init__(
        self,
        env: EpisodeRecorder,
        *,
        seed: int,
        run_dir: Path,
        history: list[dict[str, Any]],
        budget: EpisodeBudget,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - set(self.DEFAULTS))
        if unknown:
            raise TypeError(
                f"agent {self.name!r} got unknown setting(s) {unknown}; valid: {sorted(self.DEFAULTS)}"
            )
        self.env = env
        self.seed = seed
        self.run_dir = Path(run_dir)
        self.history = history
        self.budget = budget
        self.config = {**self.DEFAULTS, **kwargs}
        from pf_envs.core import CompressionEnv

        core = env.unwrapped  # a project env declares its steps; a foreign one is counted once
        self.steps: int = core.num_steps if isinstance(core, CompressionEnv) else self._count_steps()

    def _count_steps(self) -> int:
        """Steps per episode, counted with a dry-run episode."""
        self.env.reset(options={"dry_run": True})
        n = 0
        while True:
            n += 1
            *_, terminated, truncated, _ = self.env.step(np.zeros(self.env.action_space.shape, np.float32))
            if terminated or truncated:
                return n

    def run(self) -> None:
        """Play episodes until the budget is exhausted (or the agent has nothing left to try)."""
        raise NotImplementedError


@dataclass
class PlayedEpisode:
    """One episode played from a fixed action vector (:func:`play_episode`)."""

    reward: float
    info: dict[str, Any]
    applied: list[float]
    clamped_any: bool


def play_episode(
    env: gym.Env, actions: Sequence[float] | np.ndarray, *, dry_run: bool = False, seed: int | None = None
) -> PlayedEpisode:
    """Play ``actions[t]`` at step ``t`` until the episode ends: the one loop every black-box
    agent, baseline and benchmark uses. A dry run (``dry_run=True``) scores nothing and is free:
    the final info still has the applied policy and its cost ratio, and ``clamped_any`` says
    whether the budget clamp cut any step."""
    env.reset(seed=seed, options={"dry_run": True} if dry_run else None)
    applied: list[float] = []
    clamped = False
    for a in np.asarray(actions, np.float32).reshape(-1):
        _, reward, terminated, truncated, info = env.step(np.array([a], np.float32))
        applied.append(info.get("applied"))
        clamped = clamped or bool(info.get("clamped", False))
        if terminated or truncated:
            return PlayedEpisode(float(reward), info, applied, clamped)
    raise ValueError(f"the episode did not end after {len(applied)} actions")


class BlackBoxAgent(Agent):
    """An agent that proposes a whole per-step action vector and plays it as one episode."""

    #: times an episode that failed with a RuntimeError (e.g. CUDA out of memory) is replayed
    retries: ClassVar[int] = 2

    def play(self, actions: np.ndarray, dry_run: bool = False) -> tuple[float, dict[str, Any]]:
        """Play one episode with ``actions[t]`` at step ``t``; returns (reward, final info).

        A transient failure inside the env (``RuntimeError``) replays the episode up to
        :attr:`retries` times before it is raised; bad input (``ValueError``) is raised at once.
        """
        actions = np.asarray(actions, dtype=np.float32).reshape(-1)
        if len(actions) != self.steps:
            raise ValueError(f"expected {self.steps} actions, got {len(actions)}")
        for attempt in range(self.retries + 1):
            try:
                played = play_episode(self.env, actions, dry_run=dry_run)
                return played.reward, played.info
            except RuntimeError as exc:
                if attempt == self.retries:
                    raise
                warnings.warn(f"episode failed ({exc}); replaying it ({attempt + 1}/{self.retries})", stacklevel=2)
        raise AssertionError("unreachable")
