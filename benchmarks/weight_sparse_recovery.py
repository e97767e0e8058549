"""What WeightSparse's recovery knobs cost and buy: layer-wise regression (``reg_iters``) and
masked fine-tuning (``ft_iters``) on the same candidates.

    python benchmarks/weight_sparse_recovery.py --threads 1       # MobileNet-V1 at 90%: ~15 min on a busy machine
    python benchmarks/weight_sparse_recovery.py --sparsity 0.75 --recipes 0,0 20,0 0,100 20,400

Two policies per sparsity: ``uniform`` (every layer at the target) and ``size_scaled`` (a
layer keeps a fraction of its weights proportional to ``params^-1/2``: small layers denser,
big ones sparser, clamped to the env's range and budget). Each is scored under every recipe
``reg_iters,ft_iters`` on ``--reward-samples`` val images; the seconds of each phase come
from ``env.last_timing``. Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import pf_envs  # noqa: F401


def size_scaled(u, sparsity: float) -> list[float]:
    n = np.asarray(u.layer_params, float)
    w = n ** -0.5
    space = u.unit_spaces[0]
    keep = np.clip(w * (1 - sparsity) * n.sum() / (w * n).sum(), 1 - space.high, 1 - space.low)
    return list(1 - keep)


def play_values(env: gym.Env, values: list[float], seed: int = 0) -> dict:
    u = env.unwrapped
    env.reset(seed=seed)
    for t, v in enumerate(values):
        *_, info = env.step(np.array([u.value_to_action(t, v)], np.float32))
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="WeightSparse-MobileNetV1-v0")
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.9])
    p.add_argument("--recipes", nargs="+", default=["0,0", "20,0", "0,100"], help="reg_iters,ft_iters pairs")
    p.add_argument("--reward-samples", type=int, default=1000)
    p.add_argument("--env-kwargs", default="bn_batches=4,bn_batch_size=64")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="benchmarks/results/weight_sparse_recovery.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from pf_agents.cli import parse_kwargs

    rows = []
    for s in args.sparsity:
        for recipe in args.recipes:
            reg, ft = (int(x) for x in recipe.split(","))
            env = gym.make(args.env, sparsity=s, reg_iters=reg, ft_iters=ft, reward_samples=args.reward_samples,
                           **parse_kwargs(args.env_kwargs))
            u = env.unwrapped
            for name, values in (("uniform", [s] * u.num_steps), ("size_scaled", size_scaled(u, s))):
                t0 = time.perf_counter()
                info = play_values(env, values)
                row = {"sparsity": s, "policy": name, "reg_iters": reg, "ft_iters": ft, "accuracy": info["accuracy"],
                       "accuracy_original": info["accuracy_original"], "measured_sparsity": info["sparsity"],
                       "episode_s": time.perf_counter() - t0, **u.last_timing}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n{args.env}, val reward on {args.reward_samples} images, {args.env_kwargs}")
    print(f"{'sparsity':>8} {'policy':<12} {'reg':>4} {'ft':>4} {'acc':>6} {'build_s':>8} {'ft_s':>7} {'episode_s':>9}")
    for r in rows:
        print(f"{r['sparsity']:>8} {r['policy']:<12} {r['reg_iters']:>4} {r['ft_iters']:>4} {100 * r['accuracy']:>6.2f} "
              f"{r['build_s']:>8.1f} {r['finetune_s']:>7.1f} {r['episode_s']:>9.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": args.env, "reward_samples": args.reward_samples, "env_kwargs": args.env_kwargs,
                               "machine": f"{platform.machine()}, torch {torch.__version__}, "
                                          f"{torch.get_num_threads()} threads", "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
