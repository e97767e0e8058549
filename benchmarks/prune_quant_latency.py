"""Does PruneQuant's latency table predict the latency of pruned, mixed int8/fp32 models?

    nice -n 5 python benchmarks/prune_quant_latency.py                                  # ResNet-20, 30 policies
    python benchmarks/prune_quant_latency.py --env PruneQuant-MobileNetV1-v0 --env-kwargs latency_twin=True \
        --out benchmarks/results/prune_quant_latency_mbv1_224.json                      # the 224x224 twin

The env's latency table is measured at construction (or read from the cache; pass
``--env-kwargs cache=False`` to measure it anew). Then ``--policies`` random policies (each
step's action uniform in [-1, 1], played without the budget: ``latency_budget=1.0``; keep
ratios spread over ``min_keep`` .. 1, about half the layers int8) plus the dense fp32, dense
int8 and uniform-50% int8 models are built exactly as the env builds its candidates
(ChannelPrune's pruner, then :meth:`PruneQuantEnv.quantize_candidate`: export, calibration,
ORT's static quantizer with the fp32 layers excluded) or, with ``--latency-models`` or
``latency_twin=True``, as the env builds the models its table prices
(:meth:`PruneQuantEnv.write_latency_model`: the same channel counts and precisions, L1
pruning, random calibration; with the twin, the ImageNet-shaped 224x224 model), and timed end to end in **interleaved
rounds**: ``--rounds`` rounds, each running every model ``--runs-per-round`` times in turn,
the minimum of all of a model's runs kept (a burst of load then hits every model, not one).
One image, the env's thread count (1).

Prints predicted against measured latency and writes JSON (``--out``): Spearman's rank
correlation and the median absolute relative error over the random policies (targets: >= 0.9
and <= 10%), and the load average before and after (a shared machine's figures are only as
good as its quiet).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import pf_envs  # noqa: F401
from learners.ort_latency import interleaved_end_to_end


def policies_for(u, n: int, seed: int) -> dict[str, list[float]]:
    """``{name: unit values}``: dense fp32, dense int8, uniform 50% int8, and ``n`` random ones."""
    from pf_envs.envs.prune_quant import FP32, INT8

    out = {"dense-fp32": u.uniform_policy(1.0, FP32), "dense-int8": u.uniform_policy(1.0, INT8),
           "uniform50-int8": u.uniform_policy(0.5, INT8)}
    rng = np.random.default_rng(seed)
    for i in range(n):
        actions = rng.uniform(-1, 1, u.num_steps)
        u.reset(seed=i, options={"dry_run": True})
        for a in actions:
            *_, info = u.step(np.array([a], np.float32))
        out[f"random{i:02d}"] = list(info["policy"])
    return out


def timed_model(u, values: list[float], path: Path, latency_models: bool) -> Path:
    """The ONNX model of ``values`` to time: the env's latency model (its 224x224 twin under
    ``latency_twin``) with ``latency_models``, else the candidate as the env builds it (pruned,
    then quantized with the policy's precisions)."""
    if latency_models or u.latency_twin:
        return u.write_latency_model(values, path)
    pruned, _ = u.pruner.prune(u.keep_counts(values))
    return u.quantize_candidate(pruned.eval(), values, path)


def main() -> None:
    from scipy.stats import spearmanr

    from pf_agents.cli import parse_kwargs

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="PruneQuant-ResNet20-v0")
    p.add_argument("--policies", type=int, default=30)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--runs-per-round", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency-models", action="store_true",
                   help="time the env's latency models (write_latency_model: L1-pruned, random calibration) "
                        "instead of its candidates; implied by latency_twin=True")
    p.add_argument("--env-kwargs", default="", help="extra env kwargs k=v,k=v")
    p.add_argument("--out", default="benchmarks/results/prune_quant_latency_resnet20.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    kwargs = {"ft_iters": 0, "reward_samples": 100, "feature_images": 200, **parse_kwargs(args.env_kwargs)}
    env = gym.make(args.env, **{**kwargs, "latency_budget": 1.0})
    u = env.unwrapped
    print(f"{args.env}: {u.num_steps} steps ({len(u.layers)} layers, {len(u.step_groups)} groups), table "
          f"{u.setup_timing['latency_table_s']:.0f} s; dense fp32 {u.cost.reference:.3f} ms predicted; "
          f"mixed graph {1e3 * u.cost.mixed_ms:.1f} us, boundary {1e3 * u.cost.boundary_ms:.1f} us + "
          f"{1e6 * u.cost.boundary_ms_per_element:.2f} us/kelement",
          flush=True)
    policies = policies_for(u, args.policies, args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pf-pq-bench-") as tmp:
        paths = {}
        twin = args.latency_models or u.latency_twin
        for name, values in policies.items():
            paths[name] = timed_model(u, values, Path(tmp) / f"{name}.onnx", twin)
        print(f"built {len(paths)} models; timing {args.rounds} interleaved rounds x {args.runs_per_round} runs",
              flush=True)
        timed = interleaved_end_to_end(paths, threads=u.threads, batch=u.latency_table["batch"], rounds=args.rounds,
                                       runs=args.rounds * args.runs_per_round)
    for name, values in policies.items():
        pred = float(u.cost(values))
        n, elements = u.cost.boundaries(values)
        m = timed[name]
        rows.append({"policy": name, "predicted_ms": pred, "measured_min_ms": m.min_ms,
                     "measured_median_ms": m.median_ms, "error": pred / m.min_ms - 1.0,
                     "int8_layers": u.precisions(values).count("int8"), "boundaries": n,
                     "flops_ratio": u.table.macs_at({g: values[u.keep_unit[g]] for g in u.step_groups})
                     / u.table.total_macs})
    print(f"\n{'policy':<16}{'int8':>6}{'bnd':>5}{'FLOPs':>7}{'predicted':>11}{'measured':>10}{'median':>9}{'error':>8}")
    for r in rows:
        print(f"{r['policy']:<16}{r['int8_layers']:>6}{r['boundaries']:>5}{r['flops_ratio']:>7.2f}"
              f"{r['predicted_ms']:>11.3f}{r['measured_min_ms']:>10.3f}{r['measured_median_ms']:>9.3f}"
              f"{100 * r['error']:>+7.1f}%")
    rand = [r for r in rows if r["policy"].startswith("random")]
    rho = float(spearmanr([r["predicted_ms"] for r in rand], [r["measured_min_ms"] for r in rand]).statistic)
    med = float(np.median([abs(r["error"]) for r in rand]))
    bias = float(np.median([r["error"] for r in rand]))
    load_after = os.getloadavg()
    print(f"\n{len(rand)} random policies: Spearman {rho:.3f} (target >= 0.9), median |error| {100 * med:.1f}% "
          f"(target <= 10%), median error {100 * bias:+.1f}%; load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after; {time.perf_counter() - t_start:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "env": args.env, "timed": "latency models" if twin else "candidates",
        "env_kwargs": {k: str(v) for k, v in kwargs.items()}, "policies": args.policies,
        "rounds": args.rounds, "runs_per_round": args.runs_per_round, "seed": args.seed,
        "spearman": rho, "median_abs_error": med, "median_error": bias,
        "targets": {"spearman": 0.9, "median_abs_error": 0.10},
        "load_average_before": list(load_before), "load_average_after": list(load_after),
        "cpu": u.latency_table["cpu"], "onnxruntime": u.latency_table["onnxruntime"],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "table": {k: u.latency_table[k] for k in ("batch", "runs", "threads", "mixed_ms", "boundary_ms",
                                                   "boundary_ms_per_element", "boundary_samples")},
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows,
    }, indent=2) + "\n")
    print(f"wrote {out}")
    env.close()


if __name__ == "__main__":
    main()
