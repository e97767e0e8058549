"""Train a base model of the zoo on CIFAR-10 (resumable, with a progress bar).

    python scripts/train_base.py --model resnet20 --epochs 60 --bf16
    python scripts/train_base.py --model mobilenet_v1 --epochs 60 --out pf_envs/zoo/checkpoints/mobilenet_v1_cifar10.pt
    python scripts/train_base.py --model mobilenet_v1 --init base.pt --epochs 10 --lr 0.01 --warmup-epochs 0
    python scripts/train_base.py --model resnet20 --init base.pt --epochs 0 --swa-epochs 30 --swa-lr 0.05

The last is stochastic weight averaging from a trained checkpoint: 30 one-epoch learning-rate
cycles (0.05 down to 0), the weights at each cycle's end averaged, BatchNorm statistics
re-estimated for the average (``--swa-epochs`` after a normal schedule works the same way).

The full training state is written to ``--work`` after every epoch; running the same
command again resumes. At the end the model is saved as an fp16 state dict with a JSON
record (command, config, per-epoch history, test accuracy measured on the saved weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from learners.training import TrainConfig, evaluate, train  # noqa: E402
from pf_envs import zoo  # noqa: E402
from pf_envs.data import DataError, cache_dir, load_dataset  # noqa: E402


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
                   help="start from this checkpoint's weights (a warm restart: e.g. --lr 0.01 --warmup-epochs 0)")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads {args.threads}: give a number of threads >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

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
    try:
        return _run(args, argv, cfg, spec, out, work)
    except (DataError, zoo.CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, argv: list[str] | None, cfg: TrainConfig, spec: zoo.ModelSpec,
         out: Path, work: Path) -> int:
    """Train (or resume), save the checkpoint and its record. A refused training state
    (ValueError) is reported here; DataError / CheckpointError propagate to :func:`main`."""
    work.parent.mkdir(parents=True, exist_ok=True)
    from pf_envs.core import resolve_device

    device = resolve_device(args.device)
    data = load_dataset(args.dataset, args.data_root)
    torch.manual_seed(cfg.seed)
    parent_record = None
    if args.init:
        model = zoo.load(spec.name, args.dataset, checkpoint=args.init).train()
        parent = Path(args.init).with_suffix(".json")
        parent_record = zoo.read_record(parent) if parent.is_file() else None
    else:
        model = zoo.create_model(spec.name, args.dataset)
    try:
        history = train(model, data.train, cfg, eval_data=data.val, state_path=work, device=device)
    except ValueError as exc:  # a refused training state: the message says to delete it
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = model.float().cpu().to(memory_format=torch.contiguous_format)
    record = {
        "model": spec.name, "dataset": args.dataset,
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "config": dataclasses.asdict(cfg), "train_split": f"train ({len(data.train)} images)",
        "history": history, "train_seconds": round(sum(h["seconds"] for h in history), 1),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, {device}, torch {torch.__version__}",
    }
    if args.init:  # keep the provenance of the weights this run started from
        record["init"] = {"checkpoint": str(args.init), "record": parent_record}
    zoo.save_checkpoint(model, out)
    reloaded = zoo.load(spec.name, args.dataset, checkpoint=out)  # accuracy of what ships (fp16)
    record["test_acc"] = evaluate(reloaded.to(device), data.test, device=device)
    record["val_acc"] = evaluate(reloaded, data.val, device=device)
    zoo.save_checkpoint(model, out, record)
    print(json.dumps({k: record[k] for k in ("model", "test_acc", "val_acc")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
