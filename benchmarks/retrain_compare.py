"""Searched vs uniform policy after re-training, with and without distillation, against the dense model.

    python benchmarks/retrain_compare.py --run runs/ChannelPrune-ResNet20-v0__ddpg__seed0 --epochs 3
    python benchmarks/retrain_compare.py ... --parallel 2 --threads 1     # how many re-trainings at once

The searched policy is the run's best episode; the uniform one is
:func:`baselines.uniform.equal_value_policy` on the same env and budget (one keep ratio for
every unit, the largest that fits). Each of the four (policy x distillation) re-trainings is
``scripts/retrain.py`` with the same recipe and epochs, run as a subprocess (log in
``OUT/NAME.log``); the dense model is evaluated on the same test split. Prints a table and
writes ``benchmarks/results/retrain_compare.json``.

Resumable: run the same command again. A finished re-training (its ``NAME.json`` holds the same
recipe) is read back, not repeated; a killed one resumes from its state file (at most one
epoch lost).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from learners.atomic import atomic_write_text  # noqa: E402


def kwargs_text(kwargs: dict[str, Any]) -> str:
    """``{"a": 0.5, "b": 1}`` -> ``"a=0.5,b=1"`` (the --env-kwargs form)."""
    return ",".join(f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in kwargs.items())


def policies(run_dir: Path) -> tuple[str, dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]]:
    """The run's env id and kwargs, the two policies (values, MACs ratio, search-time score) and
    the dense model's test accuracy."""
    from baselines.uniform import equal_value_policy
    from learners.training import evaluate
    from pf_deploy.starting_model import resolve_source

    src = resolve_source(run=run_dir)
    env = src.make_env()
    core = env.unwrapped
    uniform, _ = equal_value_policy(core)
    out: dict[str, dict[str, Any]] = {}
    for name, values in (("searched", src.policy), ("uniform", uniform)):
        reward, info = core.play_policy(values)  # the search's own score: reward split, no re-training
        out[name] = {"policy": [float(v) for v in values], "macs_ratio": float(info["flops_ratio"]),
                     "params_ratio": float(info["params_ratio"]), "search_accuracy": float(info["accuracy"]),
                     "search_reward": float(reward)}
    t0 = time.time()
    dense_acc = evaluate(core.model, core.data.test)
    dense = {"test_accuracy": dense_acc, "test_images": len(core.data.test), "eval_s": time.time() - t0,
             "search_accuracy": float(core.accuracy_original)}
    env.close()
    return src.env_id, src.env_kwargs, out, dense


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="the search run folder whose best policy is 'searched'")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", default=str(REPO / "runs" / "retrain_compare"), help="folder of the re-trained models")
    p.add_argument("--train-images", type=int, default=None,
                   help="re-train on a fixed subset of the training split (default: all of it)")
    p.add_argument("--val-images", type=int, default=None, help="validation images per epoch (default: all)")
    p.add_argument("--parallel", type=int, default=4, help="re-trainings run at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads per re-training")
    p.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "retrain_compare.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "policies.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
    else:
        env_id, env_kwargs, pols, dense = policies(Path(args.run))
        meta = {"env_id": env_id, "env_kwargs": env_kwargs, "policies": pols, "dense": dense, "run": args.run}
        atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    recipe = ["--epochs", str(args.epochs), "--lr", str(args.lr), "--batch-size", str(args.batch_size)]
    if args.train_images:
        recipe += ["--train-images", str(args.train_images)]
    if args.val_images:
        recipe += ["--val-images", str(args.val_images)]
    jobs = []
    for pol in ("searched", "uniform"):
        for distill in (False, True):
            name = f"{pol}_{'distill' if distill else 'plain'}"
            src = (["--run", args.run] if pol == "searched" else
                   ["--policy", ",".join(repr(v) for v in meta["policies"][pol]["policy"]), "--env", meta["env_id"],
                    "--env-kwargs", kwargs_text(meta["env_kwargs"])])
            cmd = [sys.executable, str(REPO / "scripts" / "retrain.py"), *src, *recipe, "--out", str(out),
                   "--name", name, "--threads", str(args.threads), *(["--distill"] if distill else [])]
            jobs.append((name, pol, distill, cmd))

    def finished(name: str) -> dict[str, Any] | None:
        rec = out / f"{name}.json"
        if not rec.is_file():
            return None
        r = json.loads(rec.read_text())
        cfg = r.get("source", {}).get("config", {})
        same = (cfg.get("epochs") == args.epochs and cfg.get("lr") == args.lr
                and cfg.get("batch_size") == args.batch_size
                and r["metrics"].get("train_images") == (args.train_images or r["metrics"].get("train_images")))
        return r if same else None

    todo = [j for j in jobs if finished(j[0]) is None]
    running: list[tuple[str, subprocess.Popen, Any]] = []
    failed = []
    while todo or running:
        while todo and len(running) < args.parallel:
            name, _, _, cmd = todo.pop(0)
            log = open(out / f"{name}.log", "a")
            print(f"start {name}: {' '.join(cmd)}", flush=True)
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO), log))
        time.sleep(5)
        for item in list(running):
            name, proc, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                print(f"{name}: exit {proc.returncode}", flush=True)
                if proc.returncode != 0:
                    failed.append(name)
    rows = []
    for name, pol, distill, _ in jobs:
        r = finished(name)
        if r is None:
            continue
        m = r["metrics"]
        rows.append({"name": name, "policy": pol, "distill": distill, "test_accuracy": m["test_accuracy"],
                     "test_images": m["test_images"], "train_images": m["train_images"], "val_images": m["val_images"],
                     "val_accuracy": m["val_accuracy"], "epochs": m["epochs"], "steps": m["steps"],
                     "wall_time_s": m["wall_time_s"], "macs_ratio": meta["policies"][pol]["macs_ratio"],
                     "params_ratio": meta["policies"][pol]["params_ratio"],
                     "search_accuracy": meta["policies"][pol]["search_accuracy"],
                     "epoch_val_acc": [h.get("val_acc") for h in m["history"]]})
    dense = meta["dense"]
    print(f"\n{meta['env_id']} {kwargs_text(meta['env_kwargs'])}; {args.epochs} epochs, lr {args.lr}, "
          f"batch {args.batch_size}, {args.threads} thread(s) each, "
          f"{args.train_images or 'all'} training images")
    print(f"{'model':<20}{'MACs':>7}{'params':>8}{'search acc':>12}{'val acc':>9}{'test acc':>10}{'wall s':>9}")
    print(f"{'dense':<20}{1.0:>7.3f}{1.0:>8.3f}{dense['search_accuracy']:>12.4f}{'':>9}{dense['test_accuracy']:>10.4f}"
          f"{dense['eval_s']:>9.0f}")
    for r in rows:
        print(f"{r['name']:<20}{r['macs_ratio']:>7.3f}{r['params_ratio']:>8.3f}{r['search_accuracy']:>12.4f}"
              f"{r['val_accuracy']:>9.4f}{r['test_accuracy']:>10.4f}{r['wall_time_s']:>9.0f}")
    result = {"env_id": meta["env_id"], "env_kwargs": meta["env_kwargs"], "run": meta["run"],
              "recipe": {"epochs": args.epochs, "train_images": args.train_images, "val_images": args.val_images,
                         "lr": args.lr, "batch_size": args.batch_size, "momentum": 0.9,
                         "weight_decay": 5e-4, "schedule": "cosine", "distill_weight": 4.0,
                         "distill_temperature": 4.0},
              "threads_per_run": args.threads, "parallel": args.parallel, "dense": dense,
              "policies": meta["policies"], "runs": rows, "failed": failed,
              "machine": {"platform": platform.platform(), "torch": torch.__version__}}
    if len(rows) == len(jobs):
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    else:
        print(f"{len(jobs) - len(rows)} re-training(s) not finished ({failed or 'still to run'}); run again to resume")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
