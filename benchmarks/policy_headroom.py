"""How much can ANY search gain over the uniform policy on this env? A ceiling probe.

    python benchmarks/policy_headroom.py                          # MobileNet-V1, 50% and 30% FLOPs, ~10 min
    python benchmarks/policy_headroom.py --env ChannelPrune-ResNet20-v0 --budgets 0.5

A search agent is judged against the uniform policy (one keep ratio for every layer), but
how far above uniform the best policy lies is a property of the model and the recovery, not
of the agent. This benchmark measures it without an agent: it scores two families of
"two-level" policies that the searches' best policies resemble (the first ``k`` steps at a
high action, the rest at a low one; with ``--mirror`` also the last ``k`` high), with the high action as large
as the budget allows (bisection over dry-run episodes, as the uniform agent does), for every
``k`` and each ``--low`` action. The best of them on the ``val`` reward split is then
re-scored once on the ``test`` split, beside the uniform policy, with standard errors.

The figure it prints, ``headroom = best two-level (test) - uniform (test)``, is a lower
bound on what a search can find (a search may beat the family) and, in practice, close to
where the agents' best policies land: read an agent's margin over uniform against it.
Prints a table and writes JSON (``--out``).
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
from baselines.uniform import largest_unclamped
from pf_agents.base import play_episode
from pf_agents.cli import parse_kwargs


def play(env: gym.Env, actions: np.ndarray, dry_run: bool = False) -> dict:
    """One episode with ``actions[t]`` at step ``t``; the final info, with ``clamped_any`` and
    ``policy`` (the applied values in unit order: the final info's)."""
    played = play_episode(env, actions, dry_run=dry_run, seed=0)
    return {**played.info, "clamped_any": played.clamped_any,
            "policy": list(played.info.get("policy", played.applied))}


def two_level(n: int, k: int, high: float, low: float, front: bool) -> np.ndarray:
    """``k`` steps at ``high`` (the first ``k`` if ``front``, else the last) and the rest at ``low``."""
    a = np.full(n, low, np.float32)
    if front:
        a[:k] = high
    else:
        a[n - k:] = high
    return a


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="ChannelPrune-MobileNetV1-v0")
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.3])
    p.add_argument("--low", nargs="+", type=float, default=[-1.0, -0.75, -0.5],
                   help="low actions in [-1, 1] (ChannelPrune: -1, -0.75, -0.5 = keep 0.2, 0.3, 0.4)")
    p.add_argument("--mirror", action="store_true", help="also score the last k steps high, the rest low")
    p.add_argument("--reward-samples", type=int, default=5000, help="val images each policy is scored on")
    p.add_argument("--env-kwargs", default="", help="extra env kwargs k=v,k=v")
    p.add_argument("--out", default="benchmarks/results/policy_headroom.json")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t_start = time.time()
    results = []
    for budget in args.budgets:
        env_kwargs = {"flops_budget": budget, "ft_iters": 0, **parse_kwargs(args.env_kwargs)}
        val_env = gym.make(args.env, **{**env_kwargs, "reward_split": "val", "reward_samples": args.reward_samples})
        n = val_env.unwrapped.num_steps
        candidates = []
        uniform_high = largest_unclamped(val_env, lambda h, n=n: np.full(n, h, np.float32))
        if uniform_high is None:
            raise SystemExit(f"{args.env} at budget {budget}: even the smallest uniform policy is clamped")
        candidates.append(("uniform", np.full(n, uniform_high, np.float32)))
        for low in args.low:
            for front in (True, False) if args.mirror else (True,):
                for k in range(1, n):
                    make = lambda h, n=n, k=k, low=low, front=front: two_level(n, k, max(h, low), low, front)  # noqa: E731
                    high = largest_unclamped(val_env, make, steps=30)
                    if high is None or high <= low:
                        continue
                    name = f"{'first' if front else 'last'} {k} high, rest {low:+.2f}"
                    candidates.append((name, make(high)))
        rows = []
        for name, actions in candidates:
            info = play(val_env, actions)
            rows.append({"policy": name, "actions": actions.tolist(), "applied": info["policy"],
                         "val_accuracy": info["accuracy"], "flops_ratio": info["flops_ratio"]})
            print(f"  {budget:>4} {name:<28} val {100 * info['accuracy']:6.2f}  flops {info['flops_ratio']:.3f}",
                  flush=True)
        val_env.close()

        test_env = gym.make(args.env, **{**env_kwargs, "reward_split": "test", "reward_samples": 10_000})
        best = max(rows[1:], key=lambda r: r["val_accuracy"]) if len(rows) > 1 else rows[0]
        for r in (rows[0], best):
            info = play(test_env, np.asarray(r["actions"], np.float32))
            acc, m = info["accuracy"], info["reward_samples"]
            r.update(test_accuracy=acc, test_se=math.sqrt(acc * (1 - acc) / m))
        test_env.close()
        headroom = best["test_accuracy"] - rows[0]["test_accuracy"]
        se = math.hypot(best["test_se"], rows[0]["test_se"])
        results.append({"budget": budget, "uniform": rows[0], "best": best, "headroom_test": headroom,
                        "headroom_se": se, "headroom_val": best["val_accuracy"] - rows[0]["val_accuracy"],
                        "candidates": rows})

    print(f"\n{args.env}, ft_iters=0, {len(args.low)} low levels, val on {args.reward_samples} images, test on 10,000")
    print(f"{'budget':>6} {'uniform val':>11} {'uniform test':>12} {'best two-level':<30} {'val':>6} {'test':>6} "
          f"{'headroom (test)':>16}")
    for r in results:
        u, b = r["uniform"], r["best"]
        print(f"{r['budget']:>6} {100 * u['val_accuracy']:>11.2f} {100 * u['test_accuracy']:>12.2f} "
              f"{b['policy']:<30} {100 * b['val_accuracy']:>6.2f} {100 * b['test_accuracy']:>6.2f} "
              f"{100 * r['headroom_test']:>+9.2f} +- {100 * r['headroom_se']:.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "env": args.env, "reward_samples": args.reward_samples, "low": args.low,
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "wall_s": round(time.time() - t_start, 1), "results": results,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
