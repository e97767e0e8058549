"""Re-training, part 1: where the policy comes from, the starting model it builds (replay,
optionally PocketFlow's group fine-tuning), the teacher, and the identity that ties a
re-training state file to one run.

The training loop itself is :func:`learners.retraining.retrain` (plain PyTorch);
:mod:`pf_deploy.retrain` is the command line (``pf-retrain``).

>>> from pf_deploy.starting_model import resolve_source, starting_model    # doctest: +SKIP
>>> src = resolve_source(run="runs/ChannelPrune-ResNet20-v0__ddpg__seed0")  # doctest: +SKIP
>>> env = src.make_env()                                                    # doctest: +SKIP
>>> model = starting_model(src, env)                                        # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

#: env kwargs that say where or how an env runs, not what it builds (left out of the identity).
RUN_LOCAL_KWARGS: tuple[str, ...] = ("data_root", "device", "cache", "render_mode")


@dataclass
class PolicySource:
    """A policy to re-train and the env it builds on.

    Attributes:
        env_id / env_kwargs: the env (recorded kwargs, with the caller's overrides on top).
        policy: the applied values, one per step.
        model_fingerprint: the base model's fingerprint where the record holds one (checked
            against the env's).
        weights: the compressed model file to start from (a saved compressed model), else None:
            start from the replayed candidate.
        origin: what the policy was read from, for the output record.
        record_kwargs: the kwargs to record (``env_kwargs`` without the caller's run-local ones).
        recorded: what the policy's record says it was made on (a run's ``config.json``:
            ``env_id``, ``env_kwargs``, ``base_model``, ``recovery``), checked against the env.
        overrides: the kwargs the caller put on top of the recorded ones.
    """

    env_id: str
    env_kwargs: dict[str, Any]
    policy: list[float]
    model_fingerprint: str | None = None
    weights: Path | None = None
    origin: dict[str, Any] = field(default_factory=dict)
    record_kwargs: dict[str, Any] = field(default_factory=dict)
    recorded: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)

    def make_env(self):
        """The env (``gym.make``), checked against the record's fingerprints
        (:func:`pf_envs.recorded.check_recorded`: the base model, and for a run's records the
        recovery recipe)."""
        import gymnasium as gym

        from pf_envs.model_env import ModelCompressionEnv
        from pf_envs.registry import check_env_id

        check_env_id(self.env_id)
        env = gym.make(self.env_id, **self.env_kwargs)
        base = env.unwrapped
        if not isinstance(base, ModelCompressionEnv):
            env.close()
            raise TypeError(f"{self.env_id} has no model to re-train")
        from pf_envs.recorded import check_recorded

        recorded = {"env_id": self.env_id, **self.recorded}
        if self.model_fingerprint and not recorded.get("base_model"):
            recorded["base_model"] = self.model_fingerprint
        try:
            check_recorded(env, recorded, overrides=self.overrides,
                           where=str(self.origin.get("run_dir") or self.origin.get("record")
                                     or self.origin.get("compressed_model") or "the policy's record"))
        except BaseException:
            env.close()
            raise
        return env

    def identity(self, extra: Mapping[str, Any] | None = None) -> tuple[str, str]:
        """``(digest, readable text)`` of what is re-trained: env, kwargs that build the model,
        policy, base model, starting weights and ``extra`` (e.g. the group fine-tuning settings)."""
        kwargs = {k: v for k, v in sorted(self.env_kwargs.items()) if k not in RUN_LOCAL_KWARGS}
        doc = {"env": self.env_id, "kwargs": kwargs, "policy": [round(v, 9) for v in self.policy],
               "base": self.model_fingerprint, "weights": _sha1_file(self.weights) if self.weights else None,
               **dict(extra or {})}
        text = json.dumps(doc, sort_keys=True, default=str)
        pol = ", ".join(f"{v:.3g}" for v in self.policy)
        readable = f"{self.env_id} policy [{pol}]" + (f" from {self.weights.name}" if self.weights else "")
        return hashlib.sha1(text.encode()).hexdigest()[:20], readable


def _sha1_file(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}): the file is damaged; pass another record or write it "
                         "again (a search's best.json, an episodes.jsonl line, a compressed model's .json)") from None


def _check_policy(values: Any, where: str) -> list[float]:
    import math

    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{where}: the policy must be a non-empty list of numbers, got {values!r}")
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: the policy holds a value that is not a number: {values!r}") from None
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{where}: the policy holds NaN or infinity: {out}")
    return out


def resolve_source(
    *,
    run: str | os.PathLike[str] | None = None,
    record: str | os.PathLike[str] | None = None,
    policy: Sequence[float] | None = None,
    episode: int | None = None,
    env_id: str | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
) -> PolicySource:
    """Where the policy comes from: exactly one of

    * ``run``: a search run folder (its best episode, or ``episode``), on the env and kwargs of
      its ``config.json``;
    * ``record``: a ``best.json`` or an ``episodes.jsonl`` (the best line, or line ``episode``),
      with the ``config.json`` beside it or ``env_id``/``env_kwargs``; or a compressed model's
      ``.json``/``.pt`` (``pf_envs.save_compressed``): its policy, and its weights as the start;
    * ``policy``: the applied values, with ``env_id`` and ``env_kwargs``.

    ``env_kwargs`` always override the recorded kwargs (``data_root``, ``device``, ...).

    Raises:
        FileNotFoundError: a missing file or folder.
        ValueError: a damaged record, a record without a policy, more or fewer than one source.
    """
    given = [name for name, v in (("--run", run), ("--record", record), ("--policy", policy)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"pass exactly one of --run, --record, --policy (got {given or 'none'})")
    overrides = dict(env_kwargs or {})
    if policy is not None:
        if not env_id:
            raise ValueError("--policy needs --env ID (and --env-kwargs for the settings it was searched with)")
        values = _check_policy(list(policy), "--policy")
        return PolicySource(env_id, overrides, values, origin={"policy": values}, record_kwargs=dict(overrides))
    if run is not None:
        from pf_agents.records import run_episode

        found, rec = run_episode(run, episode)
        cfg = found.config
        return _from_episode(rec, cfg.get("env_id"), cfg.get("env_kwargs", {}), overrides, env_id,
                             cfg.get("base_model"), {"run_dir": str(run), "episode": rec.get("episode")}, str(run),
                             cfg)
    path = Path(record)
    from pf_envs.compressed import FORMAT, read_model_record

    if path.suffix == ".pt" or (path.suffix == ".json" and isinstance(_read_json(path, "a record"), dict)
                                and _read_json(path, "a record").get("format") == FORMAT):
        rec = read_model_record(path)
        weights = path.with_suffix(".pt")
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} does not exist (its record {path.with_suffix('.json')} does): "
                                    "a compressed model is both files")
        if env_id and env_id != rec["env_id"]:
            raise ValueError(f"{path} was compressed on {rec['env_id']}, not --env {env_id}")
        values = _check_policy(rec["policy"], str(path))
        kwargs = {**rec["env_kwargs"], **overrides}
        return PolicySource(rec["env_id"], kwargs, values, rec.get("model_fingerprint"), weights,
                            {"compressed_model": str(weights)}, kwargs,
                            {"env_kwargs": dict(rec["env_kwargs"])}, overrides)
    config_path = path.parent / "config.json"
    config = _read_json(config_path, "") if config_path.is_file() else {}
    if path.suffix == ".jsonl":
        from pf_agents.records import read_episodes

        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: pass a search's episodes.jsonl")
        episodes, _, _ = read_episodes(path)
        if not episodes:
            raise ValueError(f"{path} holds no finished episode")
        if episode is None:
            import math

            scored = [e for e in episodes if isinstance(e.get("reward"), (int, float)) and math.isfinite(e["reward"])]
            rec = max(scored or episodes, key=lambda e: e.get("reward", float("-inf")))
        elif 0 <= episode < len(episodes):
            rec = episodes[episode]
        else:
            raise ValueError(f"{path} has no episode {episode} (it holds {len(episodes)})")
    else:
        rec = _read_json(path, "a search's best.json, an episodes.jsonl or a compressed model's .json")
        if not isinstance(rec, dict) or "applied" not in rec:
            raise ValueError(f"{path} is not a policy record: it has no 'applied' values (pass a search's best.json, "
                             "an episodes.jsonl, or a compressed model's .json written by save_compressed)")
    return _from_episode(rec, config.get("env_id"), config.get("env_kwargs", {}), overrides, env_id,
                         config.get("base_model"), {"record": str(path), "episode": rec.get("episode")}, str(path),
                         config if isinstance(config, dict) else {})


def _from_episode(rec: Mapping[str, Any], rec_env: str | None, rec_kwargs: Mapping[str, Any],
                  overrides: Mapping[str, Any], env_id: str | None, fingerprint: str | None,
                  origin: dict[str, Any], where: str, config: Mapping[str, Any] | None = None) -> PolicySource:
    if "applied" not in rec:
        raise ValueError(f"{where}: the episode record has no 'applied' values; the record is damaged")
    from pf_envs.policy_replay import episode_policy

    values = _check_policy(episode_policy(rec), where)  # unit order (random_order records differ)
    env = env_id or rec_env
    if not env:
        raise ValueError(f"{where}: no config.json beside the record names its env: pass --env ID and --env-kwargs "
                         "with the settings the search used")
    if env_id and rec_env and env_id != rec_env:
        raise ValueError(f"{where} was searched on {rec_env}, not --env {env_id}")
    kwargs = {**dict(rec_kwargs), **dict(overrides)}
    # the recorded fingerprints are checked when the recorded env is the one built
    recorded = {k: config[k] for k in ("env_kwargs", "base_model", "recovery") if k in config} if (
        config and (not env_id or env_id == rec_env)) else {}
    return PolicySource(env, kwargs, values, fingerprint, None, origin, kwargs, recorded, dict(overrides))


# -- the starting model -------------------------------------------------------------------------
def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def group_finetune(
    env: Any,
    policy: Sequence[float],
    *,
    group_size: int,
    finetune_fn: Callable[[nn.Module, int], nn.Module],
    log: Callable[[str], None] = print,
) -> nn.Module:
    """PocketFlow's group fine-tuning of a channel-pruning policy.

    The policy's units (channel groups, in step order) are applied ``group_size`` at a time:
    each round builds the env again on the partially pruned, fine-tuned model (so channel
    selection and reconstruction statistics are recomputed from it), plays the round's target
    channel counts (units pruned earlier or later keep everything, ``flops_budget=1``), prunes,
    and calls ``finetune_fn(model, round)`` before the next round (not after the last: the
    full re-training follows).

    Returns the pruned model, whose architecture is checked to equal the one the policy builds
    directly (``env.unwrapped.policy_model(policy)``).

    Raises:
        ValueError: the env is not a channel-pruning env, or the rounds end in another
            architecture than the direct policy's.
    """
    import gymnasium as gym

    base = env.unwrapped
    if group_size < 1:
        raise ValueError(f"group_size={group_size}: must be >= 1")
    if not (hasattr(base, "step_groups") and hasattr(base, "table") and hasattr(base, "_count")):
        name = base.spec.id if base.spec else type(base).__name__
        raise ValueError(f"--group-size is group fine-tuning for channel pruning; {name} has no channel groups: "
                         "leave --group-size out")
    direct = base.policy_model(policy)  # plays the policy: base.applied is what it builds
    target = {gid: base._count(t, v) for t, (gid, v) in enumerate(zip(base.step_groups, base.applied))}
    step_of = {gid: t for t, gid in enumerate(base.step_groups)}
    order = list(base.step_groups)
    kwargs = {k: v for k, v in base.settings.items() if k not in ("checkpoint", "model")}
    kwargs.update(flops_budget=1.0, channel_round=base.channel_round, min_keep=base.min_keep, cache=False,
                  reward_samples=min(int(kwargs.get("reward_samples", 200)), 200))
    current: nn.Module = base.model
    rounds = [order[i:i + group_size] for i in range(0, len(order), group_size)]
    env_id = base.spec.id if base.spec is not None else None
    for r, chunk in enumerate(rounds):
        todo = [g for g in chunk if target[g] < base.table.groups[g].channels]
        if todo:
            sub_env = gym.make(env_id, model=current, **kwargs)
            sub = sub_env.unwrapped
            if [g.producers for g in sub.table.groups] != [g.producers for g in base.table.groups]:
                raise ValueError("the partially pruned model couples its channels differently from the original; "
                                 "group fine-tuning cannot map the policy onto it")
            values = []
            for gid in sub.step_groups:
                c = sub.table.groups[gid].channels
                values.append(target[gid] / c if gid in todo else 1.0)
            missing = [g for g in todo if g not in sub.step_groups]
            if missing:
                raise ValueError(f"round {r}: channel groups {missing} are not prunable steps of the rebuilt env")
            current = sub.policy_model(values)
            sub_env.close()
        log(f"group fine-tuning round {r + 1}/{len(rounds)}: units {[step_of[g] for g in chunk]} -> channels "
            f"{[target[g] for g in chunk]}")
        for p in current.parameters():
            p.requires_grad_(True)
        if r + 1 < len(rounds):
            current = finetune_fn(current, r)
    if _shapes(current) != _shapes(direct):
        diff = {k: (v, _shapes(direct).get(k)) for k, v in _shapes(current).items() if _shapes(direct).get(k) != v}
        raise ValueError(f"group fine-tuning ended in another architecture than the policy's (group vs direct: {diff})")
    return current


def starting_model(source: PolicySource, env: Any, *, group_size: int | None = None,
                   finetune_fn: Callable[[nn.Module, int], nn.Module] | None = None,
                   log: Callable[[str], None] = print) -> nn.Module:
    """The model re-training starts from (trainable, on the CPU): the saved compressed model's
    weights (a compressed-model record), or the replayed candidate of the policy (its
    architecture, selected and reconstructed weights), or with ``group_size`` the result of
    :func:`group_finetune`."""
    base = env.unwrapped
    if source.weights is not None:
        if group_size:
            raise ValueError("--group-size starts from the original model; a saved compressed model is already pruned: "
                             "leave --group-size out to re-train it again")
        from pf_envs.compressed import load_compressed

        model, _ = load_compressed(source.weights, env=env)
    elif group_size:
        if finetune_fn is None:
            raise ValueError("group fine-tuning needs a finetune_fn")
        model = group_finetune(env, source.policy, group_size=group_size, finetune_fn=finetune_fn, log=log)
    else:
        model = base.policy_model(source.policy)
    model = model.cpu()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def teacher_of(env: Any) -> nn.Module:
    """The uncompressed pre-trained model (a frozen copy)."""
    import copy

    teacher = copy.deepcopy(env.unwrapped.model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher

