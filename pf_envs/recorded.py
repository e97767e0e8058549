"""A replayed, re-trained or exported model must be the recorded one: :func:`check_recorded`.

A run folder's ``config.json`` records, beside the env id and kwargs, the fingerprints of the
base model's weights (``base_model``) and of every setting that decides the reward
(``recovery``). Replay (:func:`pf_deploy.replay.replay_run`) and the sources of
re-training and export (:meth:`pf_deploy.starting_model.PolicySource.make_env`) build the env from
the recorded id and kwargs and pass it here before anything is played: a config edited by
hand (another env id, another budget), another checkpoint or another version of the env is
refused with one sentence instead of building some other model. After the replay, the
replayed reward is compared with the recorded one:

- bit-deterministic envs (on the CPU with ``ft_iters=0``: the candidate and its score are a
  pure function of the policy, the weights and the data) must give the recorded reward to
  :data:`REWARD_TOLERANCE`; a difference is a :class:`RecordMismatchError`;
- envs that fine-tune each candidate (``ft_iters > 0``: the float sums of multi-threaded CPU
  kernels in the backward pass can differ in the last bits between runs and thread counts, so
  the accuracy can differ by an image or two) or run on a GPU (cuDNN's convolution backward
  and atomic adds are not bit-deterministic) are not bit-deterministic: a difference is a
  :class:`ReplayedRewardWarning` with both numbers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

#: A bit-deterministic env's replayed reward may differ from the recorded one by this much
#: (the record holds the reward as JSON prints a float: exact).
REWARD_TOLERANCE = 1e-9


class RecordMismatchError(ValueError):
    """The env a replay, re-training or export builds is not the one the record was made on,
    or (bit-deterministic envs) the replayed reward is not the recorded one."""


class ReplayedRewardWarning(UserWarning):
    """A replayed reward differs from the recorded one on an env that is not bit-deterministic."""


def nondeterminism(env: Any) -> str | None:
    """Why ``env``'s rewards are not bit-deterministic, or None when they are."""
    base = getattr(env, "unwrapped", env)
    device = getattr(base, "device", None)
    if device is not None and getattr(device, "type", str(device)) != "cpu":
        return f"it runs on {device}, whose fine-tuning and convolution kernels are not bit-deterministic"
    if int(getattr(base, "ft_iters", 0) or 0) > 0:
        return (f"it fine-tunes every candidate (ft_iters={base.ft_iters}), and the float sums of multi-threaded "
                "CPU kernels can differ in the last bits between runs and thread counts")
    return None


def check_recorded(
    env: Any,
    config: Mapping[str, Any],
    *,
    overrides: Mapping[str, Any] | None = None,
    record: Mapping[str, Any] | None = None,
    reward: float | None = None,
    where: str = "the record",
) -> None:
    """Refuse an env that is not the one ``config`` (a run folder's ``config.json``, or the
    ``env_id``/``env_kwargs``/``base_model`` of a compressed-model record) was recorded on; with
    ``record`` (an episode) and ``reward`` (its replayed reward), refuse (bit-deterministic
    envs) or warn about (the others) a reward other than the recorded one.

    ``overrides`` are the kwargs the caller put on top of the recorded ones (``reward_split``,
    ``data_root``, ...): the recovery fingerprint is compared with them set back to their
    recorded values, and a replay scored on other settings is not compared with the record.

    Raises:
        RecordMismatchError: another base model or recovery recipe, or (bit-deterministic
            envs) another reward.
    """
    base = getattr(env, "unwrapped", env)
    env_id = config.get("env_id") or type(base).__name__
    recorded_model, recorded_recovery = config.get("base_model"), config.get("recovery")
    model_now = getattr(base, "model_fingerprint", None)
    if recorded_model and model_now and recorded_model != model_now:
        raise RecordMismatchError(
            f"{where} was recorded with base-model weights of fingerprint {recorded_model}, but {env_id} with these "
            f"kwargs loads weights of fingerprint {model_now} (another checkpoint): pass the checkpoint the search "
            "used (--env-kwargs checkpoint=PATH)"
        )
    recovery_now = getattr(base, "recovery_fingerprint", None)
    reverted: dict[str, Any] = {}
    if overrides:
        from pf_envs.registry import env_kwargs_with_defaults

        recorded_kwargs = dict(config.get("env_kwargs") or {})
        try:
            recorded_kwargs = env_kwargs_with_defaults(str(env_id), recorded_kwargs)
        except Exception:  # noqa: BLE001 - an id without readable defaults: the recorded kwargs as they are
            pass
        reverted = {k: recorded_kwargs[k] for k in overrides if k in recorded_kwargs}
    as_recorded = recovery_now
    if reverted and recovery_now and hasattr(base, "recovery_fingerprint_with"):
        as_recorded = base.recovery_fingerprint_with(reverted)
    if recorded_recovery and as_recorded and recorded_recovery != as_recorded:
        raise RecordMismatchError(
            f"{where} was recorded with recovery fingerprint {recorded_recovery}, but {env_id} with the recorded "
            f"settings now gives {as_recorded}: the env id, a setting in config.json or the env's recovery version "
            "is not what the search ran with, so the model rebuilt here would not be the recorded one; use the "
            "version and settings that recorded it, or search again"
        )
    if record is None or reward is None or record.get("reward") is None:
        return
    if recorded_recovery and recovery_now != recorded_recovery:
        return  # scored on other settings (another split, more images): not the recorded figure
    if not recorded_recovery and any(k not in ("data_root", "device", "cache") for k in overrides or {}):
        return
    recorded_reward, replayed = float(record["reward"]), float(reward)
    if (math.isnan(recorded_reward) and math.isnan(replayed)) or abs(replayed - recorded_reward) <= REWARD_TOLERANCE:
        return
    episode = record.get("episode", "?")
    said = (f"the replayed reward of episode {episode} of {where} is {replayed:.6f}, but {recorded_reward:.6f} "
            f"was recorded (difference {replayed - recorded_reward:+.6f})")
    why = nondeterminism(env)
    if why is None:
        raise RecordMismatchError(
            f"{said}: {env_id} is bit-deterministic here (on the CPU with ft_iters=0), so the record was not made by "
            "this env, model, data and code (an edited or damaged record, other data, another library version); "
            "replay it where it was recorded, or search again"
        )
    warnings.warn(f"{said}; {env_id} is not bit-deterministic ({why})", ReplayedRewardWarning, stacklevel=3)
