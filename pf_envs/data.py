"""Datasets: CIFAR-10 (torchvision format or an ImageFolder tree) and ImageNet (ImageFolder).

Every dataset comes as a :class:`DatasetBundle` with three splits:

- ``train``: what models and fine-tuning train on (CIFAR-10: 45,000 images),
- ``val``: held out from the training set, class-balanced, fixed seed; rewards are measured
  here, as PocketFlow did (CIFAR-10: 5,000 images; ImageNet: 10 per class),
- ``test``: the official test/validation set, for final reports only.

Where the data lives (first that is set wins): the ``data_root`` argument, the
``PF_DATA_DIR`` environment variable, ``~/.cache/pocketflow-gym/data``. Decoded CIFAR-10
images are cached as uint8 tensors under ``PF_CACHE_DIR`` (default
``~/.cache/pocketflow-gym``), so every load after the first takes well under a second.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

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

Batch = tuple[torch.Tensor, torch.Tensor]


class DataNotFoundError(FileNotFoundError):
    """The dataset is not where the project looked for it; the message says how to fix it."""


def cache_dir() -> Path:
    """Folder for derived caches (decoded tensors, layer features, baseline accuracies)."""
    path = Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "pocketflow-gym")
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_data_root(data_root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``data_root``, else ``$PF_DATA_DIR``, else ``~/.cache/pocketflow-gym/data``."""
    if data_root is not None:
        return Path(data_root).expanduser()
    if os.environ.get(DATA_ENV_VAR):
        return Path(os.environ[DATA_ENV_VAR]).expanduser()
    return Path.home() / ".cache" / "pocketflow-gym" / "data"


class Split(Protocol):
    """A split of a dataset: labelled images served as normalised float batches."""

    name: str
    num_classes: int

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
        """Yield ``(images float32 NCHW normalised, labels int64)`` batches."""
        ...

    def subset(self, n: int, seed: int = 0) -> Split:
        """A fixed random subset of ``n`` images (all of them if ``n >= len(self)``)."""
        ...


@dataclass
class TensorSplit:
    """A split held in memory as uint8 images; augmentation runs on whole batches.

    Augmentation is the CIFAR standard: random crop of the image padded by 4 pixels (zeros)
    and a random horizontal flip.
    """

    name: str
    images: torch.Tensor  # uint8, N x 3 x H x W
    labels: torch.Tensor  # int64, N
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int = 10
    _mean: torch.Tensor = field(init=False, repr=False)
    _std: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError("TensorSplit.images must be a uint8 tensor of shape N x 3 x H x W")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self._mean = torch.tensor(self.mean).view(1, 3, 1, 1) * 255
        self._std = torch.tensor(self.std).view(1, 3, 1, 1) * 255

    def __len__(self) -> int:
        return len(self.labels)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW -> float32 normalised, channels-last (faster convolutions on CPU)."""
        out = (images.float() - self._mean) / self._std
        return out.contiguous(memory_format=torch.channels_last)

    def augment(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n, _, h, w = images.shape
        padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
        offsets = torch.randint(0, 9, (n, 2), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5
        out = torch.empty_like(images)
        for i, (dy, dx) in enumerate(offsets.tolist()):
            crop = padded[i, :, dy : dy + h, dx : dx + w]
            out[i] = crop.flip(-1) if flips[i] else crop
        return out

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
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            images = self.images[idx]
            if augment:
                images = self.augment(images, generator)
            yield self.normalise(images), self.labels[idx]

    def subset(self, n: int, seed: int = 0) -> TensorSplit:
        if n >= len(self):
            return self
        idx = torch.from_numpy(np.random.RandomState(seed).permutation(len(self))[:n])
        idx = idx.sort().values
        return TensorSplit(
            f"{self.name}[{n}]", self.images[idx], self.labels[idx], self.mean, self.std,
            self.num_classes,
        )


class _FolderDataset(torch.utils.data.Dataset):
    def __init__(self, samples: Sequence[tuple[str, int]], transform) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Batch:
        path, label = self.samples[i]
        with Image.open(path) as img:
            return self.transform(img.convert("RGB")), label


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
        dataset = _FolderDataset(self.samples, self._transform(augment))
        workers = min(self.num_workers, max(1, len(self) // batch_size))
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
            drop_last=drop_last, num_workers=workers if len(self) > batch_size else 0,
            persistent_workers=False,
        )
        for images, labels in loader:
            yield images.contiguous(memory_format=torch.channels_last), labels

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


def _find_cifar10(root: Path) -> tuple[str, Path] | None:
    for base in (root, root / "cifar10", root / "cifar-10", root / "CIFAR10"):
        if (base / "cifar-10-batches-py" / "data_batch_1").is_file():
            return "torchvision", base / "cifar-10-batches-py"
        if (base / "data_batch_1").is_file() and (base / "test_batch").is_file():
            return "torchvision", base
        if (base / "train").is_dir() and (base / "test").is_dir():
            return "imagefolder", base
    return None


def _read_cifar_batches(folder: Path) -> tuple[dict[str, np.ndarray], ...]:
    def read(files: list[str]) -> dict[str, np.ndarray]:
        images, labels = [], []
        for name in files:
            with open(folder / name, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(entry.get("labels", entry.get("fine_labels", [])))
        return {"images": np.concatenate(images), "labels": np.asarray(labels, dtype=np.int64)}

    return read([f"data_batch_{i}" for i in range(1, 6)]), read(["test_batch"])


def _image_folder_samples(folder: Path, classes: Sequence[str] | None = None) -> list[tuple[str, int]]:
    if classes is None:
        classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    samples: list[tuple[str, int]] = []
    for label, cls in enumerate(classes):
        cdir = folder / cls
        if not cdir.is_dir():
            raise DataNotFoundError(f"{folder} has no class folder {cls!r}; expected {list(classes)}")
        for path in sorted(cdir.iterdir()):
            if path.suffix in IMG_EXTENSIONS or path.suffix.lower() in IMG_EXTENSIONS:
                samples.append((str(path), label))
    return samples


def _decode(samples: list[tuple[str, int]], size: int) -> dict[str, np.ndarray]:
    def load(path: str) -> np.ndarray:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        images = list(pool.map(load, [p for p, _ in samples], chunksize=256))
    return {"images": np.stack(images), "labels": np.asarray([y for _, y in samples], np.int64)}


def _cifar10_tensors(found: tuple[str, Path]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    layout, folder = found
    stamp = [str(folder.resolve()), layout]
    probe = folder / ("data_batch_1" if layout == "torchvision" else "train")
    stamp.append(str(probe.stat().st_mtime_ns))
    key = hashlib.sha1("|".join(stamp).encode()).hexdigest()[:16]
    cache_file = cache_dir() / f"cifar10-{layout}-{key}.pt"
    if cache_file.is_file():
        try:
            cached = torch.load(cache_file, weights_only=True)
            return cached["train"], cached["test"]
        except Exception:  # a broken cache is rebuilt, never trusted
            cache_file.unlink(missing_ok=True)
    if layout == "torchvision":
        train, test = _read_cifar_batches(folder)
    else:
        train = _decode(_image_folder_samples(folder / "train", CIFAR10_CLASSES), 32)
        test = _decode(_image_folder_samples(folder / "test", CIFAR10_CLASSES), 32)
    tensors = tuple({k: torch.from_numpy(v) for k, v in part.items()} for part in (train, test))
    tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
    torch.save({"train": tensors[0], "test": tensors[1]}, tmp)
    os.replace(tmp, cache_file)
    return tensors[0], tensors[1]


def _download_cifar10(root: Path) -> tuple[str, Path] | None:
    try:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=True, download=True)
        CIFAR10(str(root), train=False, download=True)
    except Exception:
        return None
    return _find_cifar10(root)


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
    """
    root = resolve_data_root(data_root)
    found = _find_cifar10(root) or (_download_cifar10(root) if download else None)
    if found is None:
        looked = ", ".join(str(p) for p in (root, root / "cifar10"))
        raise DataNotFoundError(
            f"CIFAR-10 not found: looked in {looked} for 'cifar-10-batches-py/' (torchvision) "
            f"or 'train/<class>/' + 'test/<class>/' (ImageFolder), and the download "
            f"{'failed (no network?)' if download else 'was disabled'}. Put the data there, "
            f"or pass data_root=... / set {DATA_ENV_VAR} to the folder that holds it."
        )
    train, test = _cifar10_tensors(found)
    holdout = torch.from_numpy(balanced_holdout(train["labels"].numpy(), val_per_class, seed=0))
    common = dict(mean=CIFAR10_MEAN, std=CIFAR10_STD, num_classes=10)
    return DatasetBundle(
        name="cifar10",
        train=TensorSplit("train", train["images"][~holdout], train["labels"][~holdout], **common),
        val=TensorSplit("val", train["images"][holdout], train["labels"][holdout], **common),
        test=TensorSplit("test", test["images"], test["labels"], **common),
        num_classes=10,
        input_size=32,
        source=f"{found[0]}:{found[1]}",
    )


# ----------------------------------------------------------------------------- ImageNet


def load_imagenet(
    data_root: str | os.PathLike[str] | None = None,
    *,
    val_per_class: int = 10,
    input_size: int = 224,
) -> DatasetBundle:
    """ImageNet as an ImageFolder tree ``train/<wnid>/*`` and ``val/<wnid>/*``.

    ``val`` (the reward split) is ``val_per_class`` images per class held out from ``train/``
    (10 x 1000 classes = 10,000, as PocketFlow); ``test`` is the official ``val/`` folder.
    """
    root = resolve_data_root(data_root)
    for base in (root, root / "imagenet", root / "ILSVRC2012"):
        if (base / "train").is_dir() and (base / "val").is_dir():
            break
    else:
        raise DataNotFoundError(
            f"ImageNet not found: looked in {root} and {root / 'imagenet'} for 'train/<class>/' "
            f"and 'val/<class>/' (ImageFolder layout; no automatic download exists). Pass "
            f"data_root=... or set {DATA_ENV_VAR} to the folder that holds them."
        )
    classes = sorted(d.name for d in (base / "train").iterdir() if d.is_dir())
    train = _image_folder_samples(base / "train", classes)
    test = _image_folder_samples(base / "val", classes)
    if not train or not test:
        raise DataNotFoundError(f"ImageNet folders under {base} hold no images")
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


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, root: str | None) -> DatasetBundle:
    if name == "cifar10":
        return load_cifar10(root)
    return load_imagenet(root)


def load_dataset(name: str, data_root: str | os.PathLike[str] | None = None) -> DatasetBundle:
    """Load a dataset by name (``cifar10`` or ``imagenet``); shared within a process."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}")
    root = str(resolve_data_root(data_root))
    return _load_cached(name, root)
