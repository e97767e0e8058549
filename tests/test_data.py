"""Data loading: CIFAR-10 in both layouts, ImageNet folders, splits, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pf_envs import data
from pf_envs.data import CIFAR10_CLASSES, DataNotFoundError, load_cifar10, load_dataset, load_imagenet


def _write_torchvision_cifar(root: Path, per_batch: int = 20) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {
            "data": rng.randint(0, 256, (per_batch, 3072), dtype=np.uint8),
            "labels": [i % 10 for i in range(per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    return folder


def _write_image_tree(root: Path, classes, per_class: int, size: int, splits=("train", "test")) -> None:
    rng = np.random.RandomState(1)
    for split in splits:
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                arr = rng.randint(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i:04d}.png")


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV_VAR, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cifar10_splits(cifar):
    assert (len(cifar.train), len(cifar.val), len(cifar.test)) == (45000, 5000, 10000)
    assert torch.bincount(cifar.val.labels).tolist() == [500] * 10
    assert cifar.train.images.dtype == torch.uint8 and cifar.train.images.shape[1:] == (3, 32, 32)
    # val is held out of train: together they are the 50,000 training images, no overlap
    tv = torch.cat([cifar.train.images, cifar.val.images]).flatten(1)
    sample = tv[torch.arange(0, 50000, 997)]
    hits = (sample[:, None, :] == cifar.val.images.flatten(1)[None, :2000]).all(-1).sum(1)
    assert hits.max() <= 1


def test_cifar10_cache_reused(cifar_root):
    before = set(data.cache_dir().glob("cifar10-*.pt"))
    load_cifar10(cifar_root)
    assert before and before == set(data.cache_dir().glob("cifar10-*.pt"))


def test_batches_normalised_and_augmentation_seeded(cifar):
    x, y = next(cifar.train.batches(512, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert x.dtype == torch.float32 and x.shape == (512, 3, 32, 32) and y.dtype == torch.int64
    assert abs(x.mean().item()) < 0.3 and 0.7 < x.std().item() < 1.3
    a = next(cifar.train.batches(16, shuffle=True, augment=True, generator=torch.Generator().manual_seed(3)))
    b = next(cifar.train.batches(16, shuffle=True, augment=True, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    sub = cifar.val.subset(100, seed=0)
    assert len(sub) == 100 and torch.equal(sub.labels, cifar.val.subset(100, seed=0).labels)


def test_torchvision_layout(tmp_path, private_cache):
    _write_torchvision_cifar(tmp_path)
    bundle = load_cifar10(tmp_path, download=False, val_per_class=2)
    assert len(bundle.train) + len(bundle.val) == 100 and len(bundle.test) == 20
    assert len(bundle.val) == 20
    assert bundle.source.startswith("torchvision:")


def test_imagefolder_layout(tmp_path, private_cache):
    _write_image_tree(tmp_path / "cifar10", CIFAR10_CLASSES, per_class=3, size=32)
    bundle = load_cifar10(tmp_path, download=False, val_per_class=1)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (20, 10, 30)
    assert bundle.source.startswith("imagefolder:")
    x, _ = next(bundle.test.batches(30))
    assert x.shape == (30, 3, 32, 32)


def test_missing_data_root_names_the_folders(tmp_path, private_cache):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as err:
        load_cifar10(missing, download=False)
    msg = str(err.value)
    assert str(missing) in msg and "PF_DATA_DIR" in msg and "cifar-10-batches-py" in msg


def test_data_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_ENV_VAR, str(tmp_path))
    assert data.resolve_data_root() == tmp_path
    assert data.resolve_data_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv(data.DATA_ENV_VAR)
    assert data.resolve_data_root() == Path.home() / ".cache" / "pocketflow-gym" / "data"


def test_unknown_dataset():
    with pytest.raises(ValueError, match="cifar10"):
        load_dataset("mnist")


def test_imagenet_tiny_tree(tmp_path):
    classes = ["n01", "n02", "n03"]
    _write_image_tree(tmp_path, classes, per_class=4, size=40, splits=("train", "val"))
    bundle = load_imagenet(tmp_path, val_per_class=1)
    assert bundle.num_classes == 3 and bundle.input_size == 224
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (9, 3, 12)  # 1 of 4 per class held out
    bundle.test.num_workers = 0
    x, y = next(bundle.test.batches(5))
    assert x.shape == (5, 3, 224, 224) and y.tolist() == [0, 0, 0, 0, 1]
    bundle.train.num_workers = 0
    x, _ = next(bundle.train.batches(4, shuffle=True, augment=True, generator=torch.Generator().manual_seed(0)))
    assert x.shape == (4, 3, 224, 224)


def test_imagenet_missing(tmp_path):
    with pytest.raises(DataNotFoundError, match="ImageFolder"):
        load_imagenet(tmp_path)
