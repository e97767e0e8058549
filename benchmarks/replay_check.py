"""Do recorded policies still score what they scored? Replays the uniform and best policies of
search-quality results through today's env (``pf_envs.replay``) and compares the val accuracy
with the recorded one.

    python benchmarks/replay_check.py                      # the MobileNet-V1 recipe-2 results
    python benchmarks/replay_check.py --results benchmarks/results/search_quality_bnaug_b0.3.json

A refactor of the env that changes no figure replays every policy to exactly its recorded
reward (at ``ft_iters=0`` the reward of a policy is deterministic). Prints a table and writes
JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import gymnasium as gym
import torch

import pf_envs

DEFAULT_RESULTS = [
    "benchmarks/results/search_quality_bnaug_b0.5.json",
    "benchmarks/results/search_quality_bnaug_b0.3.json",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", nargs="+", default=DEFAULT_RESULTS, help="search_quality JSON files")
    p.add_argument("--agents", nargs="+", default=["uniform", "ddpg", "random", "gp", "tpe"])
    p.add_argument("--out", default="benchmarks/results/replay_check.json")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    rows = []
    for path in args.results:
        data = json.loads(Path(path).read_text())
        env_id = data["env"]
        envs: dict[float, gym.Env] = {}
        for r in data["rows"]:
            if r["agent"] not in args.agents:
                continue
            budget = r["budget"]
            if budget not in envs:
                kwargs = {**data.get("env_kwargs", {}), "flops_budget": budget,
                          "reward_samples": data["reward_samples"]}
                envs[budget] = gym.make(env_id, **kwargs)
            env = envs[budget]
            out = pf_envs.replay(env_id, None, r["policy"], env=env)
            row = {"file": Path(path).name, "budget": budget, "agent": r["agent"], "seed": r["seed"],
                   "recorded_val": r["best_val_reward"], "replayed_val": round(out.reward, 6),
                   "flops_ratio": out.info["flops_ratio"], "recorded_flops_ratio": r["flops_ratio"]}
            row["equal"] = abs(row["replayed_val"] - row["recorded_val"]) < 5e-5  # recorded to 4 decimals
            rows.append(row)
            print(json.dumps(row), flush=True)
        for env in envs.values():
            env.close()
    print(f"\n{'file':<36} {'budget':>6} {'agent':<8} {'seed':>4} {'recorded':>9} {'replayed':>9} {'equal':>5}")
    for r in rows:
        print(f"{r['file']:<36} {r['budget']:>6} {r['agent']:<8} {r['seed']:>4} {100 * r['recorded_val']:>9.2f} "
              f"{100 * r['replayed_val']:>9.2f} {str(r['equal']):>5}")
    same = sum(r["equal"] for r in rows)
    print(f"{same} of {len(rows)} policies replay to their recorded val accuracy")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "results": args.results, "machine": f"{platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads", "wall_s": round(time.time() - t0, 1), "equal": same,
        "rows": rows,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
