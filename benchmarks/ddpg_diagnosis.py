"""Does DDPG learn, and which of its settings matter? Variants of AMC's DDPG side by side in the
league (issue 24 item 5), each over N seeds on a surrogate env at each budget.

    python benchmarks/ddpg_diagnosis.py --env-kwargs data=/path/episodes.jsonl --budgets 0.3 0.5 \\
        --seeds 10 --episodes 200 --logdir /tmp/ddpg_diag/runs --out benchmarks/results/ddpg_diagnosis.json
    python benchmarks/ddpg_diagnosis.py --variants default warmup100 noise_decay0.95   # a few of VARIANTS
    python benchmarks/ddpg_diagnosis.py --variant mine:noise_sigma=0.7,batch_size=32  # your own (repeatable)
    python benchmarks/ddpg_diagnosis.py --smoke                                        # size test

Each variant is a set of DDPG settings (``pf_agents.ddpg.DDPGAgent.DEFAULTS``; the rest stay at
their defaults) run through :mod:`league` (same run folders, resume, JSON and PNG). The league's
table gives, per variant and budget, the best-so-far reward after 50 / 100 / 200 / 400 episodes
(mean and 95% t-interval over seeds) and in how many seeds the best after the warm-up beats
the best of the warm-up; this script adds each variant's difference from ``default`` at the
last checkpoint (Welch 95% interval: the seeds' random streams differ between variants) and
whether it wins at every budget.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import league  # noqa: E402

#: Named variants: label -> (DDPG settings that differ from the defaults, what it tests).
VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "default": ({}, "the project's defaults: warm-up 25, sigma 1.0 decaying x0.98, lr 1e-4/1e-3, batch 64, "
                    "EMA baseline"),
    "warmup100": ({"warmup_episodes": 100}, "AMC's warm-up (100 episodes)"),
    "warmup10": ({"warmup_episodes": 10}, "a short warm-up"),
    "noise_decay0.95": ({"noise_decay": 0.95}, "AMC's noise decay"),
    "noise_decay0.99": ({"noise_decay": 0.99}, "slower decay (HAQ's)"),
    "noise_sigma0.5": ({"noise_sigma": 0.5}, "half the exploration noise"),
    "actor_lr1e-3": ({"actor_lr": 1e-3}, "PocketFlow's actor learning rate"),
    "critic_lr1e-4": ({"critic_lr": 1e-4}, "a slower critic"),
    "batch128": ({"batch_size": 128}, "twice the batch"),
    "no_baseline": ({"reward_baseline": "raw"}, "raw rewards, no moving-average baseline"),
}
DEFAULT_VARIANTS = ("default", "warmup100", "noise_decay0.95", "noise_sigma0.5", "actor_lr1e-3", "batch128",
                    "no_baseline")


def spell(kwargs: dict[str, Any]) -> str:
    """Settings as ``--agent-kwargs`` spells them (``pf_agents.cli.parse_kwargs`` reads them back)."""
    return ",".join(f"{k}={v if isinstance(v, str) else json.dumps(v).replace(' ', '')}" for k, v in kwargs.items())


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean difference ``a - b`` and the half-width of its Welch 95% interval."""
    import numpy as np
    from scipy.stats import t

    x, y = np.asarray(a, float), np.asarray(b, float)
    if len(x) < 2 or len(y) < 2:
        return float(x.mean() - y.mean()), math.nan
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0:
        return float(x.mean() - y.mean()), 0.0
    dof = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    return float(x.mean() - y.mean()), float(t.ppf(0.975, dof) * se)


def against(runs: list[dict[str, Any]], labels: list[str], base: str, budgets: list[float], episodes: int) -> str:
    """Each label's best-so-far at ``episodes`` minus ``base``'s, per budget (Welch 95% interval),
    and whether it wins (interval above 0) at every budget."""
    head = "| variant | " + " | ".join(f"{b}: - {base} @ {episodes}" for b in budgets) + " | wins at every budget |"
    lines = [head, "|" + "---|" * (len(budgets) + 2)]
    for label in labels:
        if label == base:
            continue
        cells, wins = [], []
        for b in budgets:
            mine = [league.at(league.best_so_far(r["rewards"]), episodes) for r in runs
                    if r["agent"] == label and r["budget"] == b]
            ref = [league.at(league.best_so_far(r["rewards"]), episodes) for r in runs
                   if r["agent"] == base and r["budget"] == b]
            if not mine or not ref:
                cells.append("-")
                wins.append(False)
                continue
            d, h = welch(mine, ref)
            cells.append(f"{100 * d:+.2f} +- {100 * h:.2f}")
            wins.append(d - h > 0)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {'yes' if all(wins) else 'no'} |")
    return "\n".join(lines)


def chance_of_beating_a_warmup(runs: list[dict[str, Any]], label: str, warmup: int, budgets: list[float]) -> str:
    """For an agent without a warm-up (random search): in how many seeds its best after episode
    ``warmup`` beats its best of the first ``warmup`` episodes: what "the best after the warm-up
    beats the warm-up's" gives without any learning (chance: (n - w) / n for i.i.d. episodes)."""
    parts = []
    for b in budgets:
        rs = [r["rewards"] for r in runs if r["agent"] == label and r["budget"] == b and len(r["rewards"]) > warmup]
        if rs:
            wins = sum(max(r[warmup:]) > max(r[:warmup]) for r in rs)
            n = len(rs[0])
            parts.append(f"{b}: {wins}/{len(rs)} seeds (chance {(n - warmup) / n:.0%})")
    return f"{label}, best after episode {warmup} beats the first {warmup}'s: " + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    from pf_agents.cli import parse_kwargs

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="Surrogate-ChannelPrune-ResNet20-v0")
    p.add_argument("--env-kwargs", default="", help="surrogate env kwargs, e.g. data=episodes.jsonl")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.3, 0.5])
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                   help=f"named variants, from {list(VARIANTS)}")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:K=V,...",
                   help="a variant of your own: DDPG settings that differ from the defaults (repeatable)")
    p.add_argument("--reference", nargs="*", default=["random"],
                   help="agents run beside the variants for comparison (default: random search)")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--logdir", default="benchmarks/runs/ddpg_diagnosis")
    p.add_argument("--out", default="benchmarks/results/ddpg_diagnosis.json", help="JSON (the PNG goes next to it)")
    p.add_argument("--smoke", action="store_true",
                   help="size test: tiny synthetic dataset, default + warmup2 (16-16 nets), 2 seeds, 8 episodes")
    args = p.parse_args(argv)

    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)} or give your own with --variant")
    chosen: dict[str, dict[str, Any]] = {name: dict(VARIANTS[name][0]) for name in args.variants}
    for spec in args.variant:
        label, sep, kv = spec.partition(":")
        if not sep or not label or "=" in label:
            p.error(f"--variant takes LABEL:K=V,... (e.g. mine:noise_sigma=0.7), got {spec!r}")
        chosen[label] = parse_kwargs(kv)
    tmp = None
    env_kwargs = args.env_kwargs
    if args.smoke:
        tmp = tempfile.TemporaryDirectory()
        data = league.smoke_dataset(Path(tmp.name) / "smoke.npz")
        env_kwargs = f"data={data}"
        chosen = {"default": {"net_arch": [16, 16], "warmup_episodes": 4},
                  "warmup2": {"net_arch": [16, 16], "warmup_episodes": 2}}
        args.reference = ["random"]
        args.seeds, args.episodes, args.budgets = 2, 8, [0.5, 0.3]
        args.logdir = str(Path(tmp.name) / "runs")
        args.out = str(Path(tmp.name) / "diagnosis.json") if args.out == p.get_default("out") else args.out
    if "default" not in chosen:
        chosen = {"default": {}, **chosen}  # every variant is compared with it

    league_argv = ["--env", args.env, "--budgets", *map(str, args.budgets), "--seeds", str(args.seeds),
                   "--episodes", str(args.episodes), "--workers", str(args.workers), "--logdir", args.logdir,
                   "--out", args.out, "--agents", *[f"{label}=ddpg" for label in chosen], *args.reference]
    if env_kwargs:
        league_argv += ["--env-kwargs", env_kwargs]
    for label, kwargs in chosen.items():
        if kwargs:
            league_argv += ["--agent-kwargs", f"{label}:{spell(kwargs)}"]
    code = league.main(league_argv)
    if code:
        return code
    result = json.loads(Path(args.out).read_text())
    last = [c for c in league.CHECKPOINTS if c <= args.episodes] or [args.episodes]
    text = against(result["runs"], list(chosen), "default", args.budgets, last[-1])
    extra = []
    for ref in args.reference:
        extra.append(against(result["runs"], [*chosen, ref], ref, args.budgets, last[-1]))
        from pf_agents.ddpg import DDPGAgent

        warmup = int({**DDPGAgent.DEFAULTS, **chosen["default"]}["warmup_episodes"])
        extra.append(chance_of_beating_a_warmup(result["runs"], ref, warmup, args.budgets))
    print(text)
    print("\n\n".join(extra))
    result.update({"variants": chosen, "against_default": text, "against_reference": extra,
                   "descriptions": {k: VARIANTS[k][1] for k in chosen if k in VARIANTS}})
    Path(args.out).write_text(json.dumps(result, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
