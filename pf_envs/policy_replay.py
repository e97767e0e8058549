"""Policy replay: rebuild the compressed model of any recorded policy, without an agent.

A search records every episode's applied values (``episodes.jsonl``, ``best.json``). Replaying
one plays exactly those values through a fresh env (the same clamp, rounding and recovery),
so the candidate it builds is the recorded one: at ``ft_iters=0`` its accuracy is the recorded
reward, and with fine-tuning it is too when the episode's reset seed is passed (it decides the
fine-tuning batches). Re-training, export and the results tables start from here; replaying
a search's run folder is :func:`pf_deploy.replay.replay_run` (the run folder is the agents'
format, above the environments).

>>> import pf_envs
>>> out = pf_envs.replay("ChannelPrune-ResNet20-v0", {"ft_iters": 0}, [0.5] * 10)   # doctest: +SKIP
>>> out.model, out.reward, out.info["flops_ratio"]                                  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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


def episode_policy(record: Mapping[str, Any]) -> list[float]:
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
        values = episode_policy(record)
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
    from pf_envs.core import CompressionEnv
    from pf_envs.model_env import ModelCompressionEnv
    from pf_envs.registry import check_env_id

    policy, rec_seed, rec_reward = _policy_of(record)
    own = env is None
    if env is None:
        check_env_id(env_id)
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
