"""Datasets: CIFAR-10 (torchvision format or an ImageFolder tree) and ImageNet (ImageFolder).

Every dataset comes as a :class:`DatasetBundle` with three splits:

- ``train``: what models and fine-tuning train on (CIFAR-10: 45,000 images),
- ``val``: held out from the training set, class-balanced, fixed seed; rewards are measured
  here, as PocketFlow did (CIFAR-10: 5,000 images; ImageNet: 10 per class),
- ``test``: the official test/validation set, for final reports only.

Where the data lives (first that is set wins): the ``data_root`` argument, the
``PF_DATA_DIR`` environment variable, ``~/.cache/pocketflow-gym/data``. Decoded CIFAR-10
images are cached as uint8 tensors under ``PF_CACHE_DIR`` (default
``~/.cache/pocketflow-gym``), so every load after the first takes 1-2 s (no decoding).

The cache is keyed by the data files themselves: the relative name, size and modification
time (ns) of every image file of an ImageFolder tree (or of torchvision's batch files), so
adding, removing, replacing or touching an image rebuilds it. Walking the 60,000 files of
CIFAR-10's JPEG tree for that key takes 0.5-1 s on two cores (more when they are busy).
:func:`load_dataset` shares a bundle within a process and checks the same key on every
call, so it never hands back a bundle older than the files.

A cache file proves its content before it is used: its tensors' dtypes and shapes, the
image counts and labels of the scanned files (ImageFolder layout) and a SHA-1 of the tensors
written beside them (SHA-1 of CIFAR-10's 184 MB: 0.1 s on an idle core; load_cifar10 took
1.3 s before the check and 2.2 s with it on two busy cores); one that fails is rebuilt with a one-line
:class:`CacheRebuiltWarning` that names it and why.

Nothing read here runs code: torchvision's CIFAR-10 batch files are pickles (that is the
official format) and are read with an unpickler that only builds numpy arrays, strings,
numbers and containers (:func:`_read_pickled_batch`); caches are loaded with
``weights_only=True``. Every bad input raises a :class:`DataError` whose message names the
file or folder, says what is wrong and what to do.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import pickle
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from learners.atomic import atomic_torch_save
from learners.batches import Batch, BatchSource
from learners.safe_load import TensorFileError, load_tensor_file

DATA_ENV_VAR = "PF_DATA_DIR"
CACHE_ENV_VAR = "PF_CACHE_DIR"
DATASETS: tuple[str, ...] = ("cifar10", "imagenet")

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG")

__all__ = [
    "Batch", "BatchSource", "CacheRebuiltWarning", "CorruptDataError", "DataError", "DataNotFoundError",
    "DataPermissionError", "DatasetBundle", "FolderSplit", "Split", "TensorSplit",
    "balanced_holdout", "cache_dir", "clear_dataset_cache", "crop_flip", "load_cifar10", "load_dataset",
    "load_imagenet", "resolve_data_root",
]


class DataError(Exception):
    """Base of every data error; the message names the file or folder and what to do."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The dataset (or a part of it) is not where the project looked for it."""


class CorruptDataError(DataError, ValueError):
    """A data file is there but cannot be decoded or does not hold what its format promises."""


class DataPermissionError(DataError, PermissionError):
    """A data folder or file exists but this process may not read it."""


def cache_dir() -> Path:
    """Folder for derived caches (decoded tensors, layer features, baseline accuracies)."""
    path = Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "pocketflow-gym")
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(
            f"the cache folder {path} (${CACHE_ENV_VAR} or the default) is a file; point "
            f"{CACHE_ENV_VAR} at a folder, or move the file away"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_data_root(data_root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``data_root``, else ``$PF_DATA_DIR``, else ``~/.cache/pocketflow-gym/data``."""
    if data_root is not None:
        return Path(data_root).expanduser()
    if os.environ.get(DATA_ENV_VAR):
        return Path(os.environ[DATA_ENV_VAR]).expanduser()
    return Path.home() / ".cache" / "pocketflow-gym" / "data"


def _check_data_root(root: Path, data_root: str | os.PathLike[str] | None) -> None:
    """Refuse a data root that is a file or cannot be listed, saying where it came from."""
    origin = (
        "the data_root argument" if data_root is not None
        else f"${DATA_ENV_VAR}" if os.environ.get(DATA_ENV_VAR) else "the default data folder"
    )
    if root.exists() and not root.is_dir():
        raise DataNotFoundError(
            f"the data root {root} (from {origin}) is a file, not a folder; point {origin} at "
            "the folder that holds the datasets"
        )
    if root.is_dir():
        try:
            with os.scandir(root):
                pass
        except PermissionError as exc:
            raise DataPermissionError(
                f"cannot read the data root {root} (from {origin}): permission denied; give this "
                f"user read access (chmod -R u+rX {root}) or point {origin} at a readable copy"
            ) from exc


class Split(BatchSource, Protocol):
    """A split of a dataset: labelled images served as normalised float batches
    (:class:`learners.batches.BatchSource`), with a name, a class count and subsets."""

    name: str
    num_classes: int

    def subset(self, n: int, seed: int = 0) -> Split:
        """A fixed random subset of ``n`` images (all of them if ``n >= len(self)``)."""
        ...


def crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """The CIFAR augmentation of a whole batch at once, on the images' device.

    Image ``i`` is padded by ``pad`` zero pixels on every side, cropped back to its size at
    row/column offset ``offsets[i]`` (in ``[0, 2 * pad]``) and mirrored left-right where
    ``flips[i]``. One pad and one :func:`torch.gather` with per-image pixel indices (a flip
    reverses the column index with :func:`torch.where`): no per-image loop. On one CPU thread
    a batch of 128 CIFAR images takes 1.4 ms (3.8 ms with the former per-image loop; 8.9 ms
    with 4-tensor advanced indexing).

    Args:
        images: N x C x H x W (any dtype).
        offsets: N x 2 integer (row, column) crop offsets.
        flips: N booleans.
    """
    n, c, h, w = images.shape
    dev = images.device
    offsets, flips = offsets.to(dev, non_blocking=True), flips.to(dev, non_blocking=True)
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    height, width = h + 2 * pad, w + 2 * pad
    ar_h, ar_w = torch.arange(h, device=dev), torch.arange(w, device=dev)
    rows = offsets[:, :1] + ar_h  # N x H
    cols = offsets[:, 1:] + torch.where(flips[:, None], (w - 1) - ar_w, ar_w)  # N x W
    pixel = (rows[:, :, None] * width + cols[:, None, :]).view(n, 1, h * w)
    out = torch.gather(padded.reshape(n, c, height * width), 2, pixel.expand(n, c, h * w))
    return out.view(n, c, h, w)


def _same_device(actual: torch.device, wanted: torch.device) -> bool:
    return actual.type == wanted.type and (wanted.index is None or actual.index in (None, wanted.index))


@dataclass
class TensorSplit:
    """A split held in memory as uint8 images; augmentation runs on whole batches.

    Augmentation is the CIFAR standard: random crop of the image padded by 4 pixels (zeros)
    and a random horizontal flip (:func:`crop_flip`, the whole batch at once).

    The images live on one device; :meth:`to` gives the split on another (made once per
    device and kept), so that training on a GPU gathers, augments and normalises its
    batches there. The random draws (shuffle, crop offsets, flips) always come from the
    caller's generator (a CPU one), so a seed draws the same batches on every device.
    """

    name: str
    images: torch.Tensor  # uint8, N x 3 x H x W
    labels: torch.Tensor  # int64, N
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int = 10
    _mean: torch.Tensor = field(init=False, repr=False)
    _std: torch.Tensor = field(init=False, repr=False)
    _copies: dict[str, TensorSplit] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError("TensorSplit.images must be a uint8 tensor of shape N x 3 x H x W")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        if self.labels.device != self.images.device:
            raise ValueError(
                f"images on {self.images.device} but labels on {self.labels.device}: put both on one device")
        dev = self.images.device
        self._mean = (torch.tensor(self.mean).view(1, 3, 1, 1) * 255).to(dev)
        self._std = (torch.tensor(self.std).view(1, 3, 1, 1) * 255).to(dev)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        """Where the images are held (and batches are built)."""
        return self.images.device

    def to(self, device: torch.device | str) -> TensorSplit:
        """This split with its images and labels on ``device`` (itself if they are there
        already). The copy is made once per device and kept with this split."""
        dev = torch.device(device)
        if _same_device(self.images.device, dev):
            return self
        key = str(dev)
        if key not in self._copies:
            self._copies[key] = TensorSplit(self.name, self.images.to(dev), self.labels.to(dev), self.mean,
                                            self.std, self.num_classes)
        return self._copies[key]

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW -> float32 normalised, channels-last (faster convolutions on CPU and GPU)."""
        out = (images.float() - self._mean) / self._std
        return out.contiguous(memory_format=torch.channels_last)

    def augment(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Random crop (pad 4) and flip of a batch, drawn from ``generator``: per image one
        (row, column) offset uniform in 0..8 and a flip with probability 1/2."""
        n = len(images)
        offsets = torch.randint(0, 9, (n, 2), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5
        return crop_flip(images, offsets, flips, pad=4)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[Batch]:
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order = order.to(self.device, non_blocking=True)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            images = self.images[idx]
            if augment:
                images = self.augment(images, generator)
            yield self.normalise(images), self.labels[idx]

    def select(self, indices: Sequence[int], name: str | None = None) -> TensorSplit:
        """The images at ``indices``, in that order (a process's share of an epoch in
        distributed re-training)."""
        idx = torch.as_tensor(list(indices), dtype=torch.long).to(self.device)
        return TensorSplit(name or f"{self.name}[selected {len(idx)}]", self.images[idx], self.labels[idx],
                           self.mean, self.std, self.num_classes)

    def subset(self, n: int, seed: int = 0) -> TensorSplit:
        if n >= len(self):
            return self
        idx = torch.from_numpy(np.random.RandomState(seed).permutation(len(self))[:n])
        idx = idx.sort().values.to(self.device)
        return TensorSplit(
            f"{self.name}[{n}]", self.images[idx], self.labels[idx], self.mean, self.std,
            self.num_classes,
        )


def _open_rgb(path: str, split: str) -> Image.Image:
    """Decode one image file as RGB, or raise a :class:`DataError` that names it and its split."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except PermissionError as exc:
        raise DataPermissionError(
            f"cannot read {path} ({split} split): permission denied; give this user read "
            "access to the data tree (chmod -R u+rX <data root>)"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, ValueError, SyntaxError, ...
        raise CorruptDataError(
            f"cannot decode the image {path} ({split} split): {type(exc).__name__}: {exc}. "
            "The file is truncated or not an image: delete it or replace it with a good copy "
            "(e.g. unpack the dataset again)"
        ) from exc


class _FolderDataset(torch.utils.data.Dataset):
    def __init__(self, samples: Sequence[tuple[str, int]], transform, split: str) -> None:
        self.samples = samples
        self.transform = transform
        self.split = split

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Batch:
        path, label = self.samples[i]
        return self.transform(_open_rgb(path, self.split)), label


@dataclass
class FolderSplit:
    """A split read from image files on demand (ImageNet), with the standard 224 pipeline.

    Training augmentation: RandomResizedCrop(224) + horizontal flip; evaluation: resize to
    256, centre crop 224. Loading runs in ``num_workers`` processes (default: every core).
    """

    name: str
    samples: list[tuple[str, int]]
    num_classes: int
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_workers: int = field(default_factory=lambda: os.cpu_count() or 1)

    def __len__(self) -> int:
        return len(self.samples)

    def _transform(self, augment: bool):
        from torchvision import transforms as T

        norm = [T.ToTensor(), T.Normalize(self.mean, self.std)]
        if augment:
            return T.Compose([T.RandomResizedCrop(self.input_size), T.RandomHorizontalFlip()] + norm)
        resize = int(round(self.input_size * 256 / 224))
        return T.Compose([T.Resize(resize), T.CenterCrop(self.input_size)] + norm)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[Batch]:
        dataset = _FolderDataset(self.samples, self._transform(augment), self.name)
        workers = min(self.num_workers, max(1, len(self) // batch_size))
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
            drop_last=drop_last, num_workers=workers if len(self) > batch_size else 0,
            persistent_workers=False,
        )
        for images, labels in loader:
            yield images.contiguous(memory_format=torch.channels_last), labels

    def select(self, indices: Sequence[int], name: str | None = None) -> FolderSplit:
        """The images at ``indices``, in that order (a process's share of an epoch in
        distributed re-training)."""
        idx = list(indices)
        return FolderSplit(name or f"{self.name}[selected {len(idx)}]", [self.samples[i] for i in idx],
                           self.num_classes, self.input_size, self.mean, self.std, self.num_workers)

    def subset(self, n: int, seed: int = 0) -> FolderSplit:
        if n >= len(self):
            return self
        idx = sorted(np.random.RandomState(seed).permutation(len(self))[:n].tolist())
        return FolderSplit(
            f"{self.name}[{n}]", [self.samples[i] for i in idx], self.num_classes,
            self.input_size, self.mean, self.std, self.num_workers,
        )


@dataclass
class DatasetBundle:
    """The three splits of a dataset plus what models need to know about it."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_size: int
    source: str

    def split(self, name: str) -> Split:
        """Split by name: ``train``, ``val`` or ``test``."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; choose one of 'train', 'val', 'test'")
        return getattr(self, name)


def balanced_holdout(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Boolean mask choosing ``per_class`` items of every class (at most half of a class, so
    that tiny datasets keep training images), reproducibly."""
    rng = np.random.RandomState(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        mask[rng.permutation(idx)[: min(per_class, len(idx) // 2)]] = True
    return mask


# ----------------------------------------------------------------------------- CIFAR-10


CIFAR10_BATCH_FILES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_REDOWNLOAD = (
    "download CIFAR-10 again (torchvision's cifar-10-python.tar.gz) or delete the folder so "
    "that the loader downloads it"
)


def _find_cifar10(root: Path) -> tuple[str, Path] | None:
    for base in (root, root / "cifar10", root / "cifar-10", root / "CIFAR10"):
        if (base / "cifar-10-batches-py" / "data_batch_1").is_file():
            return "torchvision", base / "cifar-10-batches-py"
        if (base / "data_batch_1").is_file() and (base / "test_batch").is_file():
            return "torchvision", base
        if (base / "train").is_dir() and (base / "test").is_dir():
            return "imagefolder", base
    return None


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays, nothing else.

    The globals a numpy array pickle needs (with any protocol, numpy 1 or 2 module paths) are
    the only ones resolved; any other (``os.system``, a class with ``__reduce__``) raises
    :class:`pickle.UnpicklingError` before it is called."""

    ALLOWED: frozenset[tuple[str, str]] = frozenset(
        [(f"numpy.{core}.multiarray", name) for core in ("core", "_core") for name in ("_reconstruct", "scalar")]
        + [(f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")]
        + [("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")]
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"it asks to build {module}.{name}, which a CIFAR-10 batch file never holds "
                "(only numpy arrays, lists and strings); it was refused and not run"
            )
        if module.startswith("numpy.core.") and hasattr(np, "_core"):  # numpy 2 moved numpy.core
            module = "numpy._core." + module[len("numpy.core."):]
        return getattr(importlib.import_module(module), name)


def _read_pickled_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8, N x 3 x 32 x 32) and labels (int64) of one torchvision CIFAR batch file.

    These files are pickles (the official format); :class:`_ArrayUnpickler` reads them
    without running anything but numpy's array reconstruction."""
    try:
        entry = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except FileNotFoundError as exc:
        raise DataNotFoundError(
            f"the CIFAR-10 batch file {path} is missing (a torchvision CIFAR-10 folder holds "
            f"{', '.join(CIFAR10_BATCH_FILES)}); {_REDOWNLOAD}"
        ) from exc
    except PermissionError as exc:
        raise DataPermissionError(
            f"cannot read the CIFAR-10 batch file {path}: permission denied; give this user read access"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is the file's content
        reason = str(exc) if isinstance(exc, pickle.UnpicklingError) and "refused" in str(exc) else (
            f"it is truncated or not a CIFAR-10 batch pickle ({type(exc).__name__}: {exc})"
        )
        raise CorruptDataError(f"cannot read the CIFAR-10 batch file {path}: {reason}; {_REDOWNLOAD}") from None
    if isinstance(entry, dict):  # files pickled by Python 3 with bytes keys
        entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    data = entry.get("data") if isinstance(entry, dict) else None
    labels = entry.get("labels", entry.get("fine_labels")) if isinstance(entry, dict) else None
    try:
        images = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
        label_array = np.asarray(labels, dtype=np.int64).reshape(-1)
        ok = data is not None and labels is not None and len(images) == len(label_array) > 0
        ok = ok and bool(((label_array >= 0) & (label_array < 10)).all())
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise CorruptDataError(
            f"the CIFAR-10 batch file {path} does not hold what the format promises (a dict with "
            f"'data': N x 3072 uint8 and 'labels': N labels in 0..9); {_REDOWNLOAD}"
        )
    return images, label_array


def _read_cifar_batches(folder: Path) -> tuple[dict[str, np.ndarray], ...]:
    def read(files: Sequence[str]) -> dict[str, np.ndarray]:
        parts = [_read_pickled_batch(folder / name) for name in files]
        return {"images": np.concatenate([p[0] for p in parts]), "labels": np.concatenate([p[1] for p in parts])}

    return read(CIFAR10_BATCH_FILES[:5]), read(CIFAR10_BATCH_FILES[5:])


def _is_image(name: str) -> bool:
    return name.endswith(IMG_EXTENSIONS) or name.lower().endswith(IMG_EXTENSIONS)


@dataclass
class _ScannedFolder:
    """The image files of one ImageFolder split: ``(path, label)`` samples in sorted order and
    a stamp line per file (``relative name, size, mtime_ns``) when scanned with stats."""

    samples: list[tuple[str, int]]
    stamps: list[str]


def _scan_image_folder(
    folder: Path, split: str, classes: Sequence[str] | None = None, *, with_stats: bool = False
) -> _ScannedFolder:
    """List the images of ``folder/<class>/`` with ``os.scandir`` (one pass, sorted by name).

    Raises a :class:`DataError` for a missing, unreadable or empty class folder."""
    try:
        if classes is None:
            with os.scandir(folder) as it:
                classes = sorted(e.name for e in it if e.is_dir())
        samples: list[tuple[str, int]] = []
        stamps: list[str] = []
        for label, cls in enumerate(classes):
            cdir = folder / cls
            if not cdir.is_dir():
                with os.scandir(folder) as it:
                    there = sorted(e.name for e in it if e.is_dir())
                raise DataNotFoundError(
                    f"{folder} ({split} split) has no class folder {cls!r}: it needs one folder per "
                    f"class, {list(classes)[:12]}{' ...' if len(classes) > 12 else ''} (found "
                    f"{there[:12]}{' ...' if len(there) > 12 else ''}); create or rename it"
                )
            with os.scandir(cdir) as it:
                entries = sorted((e for e in it if _is_image(e.name) and e.is_file()), key=lambda e: e.name)
            if not entries:
                raise DataNotFoundError(
                    f"the class folder {cdir} ({split} split) holds no images ({', '.join(IMG_EXTENSIONS)}); "
                    "put that class's images there (or, for a dataset without fixed classes, remove the folder)"
                )
            for e in entries:
                samples.append((e.path, label))
                if with_stats:
                    st = e.stat()
                    stamps.append(f"{cls}/{e.name}\0{st.st_size}\0{st.st_mtime_ns}")
    except PermissionError as exc:
        raise DataPermissionError(
            f"cannot list {exc.filename or folder} ({split} split): permission denied; give this "
            f"user read access (chmod -R u+rX {folder})"
        ) from exc
    return _ScannedFolder(samples, stamps)


def _decode(samples: list[tuple[str, int]], size: int, split: str) -> dict[str, np.ndarray]:
    def load(path: str) -> np.ndarray:
        img = _open_rgb(path, split)
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)

    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    try:
        images = list(pool.map(load, [p for p, _ in samples]))
    finally:  # on a bad file, stop at once instead of decoding the rest first
        pool.shutdown(wait=True, cancel_futures=True)
    return {"images": np.stack(images), "labels": np.asarray([y for _, y in samples], np.int64)}


@dataclass
class _Cifar10Files:
    """A found CIFAR-10 copy and the key of its files (see :func:`_scan_cifar10`)."""

    layout: str
    folder: Path
    key: str
    splits: dict[str, list[tuple[str, int]]] | None  # ImageFolder samples by split


def _scan_cifar10(found: tuple[str, Path]) -> _Cifar10Files:
    """Key the data by its files: relative name, size and mtime_ns of every image file of an
    ImageFolder tree (``train/`` and ``test/``), or of the six torchvision batch files. Any
    file added, removed, replaced or touched changes the key (the top folder's mtime does
    not matter). 0.5-1 s for the 60,000 JPEGs of CIFAR-10 on two cores."""
    layout, folder = found
    lines = [layout, str(folder.resolve())]
    splits = None
    if layout == "torchvision":
        for name in CIFAR10_BATCH_FILES:
            try:
                st = (folder / name).stat()
            except FileNotFoundError as exc:
                raise DataNotFoundError(
                    f"the CIFAR-10 batch file {folder / name} is missing (a torchvision CIFAR-10 "
                    f"folder holds {', '.join(CIFAR10_BATCH_FILES)}); {_REDOWNLOAD}"
                ) from exc
            lines.append(f"{name}\0{st.st_size}\0{st.st_mtime_ns}")
    else:
        splits = {}
        for split in ("train", "test"):
            scanned = _scan_image_folder(folder / split, split, CIFAR10_CLASSES, with_stats=True)
            splits[split] = scanned.samples
            lines.append(f"[{split}]")
            lines.extend(scanned.stamps)
    key = hashlib.sha1("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()
    return _Cifar10Files(layout, folder, key, splits)


#: Version of the decoded-image cache file: ``{"format", "train", "test", "digest"}`` (1: no
#: format or digest, rebuilt once on first use).
CIFAR10_CACHE_FORMAT = 2


class CacheRebuiltWarning(UserWarning):
    """A cache file failed its check (unreadable, another structure, counts, shapes or digest
    that do not match) and is being rebuilt; the one-line message names the file and why."""


def tensor_digest(parts: dict[str, dict[str, torch.Tensor]]) -> str:
    """SHA-1 of every tensor's name, dtype, shape and bytes (CIFAR-10's 184 MB: 0.1 s on an idle core)."""
    h = hashlib.sha1()
    for split in sorted(parts):
        for name in sorted(parts[split]):
            t = parts[split][name].contiguous()
            h.update(f"{split}/{name}/{t.dtype}/{tuple(t.shape)}\n".encode())
            h.update(t.numpy().reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def _cifar10_cache_problem(cached: Any, files: _Cifar10Files) -> str | None:
    """What is wrong with a loaded decoded-image cache (None: it proves its content): its
    format, the structure, dtypes and shapes of its tensors, the image counts and labels of
    the scanned files (ImageFolder layout), and the digest written beside the tensors."""
    if not isinstance(cached, dict) or cached.get("format") != CIFAR10_CACHE_FORMAT:
        return f"is not in format {CIFAR10_CACHE_FORMAT} (tensors with their digest)"
    for split in ("train", "test"):
        part = cached.get(split)
        if not isinstance(part, dict) or set(part) != {"images", "labels"} or not all(
            isinstance(v, torch.Tensor) for v in part.values()
        ):
            return f"does not hold {split} images and labels"
        images, labels = part["images"], part["labels"]
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (3, 32, 32):
            return f"holds {split} images of {images.dtype} {tuple(images.shape)}, not N x 3 x 32 x 32 uint8"
        if labels.dtype != torch.int64 or labels.shape != (len(images),):
            return f"holds {len(images)} {split} images but {tuple(labels.shape)} labels"
        if files.splits is not None:
            scanned = files.splits[split]
            if len(images) != len(scanned):
                return f"holds {len(images)} {split} images where the data has {len(scanned)}"
            if labels.tolist() != [y for _, y in scanned]:
                return f"holds {split} labels other than the data's"
    if cached.get("digest") != tensor_digest({"train": cached["train"], "test": cached["test"]}):
        return "does not match the digest written beside its tensors (they were changed or cut short)"
    return None


def _cifar10_tensors(files: _Cifar10Files) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Decoded train/test tensors, from the cache file of ``files.key`` or decoded (and cached).

    A cache file is used only when it proves its content (:func:`_cifar10_cache_problem`);
    one that does not is rebuilt with a one-line :class:`CacheRebuiltWarning`."""
    folder_name = f"{files.layout}|{files.folder.resolve()}".encode("utf-8", "surrogateescape")
    folder_id = hashlib.sha1(folder_name).hexdigest()[:8]
    # the format is in the name: a version without digests (which names its file without it)
    # sharing the cache folder neither reads this file nor rewrites it, so the two never
    # rebuild each other's cache
    cache_file = cache_dir() / f"cifar10-{files.layout}-{folder_id}-{files.key[:16]}.v{CIFAR10_CACHE_FORMAT}.pt"
    if cache_file.is_file():
        try:
            cached = load_tensor_file(cache_file)
            problem = _cifar10_cache_problem(cached, files)
        except TensorFileError as exc:
            problem = f"cannot be read ({exc.reason})"
        except OSError as exc:
            problem = f"cannot be read ({exc.strerror or exc})"
        if problem is None:
            return cached["train"], cached["test"]
        import warnings

        warnings.warn(f"the decoded-image cache {cache_file} {problem}; rebuilding it from {files.folder}",
                      CacheRebuiltWarning, stacklevel=4)
        cache_file.unlink(missing_ok=True)
    if files.layout == "torchvision":
        train, test = _read_cifar_batches(files.folder)
    else:
        assert files.splits is not None
        train = _decode(files.splits["train"], 32, "train")
        test = _decode(files.splits["test"], 32, "test")
    tensors = tuple({k: torch.from_numpy(v) for k, v in part.items()} for part in (train, test))
    # fsync is skipped: a cache torn by a crash fails to load and is rebuilt
    parts = {"train": tensors[0], "test": tensors[1]}
    atomic_torch_save({"format": CIFAR10_CACHE_FORMAT, **parts, "digest": tensor_digest(parts)}, cache_file,
                      fsync=False)
    # caches of earlier versions of the same files, and those named by the old key (the top
    # folder's mtime: cifar10-<layout>-<16 hex>.pt), are never read again; the file of these
    # very files in the format before digests is left to the version that reads it, and a
    # writer's temporary file (``.tmp<pid>`` in its name) is left alone
    stale = re.compile(rf"cifar10-{files.layout}-(?:{folder_id}-)?[0-9a-f]{{16}}(?:\.v\d+)?\.pt")
    for old in cache_file.parent.glob(f"cifar10-{files.layout}-*.pt"):
        if old != cache_file and stale.fullmatch(old.name) and files.key[:16] not in old.name:
            old.unlink(missing_ok=True)
    return tensors[0], tensors[1]


def _download_cifar10(root: Path) -> tuple[str, Path] | None:
    try:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=True, download=True)
        CIFAR10(str(root), train=False, download=True)
    except Exception:
        return None
    return _find_cifar10(root)


def _locate_cifar10(root: Path, data_root: str | os.PathLike[str] | None, download: bool) -> tuple[str, Path]:
    _check_data_root(root, data_root)
    found = _find_cifar10(root) or (_download_cifar10(root) if download else None)
    if found is None:
        looked = ", ".join(str(p) for p in (root, root / "cifar10"))
        raise DataNotFoundError(
            f"CIFAR-10 not found: looked in {looked} for 'cifar-10-batches-py/' (torchvision) "
            f"or 'train/<class>/' + 'test/<class>/' (ImageFolder), and the download "
            f"{'failed (no network?)' if download else 'was disabled'}. Put the data there, "
            f"or pass data_root=... / set {DATA_ENV_VAR} to the folder that holds it."
        )
    return found


def _cifar10_bundle(files: _Cifar10Files, val_per_class: int) -> DatasetBundle:
    train, test = _cifar10_tensors(files)
    holdout = torch.from_numpy(balanced_holdout(train["labels"].numpy(), val_per_class, seed=0))
    common = dict(mean=CIFAR10_MEAN, std=CIFAR10_STD, num_classes=10)
    return DatasetBundle(
        name="cifar10",
        train=TensorSplit("train", train["images"][~holdout], train["labels"][~holdout], **common),
        val=TensorSplit("val", train["images"][holdout], train["labels"][holdout], **common),
        test=TensorSplit("test", test["images"], test["labels"], **common),
        num_classes=10,
        input_size=32,
        source=f"{files.layout}:{files.folder}",
    )


def load_cifar10(
    data_root: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    val_per_class: int = 500,
) -> DatasetBundle:
    """CIFAR-10 with ``train`` (45,000), ``val`` (5,000, balanced, seed 0) and ``test`` (10,000).

    Looks under the data root (and its ``cifar10/`` sub-folder) for torchvision's
    ``cifar-10-batches-py`` or an ImageFolder tree ``train/<class>/*``, ``test/<class>/*``;
    where neither is there and ``download`` is true, tries torchvision's download.

    Raises:
        DataNotFoundError: no CIFAR-10 there, the root is a file, a batch file or class
            folder is missing, or a class folder holds no images.
        DataPermissionError: a folder or file cannot be read.
        CorruptDataError: an image cannot be decoded, or a batch file is corrupt or holds
            anything but arrays (names the file and the split).
    """
    root = resolve_data_root(data_root)
    found = _locate_cifar10(root, data_root, download)
    return _cifar10_bundle(_scan_cifar10(found), val_per_class)


# ----------------------------------------------------------------------------- ImageNet


def _find_imagenet(root: Path, data_root: str | os.PathLike[str] | None) -> Path:
    _check_data_root(root, data_root)
    for base in (root, root / "imagenet", root / "ILSVRC2012"):
        if (base / "train").is_dir() and (base / "val").is_dir():
            return base
    raise DataNotFoundError(
        f"ImageNet not found: looked in {root} and {root / 'imagenet'} for 'train/<class>/' "
        f"and 'val/<class>/' (ImageFolder layout; no automatic download exists). Pass "
        f"data_root=... or set {DATA_ENV_VAR} to the folder that holds them."
    )


def load_imagenet(
    data_root: str | os.PathLike[str] | None = None,
    *,
    val_per_class: int = 10,
    input_size: int = 224,
) -> DatasetBundle:
    """ImageNet as an ImageFolder tree ``train/<wnid>/*`` and ``val/<wnid>/*``.

    ``val`` (the reward split) is ``val_per_class`` images per class held out from ``train/``
    (10 x 1000 classes = 10,000, as PocketFlow); ``test`` is the official ``val/`` folder.
    Images are decoded when batches are drawn; a file that cannot be decoded then raises
    :class:`CorruptDataError` naming it and its split.
    """
    root = resolve_data_root(data_root)
    base = _find_imagenet(root, data_root)
    try:
        with os.scandir(base / "train") as it:
            classes = sorted(e.name for e in it if e.is_dir())
    except PermissionError as exc:
        raise DataPermissionError(
            f"cannot list {base / 'train'}: permission denied; give this user read access "
            f"(chmod -R u+rX {base})"
        ) from exc
    if not classes:
        raise DataNotFoundError(
            f"{base / 'train'} holds no class folders; ImageNet needs train/<class>/<images> "
            "and val/<class>/<images>"
        )
    train = _scan_image_folder(base / "train", "train", classes).samples
    test = _scan_image_folder(base / "val", "test (val/)", classes).samples
    holdout = balanced_holdout(np.asarray([y for _, y in train]), val_per_class, seed=0)
    n = len(classes)
    return DatasetBundle(
        name="imagenet",
        train=FolderSplit("train", [s for s, h in zip(train, holdout) if not h], n, input_size),
        val=FolderSplit("val", [s for s, h in zip(train, holdout) if h], n, input_size),
        test=FolderSplit("test", test, n, input_size),
        num_classes=n,
        input_size=input_size,
        source=f"imagefolder:{base}",
    )


def _folder_stamp(base: Path, splits: Sequence[str]) -> str:
    """Modification times of ``base/<split>/`` and of every class folder in it: a file added,
    removed or renamed changes its folder's mtime (milliseconds, even for 60,000 files)."""
    lines = []
    for split in splits:
        lines.append(f"{split}\0{(base / split).stat().st_mtime_ns}")
        with os.scandir(base / split) as it:
            lines.extend(sorted(f"{e.name}\0{e.stat().st_mtime_ns}" for e in it if e.is_dir()))
    return hashlib.sha1("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def _imagenet_stamp(base: Path) -> str:
    """ImageNet's folder stamp (its images are read when batches are drawn, so a file
    rewritten in place needs no new bundle)."""
    return _folder_stamp(base, ("train", "val"))


def _cifar10_folder_stamp(found: tuple[str, Path]) -> str:
    """A cheap stamp of a CIFAR-10 folder (milliseconds): the size and mtime of the six
    torchvision batch files, or the mtimes of ``train/``, ``test/`` and their class folders."""
    layout, folder = found
    lines = [layout, str(folder)]
    try:
        if layout != "torchvision":
            lines.append(_folder_stamp(folder, ("train", "test")))
        else:
            for name in CIFAR10_BATCH_FILES:
                st = (folder / name).stat()
                lines.append(f"{name}\0{st.st_size}\0{st.st_mtime_ns}")
    except OSError:
        return ""  # a missing file or folder: the full scan names it
    return hashlib.sha1("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


_BUNDLES: OrderedDict[tuple[str, str], tuple[str, DatasetBundle]] = OrderedDict()
_BUNDLES_LOCK = threading.Lock()
_MAX_BUNDLES = 4


def clear_dataset_cache() -> None:
    """Forget the bundles :func:`load_dataset` shares within this process."""
    with _BUNDLES_LOCK:
        _BUNDLES.clear()


def load_dataset(name: str, data_root: str | os.PathLike[str] | None = None) -> DatasetBundle:
    """Load a dataset by name (``cifar10`` or ``imagenet``); shared within a process.

    The shared bundle is keyed by the data root *and* a stamp of its folders, checked on
    every call in milliseconds: the mtimes of the split and class folders (a file added,
    removed or renamed changes its folder's mtime), or the size and mtime of torchvision's
    batch files. When the stamp changed, the dataset is loaded again and replaces the old
    bundle; that load, like the first in a process, keys the decoded-image cache on disk by
    every file's name, size and mtime (0.5-1 s for CIFAR-10's 60,000 JPEGs), so an image
    rewritten in place is picked up by the next process (within one process, only files
    added, removed or renamed are). At most 4 roots are kept.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}")
    root = resolve_data_root(data_root)
    found: tuple[str, Path] | None = None
    if name == "cifar10":
        found = _locate_cifar10(root, data_root, download=True)
        stamp = _cifar10_folder_stamp(found)
    else:
        stamp = _imagenet_stamp(_find_imagenet(root, data_root))
    slot = (name, str(root))
    with _BUNDLES_LOCK:
        hit = _BUNDLES.get(slot)
        if hit is not None and stamp and hit[0] == stamp:
            _BUNDLES.move_to_end(slot)
            return hit[1]
    # (re)built: the decoded-image cache on disk is keyed by every file (_scan_cifar10)
    bundle = _cifar10_bundle(_scan_cifar10(found), 500) if found is not None else load_imagenet(root)
    with _BUNDLES_LOCK:
        _BUNDLES[slot] = (stamp, bundle)
        _BUNDLES.move_to_end(slot)
        while len(_BUNDLES) > _MAX_BUNDLES:
            _BUNDLES.popitem(last=False)
    return bundle
