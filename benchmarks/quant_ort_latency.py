"""Does QuantORT's latency table predict the latency of mixed int8/fp32 models?

    python benchmarks/quant_ort_latency.py                                  # ResNet-20 and MobileNet-V1
    python benchmarks/quant_ort_latency.py --envs QuantORT-ResNet20-v0 --mixes 10 --runs 500

For each env: the table (measured once at construction, or read from the cache), then the
all-fp32 model, the all-int8 model and ``--mixes`` random mixes (each layer int8 with
probability 1/2, seeded), each written by the env (:meth:`QuantORTEnv.write_candidate`) and
timed end to end (minimum of ``--runs`` runs of ``session.run``, one image, the env's
threads). Prints predicted against measured latency and writes JSON (``--out``). The
all-fp32 and all-int8 models are timed again here, so the table's own drift (the machine's
load since the table was measured) shows beside the error on the mixes.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import pf_envs  # noqa: F401
from learners.ort_latency import end_to_end_ms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envs", nargs="+", default=["QuantORT-ResNet20-v0", "QuantORT-MobileNetV1-v0"])
    p.add_argument("--mixes", type=int, default=8)
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--env-kwargs", default="", help="extra env kwargs k=v,k=v")
    p.add_argument("--out", default="benchmarks/results/quant_ort_latency.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    from pf_agents.cli import parse_kwargs

    results = []
    for env_id in args.envs:
        env = gym.make(env_id, latency_budget=1.0, reward_samples=100, **parse_kwargs(args.env_kwargs))
        u = env.unwrapped
        n = u.num_steps
        rng = np.random.default_rng(args.seed)
        policies = {"fp32": [32.0] * n, "int8": [8.0] * n}
        for i in range(args.mixes):
            policies[f"mix{i}"] = [8.0 if b else 32.0 for b in rng.random(n) < 0.5]
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for name, values in policies.items():
                path = u.write_candidate(values, Path(tmp) / f"{name}.onnx")
                measured = end_to_end_ms(path, batch=u.latency.batch, runs=args.runs, threads=u.threads)
                table = float(u.cost(values))
                shares = u.latency.predict_ms([v == 8.0 for v in values])
                rows.append({"policy": name, "int8_layers": int(sum(v == 8.0 for v in values)),
                             "table_ms": table, "shares_ms": shares, "measured_min_ms": measured.min_ms,
                             "measured_median_ms": measured.median_ms,
                             "error": table / measured.min_ms - 1.0})
                print(f"{env_id} {name:>6} int8 {rows[-1]['int8_layers']:>3}/{n}  table {table:.3f} ms  "
                      f"measured {measured.min_ms:.3f} ms (median {measured.median_ms:.3f})  "
                      f"error {100 * rows[-1]['error']:+.1f}%", flush=True)
        mix_err = [r["error"] for r in rows if r["policy"].startswith("mix")]
        results.append({
            "env": env_id, "layers": n, "cpu": u.latency.cpu, "onnxruntime": u.latency.onnxruntime,
            "table": {"fp32_total_ms": u.latency.fp32_total_ms, "int8_total_ms": u.latency.int8_total_ms,
                      "runs": u.latency.runs, "batch": u.latency.batch, "threads": u.latency.threads,
                      "int8_slower_layers": u.int8_slower},
            "rows": rows,
            "mix_error_mean": float(np.mean(mix_err)) if mix_err else None,
            "mix_error_max_abs": float(np.max(np.abs(mix_err))) if mix_err else None,
        })
        env.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": args.runs, "mixes": args.mixes, "seed": args.seed,
                               "machine": f"{platform.machine()}, {platform.processor()}",
                               "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
