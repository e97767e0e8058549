"""Stage 1 after the search: replay a recorded policy and keep its compressed model.

    pf-replay runs/ChannelPrune-ResNet20-v0__ddpg__seed0 [--episode N] [--split test] [--save m.pt]
    python -m pf_deploy.replay ...                    (the same; scripts/replay.py too)

Rebuilds the candidate of a search's best episode (or episode ``--episode``) on the env and
kwargs its ``config.json`` records (:func:`replay_run`), prints its reward, accuracy and
cost ratio, and with ``--save`` writes the compressed model's state dict (fp32 tensors, loadable
with ``torch.load(..., weights_only=True)``) and its JSON record beside it (the policy, env and
kwargs): ``pf_envs.load_compressed(path)`` rebuilds the model from the two. Cost: one episode
of the env (seconds at ``ft_iters=0``; the env's set-up first, cached on disk after the first).

>>> from pf_deploy import replay_run
>>> out = replay_run("runs/ChannelPrune-ResNet20-v0__ddpg__seed0")          # doctest: +SKIP
>>> out.model, out.reward, out.info["flops_ratio"]                          # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from pf_agents.cli import on_interrupt
from pf_envs.data import DataError
from pf_envs.policy_replay import Replayed, replay
from pf_envs.zoo import CheckpointError


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
        FileNotFoundError: not a run folder, or nothing scored yet.
        ValueError: no such episode, or the policy does not fit the env.
        RecordMismatchError (a ValueError): another base model or recovery recipe than the
            recorded ones (an edited config.json, another checkpoint or env version), or a
            bit-deterministic env's reward other than the recorded one.
    """
    import gymnasium as gym

    from pf_agents.records import run_episode  # the run folder's one reader (same damage rules)
    from pf_envs.recorded import check_recorded
    from pf_envs.registry import check_env_id

    run, record = run_episode(run_dir, episode)
    config = run.config
    kwargs = {**config.get("env_kwargs", {}), **dict(env_kwargs or {})}
    env_id = config.get("env_id")
    check_env_id(env_id)
    env = gym.make(env_id, **kwargs)
    try:
        check_recorded(env, config, overrides=env_kwargs, where=str(run_dir))
        out = replay(env_id, kwargs, record, env=env)
        check_recorded(env, config, overrides=env_kwargs, record=record, reward=out.reward, where=str(run_dir))
    finally:
        env.close()
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pf-replay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a search run folder (holds config.json, episodes.jsonl, best.json)")
    p.add_argument("--episode", type=int, default=None, help="episode index (default: the best one)")
    p.add_argument("--split", choices=["val", "test"], default=None,
                   help="score the same candidate on this split (default: the run's reward split)")
    p.add_argument("--samples", type=int, default=None, help="images of that split (default: the run's)")
    p.add_argument("--save", default=None, help="write the compressed model's state dict here (.pt)")
    return p


@on_interrupt("nothing was written; run the same command again")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.split:
        overrides["reward_split"] = args.split
        if args.split == "test" and args.samples is None:
            overrides["reward_samples"] = 10_000
    if args.samples is not None:
        overrides["reward_samples"] = args.samples
    try:
        out = replay_run(args.run_dir, args.episode, env_kwargs=overrides)
    except (FileNotFoundError, ValueError, TypeError, CheckpointError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    info = out.info
    summary = {
        "env": out.env_id, "episode": args.episode if args.episode is not None else "best",
        "reward": out.reward, "recorded_reward": out.recorded_reward,
        **{k: info[k] for k in ("accuracy", "accuracy_original", "flops_ratio", "params_ratio", "cost_ratio")
           if k in info},
        "policy": [round(v, 6) for v in out.policy],
    }
    print(json.dumps(summary, indent=2))
    if args.save:
        if out.model is None:
            print(f"error: {out.env_id} has no model to save", file=sys.stderr)
            return 2
        from pf_envs.compressed import save_compressed

        try:
            rec = save_compressed(out.model, args.save, env_id=out.env_id, env_kwargs=out.env_kwargs,
                                  policy=out.policy, model_fingerprint=out.model_fingerprint,
                                  metrics={k: v for k, v in summary.items() if k not in ("env", "policy")},
                                  source={"run_dir": str(args.run_dir), "episode": summary["episode"]})
        except TypeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.save} ({sum(p.numel() for p in out.model.parameters()):,} parameters) and {rec}; "
              "load it with pf_envs.load_compressed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
