"""What do the searches' own records say about the ceiling over uniform? A second ceiling probe.

    python benchmarks/search_ceiling.py --runs 'benchmarks/runs/search_quality_r5000*'      # 50% FLOPs, ~6 min
    python benchmarks/search_ceiling.py --runs 'benchmarks/runs/search_quality_r5000*' --budget 0.3

``policy_headroom.py`` bounds the ceiling from below with one hand-made policy family. This
benchmark uses every episode the searches have already scored on the env (all agents, all
seeds: hundreds of policies with their ``val`` rewards) and asks two questions of them:

1. **How much of a best val reward is real?** A policy's ``val`` reward is its accuracy on a
   fixed set of 5,000 images, so a search that keeps the maximum also keeps that set's luck.
   ``--unselected`` recorded policies, drawn at random from the better half (no selection
   on their rewards beyond that), are re-scored on ``test``: their mean ``test - val`` is the
   split's own shift, against which the picked policies' shift is the selection bias.
2. **Where is the best policy the records point to?** A Gaussian process (scikit-learn, ARD
   RBF kernel, noise fixed at the binomial variance of a reward on ``reward_samples``
   images) is fitted to (applied keep ratios -> val reward). Its posterior mean is maximised
   over policies the env's budget clamp allows (perturbations of the best recorded ones,
   played as dry runs, so every candidate is a policy the env really applies); the
   ``--picks`` best distinct ones are scored on ``val``, and the ``--test-picks`` best of
   those re-scored on ``test``, beside uniform. A model averages the reward noise of many
   neighbouring policies, so its pick is less of a lucky draw than the best single episode.

Only records whose run config matches the env, budget and reward settings asked for, and
whose base-model and recovery fingerprints match the env's, are used (runs recorded before
recovery fingerprints, with BatchNorm statistics of plain images, need
``--env-kwargs bn_augment=False``). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import platform
import time
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from policy_headroom import play
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF
from sklearn.gaussian_process.kernels import ConstantKernel as Constant

import pf_envs  # noqa: F401
from baselines.uniform import largest_unclamped
from pf_agents.cli import parse_kwargs
from pf_agents.records import read_run
from pf_envs.policy_replay import episode_policy

MATCHED_KWARGS = ("flops_budget", "ft_iters", "reward_samples")


def load_records(patterns: list[str], env_id: str, env_kwargs: dict, fingerprint: str | None,
                 recovery: str | None = None) -> list[dict]:
    """Scored episodes of every run folder under ``patterns`` recorded on this env and settings.

    A run matches when its env id, its ``MATCHED_KWARGS`` and any other kwarg in
    ``env_kwargs`` that it records are equal, its base-model fingerprint (where recorded) is
    ``fingerprint`` and its recovery fingerprint is ``recovery``. Runs recorded before
    recovery fingerprints existed (recipe 1: BatchNorm statistics of plain images) match only
    when ``env_kwargs`` asks for ``bn_augment=False``. Dry runs and half-written lines are
    skipped."""
    out = []
    folders = sorted({Path(f).parent for pat in patterns for f in glob.glob(str(Path(pat) / "*" / "config.json"))})
    for folder in folders:
        config = json.loads((folder / "config.json").read_text())
        kw = config.get("env_kwargs", {})
        if config.get("env_id") != env_id:
            continue
        if any(kw.get(k) != env_kwargs.get(k) for k in MATCHED_KWARGS):
            continue
        if any(k in kw and kw[k] != v for k, v in env_kwargs.items()):
            continue
        if fingerprint and config.get("base_model") not in (None, fingerprint):
            continue
        recorded = config.get("recovery")
        if recovery and recorded is None and env_kwargs.get("bn_augment", True):
            continue  # recorded before recipes were: recipe 1, plain-image BatchNorm statistics
        if recovery and recorded is not None and recorded != recovery:
            continue
        for r in read_run(folder).episodes:
            if r.get("info", {}).get("dry_run") or not isinstance(r.get("reward"), (int, float)):
                continue
            out.append({"run": folder.name, "episode": r["episode"], "reward": float(r["reward"]),
                        "applied": episode_policy(r), "actions": r["applied_actions"]})
    return out


def fit_surrogate(records: list[dict], reward_samples: int) -> GaussianProcessRegressor:
    """GP regression of val reward on the applied keep ratios; the worst fifth is left out
    (collapsed policies would set the length scales), the noise is the binomial variance."""
    x = np.array([r["applied"] for r in records])
    y = np.array([r["reward"] for r in records])
    keep = y >= np.quantile(y, 0.2)
    x, y = x[keep], y[keep]
    noise = float(np.mean(y * (1 - y)) / reward_samples / max(np.var(y), 1e-12))
    kernel = Constant(1.0) * RBF(np.full(x.shape[1], 0.3), (1e-2, 1e2))
    gp = GaussianProcessRegressor(kernel, alpha=noise, normalize_y=True, n_restarts_optimizer=1, random_state=0)
    with warnings.catch_warnings():
        # a length scale at its upper bound says "this layer hardly matters": an answer, not a failure
        warnings.simplefilter("ignore", ConvergenceWarning)
        return gp.fit(x, y)


def propose(env: gym.Env, gp: GaussianProcessRegressor, records: list[dict], rng: np.random.Generator,
            rounds: int = 3, per_round: int = 1500, picks: int = 8, min_distance: float = 0.04) -> list[dict]:
    """The ``picks`` policies of highest posterior mean, at least ``min_distance`` apart (max
    abs difference of keep ratios), from perturbations of the best recorded actions played
    as dry runs (so each is what the env's clamp applies)."""
    seeds = np.array([r["actions"] for r in sorted(records, key=lambda r: -r["reward"])[:30]], np.float32)
    candidates: list[dict] = []
    for _ in range(rounds):
        for _ in range(per_round):
            sigma = rng.choice([0.05, 0.1, 0.2, 0.35])
            actions = np.clip(seeds[rng.integers(len(seeds))] + rng.normal(0.0, sigma, seeds.shape[1]), -1, 1)
            info = play(env, actions.astype(np.float32), dry_run=True)
            applied = np.asarray(info["policy"])
            mean, std = gp.predict(applied[None], return_std=True)
            candidates.append({"actions": [float(a) for a in actions], "applied": applied.tolist(),
                               "predicted": float(mean[0]), "predicted_sd": float(std[0])})
        best = sorted(candidates, key=lambda c: -c["predicted"])[:30]
        seeds = np.array([c["actions"] for c in best], np.float32)
    chosen: list[dict] = []
    for c in sorted(candidates, key=lambda c: -c["predicted"]):
        if all(np.abs(np.subtract(c["applied"], p["applied"])).max() > min_distance for p in chosen):
            chosen.append(c)
        if len(chosen) >= picks:
            break
    return chosen


def score(env: gym.Env, actions: list[float]) -> dict:
    info = play(env, np.asarray(actions, np.float32))
    acc, n = info["accuracy"], info["reward_samples"]
    return {"accuracy": acc, "se": math.sqrt(acc * (1 - acc) / n), "flops_ratio": info["flops_ratio"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="folders (globs) holding run folders")
    p.add_argument("--env", default="ChannelPrune-MobileNetV1-v0")
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--reward-samples", type=int, default=5000, help="val images of the recorded rewards")
    p.add_argument("--env-kwargs", default="", help="extra env kwargs k=v,k=v (ft_iters defaults to 0)")
    p.add_argument("--unselected", type=int, default=12, help="random recorded policies re-scored on test")
    p.add_argument("--picks", type=int, default=8, help="surrogate picks scored on val")
    p.add_argument("--test-picks", type=int, default=3, help="best surrogate picks (by val) re-scored on test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/search_ceiling_b{budget}.json)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.time()
    rng = np.random.default_rng(args.seed)
    env_kwargs = {"flops_budget": args.budget, "ft_iters": 0, "reward_samples": args.reward_samples,
                  **parse_kwargs(args.env_kwargs)}
    val_env = gym.make(args.env, **{**env_kwargs, "reward_split": "val"})
    records = load_records(args.runs, args.env, env_kwargs, getattr(val_env.unwrapped, "model_fingerprint", None),
                           getattr(val_env.unwrapped, "recovery_fingerprint", None))
    if len(records) < 20:
        raise SystemExit(f"only {len(records)} recorded episodes match {args.env} with {env_kwargs} under "
                         f"{args.runs}: run benchmarks/search_quality.py with these settings first")
    runs = sorted({r["run"] for r in records})
    print(f"{len(records)} recorded episodes from {len(runs)} runs", flush=True)
    test_env = gym.make(args.env, **{**env_kwargs, "reward_split": "test", "reward_samples": 10_000})

    n = val_env.unwrapped.num_steps
    u_action = largest_unclamped(val_env, lambda h: np.full(n, h, np.float32))
    if u_action is None:
        raise SystemExit(f"{args.env} at budget {args.budget}: even the smallest uniform policy is clamped")
    u_actions = [u_action] * n
    uniform = {"actions": u_actions, "val": score(val_env, u_actions), "test": score(test_env, u_actions)}

    # 1. the split's own val -> test shift, on policies nobody picked for their reward
    better = [r for r in records if r["reward"] >= np.median([q["reward"] for q in records])]
    drawn = [better[i] for i in rng.choice(len(better), min(args.unselected, len(better)), replace=False)]
    for r in drawn:
        r["test"] = score(test_env, r["actions"])["accuracy"]
        print(f"  unselected {r['run']} ep {r['episode']}: val {100 * r['reward']:.2f} test {100 * r['test']:.2f}",
              flush=True)
    shifts = [r["test"] - r["reward"] for r in drawn]
    best_recorded = max(records, key=lambda r: r["reward"])
    best_recorded["test"] = score(test_env, best_recorded["actions"])["accuracy"]

    # 2. the surrogate's picks
    t0 = time.time()
    gp = fit_surrogate(records, args.reward_samples)
    picks = propose(val_env, gp, records, rng, picks=args.picks)
    print(f"  surrogate fitted and maximised in {time.time() - t0:.0f} s: {gp.kernel_}", flush=True)
    for c in picks:
        c["val"] = score(val_env, c["actions"])
        print(f"  pick: predicted {100 * c['predicted']:.2f} val {100 * c['val']['accuracy']:.2f} "
              f"flops {c['val']['flops_ratio']:.3f}", flush=True)
    for c in sorted(picks, key=lambda c: -c["val"]["accuracy"])[: args.test_picks]:
        c["test"] = score(test_env, c["actions"])
    tested = [c for c in picks if "test" in c]
    best_pick = max(tested, key=lambda c: c["test"]["accuracy"])

    u_val, u_test = uniform["val"]["accuracy"], uniform["test"]["accuracy"]
    summary = {
        "records": len(records), "runs": runs,
        "uniform_val": u_val, "uniform_test": u_test,
        "best_recorded_val": best_recorded["reward"], "best_recorded_test": best_recorded["test"],
        "unselected_shift_mean": float(np.mean(shifts)),
        "unselected_shift_se": float(np.std(shifts, ddof=1) / math.sqrt(len(shifts))) if len(shifts) > 1 else None,
        "picks_val_mean": float(np.mean([c["val"]["accuracy"] for c in picks])),
        "picks_test": [c["test"]["accuracy"] for c in tested],
        "ceiling_test_over_uniform": best_pick["test"]["accuracy"] - u_test,
        "mean_tested_pick_over_uniform": float(np.mean([c["test"]["accuracy"] for c in tested])) - u_test,
    }
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    print(f"\n{args.env}, budget {args.budget}, ft_iters={env_kwargs['ft_iters']}, {len(records)} recorded "
          f"episodes, val on {args.reward_samples} images, test on 10,000")
    print(f"  uniform:                       val {pct(u_val)}  test {pct(u_test)}")
    print(f"  best recorded episode:         val {pct(best_recorded['reward'])}  test {pct(best_recorded['test'])}"
          f"  ({best_recorded['run']}, episode {best_recorded['episode']})")
    print(f"  {len(drawn)} unselected policies:       mean test - val {100 * summary['unselected_shift_mean']:+.2f}"
          + (f" +- {100 * summary['unselected_shift_se']:.2f}" if summary["unselected_shift_se"] is not None else ""))
    print(f"  {len(picks)} surrogate picks:           mean val {pct(summary['picks_val_mean'])}; best {len(tested)} "
          f"on test: {', '.join(pct(v) for v in summary['picks_test'])}")
    print(f"  ceiling over uniform (test):   best pick {100 * summary['ceiling_test_over_uniform']:+.2f}, "
          f"mean of tested picks {100 * summary['mean_tested_pick_over_uniform']:+.2f}  (se of one test figure "
          f"{100 * best_pick['test']['se']:.2f})")
    out = Path(args.out or f"benchmarks/results/search_ceiling_b{args.budget}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "env": args.env, "env_kwargs": env_kwargs, "kernel": str(gp.kernel_),
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "wall_s": round(time.time() - t_start, 1), "summary": summary, "uniform": uniform,
        "best_recorded": best_recorded, "unselected": drawn, "picks": picks,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
