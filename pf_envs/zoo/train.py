"""Train a base model of the zoo on CIFAR-10 (resumable, with a progress bar).

    python -m pf_envs.zoo.train --model resnet20 --epochs 60 --bf16
    python -m pf_envs.zoo.train --model mobilenet_v1 --epochs 60 --out pf_envs/zoo/checkpoints/mobilenet_v1_cifar10.pt
    python -m pf_envs.zoo.train --model mobilenet_v1 --init base.pt --epochs 10 --lr 0.01 --warmup-epochs 0
    python -m pf_envs.zoo.train --model resnet20 --init base.pt --epochs 0 --swa-epochs 30 --swa-lr 0.05
    python -m pf_envs.zoo.train --model resnet56 --device cuda --capture --time-limit-s 500

(also ``pf-train-base ...`` once installed, and ``python scripts/train_base.py ...``.)

The fourth is stochastic weight averaging from a trained checkpoint: 30 one-epoch learning-rate
cycles (0.05 down to 0), the weights at each cycle's end averaged, BatchNorm statistics
re-estimated for the average (``--swa-epochs`` after a normal schedule works the same way).

The full training state is written to ``--work`` after every epoch; running the same
command again resumes. ``--time-limit-s`` is a watchdog: the run stops after the epoch that
leaves less than one more epoch's time (with a margin) before the limit, its state saved,
and exits with status 3; the same command resumes it. At the end the model is saved as an
fp16 state dict with a JSON record (command, config, per-epoch history, test accuracy
measured on the saved weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from learners.training import TrainConfig, evaluate, train
from pf_envs import zoo
from pf_envs.data import DataError, DatasetBundle, cache_dir, load_dataset

#: Exit status of a run the watchdog (``--time-limit-s``) stopped with its state saved.
EXIT_STOPPED = 3

__all__ = ["EXIT_STOPPED", "main", "train_zoo_model", "watchdog"]


def _field_help() -> dict[str, str]:
    """Each TrainConfig field's description, from the ``Attributes:`` section of its docstring."""
    out: dict[str, str] = {}
    name = None
    for line in (TrainConfig.__doc__ or "").split("Attributes:", 1)[-1].splitlines():
        head, sep, text = line.strip().partition(": ")
        if sep and head.isidentifier() and line.startswith(" " * 8) and not line.startswith(" " * 12):
            name, out[head] = head, text
        elif name and line.strip():
            out[name] += " " + line.strip()
    return {k: v.replace("%", "%%") for k, v in out.items()}


def watchdog(limit_s: float, *, margin: float = 1.3, start: float | None = None) -> Callable[[], bool]:
    """A ``should_stop`` for :func:`learners.training.train`: True once the time left before
    ``limit_s`` seconds after ``start`` (default: now) is less than ``margin`` times the
    longest epoch so far (epochs are timed between calls)."""
    t0 = time.monotonic() if start is None else start
    last = [t0]
    longest = [0.0]

    def should_stop() -> bool:
        now = time.monotonic()
        longest[0] = max(longest[0], now - last[0])
        last[0] = now
        return now - t0 + margin * longest[0] > limit_s

    return should_stop


def train_zoo_model(
    spec: zoo.ModelSpec,
    cfg: TrainConfig,
    *,
    data: DatasetBundle,
    out: Path,
    work: Path,
    device: torch.device,
    command: str,
    init: str | None = None,
    should_stop: Callable[[], bool] | None = None,
    log: Callable[[str], None] = print,
) -> dict | None:
    """Train (or resume) ``spec``'s CIFAR model with ``cfg``; write the fp16 checkpoint ``out``
    and its JSON record (test and val accuracy of the saved weights) and return the record,
    or None where ``should_stop`` ended the run early (its state in ``work`` resumes).

    Raises:
        ValueError: a training state at ``work`` that does not belong to this run.
        DataError, zoo.CheckpointError: bad data or ``init`` checkpoint.
    """
    work.parent.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
    torch.manual_seed(cfg.seed)
    parent_record = None
    if init:
        model = zoo.load(spec.name, data.name, checkpoint=init).train()
        parent = Path(init).with_suffix(".json")
        parent_record = zoo.read_record(parent) if parent.is_file() else None
    else:
        model = zoo.create_model(spec.name, data.name)
    history = train(model, data.train, cfg, eval_data=data.val, state_path=work, device=device, log=log,
                    should_stop=should_stop)
    if len(history) < cfg.epochs + cfg.swa_epochs:
        return None
    model = model.float().cpu().to(memory_format=torch.contiguous_format)
    record = {
        "model": spec.name, "dataset": data.name, "command": command,
        "config": dataclasses.asdict(cfg), "train_split": f"train ({len(data.train)} images)",
        "history": history, "train_seconds": round(sum(h["seconds"] for h in history), 1),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, {device}, torch {torch.__version__}",
    }
    if init:  # keep the provenance of the weights this run started from
        record["init"] = {"checkpoint": str(init), "record": parent_record}
    zoo.save_checkpoint(model, out)
    reloaded = zoo.load(spec.name, data.name, checkpoint=out)  # accuracy of what ships (fp16)
    record["test_acc"] = evaluate(reloaded.to(device), data.test, device=device)
    record["val_acc"] = evaluate(reloaded, data.val, device=device)
    zoo.save_checkpoint(model, out, record)
    return record


def main(argv: list[str] | None = None) -> int:
    """The command line (``python -m pf_envs.zoo.train --help``); returns the exit status
    (0 done, 2 bad arguments or data, 3 stopped by the watchdog with its state saved)."""
    p = argparse.ArgumentParser(prog="python -m pf_envs.zoo.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=zoo.list_models("cifar10"))
    p.add_argument("--dataset", default="cifar10", choices=["cifar10"])
    p.add_argument("--data-root", default=None, help="data folder (default: $PF_DATA_DIR)")
    helps = _field_help()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        text = helps.get(f.name, "")
        if f.type in (bool, "bool"):
            p.add_argument(flag, action="store_true", default=f.default, help=text)
        else:
            p.add_argument(flag, type=type(f.default), default=f.default, help=f"{text} (default: {f.default})")
    p.add_argument("--out", default=None, help="checkpoint file (default: the zoo's shipped path)")
    p.add_argument("--work", default=None, help="resumable training state (default: in the cache folder)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (a GPU where there is one)")
    p.add_argument("--init", default=None,
                   help="start from this checkpoint's weights (a warm start, e.g. --lr 0.01 --warmup-epochs 0)")
    p.add_argument("--time-limit-s", type=float, default=None,
                   help="watchdog: stop (state saved, exit status 3) after the epoch that leaves less than "
                        "1.3 epochs' time before this many seconds; the same command resumes")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads {args.threads}: give a number of threads >= 1")
    if args.time_limit_s is not None and not args.time_limit_s > 0:
        p.error(f"--time-limit-s {args.time_limit_s}: give a number of seconds > 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.monotonic()
    try:
        cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    except ValueError as exc:
        p.error(str(exc))
    spec = zoo.get_spec(args.model)
    out = Path(args.out) if args.out else spec.checkpoint_path(args.dataset)
    work = Path(args.work) if args.work else cache_dir() / "train" / f"{out.stem}.state"
    for flag, path in (("--out", out), ("--work", work)):
        if path.is_dir():
            p.error(f"{flag} {path} is a folder; give the path of a file (it may be inside that folder)")
    if args.init and not Path(args.init).is_file():
        p.error(f"--init {args.init}: no such checkpoint file")
    from pf_envs.core import resolve_device

    given = sys.argv[1:] if argv is None else argv
    command = "python -m pf_envs.zoo.train " + " ".join(shlex.quote(a) for a in given)
    stop = watchdog(args.time_limit_s, start=t_start) if args.time_limit_s else None
    try:
        data = load_dataset(args.dataset, args.data_root)
        record = train_zoo_model(spec, cfg, data=data, out=out, work=work, device=resolve_device(args.device),
                                 command=command, init=args.init, should_stop=stop)
    except (DataError, zoo.CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a refused training state: the message says to delete it
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if record is None:
        print(f"stopped by the watchdog (--time-limit-s {args.time_limit_s}); run the same command to resume "
              f"from {work}", file=sys.stderr)
        return EXIT_STOPPED
    print(json.dumps({k: record[k] for k in ("model", "test_acc", "val_acc")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
