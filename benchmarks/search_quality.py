"""How good are the policies each agent finds? Same env, same episode budget, same seeds.

    python benchmarks/search_quality.py                         # default: about an hour on 2 cores
    python benchmarks/search_quality.py --episodes 400 --seeds 0 1 2

For each FLOPs budget (default 50% and 30%) on ChannelPrune-MobileNetV1-v0 with cheap
rewards (``ft_iters=0``: LASSO selection, least-squares reconstruction and BatchNorm
re-estimation only), every agent searches with the same episode budget and seed; the table
shows each agent's best reward (accuracy on ``--reward-samples`` held-out ``val`` images,
by default all 5,000 of them, as PocketFlow).
Because the best of many noisy evaluations is biased upwards, each agent's best policy is
then re-scored once on the whole ``test`` split (10,000 images) with the same recovery, and
that figure is reported with its standard error ``sqrt(p (1 - p) / n)``.

How far above uniform any policy can go on the same env is measured separately, without an
agent, by ``benchmarks/policy_headroom.py`` (a hand-made policy family), and from these runs'
own records by ``benchmarks/search_ceiling.py`` (a surrogate fitted to every scored episode,
and the val -> test shift of policies nobody picked): read the agents' margins against them.

Runs are kept under ``--logdir`` and resumed if the benchmark is started again, so a killed
benchmark loses at most one episode. Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import pf_envs  # noqa: F401
from pf_agents import search
from pf_agents.cli import parse_kwargs
from pf_envs.policy_replay import episode_policy

AGENTS = ("uniform", "random", "ddpg", "gp", "tpe")


def budget_kwarg(env_id: str) -> str:
    """The kwarg that sets ``env_id``'s budget (``flops_budget``, ``avg_bits``, ``sparsity``, ...)."""
    cls = gym.spec(env_id).entry_point
    if isinstance(cls, str):
        module, _, name = cls.partition(":")
        cls = getattr(__import__(module, fromlist=[name]), name)
    return cls.budget_kwarg


def rescore(env_id: str, env_kwargs: dict, episode: dict, samples: int = 10_000) -> dict:
    """Replay a recorded episode (its policy in unit order and its reset seed: the visit order
    under ``random_order`` and the fine-tuning batches) in an env that scores on ``samples``
    images of the test split."""
    env = gym.make(env_id, **{**env_kwargs, "reward_split": "test", "reward_samples": samples})
    _, info = env.unwrapped.play_policy(episode_policy(episode), seed=int(episode["seed"]))
    acc, n = info["accuracy"], info["reward_samples"]
    return {"test_accuracy": acc, "test_se": math.sqrt(acc * (1 - acc) / n), "test_images": n,
            "cost_ratio": info["cost_ratio"], "cost_name": info["cost_name"],
            "flops_ratio": info.get("flops_ratio", float("nan")), "params_ratio": info.get("params_ratio", float("nan"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="ChannelPrune-MobileNetV1-v0")
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.3],
                   help="values of the env's budget kwarg (flops_budget for ChannelPrune, avg_bits for the "
                        "quantization envs, sparsity for WeightSparse, ...)")
    p.add_argument("--agents", nargs="+", default=list(AGENTS), choices=list(AGENTS) + ["td3", "sac"])
    p.add_argument("--episodes", type=int, default=80, help="episodes per agent and budget")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--reward-samples", type=int, default=5000,
                   help="val images each episode is scored on (5,000: the whole val split, as PocketFlow; "
                        "fewer make episodes cheaper and the best reward more biased)")
    p.add_argument("--rescore-samples", type=int, default=10_000,
                   help="test images each best policy is re-scored on (10,000: the whole test split)")
    p.add_argument("--env-kwargs", default="", help="extra env kwargs k=v,k=v")
    p.add_argument("--ddpg-kwargs", default="warmup_episodes=20", help="ddpg agent kwargs k=v,k=v")
    p.add_argument("--logdir", default="benchmarks/runs/search_quality")
    p.add_argument("--out", default="benchmarks/results/search_quality.json")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    agent_kwargs = {a: {} for a in args.agents}
    agent_kwargs["ddpg"] = parse_kwargs(args.ddpg_kwargs)
    rows = []
    t_start = time.time()
    for budget in args.budgets:
        env_kwargs = {budget_kwarg(args.env): budget, "ft_iters": 0, "reward_samples": args.reward_samples,
                      **parse_kwargs(args.env_kwargs)}
        for seed in args.seeds:
            for agent in args.agents:
                run_name = f"{args.env}__b{budget}__{agent}__seed{seed}"
                resume = (Path(args.logdir) / run_name / "config.json").is_file()
                result = search(args.env, agent=agent, episodes=args.episodes, seed=seed, logdir=args.logdir,
                                run_name=run_name, resume=resume, env_kwargs=env_kwargs,
                                agent_kwargs=agent_kwargs.get(agent, {}), progress=True)
                best = result.best
                row = {"budget": budget, "agent": agent, "seed": seed, "episodes": len(result.history),
                       "best_episode": best["episode"], "best_val_reward": best["reward"],
                       "policy": episode_policy(best),
                       # from the records, so a resumed run reports its whole search time
                       "search_s": round(sum(e.get("wall_time_s", 0.0) for e in result.history), 1)}
                row.update(rescore(args.env, env_kwargs, best, args.rescore_samples))
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "policy"}), flush=True)

    extra = parse_kwargs(args.env_kwargs)
    print(f"\n{args.env}, ft_iters={extra.get('ft_iters', 0)}, {args.episodes} episodes per agent, "
          f"val reward on {args.reward_samples} images" + (f", env kwargs {extra}" if extra else ""))
    head = (("budget", 6), ("agent", -8), ("seed", 4), ("best val", 9), ("test acc", 9), ("+-se", 6),
            ("cost", 6), ("flops", 6), ("params", 6))
    print(" ".join(f"{name:<{-w}}" if w < 0 else f"{name:>{w}}" for name, w in head))
    for r in rows:
        print(f"{r['budget']:>6} {r['agent']:<8} {r['seed']:>4} {100 * r['best_val_reward']:>9.2f} "
              f"{100 * r['test_accuracy']:>9.2f} {100 * r['test_se']:>6.2f} {r['cost_ratio']:>6.3f} {r['flops_ratio']:>6.3f} "
              f"{r['params_ratio']:>6.3f}")
    summary = {}
    for budget in args.budgets:
        for agent in args.agents:
            accs = [r["test_accuracy"] for r in rows if r["budget"] == budget and r["agent"] == agent]
            summary[f"{budget}/{agent}"] = float(np.mean(accs))
    print("\nmean test accuracy over seeds:", json.dumps({k: round(100 * v, 2) for k, v in summary.items()}))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "env": args.env, "episodes": args.episodes, "seeds": args.seeds, "reward_samples": args.reward_samples,
        "env_kwargs": {"ft_iters": 0, **extra}, "agent_kwargs": {a: k for a, k in agent_kwargs.items() if k},
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "wall_s": round(time.time() - t_start, 1), "rows": rows, "mean_test_accuracy": summary,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
