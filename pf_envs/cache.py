"""On-disk cache for values that are expensive and deterministic (layer statistics, baseline
accuracies), keyed by a fingerprint of the model's weights and every setting that matters.

Values must be tensors, numbers, strings or containers of them (loaded with
``weights_only=True``, so a cache file never runs code). Every value read back is checked by
the caller's ``decode`` (which turns it into what the caller uses and raises on anything of
another structure); a cache file that cannot be read or does not decode is deleted and
recomputed with a one-line :class:`~pf_envs.data.CacheRebuiltWarning`. Files are written
atomically (a reader never sees half of one).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from learners.atomic import atomic_torch_save
from learners.safe_load import TensorFileError, load_tensor_file
from pf_envs.data import CacheRebuiltWarning, cache_dir

T = TypeVar("T")
V = TypeVar("V")

#: What a ``decode`` may raise on a value of another structure: the cache file is rebuilt.
DECODE_ERRORS = (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError)


def decode_fraction(value: Any) -> float:
    """A cached accuracy: a real number in [0, 1] (anything else raises ``TypeError`` /
    ``ValueError``, so :func:`cached` recomputes it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected an accuracy (a number in [0, 1]), found {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"expected an accuracy in [0, 1], found {value!r}")
    return float(value)


def decode_names(value: Any, names: Sequence[str]) -> dict[str, Any]:
    """A cached dict that must hold exactly the keys ``names`` (layer names, say)."""
    if not isinstance(value, dict):
        raise TypeError(f"expected a dict of {len(names)} entries, found {type(value).__name__}")
    if set(value) != set(names):
        raise KeyError(f"expected the entries {sorted(names)[:6]}..., found {sorted(map(str, value))[:6]}...")
    return value


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


def cached(
    key: str,
    compute: Callable[[], T],
    enabled: bool = True,
    subdir: str = "envs",
    *,
    decode: Callable[[Any], V] | None = None,
) -> V:
    """``decode(compute())``, with ``compute()`` memoised in ``<cache_dir>/<subdir>/<key>.pt``
    when ``enabled``.

    ``decode`` (default: the value as it is) turns the stored value into what the caller
    uses and is its structure check: it must raise one of :data:`DECODE_ERRORS` on a value
    of another structure (a dict where a number belongs, missing keys, a wrong length). A
    file that cannot be read, or whose value ``decode`` refuses, is deleted and recomputed
    with a one-line :class:`~pf_envs.data.CacheRebuiltWarning` naming it and why.
    """
    decode_ = decode if decode is not None else (lambda value: value)
    if not enabled:
        return decode_(compute())
    path = Path(cache_dir()) / subdir / f"{key}.pt"
    if path.is_file():
        try:
            return decode_(load_tensor_file(path))
        except TensorFileError as exc:  # corrupt, truncated or refused
            problem = f"cannot be read ({exc.reason})"
        except OSError as exc:
            problem = f"cannot be read ({exc.strerror or exc})"
        except DECODE_ERRORS as exc:
            problem = f"holds a value of another structure ({type(exc).__name__}: {exc})"
        warnings.warn(f"the cache file {path} {problem}; recomputing it", CacheRebuiltWarning, stacklevel=2)
        path.unlink(missing_ok=True)
    value = compute()
    # fsync is skipped: a cache file torn by a crash fails to load and is recomputed
    atomic_torch_save(value, path, fsync=False)
    return decode_(value)
