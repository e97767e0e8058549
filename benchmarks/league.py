"""A league of search agents on a surrogate env: every agent x seed x budget, best-so-far curves
with 95% intervals over seeds, then (optionally) each run's best policy re-scored on the REAL env.

    python benchmarks/league.py --env Surrogate-ChannelPrune-ResNet20-v0 --budgets 0.5 0.3 \\
        --agents ddpg td3 sac gp tpe random uniform --seeds 10 --episodes 400 --workers 2 \\
        --logdir benchmarks/runs/league --out benchmarks/results/league_channelprune_resnet20.json
    python benchmarks/league.py --smoke            # a size test: 3 agents x 2 seeds x 8 episodes on a tiny dataset
    python benchmarks/league.py ... --agents ddpg ddpg_w100=ddpg --agent-kwargs ddpg_w100:warmup_episodes=100
                                                   # variants of one agent, side by side
    python benchmarks/league.py ... --agent-episodes gp=100   # one agent at fewer episodes (GP's refits)

Every run goes through the search harness (:func:`pf_agents.search`) into its own run folder
under ``--logdir`` and is resumed when the league is started again. The table shows the mean
best-so-far reward after 50 / 100 / 200 / 400 episodes (those within ``--episodes``) with a 95%
t-interval over seeds; the PNG plots the curves (mean and interval band); the JSON holds every
run's curve. For agents with a warm-up (DDPG, TD3, SAC: ``warmup_episodes``; TPE:
``n_startup_trials``; GP: ``initial_points``) the table counts the seeds whose best after the
warm-up beats the best of the warm-up (does the agent learn?). ``--rescore N``: each run's
best policy is replayed on the real env the dataset was collected on (its settings from the
dataset's header, the budget, and ``reward_split=test``, ``reward_samples=N``): the table then
shows, per agent, the real accuracy of the policies the surrogate ranked best and how far they
fall from their surrogate score (an agent that exploits the surrogate's errors shows a large
fall). ``--confirm K``: what the surrogate saves, spent on real evaluations: each chosen agent's
(``--confirm-agents``, default the best one at each budget) K best distinct policies by surrogate
reward, all seeds pooled, are played on the real env as the dataset's episodes were scored
(its split and images), and the best of them by that real reward is scored on the test images:
a researcher's "search on the surrogate, confirm the top on the real env", at K real episodes.
Real scores are kept in ``LOGDIR/real_scores.jsonl``, so a killed re-score resumes and nothing
is played twice.

Speed: the league's runs write no TensorBoard curves (``--tensorboard`` turns them on) and TPE
keeps its study in memory (``tpe:storage=memory``, :data:`LEAGUE_AGENT_KWARGS`; the same trials as
its SQLite file; a league's TPE runs recorded before this default resume with
``--agent-kwargs tpe:storage=none``); the records and the agents' state are written as in any
search (a killed league loses at most each run's episode in flight). The table's footer gives each agent's CPU time an
episode (``time.process_time`` of its runs, summed over the worker processes) and what the league
cost in all; docs/surrogate.md ("Speed") has the measured figures.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

AGENTS = ("ddpg", "td3", "sac", "gp", "tpe", "random", "uniform")
CHECKPOINTS = (50, 100, 200, 400)
#: Each agent's setting for the length of its warm-up (its start without a model).
WARMUP_KEYS = ("warmup_episodes", "n_startup_trials", "initial_points")
#: Settings the league gives an agent unless ``--agent-kwargs`` names them: TPE's study in
#: memory (the same trials as the SQLite file of a plain search, without ~12 commits an episode).
LEAGUE_AGENT_KWARGS: dict[str, dict[str, Any]] = {"tpe": {"storage": "memory"}}


def parse_entry(entry: str) -> tuple[str, str]:
    """``ddpg`` -> (``ddpg``, ``ddpg``); ``ddpg_w100=ddpg`` -> (``ddpg_w100``, ``ddpg``): a label
    for a variant of an agent (its settings from ``--agent-kwargs ddpg_w100:...``)."""
    label, _, agent = entry.partition("=")
    return label, agent or label


def warmup_length(agent: str, kwargs: dict[str, Any]) -> int | None:
    """Episodes of the agent's warm-up (None: it has none)."""
    from pf_agents.registry import get_agent_class

    settings = {**get_agent_class(agent).DEFAULTS, **kwargs}
    for key in WARMUP_KEYS:
        if key in settings:
            return int(settings[key])
    return None


#: Each run folder's cost ledger: the CPU and wall seconds and the episodes of every league
#: process that played in it, summed, so that a league restarted after its searches still
#: reports what they cost (the restarted process itself plays nothing).
COST_FILE = "league_cost.json"


def _ledger(run_dir: Path) -> dict[str, float]:
    """The run folder's cost so far (zeros when it has none or it cannot be read)."""
    try:
        cost = json.loads((run_dir / COST_FILE).read_text())
        return {k: float(cost[k]) for k in ("cpu_s", "wall_s", "played")}
    except (OSError, ValueError, KeyError, TypeError):
        return {"cpu_s": 0.0, "wall_s": 0.0, "played": 0.0}


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One search (resumed if its run folder exists); returns its rewards in order, its best and
    its cost over every league process that played in it (:data:`COST_FILE`)."""
    import torch

    from pf_agents.records import read_run
    from pf_agents.registry import get_agent_class
    from pf_agents.search import search

    torch.set_num_threads(1)
    get_agent_class(job["algo"])  # its libraries' imports (SB3, Optuna, GPyOpt) outside the run's CPU time
    run_dir = Path(job["logdir"]) / job["name"]
    t0, c0 = time.time(), time.process_time()
    resume = (run_dir / "config.json").exists()
    before = len(read_run(run_dir).episodes) if resume else 0
    result = search(job["env"], agent=job["algo"], episodes=job["episodes"], seed=job["seed"], logdir=job["logdir"],
                    run_name=job["name"], resume=resume, progress=False, env_kwargs=job["env_kwargs"],
                    agent_kwargs=job["agent_kwargs"], tensorboard=job.get("tensorboard", False))
    rewards = [float(r["reward"]) for r in result.history]
    best = result.best or {}
    cost = _ledger(run_dir)
    played = len(rewards) - before
    if played:
        cost = {"cpu_s": cost["cpu_s"] + time.process_time() - c0, "wall_s": cost["wall_s"] + time.time() - t0,
                "played": cost["played"] + played}
        (run_dir / COST_FILE).write_text(json.dumps(cost))
    return {**{k: job[k] for k in ("agent", "algo", "seed", "budget", "warmup", "name")}, "rewards": rewards,
            "wall_s": round(cost["wall_s"], 1), "cpu_s": round(cost["cpu_s"], 2), "played": int(cost["played"]),
            "best": {"reward": best.get("reward"), "episode": best.get("episode"), "seed": best.get("seed"),
                     "policy": result.best_policy, "surrogate_std": (best.get("info") or {}).get("surrogate_std")}}


def best_so_far(rewards: list[float]) -> list[float]:
    out, best = [], -math.inf
    for r in rewards:
        best = max(best, r)
        out.append(best)
    return out


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval (0 with one value)."""
    import numpy as np
    from scipy.stats import t

    v = np.asarray(values, np.float64)
    if len(v) < 2:
        return float(v.mean()), 0.0
    return float(v.mean()), float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def at(curve: list[float], n: int) -> float:
    """Best-so-far after ``n`` episodes (the last value if the run is shorter: uniform plays one)."""
    return curve[min(n, len(curve)) - 1]


class RealScores:
    """Real-env accuracies of policies, one JSON line each in ``path`` (flushed as written), so
    a killed re-score resumes where it stopped and a policy met twice (uniform's one episode
    in every seed, a policy two agents share) is played once. Keyed by the real env's
    settings, the budget, the split, the number of images, the policy and its reset seed."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.scores: dict[str, dict[str, Any]] = {}
        if path is not None and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
                self.scores[row["key"]] = row

    @staticmethod
    def key(config: dict[str, Any], policy: list[float], seed: int | None) -> str:
        import hashlib

        text = json.dumps({"config": config, "policy": [round(float(v), 9) for v in policy], "seed": seed},
                          sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        return self.scores.get(key)

    def put(self, key: str, row: dict[str, Any]) -> None:
        self.scores[key] = {"key": key, **row}
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps(self.scores[key]) + "\n")


class RealEnvs:
    """The real env of the surrogate's dataset (its settings from the dataset's ``header``) at a
    budget, a split and a number of images, each built once, and the accuracies it gave, kept in
    ``cache`` (:class:`RealScores`): the re-score and the confirmation share both."""

    def __init__(self, header: dict[str, Any], cache: Path | None = None, workers: int = 1) -> None:
        self.header = header
        self.scores = RealScores(cache)
        self.workers = int(workers)

    def config(self, budget: float, split: str, samples: int | None) -> dict[str, Any]:
        kwargs = {**self.header["env_kwargs"], self.header["budget_kwarg"]: budget}
        if split != "reward":  # "reward": the dataset's own reward configuration (its split and images)
            kwargs.update(reward_split=split, reward_samples=samples)
        return {"env_id": self.header["env_id"], "env_kwargs": kwargs}

    def score(self, budget: float, split: str, samples: int | None, policy: list[float],
              seed: int | None) -> dict[str, Any]:
        """The real accuracy of ``policy`` (cached): ``{"accuracy", "images", ...}``."""
        config = self.config(budget, split, samples)
        key = self.scores.key(config, policy, seed)
        hit = self.scores.get(key)
        if hit is not None:
            return hit
        row = _real_score(config, budget, split, policy, seed)
        self.scores.put(key, row)
        return row

    def score_many(self, requests: list[tuple[float, str, int | None, list[float], int | None]],
                   desc: str = "real scores") -> list[dict[str, Any]]:
        """:meth:`score` of each ``(budget, split, samples, policy, seed)``, the ones not cached
        played by ``workers`` processes at once (spawned, one torch thread each, each building
        the real envs it needs once); each result is cached as it comes, so a killed call
        resumes. Rows in the order of ``requests``."""
        from tqdm import tqdm

        keys = [self.scores.key(self.config(b, split, n), policy, seed) for b, split, n, policy, seed in requests]
        todo = {k: r for k, r in zip(keys, requests) if self.scores.get(k) is None}
        if self.workers > 1 and len(todo) > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(min(self.workers, len(todo)), mp_context=mp.get_context("spawn"),
                                     initializer=_real_worker_init) as pool:
                futures = {pool.submit(_real_score, self.config(b, split, n), b, split, policy, seed): k
                           for k, (b, split, n, policy, seed) in todo.items()}
                for fut in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="policy"):
                    self.scores.put(futures[fut], fut.result())
        else:
            for b, split, n, policy, seed in tqdm(list(todo.values()), desc=desc, unit="policy"):
                self.score(b, split, n, policy, seed)
        return [self.scores.get(k) for k in keys]  # type: ignore[misc]

    def close(self) -> None:
        for env in _REAL_ENVS.values():
            env.close()
        _REAL_ENVS.clear()


#: The real envs this process built, by configuration (each built once: ~10 s for a test split).
_REAL_ENVS: dict[str, Any] = {}


def _real_worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _real_score(config: dict[str, Any], budget: float, split: str, policy: list[float],
                seed: int | None) -> dict[str, Any]:
    """One real episode (in this process or a worker's), on the env of ``config`` built once."""
    import gymnasium as gym

    import pf_envs  # noqa: F401  (registers the ids)

    k = json.dumps(config, sort_keys=True, default=str)
    if k not in _REAL_ENVS:
        _REAL_ENVS[k] = gym.make(config["env_id"], **config["env_kwargs"]).unwrapped
    t0 = time.time()
    _, info = _REAL_ENVS[k].play_policy(policy, seed=seed)
    return {"accuracy": float(info["accuracy"]), "images": int(info["reward_samples"]),
            "flops_ratio": float(info.get("flops_ratio", float("nan"))), "budget": budget, "split": split,
            "seconds": round(time.time() - t0, 2)}


def rescore_real(real: RealEnvs, runs: list[dict[str, Any]], samples: int) -> None:
    """Replay each run's best policy on the real env of the surrogate's dataset (test split,
    ``samples`` images)."""
    rows = real.score_many([(run["budget"], "test", samples, run["best"]["policy"], run["best"]["seed"])
                            for run in runs], desc="real re-score of each run's best")
    for run, row in zip(runs, rows):
        run["best"]["real"] = row["accuracy"]


def top_policies(logdir: Path, runs: list[dict[str, Any]], agent: str, budget: float, n: int
                 ) -> list[dict[str, Any]]:
    """The ``n`` distinct policies with the highest surrogate rewards over all seeds' runs of
    ``agent`` at ``budget`` (read from their run folders): ``{"policy", "seed", "reward", "run",
    "episode"}``, best first."""
    from pf_agents.records import read_run
    from pf_envs.policy_replay import episode_policy

    found: dict[tuple[float, ...], dict[str, Any]] = {}
    for run in runs:
        if run["agent"] != agent or run["budget"] != budget:
            continue
        for e in read_run(logdir / run["name"]).episodes:
            policy = episode_policy(e)
            key = tuple(round(v, 9) for v in policy)
            if key not in found or e["reward"] > found[key]["reward"]:
                found[key] = {"policy": policy, "seed": e.get("seed"), "reward": float(e["reward"]),
                              "run": run["name"], "episode": e.get("episode")}
    return sorted(found.values(), key=lambda r: -r["reward"])[:n]


def confirm_top(real: RealEnvs, runs: list[dict[str, Any]], logdir: Path, agents: list[str],
                budgets: list[float], evaluations: int, test_samples: int) -> list[dict[str, Any]]:
    """What the surrogate saves, spent on real evaluations: for each budget and agent, its
    ``evaluations`` best distinct policies by surrogate reward (all seeds pooled) are played on
    the real env with the dataset's own reward (its split and images, as a real search scores
    an episode); the best of them by that real reward is then scored on ``test_samples`` test
    images. Returns one row per (budget, agent)."""
    import numpy as np

    from pf_envs.surrogate_model import spearman

    out = []
    for b in budgets:
        for agent in agents:
            top = top_policies(logdir, runs, agent, b, evaluations)
            if not top:
                continue
            rows = real.score_many([(b, "reward", None, t["policy"], t["seed"]) for t in top],
                                   desc=f"real scores of {agent}'s top policies at {b}")
            for t, row in zip(top, rows):
                t["real"] = row["accuracy"]
            best_i = int(np.argmax([t["real"] for t in top]))
            best = top[best_i]
            test = real.score(b, "test", test_samples, best["policy"], best["seed"])
            sur = np.asarray([t["reward"] for t in top])
            rea = np.asarray([t["real"] for t in top])
            out.append({"budget": b, "agent": agent, "evaluations": len(top), "best_real_reward": best["real"],
                        "its_surrogate_reward": best["reward"], "its_surrogate_rank": best_i + 1,
                        "run": best["run"], "episode": best["episode"], "policy": best["policy"],
                        "test_accuracy": test["accuracy"], "test_images": test["images"],
                        "test_se": math.sqrt(test["accuracy"] * (1 - test["accuracy"]) / test["images"]),
                        "flops_ratio": test["flops_ratio"],
                        "spearman_surrogate_real": spearman(sur, rea) if len(top) > 2 else None,
                        "mean_surrogate_minus_real": float((sur - rea).mean())})
    return out


def confirm_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| budget | agent | real evaluations (its top policies) | best real reward (its surrogate score, rank) "
             "| its test accuracy +- se | FLOPs | Spearman surrogate vs real | surrogate - real (mean) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rho = "-" if r["spearman_surrogate_real"] is None else f"{r['spearman_surrogate_real']:.3f}"
        lines.append(f"| {r['budget']} | {r['agent']} | {r['evaluations']} | {100 * r['best_real_reward']:.2f} "
                     f"({100 * r['its_surrogate_reward']:.2f}, #{r['its_surrogate_rank']}) | "
                     f"{100 * r['test_accuracy']:.2f} +- {100 * r['test_se']:.2f} | {r['flops_ratio']:.3f} | {rho} | "
                     f"{100 * r['mean_surrogate_minus_real']:+.2f} |")
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], agents: list[str], budgets: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(budgets), figsize=(6 * len(budgets), 4.5), squeeze=False)
    for ax, b in zip(axes[0], budgets):
        for agent in agents:
            curves = [best_so_far(r["rewards"]) for r in runs if r["agent"] == agent and r["budget"] == b]
            if not curves:
                continue
            n = max(len(c) for c in curves)
            if n == 1:  # one episode (uniform): a level line across the plot
                mean1 = float(np.mean([c[0] for c in curves]))
                ax.axhline(100 * mean1, linestyle="--", color="grey", label=f"{agent} ({100 * mean1:.2f})")
                continue
            m = np.asarray([[at(c, i + 1) for i in range(n)] for c in curves])
            stats = [interval(list(m[:, i])) for i in range(n)]
            mean = np.asarray([s[0] for s in stats])
            half = np.asarray([s[1] for s in stats])
            x = np.arange(1, n + 1)
            (line,) = ax.plot(x, 100 * mean, label=agent)
            ax.fill_between(x, 100 * (mean - half), 100 * (mean + half), alpha=0.2, color=line.get_color())
        ax.set_title(f"budget {b}")
        ax.set_xlabel("episodes")
        ax.set_ylabel("best-so-far reward x 100")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(runs: list[dict[str, Any]], agents: list[str], budgets: list[float], episodes: int) -> str:
    marks = [c for c in CHECKPOINTS if c <= episodes] or [episodes]
    real = any("real" in r["best"] for r in runs)
    head = "| budget | agent | seeds | " + " | ".join(f"best @ {c}" for c in marks) + " | after warm-up beats it"
    head += " | real (test) of the best | surrogate - real |" if real else " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for b in budgets:
        for agent in agents:
            rs = [r for r in runs if r["agent"] == agent and r["budget"] == b]
            if not rs:
                continue
            cells = []
            for c in marks:
                if any(1 < len(r["rewards"]) < c for r in rs):  # a run shorter than c (--agent-episodes)
                    cells.append("-")
                    continue
                mean, half = interval([at(best_so_far(r["rewards"]), c) for r in rs])
                cells.append(f"{100 * mean:.2f} +- {100 * half:.2f}")
            line = f"| {b} | {agent} | {len(rs)} | " + " | ".join(cells)
            w = rs[0].get("warmup")
            if w and all(len(r["rewards"]) > w for r in rs):
                wins = sum(max(r["rewards"][w:]) > max(r["rewards"][:w]) for r in rs)
                line += f" | {wins}/{len(rs)} seeds (warm-up {w})"
            else:
                line += " | -"
            if real:
                rm, rh = interval([r["best"]["real"] for r in rs])
                gm, gh = interval([r["best"]["reward"] - r["best"]["real"] for r in rs])
                line += f" | {100 * rm:.2f} +- {100 * rh:.2f} | {100 * gm:.2f} +- {100 * gh:.2f} |"
            else:
                line += " |"
            lines.append(line)
    return "\n".join(lines)


def cost_table(runs: list[dict[str, Any]], agents: list[str], seeds: int, budgets: int) -> str:
    """Each agent's CPU time: per episode played in its run folders (by every league process that
    played in them, :data:`COST_FILE`: a restarted league reports its searches' cost), per run,
    and a full league's share (``seeds`` x ``budgets`` runs of the same length), from ``time.process_time`` of its
    runs (the process's imports are paid by its first run: run one short league first, or read
    the per-episode figure of long runs)."""
    lines = ["| agent | runs | episodes played | CPU s | CPU ms an episode | CPU min at "
             f"{seeds} seeds x {budgets} budgets |", "|---|---|---|---|---|---|"]
    total = 0.0
    for agent in agents:
        rs = [r for r in runs if r["agent"] == agent]
        played = sum(r.get("played", len(r["rewards"])) for r in rs)
        cpu = sum(r.get("cpu_s", 0.0) for r in rs)
        full = cpu / max(1, len(rs)) * seeds * budgets / 60
        total += full
        per = f"{1000 * cpu / played:.1f}" if played else "-"
        lines.append(f"| {agent} | {len(rs)} | {played} | {cpu:.1f} | {per} | {full:.1f} |")
    lines.append(f"| all | | | | | {total:.1f} (wall on 2 idle cores: ~{total / 2:.1f}) |")
    return "\n".join(lines)


def smoke_dataset(path: Path, env_kwargs: dict[str, Any] | None = None) -> str:
    """A tiny synthetic ChannelPrune-ResNet20 dataset (for ``--smoke``): random policies on the
    surrogate's geometry, scored by a smooth function (no images, no training). ``env_kwargs``:
    the real env's settings its header names (default ``ft_iters=0``)."""
    import numpy as np

    from pf_agents.episodes import env_settings
    from pf_envs.envs.surrogate import SurrogateChannelPruneEnv
    from pf_envs.episode_data import EpisodeData, export_npz

    real = "ChannelPrune-ResNet20-v0"
    env_kwargs = {"ft_iters": 0} if env_kwargs is None else dict(env_kwargs)
    header = {"format": "pf-episodes/1", "env_id": real, "env_kwargs": env_kwargs,
              "env_settings": {k: v for k, v in env_settings(real, env_kwargs).items() if k != "flops_budget"},
              "budget_kwarg": "flops_budget", "reference_budget": 0.5, "model_fingerprint": "smoke",
              "recovery_fingerprint": "smoke", "num_steps": 12, "accuracy_original": 0.9}
    seedling = [{"values": [1.0] * 12, "accuracy": 0.9, "cost_ratio": 1.0, "budget": b, "source": "smoke", "block": 0,
                 "seed": 0} for b in (0.2, 0.8)]
    geometry = SurrogateChannelPruneEnv(EpisodeData.from_records(header, seedling), surrogate="gp")
    rng = np.random.default_rng(0)
    w = np.linspace(0.1, 0.6, 12)
    records = []
    for i in range(80):
        geometry.budget = float(rng.uniform(0.2, 0.8))
        geometry.reset(seed=i, options={"dry_run": True})
        for a in rng.uniform(-1, 1, 12):
            *_, info = geometry.step(np.array([a], np.float32))
        v = np.asarray(info["policy"])
        acc = 0.9 - float(((1 - v) ** 2 * w).sum() / w.sum())
        records.append({"values": v.tolist(), "accuracy": acc, "reward": acc, "cost_ratio": info["cost_ratio"],
                        "budget": geometry.budget, "source": "random", "block": i, "seed": i})
    export_npz(EpisodeData.from_records(header, records), path)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    from pf_agents.cli import parse_kwargs

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="Surrogate-ChannelPrune-ResNet20-v0")
    p.add_argument("--env-kwargs", default="", help="surrogate env kwargs, e.g. surrogate=gp,data=file.npz")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.3])
    p.add_argument("--agents", nargs="+", default=list(AGENTS),
                   help="agents, or labelled variants LABEL=AGENT (settings via --agent-kwargs LABEL:K=V)")
    p.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1")
    p.add_argument("--episodes", type=int, default=400)
    p.add_argument("--agent-episodes", nargs="+", default=[], metavar="LABEL=N",
                   help="episodes of one agent or variant where it differs from --episodes, e.g. gp=100")
    p.add_argument("--tensorboard", action="store_true",
                   help="write each run's TensorBoard curves (off by default: they cost more than a surrogate episode)")
    p.add_argument("--agent-kwargs", action="append", default=[], metavar="LABEL:K=V,...",
                   help="settings of one agent or variant, e.g. ddpg:warmup_episodes=100 (repeatable)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes (the searches, and the real episodes of --rescore / --confirm)")
    p.add_argument("--rescore", type=int, default=0, metavar="N",
                   help="re-score each run's best policy on the real env, N test images (0: no)")
    p.add_argument("--confirm", type=int, default=0, metavar="K",
                   help="spend K real evaluations per agent and budget on its K best policies by surrogate "
                        "(all seeds pooled), scored as the dataset's episodes were; the best by that real "
                        "reward is then scored on the --rescore test images (10,000 if --rescore is 0)")
    p.add_argument("--confirm-agents", nargs="+", default=["best"],
                   help="agents to confirm (default: best, the agent with the highest mean best at the end "
                        "of each budget, uniform aside)")
    p.add_argument("--logdir", default="benchmarks/runs/league")
    p.add_argument("--out", default=None, help="JSON file (the PNG goes next to it)")
    p.add_argument("--smoke", action="store_true",
                   help="size test: a tiny synthetic dataset, uniform + random + tpe, 2 seeds, 8 episodes, "
                        "temp folders")
    args = p.parse_args(argv)

    env_kwargs = parse_kwargs(args.env_kwargs)
    tmp = None
    if args.smoke:
        tmp = tempfile.TemporaryDirectory()
        env_kwargs["data"] = smoke_dataset(Path(tmp.name) / "smoke.npz")
        args.agents, args.seeds, args.episodes, args.budgets = ["uniform", "random", "tpe"], 2, 8, [0.5, 0.3]
        args.agent_kwargs = ["tpe:n_startup_trials=4"]
        args.logdir = str(Path(tmp.name) / "runs")
        args.out = args.out or str(Path(tmp.name) / "league.json")
    agent_kwargs: dict[str, dict[str, Any]] = {}
    for spec in args.agent_kwargs:
        agent, _, kv = spec.partition(":")
        agent_kwargs[agent] = parse_kwargs(kv)
    entries = [parse_entry(e) for e in args.agents]
    unknown = sorted({a for _, a in entries} - set(AGENTS))
    if unknown:
        p.error(f"unknown agent(s) {unknown}; choose from {list(AGENTS)}")
    labels = [label for label, _ in entries]
    if len(set(labels)) != len(labels):
        p.error(f"each agent or variant once, got {labels}")
    stray = sorted(set(agent_kwargs) - set(labels))
    if stray:
        p.error(f"--agent-kwargs for {stray}, which --agents does not list ({labels})")
    unknown_c = sorted(set(args.confirm_agents) - set(labels) - {"best"})
    if unknown_c:
        p.error(f"--confirm-agents {unknown_c}: not in --agents ({labels}); or pass best")
    episodes_of: dict[str, int] = {}
    for spec in args.agent_episodes:
        label, _, n = spec.partition("=")
        if label not in labels or not n.isdigit() or int(n) < 1:
            p.error(f"--agent-episodes takes LABEL=N with LABEL one of {labels} and N >= 1, got {spec!r}")
        episodes_of[label] = int(n)
    from pf_agents.registry import get_agent_class

    for label, agent in entries:
        kwargs = {**LEAGUE_AGENT_KWARGS.get(agent, {}), **agent_kwargs.get(label, {})}
        bad = sorted(set(kwargs) - set(get_agent_class(agent).DEFAULTS))
        if bad:
            valid = sorted(get_agent_class(agent).DEFAULTS)
            p.error(f"{label}: unknown setting(s) {bad} of agent {agent}; valid: {valid}")
        check = getattr(get_agent_class(agent), "check_settings", None)
        if check is not None:
            try:
                check({**get_agent_class(agent).DEFAULTS, **kwargs})
            except ValueError as exc:
                p.error(f"{label}: {exc}")

    import gymnasium as gym

    import pf_envs  # noqa: F401

    probe = gym.make(args.env, **env_kwargs).unwrapped
    bk = type(probe).budget_kwarg
    jobs = []
    for b in args.budgets:
        for label, agent in entries:
            kwargs = {**LEAGUE_AGENT_KWARGS.get(agent, {}), **agent_kwargs.get(label, {})}
            n = 1 if agent == "uniform" else episodes_of.get(label, args.episodes)
            for seed in range(args.seeds):
                jobs.append({"env": args.env, "env_kwargs": {**env_kwargs, bk: b}, "agent": label, "algo": agent,
                             "seed": seed, "budget": b, "episodes": n, "agent_kwargs": kwargs,
                             "warmup": warmup_length(agent, kwargs), "logdir": args.logdir,
                             "tensorboard": args.tensorboard, "name": f"{args.env}__{bk}{b}__{label}__seed{seed}"})
    t0 = time.time()
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            runs = list(pool.map(run_one, jobs))
    else:
        runs = [run_one(j) for j in jobs]
    wall = time.time() - t0
    # the smoke dataset has no real env behind it
    real = (RealEnvs(probe.data.header, Path(args.logdir) / "real_scores.jsonl", workers=args.workers)
            if not args.smoke else None)
    if args.rescore and real is not None:
        rescore_real(real, runs, args.rescore)
    text = table(runs, labels, args.budgets, args.episodes)
    print(text)
    confirmed: list[dict[str, Any]] = []
    if args.confirm and real is not None:
        chosen = [a for a in args.confirm_agents if a != "best"]
        for b in args.budgets:
            agents_b = list(chosen)
            if "best" in args.confirm_agents:
                finals = {a: statistics.fmean(max(r["rewards"]) for r in runs if r["agent"] == a and r["budget"] == b)
                          for a in labels if a != "uniform" and any(r["agent"] == a for r in runs)}
                if finals:
                    top_agent = max(finals, key=finals.get)
                    agents_b += [] if top_agent in agents_b else [top_agent]
            confirmed += confirm_top(real, runs, Path(args.logdir), agents_b, [b], args.confirm,
                                     args.rescore or 10_000)
        print(confirm_table(confirmed))
    if real is not None:
        real.close()
    cost = cost_table(runs, labels, 10, 2)
    print(cost)
    print(f"{len(jobs)} runs in {wall:.0f} s ({args.workers} worker(s))")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"env": args.env, "env_kwargs": env_kwargs, "budgets": args.budgets,
                                   "agents": args.agents, "seeds": args.seeds, "episodes": args.episodes,
                                   "agent_kwargs": agent_kwargs, "agent_episodes": episodes_of,
                                   "wall_s": round(wall, 1), "command": " ".join(sys.argv),
                                   "table": text, "cost": cost, "confirmed": confirmed,
                                   "confirm_table": confirm_table(confirmed) if confirmed else None,
                                   "runs": runs}, indent=1))
        plot(runs, labels, args.budgets, out.with_suffix(".png"))
        print(f"wrote {out} and {out.with_suffix('.png')}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
