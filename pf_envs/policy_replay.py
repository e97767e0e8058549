"""Policy replay: rebuild the compressed model of any recorded policy, without an agent.

A search records every episode's applied values (``episodes.jsonl``, ``best.json``). Replaying
one plays exactly those values through a fresh env (the same clamp, rounding and recovery),
so the candidate it builds is the recorded one: at ``ft_iters=0`` its accuracy is the recorded
reward, and with fine-tuning it is too when the episode's reset seed is passed (it decides the
fine-tuning batches). Re-training, export and the results tables start from here.

>>> import pf_envs
>>> out = pf_envs.replay("ChannelPrune-ResNet20-v0", {"ft_iters": 0}, [0.5] * 10)   # doctest: +SKIP
>>> out = pf_envs.replay_run("runs/ChannelPrune-ResNet20-v0__ddpg__seed0")          # doctest: +SKIP
>>> out.model, out.reward, out.info["flops_ratio"]                                  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym


@dataclass
class Replayed:
    """A replayed policy.

    Attributes:
        env_id / env_kwargs: the env it was played on.
        policy: the applied values, one per step.
        reward: the reward the env gave it now.
        info: the final step's info (accuracy, flops_ratio, ...).
        model: the compressed model (None for envs without one, e.g. ``Toy-v0``).
        recorded_reward: the reward in the record, where one was given.
        model_fingerprint: the base model's fingerprint (None without a model).
    """

    env_id: str
    env_kwargs: dict[str, Any]
    policy: list[float]
    reward: float
    info: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    recorded_reward: float | None = None
    model_fingerprint: str | None = None


def record_policy(record: Mapping[str, Any]) -> list[float]:
    """The policy of an episode record (an ``episodes.jsonl`` line or ``best.json``) in unit
    order, what :meth:`pf_envs.core.CompressionEnv.play_policy` takes: the final info's
    ``policy``. ``applied`` is in step order, the same unless the env visits its units in a
    random order (:attr:`pf_envs.core.CompressionEnv.random_order`); it is the fallback for
    records without a final info.

    Raises:
        ValueError: the record has neither.
    """
    info = record.get("info")
    if isinstance(info, Mapping) and isinstance(info.get("policy"), list):
        return [float(v) for v in info["policy"]]
    if "applied" not in record:
        raise ValueError("the record has no 'applied' values: pass an episodes.jsonl line, best.json, "
                         "or the list of applied values")
    return [float(v) for v in record["applied"]]


def _policy_of(record: Sequence[float] | Mapping[str, Any]) -> tuple[list[float], int | None, float | None]:
    if isinstance(record, Mapping):
        values = record_policy(record)
        seed, reward = record.get("seed"), record.get("reward")
        return values, (None if seed is None else int(seed)), (None if reward is None else float(reward))
    return [float(v) for v in record], None, None


def replay(
    env_id: str,
    env_kwargs: Mapping[str, Any] | None,
    record: Sequence[float] | Mapping[str, Any],
    *,
    seed: int | None = None,
    env: gym.Env | None = None,
) -> Replayed:
    """Play a recorded policy on ``env_id`` built with ``env_kwargs`` (or on ``env``, already
    built with them) and return the candidate.

    Args:
        record: an ``episodes.jsonl`` line or ``best.json`` (a dict with ``applied`` and
            ``seed``), or the applied values themselves.
        seed: the episode's reset seed (default: the record's).

    Raises:
        ValueError: the policy does not fit the env (another model or other settings).
    """
    import pf_envs  # noqa: F401  (registers the ids)
    from pf_envs.core import CompressionEnv
    from pf_envs.model_env import ModelCompressionEnv

    policy, rec_seed, rec_reward = _policy_of(record)
    own = env is None
    if env is None:
        if env_id not in gym.registry:
            raise ValueError(f"unknown env {env_id!r}; pocketflow-gym registers {sorted(pf_envs.ENV_IDS)}")
        env = gym.make(env_id, **dict(env_kwargs or {}))
    try:
        base = env.unwrapped
        if not isinstance(base, CompressionEnv):
            raise TypeError(f"{env_id} is not a pocketflow-gym compression env")
        reward, info = base.play_policy(policy, seed=rec_seed if seed is None else seed)
        model = base.compressed_model() if isinstance(base, ModelCompressionEnv) else None
        fingerprint = base.model_fingerprint
    finally:
        if own:
            env.close()
    return Replayed(env_id, dict(env_kwargs or {}), policy, reward, info, model, rec_reward, fingerprint)


def replay_run(
    run_dir: str | os.PathLike[str],
    episode: int | None = None,
    *,
    env_kwargs: Mapping[str, Any] | None = None,
) -> Replayed:
    """Replay the best episode of a run folder (or episode ``episode``) on the env and kwargs
    recorded in its ``config.json``; ``env_kwargs`` overrides some of them (e.g.
    ``reward_split="test"`` to score the same candidate on the test split).

    The env is checked against the run's recorded fingerprints before the replay, and the
    replayed reward against the recorded one after it (:func:`pf_envs.recorded.check_recorded`).

    Raises:
        RecordMismatchError (a ValueError): another base model or recovery recipe than the
            recorded ones (an edited config.json, another checkpoint or env version), or a
            bit-deterministic env's reward other than the recorded one.
    """
    from pf_agents.records import read_run  # the run folder's one reader (same damage rules)

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir / 'config.json'} does not exist: {run_dir} is not a search run folder")
    run = read_run(run_dir)
    config = run.config
    if episode is None:
        if run.best is None:
            raise FileNotFoundError(f"{run_dir} has no scored episode yet")
        record = run.best
    elif 0 <= int(episode) < len(run.episodes):
        record = run.episodes[int(episode)]
    else:
        raise ValueError(f"{run_dir / 'episodes.jsonl'} has no episode {episode} (it holds {len(run.episodes)})")
    kwargs = {**config.get("env_kwargs", {}), **dict(env_kwargs or {})}
    import pf_envs  # noqa: F401  (registers the ids)
    from pf_envs.recorded import check_recorded

    env_id = config.get("env_id")
    if env_id not in gym.registry:
        raise ValueError(f"{run_dir / 'config.json'} names the env {env_id!r}, which is not registered; "
                         f"pocketflow-gym registers {sorted(pf_envs.ENV_IDS)}")
    env = gym.make(env_id, **kwargs)
    try:
        check_recorded(env, config, overrides=env_kwargs, where=str(run_dir))
        out = replay(env_id, kwargs, record, env=env)
        check_recorded(env, config, overrides=env_kwargs, record=record, reward=out.reward, where=str(run_dir))
    finally:
        env.close()
    return out
