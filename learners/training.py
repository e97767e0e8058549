"""Training, fine-tuning, evaluation and BatchNorm re-estimation.

Everything here takes a model and a :class:`~learners.batches.BatchSource` (an object with
``len()`` and a ``batches(...)`` method, e.g. a :class:`pf_envs.data.Split`); nothing knows
about Gymnasium.

One training loop, :func:`run_steps`, serves base training (:func:`train`), the
environments' fast fine-tuning (:func:`finetune`) and full re-training
(:func:`learners.retraining.retrain`, with a distillation loss and a per-step hook). It
never waits for the device inside the loop: the loss and accuracy sums stay on the device
(:class:`RunningTotals`) and are read once an epoch, or every ``read_every`` steps for a
progress bar. Data that can live on the training device (:func:`learners.batches.on_device`)
is moved there once, so batches are gathered, augmented and normalised there.

On CUDA the fixed-shape training step can be captured once as a CUDA graph and replayed
(:class:`CapturedStep`, ``TrainConfig.capture``): forward, loss, backward, the SGD step and
the running sums become one launch. ``bf16`` runs the forward pass under bfloat16 autocast.
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
from learners.batches import Batch, BatchSource, on_device
from learners.safe_load import TensorFileError, load_tensor_file

__all__ = [
    "Batch", "BatchSource", "CapturedStep", "RunningTotals", "StepHook", "StepLoss", "TrainConfig",
    "capture_available", "cross_entropy_loss", "evaluate", "finetune", "make_sgd", "recalibrate_batchnorm",
    "run_steps", "train",
]

#: ``step_loss(net, images, labels) -> (loss to minimise, task loss, logits or None)``: what
#: one training step computes (the task loss is what is recorded besides the total; logits,
#: where given, count towards the training accuracy).
StepLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]]
#: ``hook(model, step)``: run after every optimizer step (``step`` counts from 1), e.g. to
#: re-apply sparsity masks or re-project quantised weights.
StepHook = Callable[[nn.Module, int], None]


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
    correct = torch.zeros((), dtype=torch.int64, device=device)  # summed on the device: one read at the end
    total = 0
    for images, labels in on_device(data, device).batches(batch_size):
        if max_images is not None and total >= max_images:
            break
        logits = model(images.to(device, non_blocking=True))
        correct += (logits.argmax(1) == labels.to(device, non_blocking=True)).sum()
        total += len(labels)
    if total == 0:
        raise ValueError("evaluate() got no images")
    return int(correct.item()) / total


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


def cross_entropy_loss(label_smoothing: float = 0.0) -> StepLoss:
    """The plain training step's loss: cross-entropy (with ``label_smoothing``) of the logits
    in fp32 (under bf16 autocast the logits are bf16; the loss is taken in fp32)."""

    def step_loss(net: nn.Module, images: torch.Tensor, labels: torch.Tensor):
        logits = net(images)
        loss = nn.functional.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        return loss, loss, logits

    return step_loss


class RunningTotals:
    """Sums over the steps of an epoch, kept on the training device: loss x images, task loss
    x images, correct predictions (tensors, added to in place, so a captured step adds to them
    too) and images seen (a Python int). Reading them (:meth:`read`) is the only host sync."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        dev = torch.device(device)
        self.loss = torch.zeros((), dtype=torch.float64, device=dev)
        self.task = torch.zeros((), dtype=torch.float64, device=dev)
        self.correct = torch.zeros((), dtype=torch.int64, device=dev)
        self.seen = 0
        self.last_loss: torch.Tensor | None = None

    def reset(self) -> None:
        """Zero the sums (in place: a captured step keeps adding to the same tensors)."""
        for t in (self.loss, self.task, self.correct):
            t.zero_()
        self.seen = 0

    def add(self, loss: torch.Tensor, task: torch.Tensor, logits: torch.Tensor | None, labels: torch.Tensor) -> None:
        """Add one step's batch (device ops only; :attr:`seen` is counted by the caller's
        :meth:`count`, since a captured step runs these ops without running this method)."""
        b = labels.shape[0]
        self.loss.add_(loss.detach().double() * b)
        self.task.add_(task.detach().double() * b)
        if logits is not None:
            self.correct.add_((logits.detach().argmax(1) == labels).sum())
        self.last_loss = loss.detach()

    def count(self, images: int) -> None:
        self.seen += images

    def read(self) -> dict[str, float]:
        """``{"loss", "task_loss", "acc"}``: the means so far (one host sync)."""
        loss, task, correct = torch.stack([self.loss, self.task, self.correct.double()]).tolist()
        n = max(1, self.seen)
        return {"loss": loss / n, "task_loss": task / n, "acc": correct / n}


def capture_available(device: torch.device | str) -> bool:
    """Whether a training step on ``device`` can be captured as a CUDA graph (CUDA only)."""
    dev = torch.device(device)
    return dev.type == "cuda" and torch.cuda.is_available()


def make_sgd(
    params: Iterable[nn.Parameter], *, lr: float, momentum: float, weight_decay: float, nesterov: bool = False,
    capture_device: torch.device | str | None = None,
) -> torch.optim.SGD:
    """SGD for :func:`run_steps`. With ``capture_device`` (a CUDA device, for
    :class:`CapturedStep`) the learning rate is a 0-dim tensor on that device and the update
    is the fused kernel: a captured step then reads a learning rate set afresh every step
    (``lr.fill_``) instead of the number frozen into the graph. Otherwise it is PyTorch's
    default SGD (foreach), as before."""
    if capture_device is None:
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    lr_t = torch.tensor(float(lr), device=capture_device)
    return torch.optim.SGD(params, lr=lr_t, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                           fused=True)


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)  # a kernel on the device, no sync; a captured step reads it
        else:
            group["lr"] = lr


def _fix_lr_kind(opt: torch.optim.Optimizer, capture_device: torch.device | None) -> None:
    """After ``load_state_dict``: a tensor learning rate where the step is captured (the one
    tensor the graph reads), a float elsewhere (a state saved by a captured run resumes eagerly)."""
    for group in opt.param_groups:
        value = float(group["lr"])
        group["lr"] = torch.tensor(value, device=capture_device) if capture_device is not None else value


class CapturedStep:
    """The whole training step (forward, loss, backward, optimizer step, the running sums)
    captured once as a CUDA graph and replayed for every later batch of the same shape.

    The first :attr:`WARMUP` calls run eagerly on a side stream (CUDA's recipe: lazy
    initialisation and the allocator settle; they are real training steps), the next one
    captures and replays. The batch is copied into static input tensors; the learning rate
    is the optimizer's tensor (:func:`make_sgd` with ``capture_device``). A batch of another
    shape (the last, smaller one of an epoch without ``drop_last``) is refused (``False``)
    and the caller runs it eagerly. Per-step hooks run eagerly after each replay.
    """

    WARMUP = 3

    def __init__(self, net: nn.Module, opt: torch.optim.Optimizer, step_loss: StepLoss,
                 totals: RunningTotals | None, *, bf16: bool = False) -> None:
        if not all(isinstance(g["lr"], torch.Tensor) and g["lr"].is_cuda for g in opt.param_groups):
            raise ValueError("CapturedStep needs an optimizer with a CUDA tensor learning rate: "
                             "build it with make_sgd(..., capture_device=<cuda device>)")
        self.net, self.opt, self.step_loss, self.totals, self.bf16 = net, opt, step_loss, totals, bf16
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm = 0
        self.static: tuple[torch.Tensor, torch.Tensor] | None = None

    def _body(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            loss, task, logits = self.step_loss(self.net, images, labels)
        loss.backward()
        self.opt.step()
        if self.totals is not None:
            self.totals.add(loss, task, logits, labels)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> bool:
        """Run one training step on this batch; False where its shape is not the captured one."""
        if self.static is None:
            self.static = (images.clone(), labels.clone())
        x, y = self.static
        if images.shape != x.shape or labels.shape != y.shape or images.stride() != x.stride():
            return False
        x.copy_(images, non_blocking=True)
        y.copy_(labels, non_blocking=True)
        if self.graph is None and self.warm < self.WARMUP:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.opt.zero_grad(set_to_none=True)
                self._body(x, y)
            torch.cuda.current_stream().wait_stream(side)
            self.warm += 1
            return True
        if self.graph is None:
            self.opt.zero_grad(set_to_none=True)  # the graph's backward allocates the gradients it writes
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._body(x, y)
            self.graph = graph
        self.graph.replay()
        return True


def run_steps(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    batches: Iterable[Batch],
    *,
    lr_at: Callable[[int], float],
    step_loss: StepLoss,
    first_step: int = 0,
    max_steps: int | None = None,
    device: torch.device | str = "cpu",
    bf16: bool = False,
    captured: CapturedStep | None = None,
    step_hook: StepHook | None = None,
    hook_model: nn.Module | None = None,
    totals: RunningTotals | None = None,
    on_read: Callable[[int, RunningTotals | None], None] | None = None,
    read_every: int = 50,
) -> int:
    """The one training loop: an SGD step per batch of ``batches``; returns the steps taken.

    Per step: the learning rate ``lr_at(step)`` (``step`` counts from ``first_step``), the
    batch moved to ``device`` (a no-op for data already there), ``step_loss`` under bf16
    autocast when ``bf16``, backward, ``opt.step()``, ``step_hook(hook_model or net, step +
    1)``, and the running sums added to ``totals`` on the device. ``captured`` runs the step
    as a CUDA graph instead (batches of its shape). Nothing waits for the device: ``on_read(step,
    totals)`` is called after the first step and then every ``read_every`` steps, where a
    progress bar may read the sums (one sync each time). Stops after ``max_steps`` steps.
    """
    if max_steps is not None and max_steps <= 0:
        return 0
    dev = torch.device(device)
    step = first_step
    for i, (images, labels) in enumerate(batches):
        _set_lr(opt, lr_at(step))
        images, labels = images.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
        if captured is None or not captured(images, labels):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                loss, task, logits = step_loss(net, images, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if totals is not None:
                totals.add(loss, task, logits, labels)
        if totals is not None:
            totals.count(labels.shape[0])
        step += 1
        if step_hook is not None:
            step_hook(hook_model if hook_model is not None else net, step)
        if on_read is not None and i % read_every == 0:
            on_read(step, totals)
        if max_steps is not None and step - first_step >= max_steps:
            break
    return step - first_step


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
    step_hook: StepHook | None = None,
    bf16: bool = False,
    capture: bool = False,
) -> nn.Module:
    """``iterations`` SGD steps on augmented, shuffled batches, lr cosine-decayed to 0
    (:func:`run_steps`).

    ``loss_fn(model, images, labels)`` replaces cross-entropy (e.g. for distillation).
    ``step_hook(model, step)`` runs after every optimiser step (e.g. to re-apply sparsity
    masks or re-project quantised weights, so that they survive fine-tuning). ``bf16``:
    bfloat16 autocast; ``capture``: the step as a CUDA graph (CUDA only; ignored elsewhere).
    """
    if iterations <= 0:
        return model
    guard_strided_pointwise(model)  # a oneDNN crash on some pruned shapes (learners/backend_guards.py)
    capture_device = torch.device(device) if capture and capture_available(device) else None
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_sgd(params, lr=lr, momentum=momentum, weight_decay=weight_decay, capture_device=capture_device)
    if loss_fn is None:
        step_loss = cross_entropy_loss()
    else:
        def step_loss(net: nn.Module, images: torch.Tensor, labels: torch.Tensor):
            loss = loss_fn(net, images, labels)
            return loss, loss, None
    captured = CapturedStep(model, opt, step_loss, None, bf16=bf16) if capture_device is not None else None
    data = on_device(data, device)
    model.train()
    step = 0
    while step < iterations:
        taken = run_steps(
            model, opt, data.batches(batch_size, shuffle=True, augment=True, generator=generator, drop_last=True),
            lr_at=lambda s: lr * 0.5 * (1 + math.cos(math.pi * s / iterations)), step_loss=step_loss,
            first_step=step, max_steps=iterations - step, device=device, bf16=bf16, captured=captured,
            step_hook=step_hook,
        )
        if taken == 0:
            raise ValueError(f"finetune: the data has {len(data)} images, fewer than one batch of {batch_size}")
        step += taken
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
        capture: on CUDA, capture the training step (forward, backward, SGD, running sums)
            once as a CUDA graph and replay it (:class:`CapturedStep`); ignored elsewhere.
            Off by default until measured in the real loop on a GPU (benchmarks/gpu.py):
            the ~4x a throwaway script measured on an H200 is a figure for that script.
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
    capture: bool = False

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
        numbers = [f.name for f in fields(self) if f.name not in ("bf16", "capture")]
        if not all(math.isfinite(float(getattr(self, name))) for name in numbers):
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
    step_hook: StepHook | None = None,
    should_stop: Callable[[], bool] | None = None,
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

    ``step_hook(model, step)`` runs after every optimizer step (``step`` counts from 1 over
    the whole run). ``should_stop()`` is asked after every epoch (its state written): True
    ends the call there, leaving a state a later call resumes from (a watchdog's way out).
    """
    from torch.optim.swa_utils import AveragedModel

    steps_per_epoch = len(train_data) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"the training split has {len(train_data)} images, fewer than one batch of {cfg.batch_size}")
    total_epochs = cfg.epochs + cfg.swa_epochs
    capture_device = torch.device(device) if cfg.capture and capture_available(device) else None
    model.to(device)  # before the optimizer: a fused (captured) SGD needs its parameters on the device
    opt = make_sgd(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                   weight_decay=cfg.weight_decay, capture_device=capture_device)
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
        _fix_lr_kind(opt, capture_device)
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
    train_data = on_device(train_data, device)
    step_loss = cross_entropy_loss(cfg.label_smoothing)
    totals = RunningTotals(device)
    captured = CapturedStep(model, opt, step_loss, totals, bf16=cfg.bf16) if capture_device is not None else None
    for epoch in range(start_epoch, total_epochs):
        model.train()
        t0 = time.time()
        totals.reset()
        bar = _progress(
            train_data.batches(cfg.batch_size, shuffle=True, augment=True, generator=gen, drop_last=True),
            total=steps_per_epoch,
            desc=f"{'swa ' if epoch >= cfg.epochs else ''}epoch {epoch + 1}/{total_epochs}", leave=False,
        )

        def show(step: int, sums: RunningTotals | None, bar=bar) -> None:
            if sums is not None and not bar.disable:
                now = sums.read()
                bar.set_postfix(loss=f"{now['loss']:.3f}", acc=f"{now['acc']:.3f}")

        run_steps(
            model, opt, bar, lr_at=lambda s: _lr_at(cfg, s, steps_per_epoch), step_loss=step_loss,
            first_step=epoch * steps_per_epoch, device=device, bf16=cfg.bf16, captured=captured,
            step_hook=step_hook, totals=totals, on_read=show,
        )
        bar.close()
        sums = totals.read()  # the epoch's one sync
        record = {
            "epoch": epoch + 1, "train_loss": sums["loss"], "train_acc": sums["acc"],
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
        if should_stop is not None and epoch + 1 < total_epochs and should_stop():
            log(f"stopping after epoch {epoch + 1}/{total_epochs} (asked to); the state in {state_path} resumes")
            return history
    if swa is not None:
        recalibrate_batchnorm(swa.module, _swa_bn_batches(train_data, cfg.seed, None), device=device)
        model.load_state_dict(swa.module.state_dict())
        model.eval()
    return history
