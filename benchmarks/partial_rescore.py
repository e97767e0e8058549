"""Re-score unfinished search runs at equal episodes: for every run folder given, the best
recorded policy among its first ``--episodes`` episodes (by val reward) is replayed with the
run's own env kwargs on ``--test-images`` images of the ``test`` split (the same recovery).

    python benchmarks/partial_rescore.py benchmarks/runs/ws_search500/*b0.9* --episodes 10 --test-images 2000

For when ``benchmarks/search_quality.py`` could not finish (it re-scores on all 10,000 test
images once every agent has its full episode budget). Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

import pf_envs
from pf_agents.records import read_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--episodes", type=int, required=True, help="compare the first N episodes of every run")
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/partial_rescore.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for run in args.runs:
        rec = read_run(run)
        config = json.loads((Path(run) / "config.json").read_text())
        episodes = rec.episodes[: args.episodes]
        if not episodes:
            continue
        best = max(episodes, key=lambda e: e["reward"])
        kwargs = {**config["env_kwargs"], "reward_split": "test", "reward_samples": args.test_images}
        out = pf_envs.replay(config["env_id"], kwargs, best)
        acc = out.info["accuracy"]
        n = out.info["reward_samples"]
        rows.append({"run": Path(run).name, "agent": config["agent"], "episodes_compared": len(episodes),
                     "best_episode": best["episode"], "best_val_reward": best["reward"], "test_accuracy": acc,
                     "test_se": math.sqrt(acc * (1 - acc) / n), "test_images": n,
                     "cost_ratio": out.info["cost_ratio"], "sparsities": out.info.get("sparsities")})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "sparsities"}), flush=True)
    for r in rows:
        print(f"{r['run']:<60} {r['episodes_compared']:>3} ep  best val {100 * r['best_val_reward']:6.2f}  "
              f"test {100 * r['test_accuracy']:6.2f} +- {100 * r['test_se']:.2f}")
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({"episodes": args.episodes, "test_images": args.test_images, "rows": rows},
                                   indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
