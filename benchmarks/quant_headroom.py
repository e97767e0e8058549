"""How far the uniform policy falls below the float model, per quantization setting: the room a
mixed-precision search (and a surrogate's dataset) has.

For each setting (env kwargs, e.g. ``avg_bits=2.5`` or ``avg_bits=3,act_bits=4``) the uniform
agent's policy (``baselines/uniform.py``, ``equal_value``: the same bits everywhere as far as the
budget allows) is played once and its accuracy compared with the float model's on the same
images (the env's ``accuracy_original``). Optionally ``--random N`` random-action episodes at
the same setting show the spread a search sees.

    python benchmarks/quant_headroom.py --env UniformQuant-ResNet20-v0 --reward-samples 2000 \\
        --settings avg_bits=2.5 avg_bits=3,act_bits=4 --random 3 --threads 1 \\
        --out benchmarks/results/quant_headroom_resnet20.json

Prints a table (points: accuracy x 100) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(env_id: str, kwargs: dict[str, Any], random_episodes: int, seed: int = 0) -> dict[str, Any]:
    """The uniform policy's and ``random_episodes`` random policies' accuracy at ``kwargs``."""
    import numpy as np

    from pf_agents.base import play_episode
    from pf_agents.search import make_env, search

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        res = search(env_id, agent="uniform", episodes=1, seed=seed, logdir=tmp, env_kwargs=kwargs, progress=False)
        wall_uniform = time.time() - t0
    best = res.best
    assert best is not None
    info = best["info"]
    row: dict[str, Any] = {
        "env_kwargs": kwargs, "float": info["accuracy_original"], "uniform": best["reward"],
        "uniform_policy": best["applied"], "uniform_cost_ratio": info.get("cost_ratio"),
        "gap_points": round(100 * (info["accuracy_original"] - best["reward"]), 2),
        "uniform_wall_s": round(wall_uniform, 1),
    }
    if random_episodes:
        env = make_env(env_id, kwargs)
        try:
            rng = np.random.default_rng(seed)
            rewards = []
            for i in range(random_episodes):
                ep = play_episode(env, rng.uniform(-1, 1, env.unwrapped.num_steps), seed=i)
                rewards.append(ep.reward)
        finally:
            env.close()
        row["random"] = rewards
    return row


def main(argv: list[str] | None = None) -> int:
    from pf_agents.cli import parse_kwargs

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="UniformQuant-ResNet20-v0")
    p.add_argument("--settings", nargs="+", required=True, help="env kwargs per setting, e.g. avg_bits=2.5")
    p.add_argument("--reward-samples", type=int, default=2000)
    p.add_argument("--env-kwargs", default="", help="kwargs shared by every setting")
    p.add_argument("--random", type=int, default=0, help="random-action episodes per setting")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON file")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    shared = {"reward_samples": args.reward_samples, **parse_kwargs(args.env_kwargs)}
    rows = []
    print(f"{'setting':<28} {'float':>6} {'uniform':>8} {'gap':>6} {'random (mean / max)':>20}")
    for text in args.settings:
        row = measure(args.env, {**shared, **parse_kwargs(text)}, args.random)
        row["setting"] = text
        rows.append(row)
        rnd = row.get("random") or []
        rtxt = f"{100 * sum(rnd) / len(rnd):.2f} / {100 * max(rnd):.2f}" if rnd else "-"
        print(f"{text:<28} {100 * row['float']:>6.2f} {100 * row['uniform']:>8.2f} {row['gap_points']:>6.2f} "
              f"{rtxt:>20}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"env": args.env, "shared_kwargs": shared, "command": " ".join(sys.argv),
                                              "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
