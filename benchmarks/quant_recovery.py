"""How much fast fine-tuning does a quantized candidate need before its accuracy is a fair reward?

    python benchmarks/quant_recovery.py --env UniformQuant-MobileNetV1-v0 --ft-iters 0 100

For each ``ft_iters`` and average-bits budget it scores, on the same ``val`` images and with the
env's own recovery (fine-tuning with the quantizers in the loop, BatchNorm re-estimation):
every layer at 8 bits (against the float model), the uniform policy (every layer at the
budget's bits), a "good" hand-made policy (the first conv, the depthwise convs and the
classifier - 3% of MobileNet-V1's weights - at max_bits, the other layers sharing what is
left) and a "bad" one (those layers at min_bits, the rest front to back as the budget allows).
The reward separates policies if good and bad stay apart. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import torch

import pf_envs  # noqa: F401
from baselines.uniform import equal_value_policy


def fill(env, fixed: dict[int, float]) -> list[float]:
    """``fixed`` units at their values, every other weight unit as high as the budget allows,
    equal where possible (a uniform policy over the free units)."""
    u = env.unwrapped
    free = [t for t in range(u.num_steps) if t not in fixed]
    best = None
    for bits in range(u.max_bits, u.min_bits - 1, -1):
        values = [fixed.get(t, float(bits)) for t in range(u.num_steps)]
        if u.cost(values) <= u.budget_limit * (1 + 1e-9):
            best = values
            break
    assert best is not None, "fixed units leave no room"
    for t in free:  # one more bit front to back while the budget holds
        trial = list(best)
        trial[t] = min(u.max_bits, trial[t] + 1)
        if u.cost(trial) <= u.budget_limit * (1 + 1e-9):
            best = trial
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="UniformQuant-MobileNetV1-v0")
    p.add_argument("--ft-iters", nargs="+", type=int, default=[0, 100])
    p.add_argument("--budgets", nargs="+", type=float, default=[4, 3])
    p.add_argument("--reward-samples", type=int, default=2000)
    p.add_argument("--env-kwargs", default="")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/quant_recovery.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from pf_agents.cli import parse_kwargs

    extra = parse_kwargs(args.env_kwargs)
    rows = []
    for ft in args.ft_iters:
        for budget in [8.0] + list(args.budgets):
            env = gym.make(args.env, avg_bits=budget, ft_iters=ft, reward_samples=args.reward_samples, **extra)
            u = env.unwrapped
            sensitive = {t for t in range(u.num_steps)
                         if u.table.rows[u.unit_layer[t]].kind in ("depthwise", "linear") or u.unit_layer[t] == 0}
            if budget == 8.0:
                policies = {"all_8": [8.0] * u.num_steps}
            else:
                policies = {
                    "uniform": equal_value_policy(u)[0],
                    "good": fill(env, {t: float(u.max_bits) for t in sensitive}),
                    "bad": fill(env, {t: float(u.min_bits) for t in sensitive}),
                }
            for name, values in policies.items():
                t0 = time.perf_counter()
                reward, info = u.play_policy(values, seed=0)
                row = {"ft_iters": ft, "avg_bits": budget, "policy": name, "accuracy": info["accuracy"],
                       "accuracy_original": info["accuracy_original"], "avg_weight_bits": info["avg_weight_bits"],
                       "weight_bits": info["weight_bits"], "seconds": round(time.perf_counter() - t0, 1),
                       "timing": u.last_timing}
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k not in ("weight_bits", "timing")}), flush=True)
    print(f"\n{args.env}, reward on {args.reward_samples} val images")
    print(f"{'ft_iters':>8} {'avg_bits':>8} {'policy':<8} {'bits':>6} {'acc':>7} {'fp32':>7} {'s':>6}")
    for r in rows:
        print(f"{r['ft_iters']:>8} {r['avg_bits']:>8} {r['policy']:<8} {r['avg_weight_bits']:>6.2f} "
              f"{100 * r['accuracy']:>7.2f} {100 * r['accuracy_original']:>7.2f} {r['seconds']:>6.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": args.env, "reward_samples": args.reward_samples, "env_kwargs": extra,
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
