"""The search harness: one environment, one agent, a budget of episodes, a run folder.

>>> from pf_agents import search
>>> result = search("ChannelPrune-ResNet20-v0", agent="tpe", episodes=50, seed=0,
...                 env_kwargs={"flops_budget": 0.5, "ft_iters": 0})      # doctest: +SKIP
>>> result.best["reward"], result.best["applied"]                          # doctest: +SKIP

Swapping the agent is the one argument; everything else (the env, its clamp and reward,
the records, the curves) stays the same.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym

from pf_agents.base import EpisodeBudget, EpisodeRecorder
from pf_agents.records import RunRecord
from pf_agents.registry import AGENTS, get_agent_class
from pf_envs.registry import env_kwargs_with_defaults


@dataclass
class SearchResult:
    """What a search found.

    Attributes:
        run_dir: the run folder (records, TensorBoard curves, agent state).
        best: the best episode's record (``reward``, ``applied`` per-layer values,
            ``raw_actions``, ``info`` with accuracy, flops_ratio, ...); None if no episode ran.
        history: every episode's record, in order.
    """

    run_dir: Path
    best: dict[str, Any] | None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best_reward(self) -> float | None:
        return None if self.best is None else self.best["reward"]

    @property
    def best_policy(self) -> list[float] | None:
        """Per-layer values of the best episode, in unit (layer) order (keep ratios for
        ChannelPrune); what ``play_policy`` and ``pf_envs.replay`` take."""
        from pf_envs.policy_replay import episode_policy

        return None if self.best is None else episode_policy(self.best)


def make_env(env_id: str, env_kwargs: dict[str, Any] | None = None) -> gym.Env:
    """``gym.make`` with an error that lists this project's ids when ``env_id`` is unknown."""
    from pf_envs.registry import check_env_id

    check_env_id(env_id)
    return gym.make(env_id, **(env_kwargs or {}))


def env_fingerprints(instance: gym.Env) -> tuple[str | None, str | None]:
    """``(model_fingerprint, recovery_fingerprint)`` of a pocketflow-gym env (what the run
    folder records to refuse a resume against other weights or another reward recipe);
    ``(None, None)`` for a foreign Gymnasium env."""
    from pf_envs.core import CompressionEnv

    env = instance.unwrapped
    if isinstance(env, CompressionEnv):
        return env.model_fingerprint, env.recovery_fingerprint
    return None, None


def default_run_name(env_id: str, agent: str, seed: int) -> str:
    return f"{env_id}__{agent}__seed{seed}"


def search(
    env: str | gym.Env,
    agent: str = "ddpg",
    episodes: int = 100,
    seed: int = 0,
    logdir: str | Path = "runs",
    *,
    run_name: str | None = None,
    resume: bool = False,
    env_kwargs: dict[str, Any] | None = None,
    agent_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    tensorboard: bool = True,
) -> SearchResult:
    """Search a compression policy.

    Args:
        env: an env id (``ChannelPrune-MobileNetV1-v0``) or an environment instance.
        agent: one of :data:`pf_agents.registry.AGENTS` (ddpg, td3, sac, gp, tpe, random, uniform).
        episodes: total scored episodes of the run (a resumed run plays what is left).
        seed: seeds the agent and every episode's reset (episode ``i`` gets a seed derived
            from ``(seed, i)``).
        logdir: parent folder of run folders.
        run_name: run folder name (default ``{env}__{agent}__seed{seed}``).
        resume: continue the run recorded in the run folder (required if it exists).
        env_kwargs: kwargs for ``gym.make`` (only with an env id).
        agent_kwargs: agent settings (see the agent's ``DEFAULTS``).
        progress: show a progress bar.
        tensorboard: write TensorBoard curves (``compress/*``, and SB3's ``train/*`` for the
            learning agents); off, the run folder holds the records and the agent's state only
            (what a league of many short surrogate runs wants: the curves cost more than a
            surrogate episode). The records, the agent and its results are the same either way.

    Raises:
        ValueError: unknown env id or agent, or resuming with other settings or against
            other base-model weights than the run was recorded with;
            :class:`~pf_agents.records.DamagedRunError` (a ValueError): damaged config or
            records, naming the file and line.
        TypeError: unknown agent setting.
        FileExistsError: the run folder holds a run and ``resume`` is false, or holds records
            without a config.
        FileNotFoundError: ``resume`` but nothing to resume.
        RunLockedError: another process is writing this run folder.
        RunWriteError: the run folder cannot be written (disk full, read-only).
    """
    if int(episodes) != episodes or episodes < 1:
        raise ValueError(f"episodes must be a positive integer, got {episodes!r}")
    agent_cls = get_agent_class(agent)
    agent_kwargs = dict(agent_kwargs or {})
    unknown = sorted(set(agent_kwargs) - set(agent_cls.DEFAULTS))
    if unknown:
        raise TypeError(f"agent {agent!r} got unknown setting(s) {unknown}; valid: {sorted(agent_cls.DEFAULTS)}")
    if isinstance(env, str):
        env_id = env
        from pf_envs.registry import check_env_id

        check_env_id(env_id)
    else:
        if env_kwargs:
            raise ValueError("env_kwargs apply to an env id; pass them when you build the env instead")
        env_id = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
    run_dir = Path(logdir) / (run_name or default_run_name(env_id, agent, seed))
    config = {
        "env_id": env_id, "env_kwargs": dict(env_kwargs or {}), "agent": agent,
        "agent_kwargs": {**agent_cls.DEFAULTS, **agent_kwargs}, "seed": int(seed), "episodes": int(episodes),
        "run_dir": str(run_dir), "python": platform.python_version(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    # Takes the run folder's lock first: from here on this process is its only writer.
    record = RunRecord.open(run_dir, config, resume,
                            fill_env_defaults=env_kwargs_with_defaults if isinstance(env, str) else None,
                            agent_defaults=agent_cls.DEFAULTS)
    budget = EpisodeBudget(done=len(record.episodes), total=int(episodes))
    instance: gym.Env | None = None
    logger = None
    bar = None
    try:
        if budget.exhausted:
            return SearchResult(run_dir, record.best, record.episodes)
        # The env is built and checked before config.json is written: a start that fails
        # (bad env kwargs, missing data, another base model) leaves no run to refuse the
        # corrected command.
        instance = make_env(env_id, env_kwargs) if isinstance(env, str) else env
        model_fp, recovery_fp = env_fingerprints(instance)
        record.check_env(model=model_fp, recovery=recovery_fp)
        record.start()
        if tensorboard:
            from pf_agents.tensorboard import CompressionLogger

            logger = CompressionLogger(run_dir, {k: v for k, v in config.items() if k != "started"},
                                       first_episode=len(record.episodes))
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=budget.total, initial=budget.done, desc=f"{agent} on {env_id}", unit="ep",
                       dynamic_ncols=True)

        def on_episode(rec: dict[str, Any]) -> None:
            rec["agent"] = agent
            record.append(rec)
            assert record.best is not None
            best = record.best["reward"]
            if logger is not None:
                logger.episode(rec, best)
            if bar is not None:
                bar.set_postfix(best=f"{best:.4f}", last=f"{rec['reward']:.4f}", s_per_ep=f"{rec['wall_time_s']:.1f}")
                bar.update(1)

        recorder = EpisodeRecorder(instance, int(seed), budget, on_episode)
        runner = agent_cls(recorder, seed=int(seed), run_dir=run_dir, history=list(record.episodes),
                           budget=budget, **agent_kwargs)
        runner.tensorboard = bool(tensorboard)
        runner.run()
    except BaseException:
        if bar is not None:
            bar.close()
            bar = None
        if logger is not None:
            logger.close(None)
            logger = None
        record.discard()  # a new run that recorded nothing: leave no folder behind
        raise
    finally:
        if bar is not None:
            bar.close()
        if logger is not None:
            logger.close(record.best["reward"] if record.best else None)
        if isinstance(env, str) and instance is not None:
            instance.close()
        record.close()
    return SearchResult(run_dir, record.best, record.episodes)


__all__ = ["AGENTS", "SearchResult", "make_env", "search"]
