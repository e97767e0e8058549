"""Command line of the search: ``python scripts/search.py`` (or ``pf-search``).

    python scripts/search.py --env ChannelPrune-MobileNetV1-v0 --agent ddpg --episodes 300 --logdir runs --seed 0
    python scripts/search.py --env ChannelPrune-ResNet20-v0 --agent tpe --episodes 100 \\
        --env-kwargs flops_budget=0.3,ft_iters=0
    python scripts/search.py ... --resume          # continue a killed run
    tensorboard --logdir runs
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from typing import Any

from pf_agents.registry import AGENTS


def parse_value(text: str) -> Any:
    """``0.3`` -> 0.3, ``true`` -> True, ``[1,2]`` -> [1, 2], ``none`` -> None, else the string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """``"a=1,b=x,c=[1,2]"`` -> ``{"a": 1, "b": "x", "c": [1, 2]}`` (commas inside brackets kept)."""
    if not text:
        return {}
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in parts)):
        if "=" not in part:
            raise argparse.ArgumentTypeError(f"expected key=value, got {part!r}")
        key, value = part.split("=", 1)
        out[key.strip()] = parse_value(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="search", description="Search a compression policy with one agent on one pocketflow-gym environment.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__,
    )
    p.add_argument("--env", required=True, help="environment id, e.g. ChannelPrune-MobileNetV1-v0")
    p.add_argument("--agent", default="ddpg", choices=sorted(AGENTS), help="search agent (default: ddpg)")
    p.add_argument("--episodes", type=int, default=100, help="total scored episodes of the run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logdir", default="runs", help="parent folder of run folders (default: runs)")
    p.add_argument("--run-name", default=None, help="run folder name (default: {env}__{agent}__seed{seed})")
    p.add_argument("--resume", action="store_true", help="continue the run recorded in the run folder")
    p.add_argument("--env-kwargs", type=parse_kwargs, default={}, help="env settings: k=v,k=v")
    p.add_argument("--agent-kwargs", type=parse_kwargs, default={}, help="agent settings: k=v,k=v")
    p.add_argument("--storage", default=None, help="tpe: Optuna RDB URL shared by several searches")
    p.add_argument("--study-name", default=None, help="tpe: study name inside --storage")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    agent_kwargs = dict(args.agent_kwargs)
    if args.storage or args.study_name:
        if args.agent != "tpe":
            print("error: --storage/--study-name apply to --agent tpe", file=sys.stderr)
            return 2
        agent_kwargs.update({k: v for k, v in (("storage", args.storage), ("study_name", args.study_name)) if v})
    import gymnasium as gym
    import torch

    import pf_envs
    from pf_agents.records import RunLockedError, RunWriteError
    from pf_agents.search import search
    from pf_envs.data import DataError
    from pf_envs.zoo import CheckpointError

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.env not in gym.registry:
        print(f"error: unknown env {args.env!r}; valid: {', '.join(sorted(pf_envs.ENV_IDS))}", file=sys.stderr)
        return 2
    try:
        result = search(
            args.env, agent=args.agent, episodes=args.episodes, seed=args.seed, logdir=args.logdir,
            run_name=args.run_name, resume=args.resume, env_kwargs=args.env_kwargs,
            agent_kwargs=agent_kwargs, progress=not args.no_progress,
        )
    except (FileExistsError, FileNotFoundError, TypeError, ValueError, RunLockedError, RunWriteError,
            CheckpointError, DataError) as exc:
        # every refusal, damaged or unwritable run folder, missing checkpoint (a documented id
        # whose checkpoint does not ship) or data: one sentence, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    best = result.best
    if best is None:
        print("no episode was played")
        return 1
    from pf_envs.policy_replay import record_policy

    info = best.get("info", {})
    summary = {
        "best_episode": best["episode"], "best_reward": best["reward"],
        **{k: info[k] for k in ("accuracy", "accuracy_original", "flops_ratio", "params_ratio") if k in info},
        "policy": [round(a, 4) for a in record_policy(best)],
    }
    print(json.dumps(summary, indent=2))
    print(f"records: {result.run_dir}/episodes.jsonl, best: {result.run_dir}/best.json")
    print(f"curves:  tensorboard --logdir {result.run_dir.parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
