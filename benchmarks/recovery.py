"""How well does the env's recovery score a pruned candidate? The uniform policy under recipes.

    python benchmarks/recovery.py                                   # MobileNet-V1, budgets 1.0 0.5 0.3, ~8 min
    python benchmarks/recovery.py --env ChannelPrune-ResNet20-v0 --budgets 0.5

A reward is only as good as the recovery behind it (selection, reconstruction, fine-tuning,
BatchNorm re-estimation). This plays the uniform policy (one keep ratio for every layer, the
largest the budget allows; budget 1.0 = nothing pruned, where a perfect recovery gives back
the original accuracy) under each recipe of ``--recipes`` and scores it on the ``val``
reward images and (the same candidate model) on the whole ``test`` split. A recipe is
``name:k=v,k=v`` of env kwargs. Prints a table and writes JSON.
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
from policy_headroom import play

import pf_envs  # noqa: F401
from baselines.uniform import largest_unclamped
from learners.training import evaluate
from pf_agents.cli import parse_kwargs

DEFAULT_RECIPES = (
    "plain BN:ft_iters=0,bn_augment=False",
    "augmented BN:ft_iters=0",
    "aug. BN + ft 100 @ 0.01:ft_iters=100,ft_lr=0.01",
    "aug. BN + ft 100 @ 0.001:ft_iters=100,ft_lr=0.001",
)


def parse_recipe(text: str) -> tuple[str, dict]:
    name, _, kwargs = text.partition(":")
    return name, parse_kwargs(kwargs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="ChannelPrune-MobileNetV1-v0")
    p.add_argument("--budgets", nargs="+", type=float, default=[1.0, 0.5, 0.3])
    p.add_argument("--recipes", nargs="+", default=list(DEFAULT_RECIPES), help="name:k=v,k=v (env kwargs)")
    p.add_argument("--reward-samples", type=int, default=5000)
    p.add_argument("--out", default="benchmarks/results/recovery.json")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.time()
    rows = []
    original_test = None
    for budget in args.budgets:
        for name, kwargs in map(parse_recipe, args.recipes):
            env_kwargs = {"flops_budget": budget, "reward_samples": args.reward_samples, **kwargs}
            env = gym.make(args.env, **{**env_kwargs, "reward_split": "val"})
            u = env.unwrapped
            steps = u.num_steps
            high = largest_unclamped(env, lambda h, steps=steps: np.full(steps, h, np.float32))
            info = play(env, np.full(steps, -1.0 if high is None else high, np.float32))
            test = u.data.split("test")
            if original_test is None:
                original_test = evaluate(u.model, test, device=u.device)
            # the same candidate (pruned, fine-tuned, BatchNorm re-estimated) on the test split
            test_acc = evaluate(u.compressed_model(), test, device=u.device)
            scores = {
                "val": {"accuracy": info["accuracy"], "original": info["accuracy_original"],
                        "se": math.sqrt(info["accuracy"] * (1 - info["accuracy"]) / info["reward_samples"])},
                "test": {"accuracy": test_acc, "original": original_test,
                         "se": math.sqrt(test_acc * (1 - test_acc) / len(test))},
            }
            env.close()
            row = {"budget": budget, "recipe": name, "env_kwargs": kwargs, "keep_ratios": info["keep_ratios"],
                   "flops_ratio": info["flops_ratio"], **scores}
            rows.append(row)
            print(f"  {budget:>4} {name:<28} val {100 * scores['val']['accuracy']:6.2f}  "
                  f"test {100 * scores['test']['accuracy']:6.2f}", flush=True)

    original_val = rows[0]["val"]["original"]
    print(f"\n{args.env}: the uniform policy, val on {args.reward_samples} images, test on 10,000 "
          f"(original model: val {100 * original_val:.2f}, test {100 * original_test:.2f})")
    print(f"{'budget':>6} {'mean keep':>9} {'recipe':<28} {'val':>6} {'test':>6}")
    for r in rows:
        print(f"{r['budget']:>6} {np.mean(r['keep_ratios']):>9.3f} {r['recipe']:<28} "
              f"{100 * r['val']['accuracy']:>6.2f} {100 * r['test']['accuracy']:>6.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "env": args.env, "reward_samples": args.reward_samples,
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "wall_s": round(time.time() - t_start, 1), "rows": rows,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
