"""The one definition of what training and evaluation read data from.

A :class:`BatchSource` is anything with ``len()`` and a ``batches(...)`` method that yields
``(images, labels)`` pairs; :class:`pf_envs.data.Split` extends it with a name, a class count
and ``subset``. Learners only need this protocol, so they never import the environments.
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
