"""The one definition of what training and evaluation read data from.

A :class:`BatchSource` is anything with ``len()`` and a ``batches(...)`` method that yields
``(images, labels)`` pairs; :class:`pf_envs.data.Split` extends it with a name, a class count
and ``subset``. Learners only need this protocol, so they never import the environments.
:func:`on_device` moves a source's images to the training device where the source can.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch

#: ``(images float32 NCHW normalised, labels int64)``.
Batch = tuple[torch.Tensor, torch.Tensor]


class BatchSource(Protocol):
    """Labelled images served as normalised float batches."""

    def __len__(self) -> int: ...

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[Batch]:
        """Yield ``(images float32 NCHW normalised, labels int64)`` batches of ``batch_size``
        (the last one smaller unless ``drop_last``), in a ``generator``-seeded random order
        when ``shuffle``, with training augmentation when ``augment``."""
        ...


def on_device(data: BatchSource, device: torch.device | str) -> BatchSource:
    """``data`` with its images held on ``device``, where it can move there (it has a
    ``to(device)`` method, as :class:`pf_envs.data.TensorSplit` has: then its batches are
    gathered, augmented and normalised on that device, with no host-to-device copy per
    batch); otherwise ``data`` itself (its batches are copied to ``device`` one by one)."""
    move = getattr(data, "to", None)
    return move(device) if callable(move) else data
