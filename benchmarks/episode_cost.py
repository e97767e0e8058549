"""What one episode costs, against one forward pass of the original model, for any env id.

    python benchmarks/episode_cost.py    # ChannelPrune MobileNetV1 and ResNet20, defaults and ft_iters=0
    python benchmarks/episode_cost.py --envs ChannelPrune-ResNet20-v0 --settings ft0 --episodes 2 --memory-episodes 0
    python benchmarks/episode_cost.py --envs ChannelPrune-ResNet20-v0 --episodes 3 --memory-episodes 50
    python benchmarks/episode_cost.py --envs UniformQuant-MobileNetV1-v0 --env-kwargs avg_bits=3

For each env and setting: env construction (cold = statistics computed; warm = from the
disk cache), reset, channel selection + reconstruction + removal, fine-tuning, BatchNorm
re-estimation, evaluation and the whole episode (median over ``--episodes`` after one
warm-up episode), and the original model's plain forward pass over the same reward images.
Then the process's memory after 5 and after ``--memory-episodes`` episodes (ft_iters=0) and
its peak. Prints a table and writes JSON (``--out``).

Targets (issue 3): with ft_iters=0 an episode <= 3x the forward pass; reset < 5% of an
episode; peak memory < 2 GB for MobileNet-V1; memory flat between 5 and 50 episodes.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import psutil
import torch

import pf_envs  # noqa: F401
from learners.training import evaluate


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def play(env: gym.Env, rng: np.random.Generator) -> dict[str, float]:
    t0 = time.perf_counter()
    env.reset(seed=int(rng.integers(1 << 30)))
    t_reset = time.perf_counter() - t0
    while True:
        *_, terminated, truncated, info = env.step(rng.uniform(-1, 1, (1,)).astype(np.float32))
        if terminated or truncated:
            break
    total = time.perf_counter() - t0
    return {"reset_s": t_reset, **env.unwrapped.last_timing, "episode_s": total, "accuracy": info["accuracy"]}


def bench(env_id: str, kwargs: dict, episodes: int) -> dict:
    t0 = time.perf_counter()
    gym.make(env_id, **{**kwargs, "cache": False})  # statistics and baseline computed
    cold = time.perf_counter() - t0
    gym.make(env_id, **kwargs)  # fills the disk cache if it was empty
    t0 = time.perf_counter()
    env = gym.make(env_id, **kwargs)  # from the disk cache
    warm = time.perf_counter() - t0
    u = env.unwrapped
    t0 = time.perf_counter()
    evaluate(u.model, u.reward_data)
    forward = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    play(env, rng)  # first episode: the LASSO paths are computed (then cached per group)
    runs = [play(env, rng) for _ in range(episodes)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return {
        "env": env_id, "kwargs": kwargs, "make_cold_s": cold, "make_warm_s": warm,
        "forward_s": forward, "reward_images": len(u.reward_data), **med,
        "episode_over_forward": med["episode_s"] / forward, "reset_share": med["reset_s"] / med["episode_s"],
    }


def memory(env_id: str, kwargs: dict, n: int) -> dict:
    """Run in a fresh process (``--memory-only``) so that the peak is this env's alone."""
    before = rss_mb()
    env = gym.make(env_id, **kwargs)
    rng = np.random.default_rng(1)
    after = {}
    for i in range(1, n + 1):
        play(env, rng)
        if i in (5, n):
            after[i] = rss_mb()
    return {"env": env_id, "rss_before_env_mb": before, "rss_after_5_mb": after[5],
            f"rss_after_{n}_mb": after[n], "peak_mb": peak_mb()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envs", nargs="+", default=["ChannelPrune-MobileNetV1-v0", "ChannelPrune-ResNet20-v0"],
                   help="registered env ids; each is timed at its defaults and with ft_iters=0")
    p.add_argument("--episodes", type=int, default=3, help="timed episodes per setting (after one warm-up)")
    p.add_argument("--settings", nargs="+", default=["default", "ft0"], choices=["default", "ft0"],
                   help="which settings to time: the env's defaults and/or ft_iters=0")
    p.add_argument("--memory-episodes", type=int, default=50)
    p.add_argument("--env-kwargs", default="", help="extra env kwargs k=v,k=v for every setting")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="benchmarks/results/episode_cost.json")
    p.add_argument("--memory-only", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from pf_agents.cli import parse_kwargs

    extra = parse_kwargs(args.env_kwargs)
    if args.memory_only:
        print("MEMORY " + json.dumps(memory(args.memory_only, {**extra, "ft_iters": 0}, args.memory_episodes)))
        return
    rows, mem = [], []
    for env_id in args.envs:
        chosen = {"default": {}, "ft0": {"ft_iters": 0}}
        for setting in (chosen[name] for name in args.settings):
            rows.append(bench(env_id, {**extra, **setting}, args.episodes))
            print(json.dumps(rows[-1]), flush=True)
        if args.memory_episodes:
            cmd = [sys.executable, __file__, "--memory-only", env_id, "--memory-episodes", str(args.memory_episodes),
                   "--env-kwargs", args.env_kwargs] + (["--threads", str(args.threads)] if args.threads else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            mem.append(json.loads(out.split("MEMORY ", 1)[1]))
            print(json.dumps(mem[-1]), flush=True)

    cols = ["make_cold_s", "make_warm_s", "reset_s", "build_s", "finetune_s", "bn_s", "eval_s", "episode_s",
            "forward_s", "episode_over_forward"]
    print(f"\n{'env':<34} {'ft':>7} " + " ".join(f"{c:>12}" for c in cols))
    for r in rows:
        ft = r["kwargs"].get("ft_iters", "default")
        print(f"{r['env']:<34} {ft:>7} " + " ".join(f"{r.get(c, float('nan')):>12.3f}" for c in cols))
    for m in mem:
        print(f"{m['env']:<34} memory: " + ", ".join(f"{k}={v:.0f}" for k, v in m.items() if k != "env"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "episodes": rows, "memory": mem,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
