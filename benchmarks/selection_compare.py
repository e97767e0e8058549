"""Channel selection compared on the same policies: DisChnPrune (DCP) against ChannelPrune (LASSO).

    python benchmarks/selection_compare.py --threads 1                       # ResNet-20, 50% and 30%, ft_iters 0 and 100
    python benchmarks/selection_compare.py --model MobileNetV1 --best-from 'benchmarks/results/search_quality_bnaug*_b{budget}.json'

Both envs prune the same groups to the same channel counts (same action grid, budget and
clamp), reconstruct the kept weights by least squares and recover the candidate the same way;
only WHICH channels are kept differs. For every budget, policy and ``ft_iters`` the policy is
played in both envs (same episode seed, so the same fine-tuning batches), scored on the
``val`` reward images and the same candidate re-scored on the whole ``test`` split.

Variants (``--variants``): ``ChannelPrune`` (LASSO), ``DisChnPrune`` (defaults) and
``DisChnPrune-rec`` (``aux_weight=0``: the greedy order on the reconstruction loss alone);
``DisChnPrune-plain`` (``aux_balance=False``: the unscaled sum of the two losses) on request.

Policies: ``uniform`` (:func:`baselines.uniform.equal_value_policy`) and ``best-cp``, the
recorded ChannelPrune policy with the best test accuracy among the result files matched by
``--best-from`` (``{budget}`` is replaced; by default the ResNet-20 searches of
docs/benchmarks.md). Those policies were searched with ChannelPrune's own selection, which
favours it. Every env build is timed (``builds``): the first DisChnPrune build from an empty
cache is the selection's one-time cost, later ones load it from the disk cache. Results are appended to ``--out`` as they
come (a rerun skips the rows already there). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import glob
import json
import platform
import time
from pathlib import Path

import gymnasium as gym
import torch

import pf_envs  # noqa: F401
from baselines.uniform import equal_value_policy
from learners.training import evaluate
from pf_agents.cli import parse_kwargs

#: label -> (env method, extra kwargs); ``DisChnPrune-rec`` is DCP's greedy selection on the
#: reconstruction loss alone (``aux_weight=0``): what the auxiliary classifiers add.
VARIANTS: dict[str, tuple[str, dict]] = {
    "ChannelPrune": ("ChannelPrune", {}),
    "DisChnPrune": ("DisChnPrune", {}),
    "DisChnPrune-rec": ("DisChnPrune", {"aux_weight": 0.0}),
    "DisChnPrune-plain": ("DisChnPrune", {"aux_balance": False}),
}
DEFAULT_VARIANTS = ("ChannelPrune", "DisChnPrune", "DisChnPrune-rec")
DEFAULT_BEST = "benchmarks/results/search_quality_resnet20_swa*_b{budget}.json"


def best_recorded(pattern: str, budget: float) -> tuple[list[float], str] | None:
    """The policy with the best test accuracy in the result files matching ``pattern``."""
    best = None
    for path in sorted(glob.glob(pattern.replace("{budget}", f"{budget:g}"))):
        for row in json.loads(Path(path).read_text()).get("rows", []):
            if row.get("budget") == budget and "test_accuracy" in row and row.get("agent") != "uniform":
                if best is None or row["test_accuracy"] > best[0]:
                    best = (row["test_accuracy"], row["policy"], f"{Path(path).name}: {row['agent']}")
    return None if best is None else (best[1], best[2])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ResNet20", help="zoo env name (ResNet20, MobileNetV1, ...)")
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.3])
    p.add_argument("--ft-iters", nargs="+", type=int, default=[0, 100])
    p.add_argument("--reward-samples", type=int, default=5000)
    p.add_argument("--best-from", default=DEFAULT_BEST, help="result files holding recorded ChannelPrune policies")
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS))
    p.add_argument("--dcp-kwargs", default="", help="extra DisChnPrune kwargs, k=v,k=v")
    p.add_argument("--out", default=None, help="JSON (default benchmarks/results/selection_compare_<model>.json)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--table-only", action="store_true", help="print the table of --out without running anything")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or f"benchmarks/results/selection_compare_{args.model.lower()}.json")
    dcp_kwargs = parse_kwargs(args.dcp_kwargs)
    state = json.loads(out.read_text()) if out.is_file() else {"rows": [], "builds": {}}
    done = {(r["budget"], r["policy_name"], r["ft_iters"], r["method"]) for r in state["rows"]}
    t_start = time.time()

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        state.update(model=args.model, reward_samples=args.reward_samples, dcp_kwargs=dcp_kwargs,
                     machine=f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
        out.write_text(json.dumps(state, indent=1))

    test_data = None
    for budget in [] if args.table_only else args.budgets:
        for ft in args.ft_iters:
            envs = {}
            for label in args.variants:
                method, extra = VARIANTS[label]
                kwargs = {"flops_budget": budget, "ft_iters": ft, "reward_samples": args.reward_samples,
                          **(dcp_kwargs if method == "DisChnPrune" else {}), **extra}
                t0 = time.perf_counter()
                envs[label] = gym.make(f"{method}-{args.model}-v0", **kwargs)
                state["builds"].setdefault(label, []).append(time.perf_counter() - t0)
            policies = {"uniform": (equal_value_policy(envs["ChannelPrune"].unwrapped)[0], "equal_value_policy")}
            best = best_recorded(args.best_from, budget)
            if best is not None:
                policies["best-cp"] = best
            for name, (values, source) in policies.items():
                for method, env in envs.items():  # method: the variant's label
                    if (budget, name, ft, method) in done:
                        continue
                    u = env.unwrapped
                    t0 = time.perf_counter()
                    val, info = u.play_policy(values, seed=0)
                    episode_s = time.perf_counter() - t0
                    test_data = test_data or u.data.split("test")
                    test = evaluate(u.compressed_model(), test_data)
                    row = {
                        "budget": budget, "policy_name": name, "policy_source": source, "policy": values,
                        "ft_iters": ft, "method": method, "val": val, "test": test,
                        "flops_ratio": info["flops_ratio"], "params_ratio": info["params_ratio"],
                        "episode_s": episode_s, "timing": u.last_timing,
                        "aux_losses": info.get("aux_losses"), "aux_losses_original": info.get("aux_losses_original"),
                    }
                    state["rows"].append(row)
                    save()
                    print(f"{budget:g} {name:8s} ft={ft:<4d} {method:13s} val {val:.4f} test {test:.4f} "
                          f"({episode_s:.1f} s)", flush=True)
    if not args.table_only:
        save()
    wall = "" if args.table_only else f"; wall {time.time() - t_start:.0f} s"
    print(f"\n{args.model}: val ({args.reward_samples} images) / test (10,000), %{wall}")
    others = [v for v in VARIANTS if v != "ChannelPrune" and any(r["method"] == v for r in state["rows"])]
    print("| budget | policy | ft_iters | ChannelPrune val / test | "
          + " | ".join(f"{v} val / test (test - CP)" for v in others) + " |")
    print("|---|---|---|---|" + "---|" * len(others))
    rows = {(r["budget"], r["policy_name"], r["ft_iters"], r["method"]): r for r in state["rows"]}
    for (b, name, ft, method), r in sorted(rows.items(), key=lambda kv: (-kv[0][0], kv[0][1], kv[0][2])):
        if method != "ChannelPrune":
            continue
        cells = []
        for v in others:
            d = rows.get((b, name, ft, v))
            cells.append("-" if d is None else f"{100 * d['val']:.2f} / {100 * d['test']:.2f} "
                         f"({100 * (d['test'] - r['test']):+.2f})")
        print(f"| {b:.0%} | {name} | {ft} | {100 * r['val']:.2f} / {100 * r['test']:.2f} | " + " | ".join(cells) + " |")
    for env_id, times in state["builds"].items():
        print(f"{env_id}: env builds (s): {', '.join(f'{t:.1f}' for t in times)}")


if __name__ == "__main__":
    main()
