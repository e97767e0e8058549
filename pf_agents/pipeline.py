"""The whole job in one command: search -> re-training -> export -> benchmark.

    python scripts/compress.py --env ChannelPrune-MobileNetV1-v0 --agent ddpg --episodes 300 \\
        --retrain-epochs 30 --int8 --out out/

One job writes an ``--out`` folder: the job holds ``OUT/.lock`` (``flock``, released by the OS
when the process ends) from its start to its end, through every stage, so a second
``compress.py`` on the same ``--out`` exits at once with ``error: OUT is being written by
another compress job (pid N on host ...)`` (exit 2) instead of racing the first into the
same files.

Every stage writes into its own folder under ``--out`` and is skipped when its output is
already there and was made from the current input (the stage before it); a stage that was
killed resumes (the search from its run folder, re-training from its state file), so running
the same command again finishes the job. The stages are the project's own command-line tools,
each run in a fresh process (``scripts/retrain.py`` under ``torchrun`` with ``--nproc N``):

========== ===================================== =============================================
stage      output                                tool
========== ===================================== =============================================
search     ``OUT/search/<run>/best.json``        :func:`pf_agents.search`
retrain    ``OUT/retrain/retrained.pt`` + .json  ``scripts/retrain.py`` (``--retrain-epochs 0``:
                                                 the searched candidate, ``scripts/replay.py``)
export     ``OUT/export/manifest.json``          ``scripts/export.py`` (fp32 ONNX, int8 with
                                                 ``--int8``, ORT format with ``--ort-format``)
dense      ``OUT/export-dense/manifest.json``    ``scripts/export.py`` on the uncompressed model
benchmark  ``OUT/benchmark.json``                ``benchmarks/deploy.py`` (onnxruntime + numpy)
========== ===================================== =============================================
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pf_agents.cli import parse_kwargs
from pf_agents.records import RunLock, RunLockedError, RunWriteError
from pf_agents.registry import AGENTS

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
BENCHMARKS = REPO / "benchmarks"


@dataclass
class Stage:
    """One stage's outcome: ``ran`` False when its output was already there."""

    name: str
    output: Path
    ran: bool
    seconds: float


#: What a second job on the same ``--out`` is told (exit 2).
OUT_BUSY = ("{folder} is being written by another compress job ({holder}): one --out folder has one job. Wait "
            "for it to finish (or stop it), then run the same command again; to run another job at the same "
            "time, pass another --out")


class StageError(RuntimeError):
    """A stage's tool failed; the message names the stage, the command and how to resume."""


def _run(name: str, cmd: list[str], log: Path) -> None:
    print(f"[{name}] {shlex.join(cmd)}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(log, "a") as fh:
        fh.write(f"\n$ {shlex.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, env=env, stdout=None, stderr=subprocess.PIPE, text=True)
        fh.write(proc.stderr or "")
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or "").strip().splitlines()[-15:])
        raise StageError(
            f"stage {name} failed (exit {proc.returncode}); its log is {log}.\n{tail}\n"
            "Fix the cause and run the same command again: finished stages are skipped, this one resumes."
        )


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compress.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--env", required=True, help="env id, e.g. ChannelPrune-MobileNetV1-v0")
    p.add_argument("--agent", default="ddpg", choices=sorted(AGENTS))
    p.add_argument("--episodes", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--env-kwargs", type=parse_kwargs, default={}, help="search env kwargs k=v,k=v")
    p.add_argument("--agent-kwargs", type=parse_kwargs, default={}, help="agent settings k=v,k=v")
    p.add_argument("--retrain-epochs", type=int, default=30,
                   help="epochs of re-training on the whole training split (0: export the searched candidate)")
    p.add_argument("--retrain-args", default="", help="more scripts/retrain.py flags, e.g. '--distill --lr 0.05'")
    p.add_argument("--nproc", type=int, default=1, help="re-training processes (torchrun, DDP)")
    p.add_argument("--int8", action="store_true", help="also export an int8 ONNX Runtime model")
    p.add_argument("--ort-format", action="store_true", help="also write the .ort files for ONNX Runtime Mobile")
    p.add_argument("--export-args", default="", help="more scripts/export.py flags")
    p.add_argument("--no-dense", action="store_true", help="do not export and time the uncompressed model")
    p.add_argument("--bench-runs", type=int, default=200, help="timed runs per model in the benchmark")
    p.add_argument("--bench-args", default="", help="more benchmarks/deploy.py flags, e.g. '--limit 2000'")
    p.add_argument("--out", required=True, help="output folder (one per job: stages are skipped by what is there)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pf_envs.data import DataError
    from pf_envs.zoo import CheckpointError

    try:
        stages = run_pipeline(args)
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, RunLockedError, RunWriteError,
            CheckpointError, DataError) as exc:  # a documented id whose checkpoint does not ship: one sentence
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    print("\nstages: " + ", ".join(f"{s.name} ({'ran, %.0f s' % s.seconds if s.ran else 'already done'})"
                                   for s in stages))
    if not stages[-1].ran:
        print(f"(the benchmark table was printed when it ran; its figures are in {out / 'benchmark.json'})")
    print("\nfiles:")
    for s in stages:
        print(f"  {s.name:<9} {s.output}")
    return 0


def run_pipeline(args: argparse.Namespace) -> list[Stage]:
    """Run (or skip) every stage of the job described by ``args`` (see :func:`build_parser`)."""
    import gymnasium as gym

    import pf_envs  # noqa: F401  (registers the ids)

    if args.env not in gym.registry:
        raise ValueError(f"unknown env {args.env!r}; pocketflow-gym registers {sorted(pf_envs.ENV_IDS)}")
    if args.retrain_epochs < 0 or args.episodes < 1 or args.nproc < 1:
        raise ValueError("--episodes and --nproc must be >= 1 and --retrain-epochs >= 0")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: pass a folder (it is created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    # one job per --out, from here to the end of the last stage: two jobs would search into
    # one run folder, then replay, re-train and export into the same files
    lock = RunLock(out, busy=OUT_BUSY)
    lock.acquire()
    try:
        return _run_stages(args, out)
    finally:
        lock.release()


def _run_stages(args: argparse.Namespace, out: Path) -> list[Stage]:
    import gymnasium as gym

    from pf_agents.search import search

    log = out / "pipeline.log"
    py = sys.executable
    threads = ["--threads", str(args.threads)] if args.threads else []
    stages: list[Stage] = []

    # 1. search --------------------------------------------------------------------------------
    t0 = time.time()
    run_name = f"{args.env}__{args.agent}__seed{args.seed}"
    run_dir = out / "search" / run_name
    done = _search_done(run_dir, args.episodes)
    if not done:
        search(args.env, agent=args.agent, episodes=args.episodes, seed=args.seed, logdir=out / "search",
               run_name=run_name, resume=(run_dir / "config.json").is_file(), env_kwargs=dict(args.env_kwargs),
               agent_kwargs=dict(args.agent_kwargs), progress=True)
    stages.append(Stage("search", run_dir / "best.json", not done, time.time() - t0))
    best = _json(run_dir / "best.json") or {}

    # 2. re-training (or the searched candidate as it is) ------------------------------------------
    t0 = time.time()
    stem = "retrained" if args.retrain_epochs else "searched"
    model_pt = out / "retrain" / f"{stem}.pt"
    record = _json(model_pt.with_suffix(".json"))
    from pf_envs.policy_replay import record_policy

    fresh = (record is not None and model_pt.is_file() and bool(best)
             and record.get("policy") == record_policy(best))
    if not fresh:
        if args.retrain_epochs:
            cmd = [py, str(SCRIPTS / "retrain.py")]
            if args.nproc > 1:
                cmd = [py, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
                       str(SCRIPTS / "retrain.py")]
            cmd += ["--run-dir", str(run_dir), "--epochs", str(args.retrain_epochs), "--out", str(out / "retrain"),
                    "--name", stem, *threads, *shlex.split(args.retrain_args)]
        else:
            cmd = [py, str(SCRIPTS / "replay.py"), str(run_dir), "--save", str(model_pt)]
        _run("retrain", cmd, log)
    stages.append(Stage("retrain", model_pt, not fresh, time.time() - t0))
    record = _json(model_pt.with_suffix(".json")) or {}

    # 3. export (compressed, then dense) --------------------------------------------------------
    exports = [("export", out / "export", str(model_pt), record.get("state_sha1"))]
    if not args.no_dense:
        model_name = (record.get("env_kwargs") or {}).get("model") or gym.spec(args.env).kwargs.get("model")
        if isinstance(model_name, str):
            exports.append(("dense", out / "export-dense", model_name, None))
    for name, folder, source, sha in exports:
        t0 = time.time()
        manifest = _json(folder / "manifest.json")
        fresh = manifest is not None and (sha is None or (manifest.get("source") or {}).get("state_sha1") == sha)
        if not fresh:
            cmd = [py, str(SCRIPTS / "export.py"), source, "--out", str(folder), *threads]
            cmd += ["--int8"] if args.int8 else []
            cmd += ["--ort-format"] if args.ort_format else []
            cmd += shlex.split(args.export_args)
            _run(name, cmd, log)
        stages.append(Stage(name, folder / "manifest.json", not fresh, time.time() - t0))

    # 4. benchmark ------------------------------------------------------------------------------
    t0 = time.time()
    bench = out / "benchmark.json"
    manifests = [s.output for s in stages if s.name in ("export", "dense")]
    fresh = bench.is_file() and all(bench.stat().st_mtime >= m.stat().st_mtime for m in manifests)
    if not fresh:
        cmd = [py, str(BENCHMARKS / "deploy.py"), *map(str, manifests), "--runs", str(args.bench_runs),
               "--out", str(bench), *shlex.split(args.bench_args)]
        _run("benchmark", cmd, log)
    stages.append(Stage("benchmark", bench, not fresh, time.time() - t0))
    return stages


def _search_done(run_dir: Path, episodes: int) -> bool:
    """The run folder holds ``episodes`` scored episodes and a best one."""
    from pf_agents.records import read_run

    if not (run_dir / "config.json").is_file():
        return False
    run = read_run(run_dir)
    return run.best is not None and len(run.episodes) >= episodes
