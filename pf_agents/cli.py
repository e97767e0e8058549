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
import functools
import json
import sys
from collections.abc import Callable
from typing import Any

from pf_agents.registry import AGENTS

#: Exit status of a command ended by Ctrl-C (128 + SIGINT, what a shell reports).
EXIT_INTERRUPTED = 130


def on_interrupt(message: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a command's ``main``: Ctrl-C ends it with one line (``message``, e.g. how to
    resume) on stderr and exit status 130, instead of a ``KeyboardInterrupt`` traceback."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args: Any, **kwargs: Any) -> int:
            try:
                return main(*args, **kwargs)
            except KeyboardInterrupt:
                print(f"\ninterrupted: {message}", file=sys.stderr, flush=True)
                return EXIT_INTERRUPTED

        return run

    return wrap


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
    p.add_argument("--storage", default=None,
                   help="tpe: Optuna RDB URL shared by several searches, or memory (in the process)")
    p.add_argument("--study-name", default=None, help="tpe: study name inside --storage")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@on_interrupt("the episodes finished so far are recorded; run the same command with --resume to continue")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    agent_kwargs = dict(args.agent_kwargs)
    if args.storage or args.study_name:
        if args.agent != "tpe":
            print("error: --storage/--study-name apply to --agent tpe", file=sys.stderr)
            return 2
        agent_kwargs.update({k: v for k, v in (("storage", args.storage), ("study_name", args.study_name)) if v})
    import torch

    from pf_agents.records import RunLockedError, RunWriteError
    from pf_agents.search import search
    from pf_envs.data import DataError
    from pf_envs.registry import check_env_id
    from pf_envs.zoo import CheckpointError

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        check_env_id(args.env)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
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
    from pf_envs.policy_replay import episode_policy

    info = best.get("info", {})
    summary = {
        "best_episode": best["episode"], "best_reward": best["reward"],
        **{k: info[k] for k in ("accuracy", "accuracy_original", "flops_ratio", "params_ratio") if k in info},
        "policy": [round(a, 4) for a in episode_policy(best)],
    }
    print(json.dumps(summary, indent=2))
    print(f"records: {result.run_dir}/episodes.jsonl, best: {result.run_dir}/best.json")
    print(f"curves:  tensorboard --logdir {result.run_dir.parent}")
    print(next_steps(result.run_dir))
    return 0


def next_steps(run_dir: Any) -> str:
    """The commands that take this run's best policy on (replay, re-training, export, the
    whole job), with this run's folder filled in."""
    import shlex

    run = shlex.quote(str(run_dir))
    out = shlex.quote(str(run_dir) + "-out")
    return "\n".join([
        "next (pf-* are installed with the package; in a checkout also python scripts/<name>.py):",
        f"  pf-replay {run} --save {out}/searched.pt                  # the searched candidate as it is (seconds)",
        f"  pf-retrain --run {run} --epochs 1 --train-images 5000 --out {out}   # a short re-training (minutes)",
        f"  pf-retrain --run {run} --epochs 30 --out {out}            # the full re-training (hours on a CPU)",
        f"  pf-export {out}/retrained.pt --out {out}/export --int8    # fp32 + int8 ONNX and a manifest",
        f"  pf-compress --run {run} --retrain-epochs 30 --int8 --out {out}   # all of it, resumable",
    ])


if __name__ == "__main__":
    raise SystemExit(main())
