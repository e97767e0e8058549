"""The GPU benchmark: one command on a GPU machine with no network, inside 9 minutes.

    python benchmarks/gpu.py --bundle .gpu_bundle --out $OUT                # timings (about 5 minutes)
    python benchmarks/gpu.py --bundle .gpu_bundle --out $OUT --train-zoo    # trains ResNet-56 + MobileNet-V2
    python benchmarks/gpu.py --smoke --out /tmp/gpu_smoke                   # tiny sizes, on the CPU (tests)

``--bundle`` is a folder inside the checkout that git ignores, made beforehand on a machine
with a network by ``benchmarks/stage_gpu_bundle.sh``: the CIFAR-10 JPEG tarball
(``cifar10-jpeg.tar.gz``), wheels of the packages the GPU machine lacks (``wheels/``:
gymnasium, Farama-Notifications, stable-baselines3, torch-pruning) and, optionally, the
ResNet-56 warm start and resumable training states of an earlier ``--train-zoo`` that the
watchdog stopped. The script installs the wheels into a private folder (``--no-index``),
unpacks the data into a work folder (``--work``, default ``/tmp/pf_gpu``) and points
``PF_DATA_DIR`` / ``PF_CACHE_DIR`` there; nothing is fetched.

What it measures (on ``--device``, default cuda where there is one; the CUDA-only rows, bf16
and captured, are skipped elsewhere):

1. ``steps``: the training step of the four CIFAR zoo models in the real loop
   (:func:`learners.training.run_steps`: batch gathered, cropped, flipped and normalised on
   the device, forward, backward, SGD, running sums) at batch 128 and 256, fp32 and bf16
   autocast, eager and captured as a CUDA graph; ms a step over ``--steps`` steps after a
   warm-up (synthetic uint8 images of CIFAR's size: the cost does not depend on content).
2. ``episodes``: the episode of ``ChannelPrune-ResNet20-v0`` and ``ChannelPrune-MobileNetV1-v0``
   at ``ft_iters=0``, at the default, and at the default with the fine-tuning step captured
   (``RecoveryRecipe.ft_capture``: does capture pay when every candidate has new shapes?);
   median of ``--episodes`` after one warm-up episode.
3. ``search``: a 30-episode DDPG search on ``ChannelPrune-MobileNetV1-v0`` (``device=cuda``).

With ``--train-zoo`` it trains instead (both do not fit in one 9-minute command):
ResNet-56 (warm start from the bundle's ``resnet56_cifar10_warmstart.pt`` where present) and
MobileNet-V2 side by side, two processes of ``python -m pf_envs.zoo.train`` with bf16 and
capture, each with a watchdog (``--time-limit-s``) that stops it after the last epoch that
fits, its state saved. The checkpoints and records land in ``--out``; a stopped run's state
lands there too (split into parts of at most 16 MiB: ``cat NAME.state.part* > NAME.state``),
and the next ``--train-zoo`` resumes from the bundle's states.

``--out`` receives at most 8 files of at most 16 MiB: ``gpu.json`` (every figure, the
machine, the settings) and, with ``--train-zoo``, the checkpoints, records and states. A
table is printed at the end. The exact device command and the staging: docs/gpu.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: Modules the GPU machine lacks, each installed from the bundle's wheels when it does not import.
BUNDLED_MODULES: tuple[str, ...] = ("gymnasium", "farama_notifications", "stable_baselines3", "torch_pruning")
#: What comes back from the output folder.
MAX_FILES, MAX_FILE_BYTES = 8, 16 * 2**20
STEP_MODELS: tuple[str, ...] = ("resnet20", "mobilenet_v1", "resnet56", "mobilenet_v2")
EPISODE_ENVS: tuple[str, ...] = ("ChannelPrune-ResNet20-v0", "ChannelPrune-MobileNetV1-v0")
SEARCH_ENV = "ChannelPrune-MobileNetV1-v0"
#: The zoo recipes --train-zoo runs (python -m pf_envs.zoo.train arguments, --init added
#: for ResNet-56 where the bundle holds its warm start, which replaces its first 20 epochs).
ZOO_RECIPES: dict[str, list[str]] = {
    "resnet56": ["--epochs", "120", "--batch-size", "128", "--lr", "0.1", "--label-smoothing", "0.1"],
    "mobilenet_v2": ["--epochs", "120", "--batch-size", "256", "--lr", "0.2", "--label-smoothing", "0.1"],
}
WARM_START = "resnet56_cifar10_warmstart.pt"
WARM_START_RECIPE = ["--epochs", "100", "--batch-size", "128", "--lr", "0.1", "--label-smoothing", "0.1"]


# ---------------------------------------------------------------------------------- setup


def install_bundle(bundle: Path | None, work: Path, log: Callable[[str], None] = print) -> list[str]:
    """Install the bundle's wheels for every :data:`BUNDLED_MODULES` entry that does not
    import (``pip install --no-index --no-deps --target``), and put that folder on
    ``sys.path`` and ``PYTHONPATH`` (for child processes). Returns the modules installed."""
    missing = [m for m in BUNDLED_MODULES if importlib.util.find_spec(m) is None]
    if not missing:
        return []
    wheels = sorted((bundle / "wheels").glob("*.whl")) if bundle else []
    if not wheels:
        raise SystemExit(f"error: {missing} do not import and no wheels were found in {bundle}/wheels; "
                         "stage the bundle first (benchmarks/stage_gpu_bundle.sh)")
    site = work / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)]
    log(f"installing {len(wheels)} wheels for {missing} into {site}")
    subprocess.run(cmd, check=True)
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), str(REPO), os.environ.get("PYTHONPATH")) if p)
    importlib.invalidate_caches()
    return missing


def prepare_data(bundle: Path | None, work: Path, log: Callable[[str], None] = print) -> str:
    """Point ``PF_DATA_DIR`` at CIFAR-10: the bundle's tarball unpacked into ``work/data``
    (once), or the ``PF_DATA_DIR`` already set. ``PF_CACHE_DIR`` goes to ``work/cache``
    unless set. Returns where the data is."""
    os.environ.setdefault("PF_CACHE_DIR", str(work / "cache"))
    tarball = bundle / "cifar10-jpeg.tar.gz" if bundle else None
    if tarball is not None and tarball.is_file():
        target = work / "data"
        marker = target / ".unpacked"
        if not marker.is_file():
            t0 = time.perf_counter()
            target.mkdir(parents=True, exist_ok=True)
            with tarfile.open(tarball) as tar:
                tar.extractall(target, filter="data")
            marker.write_text(tarball.name)
            log(f"unpacked {tarball} into {target} in {time.perf_counter() - t0:.1f} s")
        # the tarball may hold train/ and test/ at its top or inside one folder (cifar10-jpeg/)
        tops = [target, *sorted(p for p in target.iterdir() if p.is_dir())]
        root = next((p for p in tops if (p / "train").is_dir() and (p / "test").is_dir()), target)
        os.environ["PF_DATA_DIR"] = str(root)
        return str(root)
    if os.environ.get("PF_DATA_DIR"):
        return os.environ["PF_DATA_DIR"]
    return "(none: PF_DATA_DIR is not set and the bundle holds no cifar10-jpeg.tar.gz)"


# ---------------------------------------------------------------------------------- timing


def _sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_split(n: int, device: Any, seed: int = 0):
    """``n`` random uint8 CIFAR-sized images with labels, held on ``device``."""
    import torch

    from pf_envs.data import CIFAR10_MEAN, CIFAR10_STD, TensorSplit

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    return TensorSplit("synthetic", images, labels, CIFAR10_MEAN, CIFAR10_STD).to(device)


def time_steps(model_name: str, batch: int, *, device: Any, bf16: bool, capture: bool, steps: int,
               warmup: int, data) -> dict[str, Any]:
    """ms a training step of zoo model ``model_name`` in :func:`learners.training.run_steps`."""
    import torch

    from learners.training import CapturedStep, RunningTotals, cross_entropy_loss, make_sgd, run_steps
    from pf_envs import zoo

    torch.manual_seed(0)
    model = zoo.create_model(model_name).to(device).to(memory_format=torch.channels_last).train()
    opt = make_sgd(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True,
                   capture_device=torch.device(device) if capture else None)
    loss = cross_entropy_loss(0.1)
    totals = RunningTotals(device)
    captured = CapturedStep(model, opt, loss, totals, bf16=bf16) if capture else None
    gen = torch.Generator().manual_seed(0)
    stream = itertools.chain.from_iterable(
        data.batches(batch, shuffle=True, augment=True, generator=gen, drop_last=True) for _ in itertools.count())

    def run(n: int) -> None:
        run_steps(model, opt, itertools.islice(stream, n), lr_at=lambda s: 0.05, step_loss=loss, device=device,
                  bf16=bf16, captured=captured, totals=totals)

    run(warmup)
    _sync(device)
    t0 = time.perf_counter()
    run(steps)
    _sync(device)
    ms = (time.perf_counter() - t0) / steps * 1e3
    final = totals.read()
    return {"model": model_name, "batch": batch, "dtype": "bf16" if bf16 else "fp32", "captured": capture,
            "ms_per_step": round(ms, 3), "images_per_s": round(batch * 1e3 / ms, 1),
            "loss_finite": bool(final["loss"] == final["loss"] and abs(final["loss"]) < 1e6)}


def step_table(device: Any, *, smoke: bool, steps: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    import torch

    cuda = torch.device(device).type == "cuda"
    batches = (8,) if smoke else (128, 256)
    dtypes = (False, True) if cuda else (False,)
    captures = (False, True) if cuda else (False,)
    data = synthetic_split(64 if smoke else 45_000, device)
    rows = []
    for model, batch, bf16, capture in itertools.product(STEP_MODELS, batches, dtypes, captures):
        row = time_steps(model, batch, device=device, bf16=bf16, capture=capture, steps=steps,
                         warmup=1 if smoke else 10, data=data)
        rows.append(row)
        log(json.dumps(row))
    if not cuda:
        rows.append({"skipped": "bf16 and captured rows: capture needs CUDA (bf16 is timed on the GPU only)"})
    return rows


def _play(env, rng) -> dict[str, float]:
    import numpy as np

    t0 = time.perf_counter()
    env.reset(seed=int(rng.integers(1 << 30)))
    while True:
        *_, terminated, truncated, info = env.step(rng.uniform(-1, 1, (1,)).astype(np.float32))
        if terminated or truncated:
            break
    return {**env.unwrapped.last_timing, "episode_s": time.perf_counter() - t0, "accuracy": info["accuracy"]}


def episode_table(device: Any, *, smoke: bool, episodes: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    import gymnasium as gym
    import numpy as np
    import torch

    import pf_envs  # noqa: F401 - registers the ids

    cuda = torch.device(device).type == "cuda"
    small = dict(reward_samples=200, bn_batches=2, bn_batch_size=64, feature_images=32, points_per_image=4)
    envs = EPISODE_ENVS[:1] if smoke else EPISODE_ENVS
    rows = []
    for env_id in envs:
        base = {"device": str(device), **(small if smoke else {})}
        settings: list[tuple[str, dict[str, Any], bool]] = [
            ("ft_iters=0", {**base, "ft_iters": 0}, False),
            ("default", {**base, **({"ft_iters": 2} if smoke else {})}, False),
        ]
        if cuda:
            settings.append(("default, ft captured", dict(settings[1][1]), True))
        for label, kwargs, capture in settings:
            t0 = time.perf_counter()
            env = gym.make(env_id, **kwargs)
            make_s = time.perf_counter() - t0
            u = env.unwrapped
            if capture:
                u.recipe = dataclasses.replace(u.recipe, ft_capture=True)
            rng = np.random.default_rng(0)
            _play(env, rng)  # warm-up: LASSO paths computed and cached per group
            runs = [_play(env, rng) for _ in range(episodes)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            rows.append({"env": env_id, "setting": label, "ft_iters": u.recipe.ft_iters, "make_s": round(make_s, 2),
                         **{k: round(v, 4) for k, v in med.items()}, "episodes": episodes})
            log(json.dumps(rows[-1]))
            env.close()
    return rows


def ddpg_search(device: Any, *, smoke: bool, episodes: int, log: Callable[[str], None]) -> dict[str, Any]:
    from pf_agents import search

    env_id = EPISODE_ENVS[0] if smoke else SEARCH_ENV
    kwargs: dict[str, Any] = {"device": str(device)}
    if smoke:
        kwargs.update(ft_iters=0, reward_samples=200, bn_batches=2, bn_batch_size=64, feature_images=32,
                      points_per_image=4)
    with tempfile.TemporaryDirectory() as logdir:
        t0 = time.perf_counter()
        result = search(env_id, "ddpg", episodes=episodes, seed=0, logdir=logdir, env_kwargs=kwargs, progress=False)
        seconds = time.perf_counter() - t0
    row = {"env": env_id, "agent": "ddpg", "episodes": episodes, "env_kwargs": kwargs, "seconds": round(seconds, 2),
           "s_per_episode": round(seconds / episodes, 3), "best_reward": result.best_reward,
           "best_accuracy": (result.best or {}).get("info", {}).get("accuracy")}
    log(json.dumps(row))
    return row


# ---------------------------------------------------------------------------------- training


def split_large_files(out: Path, limit: int = MAX_FILE_BYTES) -> list[str]:
    """Split every file of ``out`` over ``limit`` bytes into ``NAME.part0``, ``NAME.part1``...
    (``cat NAME.part* > NAME`` joins them); returns the files split."""
    split = []
    for path in sorted(p for p in out.iterdir() if p.is_file() and p.stat().st_size > limit):
        with path.open("rb") as f:
            for i in itertools.count():
                chunk = f.read(limit)
                if not chunk:
                    break
                (out / f"{path.name}.part{i}").write_bytes(chunk)
        path.unlink()
        split.append(path.name)
    return split


def restore_states(bundle: Path | None, work: Path) -> list[str]:
    """Copy the bundle's training states (``NAME.state`` or its ``.part*`` files) into
    ``work`` so that the trainings resume; returns the names restored."""
    restored = []
    for name in ZOO_RECIPES:
        if bundle is None:
            break
        whole, parts = bundle / f"{name}.state", sorted((bundle).glob(f"{name}.state.part*"),
                                                         key=lambda p: int(p.suffix[5:]))
        target = work / f"{name}.state"
        if whole.is_file():
            shutil.copyfile(whole, target)
        elif parts:
            with target.open("wb") as f:
                for part in parts:
                    f.write(part.read_bytes())
        else:
            continue
        restored.append(name)
    return restored


def train_zoo(out: Path, work: Path, bundle: Path | None, *, device: str, time_limit_s: float,
              log: Callable[[str], None]) -> list[dict[str, Any]]:
    """ResNet-56 and MobileNet-V2 trained side by side (two processes), each under a watchdog."""
    from pf_envs.data import load_dataset

    t0 = time.perf_counter()
    load_dataset("cifar10")  # decoded once into the cache here, not twice at once by the two trainings
    log(f"CIFAR-10 decoded and cached in {time.perf_counter() - t0:.1f} s")
    time_limit_s -= time.perf_counter() - t0
    restored = restore_states(bundle, work)
    procs = {}
    for name, recipe in ZOO_RECIPES.items():
        args = list(recipe)
        warm = bundle / WARM_START if bundle else None
        if name == "resnet56" and warm is not None and warm.is_file():
            args = [*WARM_START_RECIPE, "--init", str(warm)]
        extra = ["--bf16", "--capture"] if device.startswith("cuda") else []
        cmd = [sys.executable, "-m", "pf_envs.zoo.train", "--model", name, *args, *extra, "--device", device,
               "--out", str(out / f"{name}_cifar10.pt"), "--work", str(work / f"{name}.state"),
               "--time-limit-s", str(time_limit_s), "--threads", "4"]
        log("$ " + " ".join(cmd))
        procs[name] = (cmd, subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                             text=True), time.perf_counter())
    rows = []
    for name, (cmd, proc, t0) in procs.items():
        try:
            text, _ = proc.communicate(timeout=time_limit_s + 60)
        except subprocess.TimeoutExpired:  # the watchdog failed: the last epoch's state is on disk
            proc.terminate()
            text, _ = proc.communicate()
        tail = [line for line in text.replace("\r", "\n").splitlines() if line.strip() and "it/s" not in line][-6:]
        for line in tail:
            log(f"[{name}] {line}")
        state = work / f"{name}.state"
        row: dict[str, Any] = {"model": name, "command": " ".join(cmd), "exit": proc.returncode,
                               "seconds": round(time.perf_counter() - t0, 1), "resumed": name in restored}
        record = out / f"{name}_cifar10.json"
        if proc.returncode == 0 and record.is_file():
            rec = json.loads(record.read_text())
            row.update(test_acc=rec["test_acc"], val_acc=rec["val_acc"], epochs=len(rec["history"]),
                       train_seconds=rec["train_seconds"])
        elif state.is_file():  # stopped: the state comes back for the next run to resume
            shutil.copyfile(state, out / state.name)
            row["state"] = state.name
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------- report


def format_table(result: dict[str, Any]) -> str:
    """The printed table: step times, episode times, the search, the trainings."""
    lines = []
    steps = [r for r in result.get("steps", []) if "model" in r]
    if steps:
        lines.append(f"{'model':<14}{'batch':>6} {'dtype':<5} {'captured':<9}{'ms/step':>9}{'img/s':>10}")
        lines += [f"{r['model']:<14}{r['batch']:>6} {r['dtype']:<5} {str(r['captured']):<9}"
                  f"{r['ms_per_step']:>9.2f}{r['images_per_s']:>10.0f}" for r in steps]
    eps = result.get("episodes", [])
    if eps:
        lines.append(f"\n{'env':<30}{'setting':<22}{'episode s':>10}{'finetune s':>11}{'bn s':>7}{'eval s':>8}")
        lines += [f"{r['env']:<30}{r['setting']:<22}{r['episode_s']:>10.3f}{r.get('finetune_s', float('nan')):>11.3f}"
                  f"{r.get('bn_s', float('nan')):>7.3f}{r.get('eval_s', float('nan')):>8.3f}" for r in eps]
    s = result.get("search")
    if s:
        lines.append(f"\nDDPG search on {s['env']}: {s['episodes']} episodes in {s['seconds']:.1f} s "
                     f"({s['s_per_episode']:.2f} s an episode), best reward {s['best_reward']}")
    for r in result.get("train_zoo", []):
        done = (f"test {r['test_acc']:.4f}, {r['epochs']} epochs" if "test_acc" in r
                else f"stopped, state {r.get('state')}")
        lines.append(f"train {r['model']}: exit {r['exit']}, {r['seconds']} s, {done}")
    for k, v in result.get("skipped", {}).items():
        lines.append(f"skipped {k}: {v}")
    return "\n".join(lines)


def check_out_folder(out: Path) -> list[str]:
    """What in ``out`` would not come back (over :data:`MAX_FILES` files or
    :data:`MAX_FILE_BYTES` bytes a file); empty when all is well."""
    files = sorted(p for p in out.rglob("*") if p.is_file())
    problems = [f"{p.name}: {p.stat().st_size} bytes" for p in files if p.stat().st_size > MAX_FILE_BYTES]
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files (at most {MAX_FILES})")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (gpu.json, checkpoints); at most 8 files come back")
    p.add_argument("--bundle", default=None, help="the staged folder (wheels/, cifar10-jpeg.tar.gz, warm start)")
    p.add_argument("--work", default="/tmp/pf_gpu", help="scratch folder (wheels installed, data unpacked, states)")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (default: cuda where there is one)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (runs on the CPU, for the test suite)")
    p.add_argument("--train-zoo", action="store_true",
                   help="train ResNet-56 and MobileNet-V2 side by side instead of the timings")
    p.add_argument("--budget-s", type=float, default=530.0,
                   help="the whole command's time; parts that would not fit are skipped (default: 530)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per step-table row (default 50; smoke 2)")
    p.add_argument("--episodes", type=int, default=None, help="timed episodes per setting (default 5; smoke 1)")
    p.add_argument("--search-episodes", type=int, default=None, help="DDPG search episodes (default 30; smoke 2)")
    p.add_argument("--skip", nargs="*", default=[], choices=["steps", "episodes", "search"], help="parts to leave out")
    args = p.parse_args(argv)
    if args.train_zoo and args.smoke:
        p.error("--train-zoo has no smoke size (it trains on the whole training split); run it on a GPU")
    t_start = time.perf_counter()
    out, work = Path(args.out), Path(args.work)
    if out.exists() and not out.is_dir():
        p.error(f"--out {out} is a file; give a folder")
    bundle = Path(args.bundle) if args.bundle else None
    if bundle is not None and not bundle.is_dir():
        p.error(f"--bundle {bundle}: no such folder; stage it first (benchmarks/stage_gpu_bundle.sh)")
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f} s] {line}", flush=True)

    installed = install_bundle(bundle, work, log)
    data_dir = prepare_data(bundle, work, log)
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available here; pass --device cpu (or --smoke)", file=sys.stderr)
        return 2
    if cuda:
        torch.backends.cudnn.benchmark = True
    device = torch.device(args.device)
    steps = args.steps or (2 if args.smoke else 50)
    episodes = args.episodes or (1 if args.smoke else 5)
    search_episodes = args.search_episodes or (2 if args.smoke else 30)
    result: dict[str, Any] = {
        "command": "python benchmarks/gpu.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "cpus": os.cpu_count(), "platform": platform.platform()},
        "device": str(device), "smoke": args.smoke, "installed_from_bundle": installed, "data": data_dir,
        "skipped": {},
    }

    def left() -> float:
        return args.budget_s - (time.perf_counter() - t_start)

    if args.train_zoo:
        # the rest of the budget, less the final evaluation and saving (about 30 s each)
        result["train_zoo"] = train_zoo(out, work, bundle, device=str(device), time_limit_s=max(30.0, left() - 45.0),
                                        log=log)
        result["split_files"] = split_large_files(out)
    else:
        parts: list[tuple[str, float, Callable[[], Any]]] = [
            ("steps", 150.0, lambda: step_table(device, smoke=args.smoke, steps=steps, log=log)),
            ("episodes", 150.0, lambda: episode_table(device, smoke=args.smoke, episodes=episodes, log=log)),
            ("search", 120.0, lambda: ddpg_search(device, smoke=args.smoke, episodes=search_episodes, log=log)),
        ]
        for name, need_s, run in parts:
            if name in args.skip:
                result["skipped"][name] = "--skip"
            elif not args.smoke and left() < need_s:
                result["skipped"][name] = f"{left():.0f} s left of --budget-s, {need_s:.0f} s needed"
            else:
                t0 = time.perf_counter()
                result[name] = run()
                result[f"{name}_seconds"] = round(time.perf_counter() - t0, 1)
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n" + format_table(result))
    problems = check_out_folder(out)
    if problems:
        print(f"warning: {out} holds what will not come back: {problems}", file=sys.stderr)
    print(f"wrote {out / 'gpu.json'} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
