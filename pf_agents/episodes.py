"""Episode datasets: many real episodes of one env, over a range of budgets, from mixed policies.

A dataset is what a surrogate of the env is fitted on (:mod:`pf_agents.surrogate`). It is a
JSON-lines file: a header line, then one compact record per scored episode::

    {"header": {"format": "pf-episodes/1", "env_id": ..., "env_kwargs": ..., "env_settings": ...,
                "model_fingerprint": ..., "recovery_fingerprint": ..., "command": ..., ...}}
    {"block": 0, "source": "random", "seed": 123, "budget": 0.47, "values": [...], "reward": 0.71,
     "accuracy": 0.71, "cost_ratio": 0.46, "params_ratio": 0.52, "wall_s": 2.6}

``values`` are the applied per-unit values in unit order (the final ``info["policy"]``: keep
ratios for ChannelPrune, bits for the quantization envs). Every line is appended, flushed and
fsynced on its own, so a killed collection loses at most the episode in flight; a resumed one
drops a damaged last line and continues where it stopped, playing exactly what an uninterrupted
one would have (the plan is a function of the seed).

The plan: a sequence of blocks, block ``b`` drawn from ``(seed, b)``: a policy source, a budget
uniform in ``budgets`` and a number of episodes. Sources (:data:`SOURCES`):

- ``random``: independent uniform actions in [-1, 1] at every step (the clamp keeps the budget);
- ``jitter``: the constant action that spends the budget (found by bisection on free dry runs)
  plus Gaussian noise of a standard deviation drawn per episode in [0.05, 0.5];
- an agent of :data:`pf_agents.registry.AGENTS` (``tpe``, ``gp``, ``ddpg``, ...): a short search
  through :func:`pf_agents.search.search` (its own run folder under ``<out>.runs/``, resumed
  with the dataset), every episode it scores harvested into the dataset, so the good regions
  of the policy space are covered as well as the bulk.

>>> from pf_agents.episodes import collect
>>> collect("Toy-v0", "toy.jsonl", episodes=50, progress=False)   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import gymnasium as gym
import numpy as np

from pf_envs.episode_data import DamagedDatasetError, read_jsonl

FORMAT = "pf-episodes/1"

#: Sources that are not search agents.
PLAIN_SOURCES: tuple[str, ...] = ("random", "jitter")
#: Default mix: each source's share of the episodes.
DEFAULT_MIX: dict[str, float] = {"random": 0.3, "jitter": 0.3, "tpe": 0.15, "gp": 0.1, "ddpg": 0.15}
#: Default episodes per block of each kind.
DEFAULT_BLOCK = 5
DEFAULT_SEARCH_EPISODES = 40
#: Agent settings of the harvested searches (short searches: a short warm-up).
SEARCH_AGENT_KWARGS: dict[str, dict[str, Any]] = {
    "ddpg": {"warmup_episodes": 10}, "td3": {"warmup_episodes": 10}, "sac": {"warmup_episodes": 10},
    "tpe": {"n_startup_trials": 10}, "gp": {"initial_points": 10},
}
#: Blocks failing in a row before the collection stops (a failure that is not the block's own).
MAX_FAILED_BLOCKS = 3
#: Jitter noise: standard deviation drawn per episode, uniform in this range.
JITTER_SIGMA = (0.05, 0.5)


def sources() -> tuple[str, ...]:
    """Every valid policy source: the plain ones and the registered agents."""
    from pf_agents.registry import AGENTS

    return PLAIN_SOURCES + tuple(a for a in AGENTS if a not in PLAIN_SOURCES)


class DatasetLockedError(RuntimeError):
    """Another process is writing the dataset."""


@dataclass(frozen=True)
class Block:
    """One block of the plan: ``episodes`` episodes of ``source`` at ``budget``, seeded ``seed``."""

    index: int
    source: str
    budget: float
    episodes: int
    seed: int


@dataclass(frozen=True)
class Plan:
    """The collection plan: a deterministic sequence of blocks drawn from ``seed``."""

    seed: int = 0
    budgets: tuple[float, float] = (0.2, 0.8)
    mix: tuple[tuple[str, float], ...] = tuple(DEFAULT_MIX.items())
    block_episodes: int = DEFAULT_BLOCK
    search_episodes: int = DEFAULT_SEARCH_EPISODES

    def __post_init__(self) -> None:
        lo, hi = self.budgets
        if not 0 < lo <= hi:
            raise ValueError(f"budgets must satisfy 0 < low <= high, got {self.budgets} (a fraction of the cost, "
                             "or average bits for the quantization envs)")
        valid = sources()
        bad = [s for s, _ in self.mix if s not in valid]
        if bad:
            raise ValueError(f"unknown policy source(s) {bad} in the mix; valid: {list(valid)}")
        if not self.mix or any(w < 0 for _, w in self.mix) or sum(w for _, w in self.mix) <= 0:
            raise ValueError(f"the mix needs non-negative shares with a positive sum, got {dict(self.mix)}")
        if self.block_episodes < 1 or self.search_episodes < 1:
            raise ValueError("block_episodes and search_episodes must be positive")

    def size(self, source: str) -> int:
        return self.block_episodes if source in PLAIN_SOURCES else self.search_episodes

    def block(self, index: int) -> Block:
        """Block ``index`` (a pure function of the plan and the index)."""
        names = [s for s, _ in self.mix]
        # a source's share of the episodes -> its probability per block
        w = np.asarray([share / self.size(s) for s, share in self.mix], np.float64)
        rng = np.random.default_rng([self.seed, index])
        source = names[int(rng.choice(len(names), p=w / w.sum()))]
        budget = round(float(rng.uniform(*self.budgets)), 4)
        seed = int(rng.integers(0, 2**31 - 1))
        return Block(index, source, budget, self.size(source), seed)

    def as_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "budgets": list(self.budgets), "mix": dict(self.mix),
                "block_episodes": self.block_episodes, "search_episodes": self.search_episodes,
                "search_agent_kwargs": SEARCH_AGENT_KWARGS, "jitter_sigma": list(JITTER_SIGMA)}


# -- the file -------------------------------------------------------------------------------------
def read_dataset(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(header, records)`` of a dataset file (``.jsonl`` or ``.jsonl.gz``); a damaged last
    line (a collection killed mid-write) is skipped. :func:`pf_envs.episode_data.load_episodes`
    reads it as arrays.

    Raises:
        FileNotFoundError: no such file.
        DamagedDatasetError: no header, or a damaged line before the last.
    """
    header, records, _ = read_jsonl(path)
    if header is None:
        raise DamagedDatasetError(f"{path} has no header line: not an episode dataset (or empty)")
    return header, records


class DatasetWriter:
    """Appends records to a dataset file, one fsynced line each; holds an exclusive lock on
    ``<path>.lock`` (released by the OS if the process dies)."""

    def __init__(self, path: Path, truncate_at: int | None) -> None:
        self.path = path
        self._lock = open(f"{path}.lock", "a+")
        try:
            import fcntl

            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - Windows: no lock
            pass
        except OSError:
            self._lock.close()
            raise DatasetLockedError(f"{path} is being written by another process; one dataset has one "
                                     "writer: wait for it (or stop it), then run the command again") from None
        self._fh: IO[bytes] = open(path, "ab")
        if truncate_at is not None and self._fh.tell() != truncate_at:
            self._fh.truncate(truncate_at)  # drop a damaged last line
            self._fh.seek(truncate_at)

    def append(self, obj: dict[str, Any]) -> None:
        self._fh.write((json.dumps(obj, separators=(",", ":")) + "\n").encode())
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()
        self._lock.close()


# -- the env --------------------------------------------------------------------------------------
def env_settings(env_id: str, env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every keyword argument of the env id with its value (given, registered, else default)."""
    import pf_envs  # noqa: F401  (registers the ids)

    spec = gym.spec(env_id)
    entry = spec.entry_point
    if isinstance(entry, str):
        import importlib

        module, name = entry.split(":")
        entry = getattr(importlib.import_module(module), name)
    out: dict[str, Any] = {}
    for p in inspect.signature(entry).parameters.values():
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name == "self":
            continue
        out[p.name] = None if p.default is inspect.Parameter.empty else p.default
    out.update(spec.kwargs or {})
    out.update(env_kwargs)
    return out


def budget_kwarg(env_id: str) -> str:
    """The name of the env's budget keyword argument (``flops_budget``, ``budget``, ...)."""
    import importlib

    import pf_envs  # noqa: F401

    entry = gym.spec(env_id).entry_point
    if isinstance(entry, str):
        module, name = entry.split(":")
        entry = getattr(importlib.import_module(module), name)
    return str(getattr(entry, "budget_kwarg", "budget"))


def _to_plain(v: Any) -> Any:
    from pf_agents.records import to_jsonable

    return to_jsonable(v)


def make_header(env_id: str, env_kwargs: dict[str, Any], plan: Plan, command: str,
                note: str = "", reference_budget: float | None = None) -> dict[str, Any]:
    """The header: env id, its kwargs (given and with defaults), the fingerprints of the env at
    ``reference_budget`` (default: the middle of the plan's budgets; the recovery fingerprint
    includes the budget, every other setting is the same for all blocks), the plan, versions
    and the command."""
    if reference_budget is None:
        reference_budget = round(0.5 * (plan.budgets[0] + plan.budgets[1]), 4)
    import torch

    import pf_envs
    from pf_agents.search import env_fingerprints, make_env

    bk = budget_kwarg(env_id)
    env = make_env(env_id, {**env_kwargs, bk: reference_budget})
    try:
        model_fp, recovery_fp = env_fingerprints(env)
        core = env.unwrapped
        num_steps = int(getattr(core, "num_steps", 0))
        features = list(core.observation_features()) if hasattr(core, "observation_features") else []
        acc0 = getattr(core, "accuracy_original", None)
    finally:
        env.close()
    return {
        "format": FORMAT, "env_id": env_id, "env_kwargs": _to_plain(env_kwargs),
        "env_settings": _to_plain({k: v for k, v in env_settings(env_id, env_kwargs).items() if k != bk}),
        "budget_kwarg": bk, "reference_budget": reference_budget, "model_fingerprint": model_fp,
        "recovery_fingerprint": recovery_fp, "num_steps": num_steps, "observation_features": features,
        "accuracy_original": acc0, "plan": plan.as_dict(), "package_version": pf_envs.__version__,
        "python": platform.python_version(), "torch": torch.__version__, "command": command, "note": note,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
    }


#: header keys a resumed collection must match
RESUME_KEYS = ("format", "env_id", "env_kwargs", "budget_kwarg", "reference_budget", "model_fingerprint",
               "recovery_fingerprint", "num_steps", "plan")


# -- the collector --------------------------------------------------------------------------------
class DatasetTap(gym.Wrapper):
    """Writes every scored episode that passes through it into the dataset (dry runs are not
    written; an episode whose (block, reset seed) is already there is not written again)."""

    def __init__(self, env: gym.Env, block: Block, sink: Callable[[dict[str, Any]], bool]) -> None:
        super().__init__(env)
        self.block, self.sink = block, sink
        self._seed: int | None = None
        self._t0 = time.time()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._seed, self._t0 = seed, time.time()
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if (terminated or truncated) and not info.get("dry_run", False):
            self.sink(episode_record(self.block, self._seed, float(reward), info, time.time() - self._t0))
        return obs, reward, terminated, truncated, info


def episode_record(block: Block, seed: int | None, reward: float, info: dict[str, Any], wall: float) -> dict[str, Any]:
    """The compact dataset record of one scored episode (its final ``info``)."""

    def num(key: str) -> float | None:
        v = info.get(key)
        return None if v is None else round(float(v), 6)

    return {
        "block": block.index, "source": block.source, "seed": seed, "budget": block.budget,
        "values": [round(float(v), 6) for v in info["policy"]], "reward": round(reward, 6),
        "accuracy": num("accuracy"), "cost_ratio": num("cost_ratio"), "params_ratio": num("params_ratio"),
        "wall_s": round(wall, 3),
    }


def _episode_seed(block: Block, k: int) -> int:
    return int(np.random.SeedSequence([block.seed, k]).generate_state(1)[0] % (2**31 - 1))


def uniform_action(env: gym.Env, tol: float = 1e-3) -> float:
    """The largest constant action whose (dry-run) policy keeps within the budget without the
    clamp cutting any step: the uniform policy that spends the budget (bisection)."""
    from pf_agents.base import play_episode

    steps = env.unwrapped.num_steps
    lo, hi = -1.0, 1.0
    if not play_episode(env, np.full(steps, hi), dry_run=True).clamped_any:
        return hi
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if play_episode(env, np.full(steps, mid), dry_run=True).clamped_any:
            hi = mid
        else:
            lo = mid
    return lo


def play_block(env: gym.Env, block: Block, done_seeds: set[int], remaining: int) -> None:
    """Play up to ``remaining`` episodes of a random or jitter block through ``env`` (a
    :class:`DatasetTap`), skipping those already in the dataset."""
    from pf_agents.base import play_episode

    steps = env.unwrapped.num_steps
    centre = uniform_action(env) if block.source == "jitter" else 0.0
    for k in range(block.episodes):
        if remaining <= 0:
            return
        seed = _episode_seed(block, k)
        if seed in done_seeds:
            continue
        rng = np.random.default_rng([block.seed, k, 1])
        if block.source == "random":
            actions = rng.uniform(-1.0, 1.0, steps)
        else:
            sigma = rng.uniform(*JITTER_SIGMA)
            actions = np.clip(centre + rng.normal(0.0, sigma, steps), -1.0, 1.0)
        play_episode(env, actions, seed=seed)
        remaining -= 1


def collect(
    env_id: str,
    out: str | os.PathLike[str],
    episodes: int = 3000,
    *,
    env_kwargs: dict[str, Any] | None = None,
    plan: Plan | None = None,
    note: str = "",
    command: str | None = None,
    progress: bool = True,
    runs_dir: str | os.PathLike[str] | None = None,
    workers: int = 1,
    threads: int | None = None,
) -> int:
    """Collect (or continue collecting) ``episodes`` scored episodes of ``env_id`` into ``out``.

    With ``workers > 1`` the plan's blocks are played by that many processes at once (each
    builds its own env; the calling process alone writes the file): the dataset holds the same
    episodes as a one-process collection of the same plan, in another order.

    Args:
        env_id: a registered env id.
        out: the dataset file (``.jsonl``); created with its header, or resumed.
        episodes: the total the dataset should hold (a resumed collection plays what is left).
        env_kwargs: the env's kwargs except the budget (set per block).
        plan: the blocks (sources, budgets, sizes, seed).
        note: free text for the header (e.g. why ``ft_iters=0``).
        command: the command line recorded in the header (default: this process's).
        progress: show a progress bar.
        runs_dir: parent of the harvested searches' run folders (default ``<out>.runs``).
        workers: processes playing blocks (one a core; 1: this process plays them).
        threads: torch threads of each worker process (default: torch's).

    Returns:
        The number of records the dataset holds.

    Raises:
        ValueError: resuming with other settings than the dataset was started with (the
            message names them), or a bad plan.
        DamagedDatasetError: a damaged line before the last.
        DatasetLockedError: another process is writing ``out``.
    """
    env_kwargs = dict(env_kwargs or {})
    plan = plan or Plan()
    out = Path(out)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    bk = budget_kwarg(env_id)
    if bk in env_kwargs:
        raise ValueError(f"{bk} is drawn per block from the plan's budgets; leave it out of env_kwargs")
    command = command or " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = Path(runs_dir) if runs_dir else Path(f"{out}.runs")
    header, records, good = (read_jsonl(out) if out.exists() else (None, [], 0))
    fresh = make_header(env_id, env_kwargs, plan, command, note)
    if header is None:
        records, good = [], 0
        writer = DatasetWriter(out, 0)
        writer.append({"header": fresh})
    else:
        diff = [k for k in RESUME_KEYS if _to_plain(header.get(k)) != _to_plain(fresh.get(k))]
        if diff:
            raise ValueError(f"{out} was collected with other settings ({', '.join(diff)} differ: "
                             f"{ {k: header.get(k) for k in diff} } vs { {k: fresh.get(k) for k in diff} }); "
                             "resume with the recorded settings or write to another file")
        writer = DatasetWriter(out, good)
    done: dict[int, set[int]] = {}
    for r in records:
        done.setdefault(int(r["block"]), set()).add(int(r["seed"]))
    count = [len(records)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=episodes, initial=min(count[0], episodes), desc=f"episodes of {env_id}", unit="ep",
                   dynamic_ncols=True)

    def sink(rec: dict[str, Any]) -> bool:
        seen = done.setdefault(int(rec["block"]), set())
        if rec["seed"] in seen:
            return False
        writer.append(rec)
        seen.add(int(rec["seed"]))
        count[0] += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(block=rec["block"], src=rec["source"], budget=rec["budget"],
                            reward=f"{rec['reward']:.4f}", s=f"{rec['wall_s']:.1f}")
        return True

    try:
        if workers > 1:
            _collect_parallel(env_id, env_kwargs, bk, plan, episodes, runs, done, count, sink, workers, threads)
        else:
            _collect_serial(env_id, env_kwargs, bk, plan, episodes, runs, done, count, sink)
    finally:
        if bar is not None:
            bar.close()
        writer.close()
    return count[0]


def play_plan_block(env_id: str, env_kwargs: dict[str, Any], budget_key: str, block: Block, seen: set[int],
                    remaining: int, runs: Path, sink: Callable[[dict[str, Any]], bool]) -> None:
    """Play up to ``remaining`` new episodes of ``block`` on a fresh env, each scored episode
    handed to ``sink``: a random/jitter block through :func:`play_block`, an agent's block as a
    short search (its run folder under ``runs``, resumed if it is there)."""
    from pf_agents.search import make_env, search

    env = DatasetTap(make_env(env_id, {**env_kwargs, budget_key: block.budget}), block, sink)
    try:
        if block.source in PLAIN_SOURCES:
            play_block(env, block, seen, remaining)
        else:
            name = f"block{block.index:05d}__{block.source}"
            total = min(block.episodes, len(seen) + remaining)
            search(env, agent=block.source, episodes=total, seed=block.seed, logdir=runs, run_name=name,
                   resume=(runs / name / "config.json").exists(), progress=False,
                   agent_kwargs=SEARCH_AGENT_KWARGS.get(block.source, {}))
    finally:
        env.close()


def _block_failed(block: Block, error: str) -> None:
    print(f"block {block.index} ({block.source} at {block.budget}) failed: {error}; "
          "skipped (a resumed collection tries it again)", file=sys.stderr, flush=True)


def _collect_serial(env_id: str, env_kwargs: dict[str, Any], bk: str, plan: Plan, episodes: int, runs: Path,
                    done: dict[int, set[int]], count: list[int], sink: Callable[[dict[str, Any]], bool]) -> None:
    failures, b = 0, 0
    while count[0] < episodes:
        block = plan.block(b)
        seen = done.setdefault(b, set())
        b += 1
        if len(seen) >= block.episodes:
            continue
        try:
            play_plan_block(env_id, env_kwargs, bk, block, seen, episodes - count[0], runs, sink)
            failures = 0
        except Exception as exc:  # one block's failure (an agent's crash) must not end hours of collection
            failures += 1
            _block_failed(block, f"{type(exc).__name__}: {exc}")
            if failures >= MAX_FAILED_BLOCKS:
                raise


# -- several processes ------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(queue: Any, threads: int | None, parent: int) -> None:
    _WORKER.update(queue=queue, parent=parent)
    if threads:
        import torch

        torch.set_num_threads(threads)


def _worker_block(env_id: str, env_kwargs: dict[str, Any], bk: str, block: Block, seen: frozenset[int],
                  remaining: int, runs: str) -> tuple[int, str | None]:
    """A worker process plays one block; each record goes to the writer through the queue.
    Returns the records sent and the block's error (None when it played through)."""
    local, sent = set(seen), [0]

    def send(rec: dict[str, Any]) -> bool:
        if os.getppid() != _WORKER["parent"]:  # the collector died: stop, nobody writes what we play
            os._exit(3)
        if rec["seed"] in local:
            return False
        local.add(int(rec["seed"]))
        _WORKER["queue"].put(rec)
        sent[0] += 1
        return True

    try:
        play_plan_block(env_id, env_kwargs, bk, block, local, remaining, Path(runs), send)
        return sent[0], None
    except Exception as exc:  # reported to the collector, which counts failures in a row
        return sent[0], f"{type(exc).__name__}: {exc}"


def _collect_parallel(env_id: str, env_kwargs: dict[str, Any], bk: str, plan: Plan, episodes: int, runs: Path,
                      done: dict[int, set[int]], count: list[int], sink: Callable[[dict[str, Any]], bool],
                      workers: int, threads: int | None) -> None:
    """Blocks in plan order to ``workers`` processes; their records written here as they come.

    A block is reserved the episodes a one-process collection would give it (what is left of
    the total after the blocks before it); a block that plays fewer hands its reservation back
    once all its records have arrived (a result and the records travel by different pipes)."""
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import Future, ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")  # no forked torch state in the workers
    records = ctx.Queue()
    received: dict[int, int] = {}
    inflight: dict[Future, tuple[Block, int]] = {}
    finished: dict[int, tuple[Block, int]] = {}  # block index -> (block, records it sent)
    failures, b = 0, 0

    def outstanding() -> int:
        return (sum(r - received.get(blk.index, 0) for blk, r in inflight.values())
                + sum(n - received.get(i, 0) for i, (blk, n) in finished.items()))

    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(records, threads, os.getpid()))
    try:
        while True:
            while len(inflight) < workers and count[0] + outstanding() < episodes:
                block = plan.block(b)
                seen = done.setdefault(b, set())
                b += 1
                if len(seen) >= block.episodes:
                    continue
                r = min(block.episodes - len(seen), episodes - count[0] - outstanding())
                fut = pool.submit(_worker_block, env_id, env_kwargs, bk, block, frozenset(seen), r, str(runs))
                inflight[fut] = (block, r)
            if not inflight and not finished:
                break
            try:
                rec = records.get(timeout=0.5)
            except queue_mod.Empty:
                rec = None
            if rec is not None:
                received[int(rec["block"])] = received.get(int(rec["block"]), 0) + 1
                sink(rec)
            for fut in [f for f in inflight if f.done()]:
                block, _ = inflight.pop(fut)
                try:
                    sent, error = fut.result()
                except BrokenProcessPool as exc:
                    raise RuntimeError(f"a worker process died playing block {block.index} ({exc}); "
                                       "run the collection again to resume it") from exc
                finished[block.index] = (block, sent)
                if error is None:
                    failures = 0
                else:
                    failures += 1
                    _block_failed(block, error)
                    if failures >= MAX_FAILED_BLOCKS:
                        raise RuntimeError(f"{MAX_FAILED_BLOCKS} blocks failed in a row, the last: {error}")
            for i in [i for i, (blk, n) in finished.items() if received.get(i, 0) >= n]:
                del finished[i]
    finally:
        if inflight:  # stopped by an error or Ctrl-C: don't wait for the blocks in flight
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.terminate()
        pool.shutdown(wait=not inflight, cancel_futures=True)


# -- the CLI --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="collect_episodes.py",
        description="Collect (or resume) an episode dataset of one env for a surrogate: one compact JSON line "
                    "per scored episode, policies mixed from random, jittered-uniform and short agent searches, "
                    "budgets drawn per block.",
    )
    p.add_argument("--env", required=True, help="env id, e.g. ChannelPrune-ResNet20-v0")
    p.add_argument("--out", required=True, help="dataset file (.jsonl); resumed if it exists")
    p.add_argument("--episodes", type=int, default=3000, help="total episodes the dataset should hold")
    p.add_argument("--env-kwargs", default="", help="env kwargs except the budget, e.g. ft_iters=0,reward_samples=2000")
    p.add_argument("--budgets", type=float, nargs=2, default=(0.2, 0.8), metavar=("LOW", "HIGH"),
                   help="budgets are drawn uniformly in [LOW, HIGH] per block")
    p.add_argument("--mix", default=",".join(f"{k}={v}" for k, v in DEFAULT_MIX.items()),
                   help="share of the episodes per policy source (random, jitter, or an agent name)")
    p.add_argument("--block-episodes", type=int, default=DEFAULT_BLOCK, help="episodes per random/jitter block")
    p.add_argument("--search-episodes", type=int, default=DEFAULT_SEARCH_EPISODES, help="episodes per search block")
    p.add_argument("--seed", type=int, default=0, help="plan seed")
    p.add_argument("--note", default="", help="free text recorded in the header")
    p.add_argument("--threads", type=int, default=None, help="torch threads of each process (default: torch's)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes playing blocks at once (one a core); the dataset is the same as with one")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--export", default=None, metavar="NPZ",
                   help="collect nothing: pack the dataset at --out into this compressed .npz (the shipped format) "
                        "and print its sha256")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from pf_agents.cli import parse_kwargs

    p = build_parser()
    args = p.parse_args(argv)
    try:
        env_kwargs = parse_kwargs(args.env_kwargs)
        mix = tuple((k, float(v)) for k, v in parse_kwargs(args.mix).items())
        plan = Plan(seed=args.seed, budgets=(args.budgets[0], args.budgets[1]), mix=mix,
                    block_episodes=args.block_episodes, search_episodes=args.search_episodes)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        p.error(str(exc))
    if args.export:
        from pf_envs.episode_data import export_npz, load_episodes

        try:
            data = load_episodes(args.out)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{args.export}: {len(data)} episodes, sha256 {export_npz(data, args.export)}")
        return 0
    if args.episodes < 1:
        p.error(f"--episodes must be positive, got {args.episodes}")
    if args.workers < 1:
        p.error(f"--workers must be at least 1, got {args.workers}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        n = collect(args.env, args.out, args.episodes, env_kwargs=env_kwargs, plan=plan, note=args.note,
                    progress=not args.no_progress, workers=args.workers, threads=args.threads)
    except (ValueError, DatasetLockedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {n} episodes")
    return 0


__all__ = ["Block", "DamagedDatasetError", "DatasetTap", "DatasetWriter", "Plan", "collect", "read_dataset",
           "uniform_action"]

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
