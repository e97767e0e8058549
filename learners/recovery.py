"""Fast recovery of a compressed candidate before it is scored: the same for every method.

1. optional fast fine-tuning (``ft_iters`` SGD steps, cosine lr; a per-step hook lets a
   method keep its sparsity masks or fake quantisers intact through the updates),
2. BatchNorm statistics re-estimated on a fixed set of augmented training images (the images
   the base model's own statistics were collected on; the same batches every episode), or,
   for candidates that keep every BatchNorm of the original model (the quantization envs'
   default), the original statistics moved by the shift the compression causes on those
   batches (``bn_mode="shift"``: :func:`shift_batchnorm`),
3. top-1 accuracy on the reward images.

>>> from learners.recovery import RecoveryRecipe, recover
>>> result = recover(model, recipe=RecoveryRecipe(ft_iters=0), train_data=train,
...                  bn_data=bn, eval_data=val, ft_seed=0)              # doctest: +SKIP
>>> result.accuracy, result.timing                                       # doctest: +SKIP

Plain PyTorch: the data are anything with a ``batches(...)`` method
(:class:`learners.training.BatchSource`). Data that can (:func:`learners.batches.on_device`)
is held on the recovery's device, and no phase waits for the device inside its loop: the
fine-tuning runs in :func:`learners.training.run_steps`, the BatchNorm re-estimation only
launches forward passes and the scoring sums its correct predictions on the device.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from learners.batches import on_device
from learners.training import Batch, BatchSource, evaluate, finetune

#: Seed of the augmentation of the BatchNorm re-estimation batches (the same every episode).
BN_SEED = 3
#: How a candidate's BatchNorm statistics are recovered (:class:`RecoveryRecipe`'s ``bn_mode``).
BN_MODES: tuple[str, ...] = ("reestimate", "shift")
#: Bound on the factor by which ``bn_mode="shift"`` may scale a running variance.
MAX_VAR_RATIO = 1e3

#: Running (mean, variance) of every BatchNorm, by module name.
BatchNormStats = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class RecoveryRecipe:
    """How a candidate is recovered; every field decides its score.

    Attributes:
        ft_iters: SGD iterations of fast fine-tuning (0: none, AMC-style).
        ft_batch_size / ft_lr: fine-tuning batch size and initial learning rate (cosine to 0).
        bn_batch_size: images per BatchNorm re-estimation batch (the batches come from
            ``bn_data``, all of it).
        bn_augment: re-estimate on augmented images (random crop + flip, seeded by ``bn_seed``).
        bn_seed: seed of that augmentation.
        bn_mode: ``"reestimate"`` (default): the statistics are re-estimated from scratch on
            the BatchNorm batches. ``"shift"``: the original model's statistics moved by the
            difference the compression makes on those batches (the candidate's estimate
            against the original model's estimate on the same batches; variances as a
            ratio). The sampling error of a few thousand images, common to both estimates,
            cancels: a candidate that changes nothing keeps the original statistics exactly.
            Needs a :class:`BatchNormReference` and a candidate with the original's
            BatchNorm layers (same names and sizes).
        ft_bf16: fine-tune under bfloat16 autocast (BatchNorm and scoring stay fp32).
        ft_capture: on CUDA, capture the fine-tuning step as a CUDA graph
            (:class:`learners.training.CapturedStep`). Off by default, and not measured yet:
            a candidate's shapes change every episode, so each episode pays a new capture
            (3 eager warm-up steps and the capture itself) against ``ft_iters`` replays;
            ``benchmarks/gpu.py`` measures whether that pays on a GPU.
    """

    ft_iters: int = 100
    ft_batch_size: int = 64
    ft_lr: float = 0.01
    bn_batch_size: int = 128
    bn_augment: bool = True
    bn_seed: int = BN_SEED
    bn_mode: str = "reestimate"
    ft_bf16: bool = False
    ft_capture: bool = False

    def __post_init__(self) -> None:
        if self.bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {self.bn_mode!r}")

    def as_dict(self) -> dict[str, object]:
        """The recipe's fields (``bn_mode``, ``ft_bf16`` and ``ft_capture`` only where they are
        not the default, so that recipes recorded before they existed read the same)."""
        d = asdict(self)
        for key, default in (("bn_mode", "reestimate"), ("ft_bf16", False), ("ft_capture", False)):
            if d[key] == default:
                del d[key]
        return d


@dataclass(frozen=True)
class BatchNormReference:
    """The original model's BatchNorm statistics: its own running ones (``original``) and the
    ones re-estimated on the BatchNorm batches (``estimated``); what ``bn_mode="shift"``
    measures a candidate against. Build it once per model and batches with
    :func:`batchnorm_reference`."""

    original: BatchNormStats
    estimated: BatchNormStats

    def to_lists(self) -> dict[str, dict[str, list[list[float]]]]:
        """Plain lists (for a JSON cache); :meth:`from_lists` reads them back."""
        return {which: {k: [m.tolist(), v.tolist()] for k, (m, v) in stats.items()}
                for which, stats in (("original", self.original), ("estimated", self.estimated))}

    @classmethod
    def from_lists(cls, data: dict[str, dict[str, list[list[float]]]]) -> BatchNormReference:
        def read(stats: dict[str, list[list[float]]]) -> BatchNormStats:
            return {k: (torch.tensor(m, dtype=torch.float32), torch.tensor(v, dtype=torch.float32))
                    for k, (m, v) in stats.items()}
        return cls(read(data["original"]), read(data["estimated"]))


def batchnorm_stats(model: nn.Module) -> BatchNormStats:
    """Copies of the running mean and variance of every BatchNorm of ``model``."""
    return {name: (m.running_mean.detach().clone().cpu(), m.running_var.detach().clone().cpu())
            for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None}


def batchnorm_reference(
    model: nn.Module, batches: Iterable[Batch | torch.Tensor], *, device: torch.device | str = "cpu"
) -> BatchNormReference:
    """``model``'s own BatchNorm statistics and those :func:`update_batchnorm` estimates on
    ``batches`` (on a copy: ``model`` is not changed)."""
    import copy

    twin = copy.deepcopy(model).to(device)
    update_batchnorm(twin, batches, device=device)
    return BatchNormReference(batchnorm_stats(model), batchnorm_stats(twin))


@torch.no_grad()
def shift_batchnorm(model: nn.Module, reference: BatchNormReference) -> nn.Module:
    """Replace the freshly re-estimated statistics of ``model`` (a compressed copy of the
    reference model, after :func:`update_batchnorm` on the reference's batches) by the
    reference's original statistics moved by the same change: ``mean = original + (estimate -
    reference estimate)``, ``var = original * (estimate + eps) / (reference estimate + eps)``
    (``eps``: the layer's; a channel dead in both keeps its variance). A channel whose
    variance ratio leaves ``[1/MAX_VAR_RATIO, MAX_VAR_RATIO]`` (the compression changed it
    beyond what a shift describes) keeps the fresh estimate instead.

    Raises:
        ValueError: a BatchNorm of ``model`` that the reference lacks, or of another size
            (a channel-pruned candidate: use ``bn_mode="reestimate"``).
    """
    for name, m in model.named_modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or m.running_mean is None:
            continue
        if name not in reference.original or reference.original[name][0].shape != m.running_mean.shape:
            raise ValueError(
                f"bn_mode='shift': BatchNorm {name!r} of the candidate has no counterpart of the same size in the "
                "original model (channels were removed?); use bn_mode='reestimate' for such candidates")
        mean0, var0 = (t.to(m.running_mean.device) for t in reference.original[name])
        mean_r, var_r = (t.to(m.running_mean.device) for t in reference.estimated[name])
        ratio = (m.running_var + m.eps) / (var_r + m.eps)
        ok = (ratio >= 1 / MAX_VAR_RATIO) & (ratio <= MAX_VAR_RATIO)
        m.running_mean.copy_(torch.where(ok, mean0 + (m.running_mean - mean_r), m.running_mean))
        m.running_var.copy_(torch.where(ok, var0 * ratio, m.running_var))
    return model


@dataclass
class Recovered:
    """The outcome of :func:`recover`: the score and the seconds of each phase."""

    accuracy: float
    timing: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def update_batchnorm(
    model: nn.Module, batches: Iterable[Batch | torch.Tensor], *, device: torch.device | str = "cpu"
) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics as the exact average over ``batches``
    (``torch.optim.swa_utils.update_bn``: statistics reset, cumulative average); returns the
    model in eval mode. Gives the same statistics as
    :func:`learners.training.recalibrate_batchnorm` (tests/test_recovery.py checks it)."""
    from torch.optim.swa_utils import update_bn

    update_bn(((b[0] if isinstance(b, (tuple, list)) else b).to(device, non_blocking=True) for b in batches),
              model)
    return model.eval()


def bn_batches(bn_data: BatchSource, recipe: RecoveryRecipe) -> Iterable[Batch]:
    """The BatchNorm batches of ``recipe`` (the same every call: augmentation seeded by
    ``recipe.bn_seed``); what :func:`batchnorm_reference` must see for ``bn_mode="shift"``."""
    return bn_data.batches(
        recipe.bn_batch_size, augment=recipe.bn_augment, generator=torch.Generator().manual_seed(recipe.bn_seed)
    )


def recover(
    model: nn.Module,
    *,
    recipe: RecoveryRecipe,
    train_data: BatchSource,
    bn_data: BatchSource,
    eval_data: BatchSource,
    ft_seed: int = 0,
    device: torch.device | str = "cpu",
    step_hook: Callable[[nn.Module, int], None] | None = None,
    bn_reference: BatchNormReference | None = None,
) -> Recovered:
    """Fine-tune (``recipe.ft_iters`` steps, batches drawn with ``ft_seed``), re-estimate
    BatchNorm statistics on ``bn_data`` (``recipe.bn_mode="shift"``: then move the original
    statistics of ``bn_reference`` by the change, :func:`shift_batchnorm`), and score on
    ``eval_data``. An empty ``bn_data`` leaves the statistics as they are. ``model`` is
    changed in place, left in eval mode with ``requires_grad`` off.

    Raises:
        ValueError: ``bn_mode="shift"`` and BatchNorm data without ``bn_reference``.
    """
    if recipe.bn_mode == "shift" and bn_reference is None and len(bn_data):
        raise ValueError("recover: bn_mode='shift' needs bn_reference (learners.recovery.batchnorm_reference of the "
                         "original model on the same BatchNorm batches)")
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    if recipe.ft_iters:
        for p in model.parameters():
            p.requires_grad_(True)
        finetune(
            model, train_data, recipe.ft_iters, batch_size=recipe.ft_batch_size, lr=recipe.ft_lr,
            generator=torch.Generator().manual_seed(int(ft_seed)), device=device, step_hook=step_hook,
            bf16=recipe.ft_bf16, capture=recipe.ft_capture,
        )
    timing["finetune_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if len(bn_data):
        update_batchnorm(model, bn_batches(on_device(bn_data, device), recipe), device=device)
        if recipe.bn_mode == "shift":
            shift_batchnorm(model, bn_reference)  # type: ignore[arg-type]
    model.eval()
    timing["bn_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    accuracy = evaluate(model, eval_data, device=device)
    timing["eval_s"] = time.perf_counter() - t0
    for p in model.parameters():
        p.requires_grad_(False)
    return Recovered(accuracy, timing)
