"""Training, fine-tuning, evaluation and BatchNorm re-estimation.

Everything here takes a model and a :class:`~learners.batches.BatchSource` (an object with
``len()`` and a ``batches(...)`` method, e.g. a :class:`pf_envs.data.Split`); nothing knows
about Gymnasium.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from learners.atomic import atomic_torch_save
from learners.backend_guards import guard_strided_pointwise
from learners.batches import Batch, BatchSource
from learners.safe_load import TensorFileError, load_tensor_file

__all__ = [
    "Batch", "BatchSource", "TrainConfig", "evaluate", "finetune", "recalibrate_batchnorm", "train",
]


def _progress(iterable: Iterable, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(iterable, dynamic_ncols=True, mininterval=2.0, **kwargs)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: BatchSource,
    *,
    batch_size: int = 200,
    device: torch.device | str = "cpu",
    max_images: int | None = None,
) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` (put in eval mode) over ``data``.

    Batches of 200 are as fast on CPU as larger ones and keep the activations' peak memory
    low (MobileNet-V1 at 32x32: ~25 MB per 64-channel activation)."""
    model.eval()
    correct = total = 0
    for images, labels in data.batches(batch_size):
        if max_images is not None and total >= max_images:
            break
        logits = model(images.to(device, non_blocking=True))
        correct += (logits.argmax(1).cpu() == labels).sum().item()
        total += len(labels)
    if total == 0:
        raise ValueError("evaluate() got no images")
    return correct / total


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    batches: Iterable[Batch | torch.Tensor],
    *,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Re-estimate every BatchNorm's running mean/var as the plain average over ``batches``
    (image tensors, or ``(images, labels)`` pairs).

    After channels are removed the old statistics no longer describe the activations;
    a pruned MobileNet-V1 goes from near-chance to most of its accuracy with this alone.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    saved = [(bn.momentum, bn.training) for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average = exact mean over the batches
    model.train()
    for batch in batches:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        model(images.to(device, non_blocking=True))
    for bn, (momentum, _) in zip(bns, saved):
        bn.momentum = momentum
    return model.eval()


def finetune(
    model: nn.Module,
    data: BatchSource,
    iterations: int,
    *,
    batch_size: int = 64,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 4e-5,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    step_hook: Callable[[nn.Module, int], None] | None = None,
) -> nn.Module:
    """``iterations`` SGD steps on augmented, shuffled batches, lr cosine-decayed to 0.

    ``loss_fn(model, images, labels)`` replaces cross-entropy (e.g. for distillation).
    ``step_hook(model, step)`` runs after every optimiser step (e.g. to re-apply sparsity
    masks or re-project quantised weights, so that they survive fine-tuning).
    """
    if iterations <= 0:
        return model
    guard_strided_pointwise(model)  # a oneDNN crash on some pruned shapes (learners/backend_guards.py)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    model.train()
    step = 0
    while step < iterations:
        for images, labels in data.batches(
            batch_size, shuffle=True, augment=True, generator=generator, drop_last=True
        ):
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / iterations))
            images, labels = images.to(device), labels.to(device)
            if loss_fn is None:
                loss = nn.functional.cross_entropy(model(images), labels)
            else:
                loss = loss_fn(model, images, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step_hook is not None:
                step_hook(model, step)
            if step >= iterations:
                break
    return model.eval()


@dataclass
class TrainConfig:
    """Base-model training recipe (SGD + Nesterov, linear warm-up, cosine decay to 0).

    Attributes:
        epochs: passes over the training split.
        batch_size: images per step.
        lr: peak learning rate (after warm-up), for ``batch_size``.
        momentum: SGD momentum (Nesterov).
        weight_decay: L2 on every parameter.
        warmup_epochs: linear warm-up length, in epochs.
        label_smoothing: cross-entropy label smoothing.
        bf16: autocast matmuls/convs to bfloat16 (faster on CPUs with AVX512-BF16).
        seed: seeds initialisation, shuffling and augmentation.
        swa_epochs: stochastic weight averaging (Izmailov et al., 2018) after the main
            schedule: this many more epochs, each one learning-rate cycle from ``swa_lr``
            down to 0 (cosine), the weights at every cycle's end averaged
            (:class:`torch.optim.swa_utils.AveragedModel`); the average, its BatchNorm
            statistics re-estimated over the training split, is the trained model.
            With ``epochs=0`` and a trained starting point this is SWA from a checkpoint.
        swa_lr: peak learning rate of each SWA cycle.
    """

    epochs: int = 60
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    bf16: bool = False
    seed: int = 0
    swa_epochs: int = 0
    swa_lr: float = 0.02

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.swa_epochs < 0 or self.epochs + self.swa_epochs == 0:
            raise ValueError(
                f"epochs={self.epochs}, swa_epochs={self.swa_epochs}: both must be >= 0 and "
                "at least one > 0"
            )
        bounds = {  # field: (is it in range, the range in words)
            "batch_size": (self.batch_size >= 1, ">= 1"),
            "lr": (self.lr > 0, "> 0"),
            "momentum": (0 <= self.momentum < 1, "in [0, 1)"),
            "weight_decay": (self.weight_decay >= 0, ">= 0"),
            "warmup_epochs": (self.warmup_epochs >= 0, ">= 0"),
            "label_smoothing": (0 <= self.label_smoothing < 1, "in [0, 1)"),
            "swa_lr": (self.swa_lr > 0, "> 0"),
        }
        bad = [f"{k}={getattr(self, k)} (must be {rule})" for k, (ok, rule) in bounds.items() if not ok]
        if bad:
            raise ValueError(f"bad training settings: {', '.join(bad)}")
        if not all(math.isfinite(float(getattr(self, f.name))) for f in fields(self) if f.name != "bf16"):
            raise ValueError(f"training settings must be finite numbers: {asdict(self)}")


def _lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    if step >= cfg.epochs * steps_per_epoch:  # SWA: one cosine cycle per epoch
        within = (step - cfg.epochs * steps_per_epoch) % steps_per_epoch
        return cfg.swa_lr * 0.5 * (1 + math.cos(math.pi * within / steps_per_epoch))
    warm = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _swa_bn_batches(train_data: BatchSource, seed: int, max_images: int | None) -> Iterator[Batch]:
    """Augmented training batches (a fixed shuffle) for the SWA average's BatchNorm statistics."""
    gen = torch.Generator().manual_seed(seed + 1)
    seen = 0
    for images, labels in train_data.batches(200, shuffle=True, augment=True, generator=gen):
        if max_images is not None and seen >= max_images:
            return
        seen += len(labels)
        yield images, labels


def _read_train_state(path: str | os.PathLike[str], cfg: TrainConfig, total_epochs: int) -> dict[str, Any]:
    """The training state at ``path``, loaded with ``weights_only=True`` (a file holding any
    pickled object but tensors, numbers and strings is refused, never run) and checked:
    written by :func:`train` with the same ``cfg``. Every failure is a ValueError that says
    to delete the file to start over."""
    restart = "delete it to start over"
    try:
        state = load_tensor_file(path)
    except TensorFileError as exc:
        raise ValueError(f"cannot read the training state {path}: {exc.reason}; {restart}") from None
    except OSError as exc:
        raise ValueError(f"cannot read the training state {path} ({exc.strerror or exc}); {restart}") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a training state written by train() (a {type(state).__name__}); {restart}")
    # a state written before a setting existed holds that setting at its default
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    recorded = {**defaults, **state["config"]} if isinstance(state.get("config"), dict) else None
    if recorded != asdict(cfg):
        raise ValueError(
            f"{path} was written by a run with another config {state.get('config')}; "
            "delete it or pass the same settings to resume"
        )
    expected = {
        "model": dict, "optimizer": dict, "epoch": int, "generator": torch.Tensor, "history": list,
    }
    wrong = [k for k, t in expected.items() if not isinstance(state.get(k), t)]
    if not wrong and not 0 <= state["epoch"] <= total_epochs:
        wrong = ["epoch"]
    if not wrong and not (state.get("swa") is None or isinstance(state["swa"], dict)):
        wrong = ["swa"]
    if wrong:
        raise ValueError(
            f"the training state {path} is incomplete or not written by train() (bad or missing "
            f"{wrong}); {restart}"
        )
    return state


def train(
    model: nn.Module,
    train_data: BatchSource,
    cfg: TrainConfig,
    *,
    eval_data: BatchSource | None = None,
    state_path: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = print,
    swa_eval_bn_images: int = 10_000,
) -> list[dict]:
    """Train ``model`` from scratch (or resume), returning one record per epoch.

    With ``state_path`` the model, optimiser, epoch, random state (and the SWA average) are
    written there after every epoch (atomically) and a later call with the same path resumes
    after the last finished epoch; at most the epoch in flight is lost. The file holds only
    tensors, numbers and strings and is read back with ``weights_only=True``: a file there
    that holds any other pickled object (e.g. written by an older version) is refused with a
    ValueError saying to delete it, never loaded.

    With ``cfg.swa_epochs`` the model returned holds the weight average (see
    :class:`TrainConfig`); each SWA epoch's record also has ``swa_val_acc``, the average so far
    with BatchNorm statistics from ``swa_eval_bn_images`` training images (the final average
    uses the whole training split).
    """
    from torch.optim.swa_utils import AveragedModel

    steps_per_epoch = len(train_data) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"the training split has {len(train_data)} images, fewer than one batch of {cfg.batch_size}")
    total_epochs = cfg.epochs + cfg.swa_epochs
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
        weight_decay=cfg.weight_decay,
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    start_epoch = 0
    swa_state = None
    if state_path is not None and Path(state_path).is_file():
        state = _read_train_state(state_path, cfg, total_epochs)
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            gen.set_state(state["generator"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ValueError(
                f"the training state {state_path} does not fit this model ({str(exc).splitlines()[0]}); "
                "delete it to start over, or resume with the model it was written for"
            ) from exc
        start_epoch, history, swa_state = state["epoch"], state["history"], state.get("swa")
        log(f"resuming from {state_path} after epoch {start_epoch}")
    model.to(device).to(memory_format=torch.channels_last)
    guard_strided_pointwise(model)
    swa = AveragedModel(model) if cfg.swa_epochs else None
    if swa is not None and swa_state is not None:
        try:
            swa.load_state_dict(swa_state)
        except (RuntimeError, KeyError) as exc:
            raise ValueError(
                f"the weight average in the training state {state_path} does not fit this model "
                f"({str(exc).splitlines()[0]}); delete it to start over"
            ) from exc
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    for epoch in range(start_epoch, total_epochs):
        model.train()
        t0 = time.time()
        seen = correct = 0
        loss_sum = 0.0
        bar = _progress(
            train_data.batches(cfg.batch_size, shuffle=True, augment=True, generator=gen, drop_last=True),
            total=steps_per_epoch,
            desc=f"{'swa ' if epoch >= cfg.epochs else ''}epoch {epoch + 1}/{total_epochs}", leave=False,
        )
        for i, (images, labels) in enumerate(bar):
            for group in opt.param_groups:
                group["lr"] = _lr_at(cfg, epoch * steps_per_epoch + i, steps_per_epoch)
            images, labels = images.to(device), labels.to(device)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cfg.bf16):
                logits = model(images)
                loss = criterion(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            loss_sum += loss.item() * len(labels)
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        record = {
            "epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
            "seconds": time.time() - t0,
        }
        if eval_data is not None:
            record["val_acc"] = evaluate(model, eval_data, device=device)
        if swa is not None and epoch >= cfg.epochs:
            swa.update_parameters(model)
            record["swa_averaged"] = int(swa.n_averaged)
            if eval_data is not None:
                bn_batches = _swa_bn_batches(train_data, cfg.seed, swa_eval_bn_images)
                recalibrate_batchnorm(swa.module, bn_batches, device=device)
                record["swa_val_acc"] = evaluate(swa.module, eval_data, device=device)
        history.append(record)
        log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        if state_path is not None:
            # tensors, numbers, strings and containers only: loadable with weights_only=True
            atomic_torch_save(
                {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                 "generator": gen.get_state(), "history": history, "config": asdict(cfg),
                 "swa": swa.state_dict() if swa is not None else None},
                state_path,
            )
    if swa is not None:
        recalibrate_batchnorm(swa.module, _swa_bn_batches(train_data, cfg.seed, None), device=device)
        model.load_state_dict(swa.module.state_dict())
        model.eval()
    return history
