"""Fast recovery of a compressed candidate before it is scored: the same for every method.

1. optional fast fine-tuning (``ft_iters`` SGD steps, cosine lr; a per-step hook lets a
   method keep its sparsity masks or fake quantisers intact through the updates),
2. BatchNorm statistics re-estimated on a fixed set of augmented training images (the images
   the base model's own statistics were collected on; the same batches every episode),
3. top-1 accuracy on the reward images.

>>> from learners.recovery import RecoveryRecipe, recover
>>> result = recover(model, recipe=RecoveryRecipe(ft_iters=0), train_data=train,
...                  bn_data=bn, eval_data=val, ft_seed=0)              # doctest: +SKIP
>>> result.accuracy, result.timing                                       # doctest: +SKIP

Plain PyTorch: the data are anything with a ``batches(...)`` method
(:class:`learners.training.BatchSource`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from learners.training import Batch, BatchSource, evaluate, finetune

#: Seed of the augmentation of the BatchNorm re-estimation batches (the same every episode).
BN_SEED = 3


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
    """

    ft_iters: int = 100
    ft_batch_size: int = 64
    ft_lr: float = 0.01
    bn_batch_size: int = 128
    bn_augment: bool = True
    bn_seed: int = BN_SEED

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


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
) -> Recovered:
    """Fine-tune (``recipe.ft_iters`` steps, batches drawn with ``ft_seed``), re-estimate
    BatchNorm statistics on ``bn_data``, and score on ``eval_data``. ``model`` is changed in
    place, left in eval mode with ``requires_grad`` off."""
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    if recipe.ft_iters:
        for p in model.parameters():
            p.requires_grad_(True)
        finetune(
            model, train_data, recipe.ft_iters, batch_size=recipe.ft_batch_size, lr=recipe.ft_lr,
            generator=torch.Generator().manual_seed(int(ft_seed)), device=device, step_hook=step_hook,
        )
    timing["finetune_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    batches = bn_data.batches(
        recipe.bn_batch_size, augment=recipe.bn_augment, generator=torch.Generator().manual_seed(recipe.bn_seed)
    )
    update_batchnorm(model, batches, device=device)
    timing["bn_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    accuracy = evaluate(model, eval_data, device=device)
    timing["eval_s"] = time.perf_counter() - t0
    for p in model.parameters():
        p.requires_grad_(False)
    return Recovered(accuracy, timing)
