"""On-disk cache for values that are expensive and deterministic (layer statistics, baseline
accuracies), keyed by a fingerprint of the model's weights and every setting that matters.

Values must be tensors, numbers, strings or containers of them (loaded with
``weights_only=True``, so a cache file never runs code). A cache file that cannot be read
is deleted and recomputed; files are written atomically (a reader never sees half of one).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from learners.atomic import atomic_torch_save
from learners.safe_load import TensorFileError, load_tensor_file
from pf_envs.data import cache_dir

T = TypeVar("T")


def model_fingerprint(model: nn.Module) -> str:
    """SHA-1 of the architecture's parameter names/shapes and every weight and buffer."""
    h = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:20]


def cache_key(kind: str, **parts: Any) -> str:
    """A file-name-safe key from a kind and JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha1(blob.encode()).hexdigest()[:20]}"


def cached(key: str, compute: Callable[[], T], enabled: bool = True, subdir: str = "envs") -> T:
    """``compute()``, memoised in ``<cache_dir>/<subdir>/<key>.pt`` when ``enabled``."""
    if not enabled:
        return compute()
    path = Path(cache_dir()) / subdir / f"{key}.pt"
    if path.is_file():
        try:
            return load_tensor_file(path)
        except (TensorFileError, OSError):  # corrupt, truncated, refused or unreadable
            path.unlink(missing_ok=True)
    value = compute()
    # fsync is skipped: a cache file torn by a crash fails to load and is recomputed
    atomic_torch_save(value, path, fsync=False)
    return value
