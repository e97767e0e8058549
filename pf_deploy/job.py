"""The whole job in one command: search -> re-training -> export -> deploy benchmark.

    pf-compress --env ChannelPrune-MobileNetV1-v0 --agent ddpg --episodes 300 --retrain-epochs 30 --int8 --out out/
    pf-compress --run runs/ChannelPrune-ResNet20-v0__ddpg__seed0 --retrain-epochs 30 --int8 --out out/
    python -m pf_deploy.job ...          (the same; in a checkout also python scripts/compress.py)

Every stage writes into its own folder under ``--out`` and is skipped when its output is
already there and was made from the current input (the stage before it); a stage that was
killed (Ctrl-C included) resumes (the search from its run folder, re-training from its state
file), so running the same command again finishes the job. Each stage is the project's own
command, run as ``python -m MODULE`` in a fresh process (so it works from an installed wheel;
re-training under ``torchrun`` with ``--nproc N``); its output streams to the terminal
(progress bars included) and into ``OUT/pipeline.log``:

========== ===================================== =============================================
stage      output                                command
========== ===================================== =============================================
search     ``OUT/search/<run>/best.json``        ``pf_agents.cli`` (pf-search); ``--run``: given
retrain    ``OUT/retrain/retrained.pt`` + .json  ``pf_deploy.retrain`` (``--retrain-epochs 0``:
                                                 the searched candidate, ``pf_deploy.replay``)
export     ``OUT/export/manifest.json``          ``pf_deploy.export`` (fp32 ONNX, int8 with
                                                 ``--int8``, ORT format with ``--ort-format``)
dense      ``OUT/export-dense/manifest.json``    ``pf_deploy.export`` on the uncompressed model
benchmark  ``OUT/benchmark.json``                ``pf_deploy.benchmark`` (onnxruntime + numpy)
========== ===================================== =============================================

What it costs on a CPU (measured on a shared 2-core x86 machine): the search, one episode per
``--episodes`` (seconds each at ``ft_iters=0``, minutes at the env's default ``ft_iters=100``);
re-training, ~3 minutes per epoch of ResNet-20 on the whole training split on an idle core
(~16 minutes seen on a shared machine; MobileNet-V1
several times that): ``--retrain-args '--train-images 5000'`` makes an epoch ~9x shorter;
export, about a minute per model on 10,000 test images (``--export-args '--test-samples 2000'``);
the benchmark, ``--bench-runs`` batch-1 runs per model and thread count (seconds).

One job writes an ``--out`` folder: the job holds ``OUT/.lock`` (``flock``, released by the OS
when the process ends) from its start to its end, through every stage, so a second
``pf-compress`` on the same ``--out`` exits at once with ``error: OUT is being written by
another compress job (pid N on host ...)`` (exit 2) instead of racing the first into the
same files.
"""

from __future__ import annotations

import argparse
import collections
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

from pf_agents.cli import EXIT_INTERRUPTED, parse_kwargs
from pf_agents.records import RunLock, RunLockedError, RunWriteError
from pf_agents.registry import AGENTS

#: The folder that holds the project's packages (a checkout or site-packages): put on the
#: stages' PYTHONPATH, so that ``python -m`` finds the same code as this process.
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
RESUME_HINT = "run the same command again to resume (finished stages are skipped, this one resumes)"


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
    """A stage's command failed; the message names the stage, the command and how to resume."""


class JobInterrupted(Exception):
    """Ctrl-C: the running stage was told too (same process group) and has ended."""


def stage_command(module: str, *args: str) -> list[str]:
    """``python -m MODULE ARGS`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def _run(name: str, cmd: list[str], log: Path) -> None:
    """Run one stage: its output (stdout and stderr, progress bars included) is streamed to
    this terminal as it comes and appended to ``log``.

    Raises:
        StageError: the stage exited with a failure (the message holds its last lines).
        JobInterrupted: Ctrl-C (the stage's own last words go to the log only).
    """
    print(f"[{name}] {shlex.join(cmd)}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    tail: collections.deque[bytes] = collections.deque(maxlen=64)
    term = getattr(sys.stdout, "buffer", None)
    with open(log, "ab") as fh:
        fh.write(f"\n[{name}] $ {shlex.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        try:
            while chunk := proc.stdout.read1(1 << 16):
                fh.write(chunk)
                tail.append(chunk)
                if term is not None:
                    term.write(chunk)
                    term.flush()
                else:  # a captured sys.stdout (tests): text only
                    sys.stdout.write(chunk.decode(errors="replace"))
            returncode = proc.wait()
        except KeyboardInterrupt:
            try:  # the stage got the same SIGINT: let it finish its last lines (into the log only)
                fh.write(proc.stdout.read())
                proc.wait(timeout=60)
            except (KeyboardInterrupt, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            raise JobInterrupted(name) from None
    if returncode == EXIT_INTERRUPTED:
        raise JobInterrupted(name)
    if returncode != 0:
        text = b"".join(tail).decode(errors="replace").replace("\r", "\n")
        last = "\n".join([line for line in text.strip().splitlines() if line.strip()][-15:])
        raise StageError(f"stage {name} failed (exit {returncode}); its log is {log}.\n{last}\n"
                         f"Fix the cause and {RESUME_HINT}.")


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _kwargs_text(text: str) -> str:
    parse_kwargs(text)  # refused here (exit 2) rather than in the search stage
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pf-compress", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    se = p.add_argument_group("the search (or --run: a search already done)")
    se.add_argument("--env", default=None, help="env id, e.g. ChannelPrune-MobileNetV1-v0")
    se.add_argument("--run", default=None,
                    help="start from this search run folder (its best episode) instead of searching")
    se.add_argument("--agent", default="ddpg", choices=sorted(AGENTS))
    se.add_argument("--episodes", type=int, default=300,
                    help="scored episodes (each costs one env episode: seconds at ft_iters=0)")
    se.add_argument("--seed", type=int, default=0)
    se.add_argument("--env-kwargs", type=_kwargs_text, default="", help="search env kwargs k=v,k=v")
    se.add_argument("--agent-kwargs", type=_kwargs_text, default="", help="agent settings k=v,k=v")
    rt = p.add_argument_group("re-training")
    rt.add_argument("--retrain-epochs", type=int, default=30,
                    help="epochs of re-training (0: export the searched candidate as it is); one epoch of "
                         "ResNet-20 on all 45,000 training images is ~16 min on a CPU core")
    rt.add_argument("--retrain-args", default="",
                    help="more pf-retrain flags; the short settings: '--train-images 5000 --val-images 1000 "
                         "--test-images 2000' (an epoch ~9x shorter), or '--distill --lr 0.05'")
    rt.add_argument("--nproc", type=int, default=1, help="re-training processes (torchrun, DDP)")
    ex = p.add_argument_group("export and benchmark")
    ex.add_argument("--int8", action="store_true",
                    help="also export an int8 ONNX Runtime model (an env that searches per-layer precisions, "
                         "PruneQuant or QuantORT, always gets its mixed int8 model, and the dense model in fp32 "
                         "and int8 with the same quantizer options)")
    ex.add_argument("--ort-format", action="store_true", help="also write the .ort files for ONNX Runtime Mobile")
    ex.add_argument("--export-args", default="",
                    help="more pf-export flags; short: '--test-samples 2000 --no-exact-int8' (~5x less scoring)")
    ex.add_argument("--no-dense", action="store_true", help="do not export and time the uncompressed model")
    ex.add_argument("--bench-runs", type=int, default=200, help="timed batch-1 runs per model and thread count")
    ex.add_argument("--bench-args", default="", help="more pf-deploy-benchmark flags, e.g. '--limit 2000'")
    p.add_argument("--out", required=True, help="output folder (one per job: stages are skipped by what is there)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pf_envs.data import DataError
    from pf_envs.zoo import CheckpointError
    try:
        stages = run_pipeline(args)
    except JobInterrupted as exc:
        print(f"\ninterrupted during the {exc} stage; {RESUME_HINT}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(f"\ninterrupted; {RESUME_HINT}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
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
    """Run (or skip) every stage of the job described by ``args`` (see :func:`build_parser`),
    holding ``OUT/.lock`` from the start to the end of the last stage.

    Raises:
        RunLockedError: another job holds the ``--out`` folder.
    """
    from pf_envs.registry import check_env_id

    if (args.env is None) == (args.run is None):
        raise ValueError("pass --env ID (search first) or --run RUN_FOLDER (a search already done), not both")
    if args.retrain_epochs < 0 or args.episodes < 1 or args.nproc < 1:
        raise ValueError("--episodes and --nproc must be >= 1 and --retrain-epochs >= 0")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: pass a folder (it is created if missing)")
    if args.env is not None:
        check_env_id(args.env)  # before anything is created
        _check_base_weights(args.env, parse_kwargs(args.env_kwargs) if args.env_kwargs else {})
    out.mkdir(parents=True, exist_ok=True)
    # one job per --out, from here to the end of the last stage: two jobs would search into
    # one run folder, then replay, re-train and export into the same files
    lock = RunLock(out, busy=OUT_BUSY)
    lock.acquire()
    try:
        return _run_stages(args, out)
    finally:
        lock.release()


def _check_base_weights(env_id: str, env_kwargs: dict[str, Any]) -> None:
    """A zoo model without trained weights (e.g. ``ChannelPrune-ResNet56-v0`` with no
    ``checkpoint=``) is refused in one sentence before the search stage starts."""
    import gymnasium as gym

    from pf_envs import zoo

    kwargs = {**gym.spec(env_id).kwargs, **env_kwargs}
    model = kwargs.get("model")
    if not isinstance(model, str):
        return
    try:
        zoo.get_spec(model)
    except KeyError:
        return  # not a zoo name: the search stage says what is wrong with it
    zoo.check_weights_available(model, str(kwargs.get("dataset", "cifar10")), kwargs.get("checkpoint"))


def _run_stages(args: argparse.Namespace, out: Path) -> list[Stage]:
    import gymnasium as gym

    from pf_envs.policy_replay import episode_policy
    from pf_envs.registry import check_env_id

    threads = ["--threads", str(args.threads)] if args.threads else []
    stages: list[Stage] = []

    # 1. search --------------------------------------------------------------------------------
    t0 = time.time()
    if args.run is not None:
        from pf_agents.records import run_episode

        run_dir = Path(args.run)
        run, best = run_episode(run_dir)  # refuses a folder without a scored episode
        env_id = run.config["env_id"]
        check_env_id(env_id)
        out.mkdir(parents=True, exist_ok=True)
        log = out / "pipeline.log"
        stages.append(Stage("search", run_dir / "best.json", False, 0.0))
    else:
        env_id = args.env
        check_env_id(env_id)
        out.mkdir(parents=True, exist_ok=True)
        log = out / "pipeline.log"
        run_name = f"{env_id}__{args.agent}__seed{args.seed}"
        run_dir = out / "search" / run_name
        done = _search_done(run_dir, args.episodes)
        if not done:
            cmd = stage_command("pf_agents.cli", "--env", env_id, "--agent", args.agent, "--episodes",
                                str(args.episodes), "--seed", str(args.seed), "--logdir", str(out / "search"),
                                "--run-name", run_name, *threads)
            cmd += ["--env-kwargs", args.env_kwargs] if args.env_kwargs else []
            cmd += ["--agent-kwargs", args.agent_kwargs] if args.agent_kwargs else []
            cmd += ["--resume"] if (run_dir / "config.json").is_file() else []
            _run("search", cmd, log)
        stages.append(Stage("search", run_dir / "best.json", not done, time.time() - t0))
        best = _json(run_dir / "best.json") or {}

    # 2. re-training (or the searched candidate as it is) ------------------------------------------
    t0 = time.time()
    stem = "retrained" if args.retrain_epochs else "searched"
    model_pt = out / "retrain" / f"{stem}.pt"
    record = _json(model_pt.with_suffix(".json"))
    fresh = (record is not None and model_pt.is_file() and bool(best)
             and record.get("policy") == episode_policy(best))
    if not fresh:
        if args.retrain_epochs:
            cmd = stage_command("pf_deploy.retrain")
            if args.nproc > 1:
                cmd = stage_command("torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
                                    "-m", "pf_deploy.retrain")
            cmd += ["--run-dir", str(run_dir), "--epochs", str(args.retrain_epochs), "--out", str(out / "retrain"),
                    "--name", stem, *threads, *shlex.split(args.retrain_args)]
        else:
            cmd = stage_command("pf_deploy.replay", str(run_dir), "--save", str(model_pt))
        _run("retrain", cmd, log)
    stages.append(Stage("retrain", model_pt, not fresh, time.time() - t0))
    record = _json(model_pt.with_suffix(".json")) or {}

    # 3. export (compressed, then dense) --------------------------------------------------------
    exports = [("export", out / "export", str(model_pt), record.get("state_sha1"))]
    if not args.no_dense:
        model_name = (record.get("env_kwargs") or {}).get("model") or gym.spec(env_id).kwargs.get("model")
        if isinstance(model_name, str):
            exports.append(("dense", out / "export-dense", model_name, None))
    int8_flags = ["--int8"] if args.int8 else []
    for name, folder, source, sha in exports:
        t0 = time.time()
        manifest = _json(folder / "manifest.json")
        fresh = manifest is not None and (sha is None or (manifest.get("source") or {}).get("state_sha1") == sha)
        if not fresh:
            cmd = stage_command("pf_deploy.export", source, "--out", str(folder), *threads)
            cmd += int8_flags
            cmd += ["--ort-format"] if args.ort_format else []
            cmd += shlex.split(args.export_args)
            _run(name, cmd, log)
        stages.append(Stage(name, folder / "manifest.json", not fresh, time.time() - t0))
        quant = (_json(folder / "manifest.json") or {}).get("quantization") or {}
        if name == "export" and quant.get("mixed"):
            # the search chose per-layer precisions (PruneQuant, QuantORT): the export stage wrote
            # the mixed int8 model with the search's quantizer options; the dense model is
            # exported in fp32 and all-int8 with the same options, so the benchmark compares like
            # with like
            int8_flags = ["--int8"] + (["--int8-target", quant["target"]] if quant.get("target") in ("arm", "x86")
                                       else [])

    # 4. benchmark ------------------------------------------------------------------------------
    t0 = time.time()
    bench = out / "benchmark.json"
    manifests = [s.output for s in stages if s.name in ("export", "dense")]
    fresh = bench.is_file() and all(bench.stat().st_mtime >= m.stat().st_mtime for m in manifests)
    if not fresh:
        cmd = stage_command("pf_deploy.benchmark", *map(str, manifests), "--runs", str(args.bench_runs),
                            "--out", str(bench), *shlex.split(args.bench_args))
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


if __name__ == "__main__":
    raise SystemExit(main())
