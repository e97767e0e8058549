"""Load tensor files without ever running code from them.

Every file the project reads back with :func:`torch.load` (checkpoints, training states,
caches) goes through :func:`load_tensor_file`: ``weights_only=True``, so only tensors,
numbers, strings and containers of them come back, and a file holding any other pickled
object is refused before that object is built. Its failures are re-raised as
:class:`TensorFileError` with one plain reason and without PyTorch's advice to retry with
``weights_only=False`` (which would run whatever code the file holds).
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch


class TensorFileError(ValueError):
    """A tensor file could not be loaded safely. ``path`` is the file, ``reason`` one clause
    saying what is wrong with it (no advice; the caller adds what to do)."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def failure_reason(exc: BaseException) -> str:
    """What a :func:`torch.load` failure with ``weights_only=True`` says about the file, as
    one clause, never repeating PyTorch's suggestion to load it with ``weights_only=False``."""
    text = str(exc)
    blocked = re.search(r"GLOBAL ([\w.]+)", text)
    if blocked:
        return (
            f"it holds a pickled Python object ({blocked.group(1)}) besides tensors and numbers; "
            "loading such a file can run code, so it is refused"
        )
    if isinstance(exc, EOFError):
        return "it is empty or truncated"
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        return "it is truncated, corrupt or not a file of tensors written by torch.save"
    if "zip archive" in text or "PytorchStreamReader" in text:
        return "it is truncated or corrupt (an incomplete PyTorch zip archive)"
    return f"it is truncated or corrupt ({type(exc).__name__})"


def load_tensor_file(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``.

    Raises:
        FileNotFoundError / PermissionError: the file is missing or unreadable (as raised).
        TensorFileError: the file is corrupt, truncated, or holds pickled objects other than
            tensors, numbers, strings and containers of them (refused before any is built).
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - every other failure is the file's content
        # ``from None``: the chained original would print PyTorch's weights_only=False advice
        raise TensorFileError(path, failure_reason(exc)) from None
