"""QuantORT's searched mixes against all-int8 and fp32: test accuracy and measured latency.

    python benchmarks/quant_ort_rescore.py benchmarks/results/quant_ort_search_mbv1.json

Reads a ``benchmarks/search_quality.py`` result on a QuantORT env, and plays on the whole
test split (10,000 images) the all-int8 model (the fp32 model's figure is the env's
``accuracy_original``, and each row's best policy was re-scored on the same split by
search_quality.py: read from its JSON). Each candidate (written by the env, the graph the
search scored) and the fp32 and all-int8 models are timed end to end (minimum and median of
``--runs`` runs, one image, the env's threads), next to the latency table's prediction. Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import gymnasium as gym
import torch

import pf_envs  # noqa: F401
from learners.ort_latency import end_to_end_ms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("result", help="JSON written by benchmarks/search_quality.py on a QuantORT env (or the "
                   "same fields: env, env_kwargs, rows with agent, budget, policy, test_accuracy)")
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--out", default="benchmarks/results/quant_ort_rescore.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = json.loads(Path(args.result).read_text())
    env_id = data["env"]
    kwargs = {k: v for k, v in data.get("env_kwargs", {}).items() if k != "ft_iters"}
    env = gym.make(env_id, **{**kwargs, "latency_budget": 1.0, "reward_split": "test", "reward_samples": 10_000,
                              "measure_runs": 0})
    u = env.unwrapped
    n = u.num_steps
    policies = [("fp32", None, [32.0] * n, None), ("int8", None, [8.0] * n, None)]
    # the agents' best policies were re-scored on the test split by search_quality.py already
    # (the same env and settings): their accuracy is read, their latency timed here
    policies += [(r["agent"], r["budget"], r["policy"], r.get("test_accuracy")) for r in data["rows"]]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, budget, values, accuracy in policies:
            if name == "fp32":
                accuracy = u.accuracy_original  # the fp32 ONNX model on these images (cached)
            elif accuracy is None:
                accuracy = u.play_policy(values)[1]["accuracy"]
            path = u.write_candidate(values, Path(tmp) / f"{name}.onnx")
            t = end_to_end_ms(path, batch=u.latency.batch, runs=args.runs, threads=u.threads)
            table = float(u.cost(values))
            int8 = int(sum(v == 8.0 for v in values))
            rows.append({"policy": name, "budget": budget, "int8_layers": int8, "test_accuracy": accuracy,
                         "test_images": len(u.reward_data), "table_ms": table,
                         "latency_ratio": table / u.cost.reference, "measured_min_ms": t.min_ms,
                         "measured_median_ms": t.median_ms, "precisions": u.precisions(values)})
            print(f"{name:>8} budget {budget!s:>5} int8 {int8:>3}/{n} test {100 * accuracy:.2f}% "
                  f"table {table:.3f} ms ({table / u.cost.reference:.3f}) measured {t.min_ms:.3f} ms "
                  f"(median {t.median_ms:.3f})", flush=True)
    env.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env_id, "source": args.result, "runs": args.runs, "env_kwargs": kwargs,
                               "cpu": u.latency.cpu, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
