"""Full re-training of a compressed model (PocketFlow's final stage after a search).

SGD with momentum on the whole training split, learning rate on a cosine schedule (optional
linear warm-up), optional label smoothing and optional knowledge distillation from the
uncompressed model (:mod:`learners.distillation`). One process or many
(:class:`torch.nn.parallel.DistributedDataParallel` over a
:class:`~learners.distributed.DistributedContext`): each epoch a
:class:`torch.utils.data.DistributedSampler` deals every process an equal share of one
shuffle of the training split, ``batch_size`` is the global batch (each process takes
``batch_size / world_size`` images a step), so N processes take exactly the optimizer steps
one process takes.

Resumable: with ``state_path`` the model, optimizer, epoch and history are written there
(atomically, by rank 0) after every epoch; a later call resumes after the last finished one,
and a state file written for another run (another ``identity``) or another recipe is refused.
Augmentation is seeded by (seed, epoch, rank), so a resumed run draws what the uninterrupted
one would have.

The steps run in :func:`learners.training.run_steps`, the one training loop (base training
and the environments' fine-tuning use it too), with a distillation loss and the method's
per-step hook; the loss and accuracy sums stay on the device until the epoch ends.

Nothing here knows about Gymnasium; the model, data and per-step hook come from the caller.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from learners.atomic import atomic_torch_save
from learners.backend_guards import guard_strided_pointwise
from learners.batches import BatchSource, on_device
from learners.distillation import DEFAULT_TEMPERATURE, DEFAULT_WEIGHT, Distillation
from learners.distributed import DistributedContext
from learners.safe_load import TensorFileError, load_tensor_file
from learners.training import RunningTotals, _progress, cross_entropy_loss, evaluate, make_sgd, run_steps

__all__ = ["IndexedSource", "RetrainConfig", "RetrainResult", "StateMismatchError", "lr_at", "retrain"]

StepHook = Callable[[nn.Module, int], None]


class IndexedSource(BatchSource, Protocol):
    """A :class:`~learners.batches.BatchSource` that can serve a chosen list of its items
    (``select``), as :class:`pf_envs.data.TensorSplit` and ``FolderSplit`` do: how one process
    gets its share of an epoch."""

    def select(self, indices: Sequence[int], name: str | None = None) -> BatchSource: ...


class StateMismatchError(ValueError):
    """A state file that belongs to another run or recipe."""


@dataclass(frozen=True)
class RetrainConfig:
    """The re-training recipe.

    Attributes:
        epochs: passes over the training split.
        batch_size: global images per optimizer step (divided among the processes).
        lr: peak learning rate, cosine-decayed to 0 over all steps.
        momentum: SGD momentum.
        nesterov: Nesterov momentum.
        weight_decay: L2 on every parameter.
        warmup_epochs: linear warm-up length, in epochs (0: none).
        label_smoothing: cross-entropy label smoothing.
        distill: add Hinton distillation from the teacher (the uncompressed model).
        distill_weight / distill_temperature: PocketFlow's ``loss_w_dst`` / ``tempr_dst`` (4, 4).
        seed: seeds the shuffle and augmentation.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    distill: bool = False
    distill_weight: float = DEFAULT_WEIGHT
    distill_temperature: float = DEFAULT_TEMPERATURE
    seed: int = 0

    def __post_init__(self) -> None:
        bounds = {
            "epochs": (self.epochs >= 1, ">= 1"),
            "batch_size": (self.batch_size >= 1, ">= 1"),
            "lr": (self.lr > 0, "> 0"),
            "momentum": (0 <= self.momentum < 1, "in [0, 1)"),
            "weight_decay": (self.weight_decay >= 0, ">= 0"),
            "warmup_epochs": (0 <= self.warmup_epochs <= self.epochs, "in [0, epochs]"),
            "label_smoothing": (0 <= self.label_smoothing < 1, "in [0, 1)"),
            "distill_weight": (self.distill_weight >= 0, ">= 0"),
            "distill_temperature": (self.distill_temperature > 0, "> 0"),
        }
        numbers = [f.name for f in fields(self) if f.name not in ("nesterov", "distill")]
        bad = [f"{k}={getattr(self, k)} (must be a finite number)" for k in numbers
               if not math.isfinite(float(getattr(self, k)))]
        bad += [f"{k}={getattr(self, k)} (must be {rule})" for k, (ok, rule) in bounds.items()
                if not ok and f"{k}=" not in " ".join(bad)]
        if bad:
            raise ValueError(f"bad re-training settings: {', '.join(bad)}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")


@dataclass
class RetrainResult:
    """What :func:`retrain` did: one record per epoch (``history``), the optimizer steps taken
    in all (``steps``), the epoch it resumed after (0: a fresh start) and the seconds this call
    spent training (``seconds``) and all epochs together, earlier calls included (``total_seconds``)."""

    history: list[dict[str, Any]]
    steps: int
    resumed_from: int
    seconds: float
    total_seconds: float


def lr_at(cfg: RetrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based): linear warm-up for
    ``warmup_epochs``, then cosine from ``lr`` down to 0 at ``total_steps``."""
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total_steps - warm)))


def _epoch_generator(cfg: RetrainConfig, epoch: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((cfg.seed * 1_000_003 + epoch) * 4099 + rank)


def _read_state(path: Path, cfg: RetrainConfig, identity: str) -> dict[str, Any]:
    restart = f"delete {path} to start over"
    try:
        state = load_tensor_file(path)
    except TensorFileError as exc:
        raise StateMismatchError(f"cannot read the re-training state {path}: {exc.reason}; {restart}") from None
    except OSError as exc:
        raise StateMismatchError(
            f"cannot read the re-training state {path} ({exc.strerror or exc}); {restart}") from exc
    if not isinstance(state, dict) or state.get("kind") != "retrain-state":
        raise StateMismatchError(f"{path} is not a re-training state file (written by learners.retraining.retrain); "
                                 f"{restart}, or pass another --out")
    if state.get("identity") != identity:
        raise StateMismatchError(
            f"{path} belongs to another run (it re-trains {state.get('identity_text', '?')}; this run re-trains "
            f"another policy, env or base model): pass another --out (or --name) for this run, or {restart}")
    if state.get("config") != asdict(cfg):
        theirs, ours = state.get("config") or {}, asdict(cfg)
        diff = {k: (theirs.get(k), ours[k]) for k in ours if theirs.get(k) != ours[k]}
        raise StateMismatchError(
            f"{path} was written with other re-training settings (recorded vs now: {diff}): pass the same settings "
            f"to resume, or {restart}")
    expected = {"model": dict, "optimizer": dict, "epoch": int, "history": list, "steps": int}
    wrong = [k for k, t in expected.items() if not isinstance(state.get(k), t)]
    if not wrong and not 0 <= state["epoch"] <= cfg.epochs:
        wrong = ["epoch"]
    if wrong:
        raise StateMismatchError(f"the re-training state {path} is incomplete (bad or missing {wrong}); {restart}")
    return state


def retrain(
    model: nn.Module,
    train_data: IndexedSource,
    cfg: RetrainConfig,
    *,
    ctx: DistributedContext | None = None,
    teacher: nn.Module | None = None,
    val_data: BatchSource | None = None,
    val_batch_size: int = 200,
    make_step_hook: Callable[[nn.Module, int], StepHook | None] | None = None,
    state_path: str | os.PathLike[str] | None = None,
    identity: str = "",
    identity_text: str = "",
    scalar: Callable[[str, float, int], None] | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> RetrainResult:
    """Re-train ``model`` in place (see the module docstring); returns a :class:`RetrainResult`.

    Args:
        train_data: the training split (every process holds all of it and takes its share).
        teacher: the uncompressed model; needed when ``cfg.distill``.
        val_data: accuracy measured on it after every epoch (rank 0), recorded as ``val_acc``.
        make_step_hook: ``make_step_hook(model, total_steps)`` returns a ``hook(model, step)``
            run after every optimizer step on the inner (unwrapped) model, or None: what a
            method must redo to keep its compression (``ModelCompressionEnv.retrain_hook``).
        state_path: the state file (read by every process, written by rank 0). On several
            machines it must be on a shared folder.
        identity: a string naming what is re-trained (policy, env, base model); a state file
            with another one is refused. ``identity_text`` is its readable form for the message.
        scalar: ``scalar(tag, value, step)`` for TensorBoard (rank 0): ``retrain/loss``,
            ``retrain/lr``, ``retrain/val_accuracy``.

    Raises:
        StateMismatchError: the state file is unreadable, from another run or another recipe.
        ValueError: the batch does not divide among the processes, or the split is smaller
            than one batch.
    """
    ctx = ctx or DistributedContext()
    world, rank = ctx.world_size, ctx.rank
    if cfg.batch_size % world:
        raise ValueError(
            f"batch_size={cfg.batch_size} does not divide among {world} processes: pass a multiple of {world}")
    local_batch = cfg.batch_size // world
    n = len(train_data)
    steps_per_epoch = (n // world) // local_batch  # == n // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"the training split has {n} images, fewer than one batch of {cfg.batch_size}")
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.distill and teacher is None:
        raise ValueError("cfg.distill is set but no teacher was given")
    distill = (Distillation(teacher.to(ctx.device), cfg.distill_weight, cfg.distill_temperature, cfg.label_smoothing)
               if cfg.distill else None)
    model.to(ctx.device).to(memory_format=torch.channels_last)  # the data's layout: faster convolutions on CPU
    opt = make_sgd(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                   weight_decay=cfg.weight_decay)
    history: list[dict[str, Any]] = []
    start_epoch = steps = 0
    state_file = Path(state_path) if state_path is not None else None
    if state_file is not None and state_file.is_file():
        state = _read_state(state_file, cfg, identity)
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise StateMismatchError(f"the re-training state {state_file} does not fit this model "
                                     f"({str(exc).splitlines()[0]}); delete it to start over") from exc
        start_epoch, history, steps = state["epoch"], state["history"], state["steps"]
        if ctx.is_main:
            log(f"resuming from {state_file} after epoch {start_epoch}/{cfg.epochs}")
    hook = make_step_hook(model, total_steps) if make_step_hook is not None else None
    guard_strided_pointwise(model)  # a oneDNN crash on some pruned shapes (learners/backend_guards.py)
    if ctx.distributed:
        net: nn.Module = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    else:
        net = model
    sampler = torch.utils.data.DistributedSampler(
        range(n), num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
    if distill is not None:
        def step_loss(net_: nn.Module, images: torch.Tensor, labels: torch.Tensor):
            logits = net_(images)
            loss, task = distill.combined(logits, images, labels)
            return loss, task, logits
    else:
        step_loss = cross_entropy_loss(cfg.label_smoothing)
    train_data = on_device(train_data, ctx.device)  # type: ignore[assignment]
    totals = RunningTotals(ctx.device)
    t_call = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        sampler.set_epoch(epoch)
        share = train_data.select(list(sampler), name=f"rank{rank}")
        gen = _epoch_generator(cfg, epoch, rank)
        net.train()
        totals.reset()
        bar = _progress(share.batches(local_batch, shuffle=False, augment=True, generator=gen, drop_last=True),
                        total=steps_per_epoch, desc=f"retrain epoch {epoch + 1}/{cfg.epochs}", leave=False,
                        disable=not (progress and ctx.is_main))
        first = steps

        def on_read(step: int, sums: RunningTotals | None, bar=bar, first=first) -> None:
            # every 10 steps (and the first): TensorBoard's loss and lr, the progress bar (one sync)
            if sums is None:
                return
            if scalar is not None and ctx.is_main and (step % 10 == 0 or step == first + 1):
                scalar("retrain/loss", float(sums.last_loss), step)  # type: ignore[arg-type]
                scalar("retrain/lr", lr_at(cfg, step - 1, total_steps, steps_per_epoch), step)
            if not bar.disable and (step - first - 1) % 10 == 0:
                now = sums.read()
                bar.set_postfix(loss=f"{now['loss']:.3f}", acc=f"{now['acc']:.3f}")

        reads = scalar is not None and ctx.is_main or not bar.disable
        steps += run_steps(
            net, opt, bar, lr_at=lambda s: lr_at(cfg, s, total_steps, steps_per_epoch), step_loss=step_loss,
            first_step=steps, max_steps=steps_per_epoch, device=ctx.device, step_hook=hook, hook_model=model,
            totals=totals, on_read=on_read if reads else None, read_every=1 if scalar is not None else 10,
        )
        bar.close()
        sums = [float(totals.loss), float(totals.task), float(totals.correct), float(totals.seen)]
        loss_sum, task_sum, correct, seen = ctx.all_sum(sums)
        record: dict[str, Any] = {
            "epoch": epoch + 1, "steps": steps, "train_loss": loss_sum / seen, "task_loss": task_sum / seen,
            "train_acc": correct / seen, "lr_end": opt.param_groups[0]["lr"], "seconds": time.time() - t0,
        }
        if val_data is not None and ctx.is_main:
            t_eval = time.time()
            record["val_acc"] = evaluate(model, val_data, batch_size=val_batch_size, device=ctx.device)
            record["eval_seconds"] = time.time() - t_eval
            if scalar is not None:
                scalar("retrain/val_accuracy", record["val_acc"], steps)
        if scalar is not None and ctx.is_main:
            scalar("retrain/epoch_loss", record["train_loss"], steps)
        history.append(record)
        if ctx.is_main:
            log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            if state_file is not None:
                atomic_torch_save(
                    {"kind": "retrain-state", "identity": identity, "identity_text": identity_text,
                     "config": asdict(cfg), "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "epoch": epoch + 1, "steps": steps, "history": history, "world_size": world},
                    state_file,
                )
        ctx.barrier()
    model.eval()
    seconds = time.time() - t_call
    total = sum(float(r["seconds"]) + float(r.get("eval_seconds", 0.0)) for r in history)
    return RetrainResult(history, steps, start_epoch, seconds, total)
