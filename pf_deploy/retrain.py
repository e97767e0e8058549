"""Stage 2 after the search: re-train the compressed model of a searched policy (docs/retraining.md).

    pf-retrain --run runs/ChannelPrune-ResNet20-v0__ddpg__seed0 --epochs 30 --out out/
    pf-retrain --run runs/<run> --epochs 1 --train-images 5000 --out out/   # short: minutes, not hours
    pf-retrain --record runs/<run>/best.json --epochs 30 --distill --out out/
    pf-retrain --record out/retrained.json --epochs 10 --out out2/    # re-train a saved model again
    pf-retrain --policy 0.5,0.5,... --env ChannelPrune-ResNet20-v0 --env-kwargs flops_budget=0.5 ...
    pf-retrain --run ... --group-size 3 --group-ft-iters 200          # PocketFlow group fine-tuning
    torchrun --standalone --nproc_per_node=2 -m pf_deploy.retrain --run-dir ... --out out/  # DDP

(``python -m pf_deploy.retrain`` and, in a checkout, ``python scripts/retrain.py`` are the same.)
What it costs on a CPU: one epoch of ResNet-20 over the whole training split (45,000 images)
is ~3 minutes of one idle core (351 steps at ~0.53 s; more with the distillation teacher)
and took ~16 minutes on a shared 2-core machine, MobileNet-V1 several times that; the time
scales with ``--epochs`` x ``--train-images``, and ``--val-images`` / ``--test-images``
bound the scoring passes (10,000 test images: ~1 minute for ResNet-20).

Writes ``OUT/NAME.pt`` + ``OUT/NAME.json`` (a compressed model: ``pf_envs.load_compressed``),
``OUT/NAME.state`` (resume state, every epoch) and TensorBoard curves under ``OUT/tensorboard/NAME``.
Run the same command again to resume a killed re-training.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pf_agents.cli import on_interrupt, parse_kwargs

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    from learners.distillation import DEFAULT_TEMPERATURE, DEFAULT_WEIGHT

    p = argparse.ArgumentParser(prog="pf-retrain", description="Re-train the compressed model of a searched policy.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    src = p.add_argument_group("the policy (exactly one)")
    src.add_argument("--run", "--run-dir", dest="run",
                     help="a search run folder (its best episode, or --episode); under torchrun spell it --run-dir "
                          "(torchrun's own parser reads --run as an abbreviation of its --run-path)")
    src.add_argument("--record",
                     help="best.json, episodes.jsonl (best line or --episode), or a compressed model's .json")
    src.add_argument("--policy", type=lambda s: [float(v) for v in s.split(",") if v.strip()],
                     help="the applied values, comma-separated (with --env and --env-kwargs)")
    src.add_argument("--episode", type=int, default=None, help="episode index in the run / episodes.jsonl")
    src.add_argument("--env", default=None, help="env id (for --policy, or a record without config.json)")
    src.add_argument("--env-kwargs", type=parse_kwargs, default={},
                     help="env settings k=v,... (override the recorded ones, e.g. data_root=...)")
    tr = p.add_argument_group("re-training")
    tr.add_argument("--epochs", type=int, required=True, help="passes over the whole training split")
    tr.add_argument("--batch-size", type=int, default=128, help="global batch (divided among processes)")
    tr.add_argument("--lr", type=float, default=0.05, help="peak learning rate, cosine-decayed to 0")
    tr.add_argument("--momentum", type=float, default=0.9)
    tr.add_argument("--nesterov", action="store_true")
    tr.add_argument("--weight-decay", type=float, default=5e-4)
    tr.add_argument("--warmup-epochs", type=float, default=0.0)
    tr.add_argument("--label-smoothing", type=float, default=0.0)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--distill", action="store_true", help="Hinton distillation from the uncompressed model")
    tr.add_argument("--distill-weight", type=float, default=DEFAULT_WEIGHT, help="PocketFlow loss_w_dst (4.0)")
    tr.add_argument("--distill-temperature", type=float, default=DEFAULT_TEMPERATURE, help="PocketFlow tempr_dst (4.0)")
    gr = p.add_argument_group("group fine-tuning (channel pruning)")
    gr.add_argument("--group-size", type=int, default=None, help="apply the policy K units at a time")
    gr.add_argument("--group-ft-iters", type=int, default=200, help="SGD steps of fine-tuning between groups")
    gr.add_argument("--group-ft-lr", type=float, default=0.01)
    gr.add_argument("--group-ft-batch-size", type=int, default=64)
    sh = p.add_argument_group(
        "short settings (time scales with --epochs x --train-images; the defaults are the full recipe)")
    sh.add_argument("--train-images", type=int, default=None,
                    help="re-train on a fixed subset of this many training images (default: all 45,000; "
                         "5000 makes an epoch ~9x shorter: ~2 min for ResNet-20 on one CPU core)")
    sh.add_argument("--val-images", type=int, default=None,
                    help="validation images scored after every epoch (default: all 5,000; 1000: 5x less)")
    sh.add_argument("--test-images", type=int, default=None,
                    help="test images scored at the end (default: all 10,000; 2000: 5x less)")
    io = p.add_argument_group("output and running")
    io.add_argument("--out", required=True, help="output folder")
    io.add_argument("--name", default="retrained", help="file name stem in --out (default: retrained)")
    io.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    io.add_argument("--threads", type=int, default=None, help="torch threads per process")
    io.add_argument("--no-progress", action="store_true")
    io.add_argument("--no-tensorboard", action="store_true")
    io.add_argument("--dist-timeout", type=float, default=300.0, help="seconds to wait for the other processes")
    return p


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


@on_interrupt("the last finished epoch is kept in OUT/NAME.state; run the same command again to resume")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from learners.distributed import DistributedSetupError, close_distributed, init_distributed

    try:
        ctx = init_distributed(args.device, timeout_s=args.dist_timeout)
    except DistributedSetupError as exc:
        return _fail(str(exc))
    try:
        return _run(args, ctx)
    finally:
        close_distributed(ctx)


def _run(args: argparse.Namespace, ctx: Any) -> int:
    import torch

    from learners.retraining import RetrainConfig, StateMismatchError, retrain
    from learners.training import evaluate, finetune
    from pf_deploy.starting_model import resolve_source, starting_model, teacher_of
    from pf_envs.compressed import save_compressed
    from pf_envs.data import DataError
    from pf_envs.zoo import CheckpointError

    log = print if ctx.is_main else (lambda _m: None)
    try:
        cfg = RetrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
            nesterov=args.nesterov, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
            label_smoothing=args.label_smoothing, distill=args.distill, distill_weight=args.distill_weight,
            distill_temperature=args.distill_temperature, seed=args.seed)
        if cfg.batch_size % ctx.world_size:
            return _fail(f"--batch-size {cfg.batch_size} does not divide among {ctx.world_size} processes: "
                         f"pass a multiple of {ctx.world_size}")
        if args.group_size is not None and args.group_size < 1:
            return _fail(f"--group-size {args.group_size}: must be >= 1")
        source = resolve_source(run=args.run, record=args.record, policy=args.policy, episode=args.episode,
                                env_id=args.env, env_kwargs=args.env_kwargs)
        env = source.make_env()
    except (FileNotFoundError, ValueError, TypeError, CheckpointError, DataError) as exc:
        return _fail(str(exc))
    base = env.unwrapped
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return _fail(f"--out {out} is a file: pass a folder")
    model_path, state_path = out / f"{args.name}.pt", out / f"{args.name}.state"
    group = {"group_size": args.group_size, "group_ft_iters": args.group_ft_iters, "group_ft_lr": args.group_ft_lr,
             "group_ft_batch_size": args.group_ft_batch_size, "train_images": args.train_images} if args.group_size \
        else {"train_images": args.train_images}
    identity, identity_text = source.identity(group)
    train_data = base.data.train if args.train_images is None else base.data.train.subset(args.train_images, seed=3)
    val_data = base.data.val if args.val_images is None else base.data.val.subset(args.val_images, seed=0)
    teacher = teacher_of(env) if cfg.distill else None
    t_start = time.time()

    def group_ft(model: torch.nn.Module, r: int) -> torch.nn.Module:
        from learners.distillation import Distillation

        loss_fn = (Distillation(teacher_of(env), cfg.distill_weight, cfg.distill_temperature, cfg.label_smoothing)
                   if cfg.distill else None)
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + r)
        return finetune(model, train_data, args.group_ft_iters, batch_size=args.group_ft_batch_size,
                        lr=args.group_ft_lr, weight_decay=cfg.weight_decay, generator=gen, loss_fn=loss_fn)

    try:
        if state_path.is_file() and args.group_size:
            # resuming: the architecture is the direct policy's (checked when the rounds ran); the weights
            # come from the state file
            model = base.policy_model(source.policy)
            for p in model.parameters():
                p.requires_grad_(True)
        else:
            model = starting_model(source, env, group_size=args.group_size, finetune_fn=group_ft, log=log)
    except (FileNotFoundError, ValueError, TypeError, CheckpointError, DataError) as exc:
        return _fail(str(exc))
    writer = None

    def scalar(tag: str, value: float, step: int) -> None:
        # opened at the first value, so that a run refused before training writes nothing; a resumed
        # run continues the curves in the same event file, without the points after its state file's step
        nonlocal writer
        if writer is None:
            from pf_agents.tensorboard import open_writer

            writer = open_writer(out / "tensorboard" / args.name, first_step=step)
        writer.add_scalar(tag, value, step)

    try:
        result = retrain(model, train_data, cfg, ctx=ctx, teacher=teacher, val_data=val_data,
                         make_step_hook=base.retrain_hook, state_path=state_path, identity=identity,
                         identity_text=identity_text, scalar=None if args.no_tensorboard else scalar, log=log,
                         progress=not args.no_progress)
    except StateMismatchError as exc:
        return _fail(str(exc))
    except ValueError as exc:
        return _fail(str(exc))
    if not ctx.is_main:
        return 0
    test_data = base.data.test if args.test_images is None else base.data.test.subset(args.test_images, seed=0)
    t_test = time.time()
    test_acc = evaluate(model, test_data, device=ctx.device)
    test_s = time.time() - t_test
    if writer is not None:
        writer.add_scalar("retrain/test_accuracy", test_acc, result.steps)
        writer.close()
    last = result.history[-1]
    metrics = {
        "test_accuracy": test_acc, "test_images": len(test_data), "val_accuracy": last.get("val_acc"),
        "val_images": len(val_data), "epochs": cfg.epochs, "steps": result.steps, "train_images": len(train_data),
        "final_train_loss": last["train_loss"], "first_train_loss": result.history[0]["train_loss"],
        "wall_time_s": sum(float(r["seconds"]) + float(r.get("eval_seconds", 0.0)) for r in result.history) + test_s,
        "this_call_s": time.time() - t_start, "resumed_after_epoch": result.resumed_from,
        "distill": ({"weight": cfg.distill_weight, "temperature": cfg.distill_temperature} if cfg.distill else None),
        "history": result.history,
    }
    src = {**source.origin, "config": asdict(cfg), "world_size": ctx.world_size,
           "group_fine_tuning": group if args.group_size else None, "tool": "pf_deploy.retrain"}
    try:
        rec = save_compressed(model, model_path, env_id=source.env_id, env_kwargs=_recordable(source.record_kwargs),
                              policy=source.policy, model_fingerprint=base.model_fingerprint, metrics=metrics,
                              source=src)
    except TypeError as exc:
        return _fail(str(exc))
    summary = {k: metrics[k] for k in ("test_accuracy", "val_accuracy", "epochs", "steps", "wall_time_s")}
    print(json.dumps(summary, indent=2))
    print(f"wrote {model_path} and {rec}; load it with pf_envs.load_compressed")
    return 0


def _recordable(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The env kwargs the record keeps: everything but where this machine keeps the data."""
    return {k: v for k, v in kwargs.items() if k not in ("data_root",)}


if __name__ == "__main__":
    raise SystemExit(main())
