"""Replay a recorded policy and keep its compressed model:
``python scripts/replay.py runs/ChannelPrune-ResNet20-v0__ddpg__seed0 [--episode N] [--split test] [--save m.pt]``.

Rebuilds the candidate of a search's best episode (or episode ``--episode``) on the env and
kwargs its ``config.json`` records (``pf_envs.replay_run``), prints its reward, accuracy and
cost ratio, and with ``--save`` writes the compressed model's state dict (fp32 tensors, loadable
with ``torch.load(..., weights_only=True)``) and its JSON record beside it (the policy, env and
kwargs): ``pf_envs.load_compressed(path)`` rebuilds the model from the two.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a search run folder (holds config.json, episodes.jsonl, best.json)")
    p.add_argument("--episode", type=int, default=None, help="episode index (default: the best one)")
    p.add_argument("--split", choices=["val", "test"], default=None,
                   help="score the same candidate on this split (default: the run's reward split)")
    p.add_argument("--samples", type=int, default=None, help="images of that split (default: the run's)")
    p.add_argument("--save", default=None, help="write the compressed model's state dict here (.pt)")
    args = p.parse_args(argv)

    import pf_envs
    from pf_envs.data import DataError
    from pf_envs.zoo import CheckpointError

    overrides = {}
    if args.split:
        overrides["reward_split"] = args.split
        if args.split == "test" and args.samples is None:
            overrides["reward_samples"] = 10_000
    if args.samples is not None:
        overrides["reward_samples"] = args.samples
    try:
        out = pf_envs.replay_run(args.run_dir, args.episode, env_kwargs=overrides)
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
