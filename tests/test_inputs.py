"""Every file the project reads: a stale cache is never served, nothing read runs code, and
each bad input fails with one sentence naming the file and what to do (issue 16)."""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from learners.training import TrainConfig, train
from pf_envs import data, zoo
from pf_envs.data import CIFAR10_CLASSES, TensorSplit, load_cifar10, load_dataset, load_imagenet

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    """``scripts/<name>.py`` as a module (the folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _PlantedCode:
    """Unpickling this object creates ``path`` (a stand-in for arbitrary code)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV_VAR, str(tmp_path / "cache"))
    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)
    data.clear_dataset_cache()
    yield tmp_path / "cache"
    data.clear_dataset_cache()


def _jpeg(seed: int) -> bytes:
    arr = np.random.RandomState(seed).randint(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def _cifar_tree(root: Path, train_per_class: int = 4, test_per_class: int = 2) -> Path:
    """A CIFAR-10 ImageFolder tree of 32x32 JPEGs under ``root/cifar10``."""
    base = root / "cifar10"
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for c, cls in enumerate(CIFAR10_CLASSES):
            folder = base / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i:04d}.jpg").write_bytes(_jpeg(1000 * c + i + (0 if split == "train" else 500)))
    return base


def _torchvision_cifar(root: Path, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for name in data.CIFAR10_BATCH_FILES:
        entry = {"batch_label": "training batch", "data": rng.randint(0, 256, (20, 3072), dtype=np.uint8),
                 "labels": [i % 10 for i in range(20)], "filenames": [f"img{i}.png" for i in range(20)]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=protocol))
    return folder


# ------------------------------------------------------------------ the decoded-image cache


def test_images_added_to_a_class_folder_rebuild_the_cache(tmp_path, private_cache):
    base = _cifar_tree(tmp_path)
    first = load_cifar10(tmp_path, download=False, val_per_class=1)
    assert (len(first.train), len(first.val), len(first.test)) == (30, 10, 20)
    train_mtime = os.stat(base / "train").st_mtime_ns
    for i in (10, 11):  # two more cats; the top folders' mtimes do not change
        (base / "train" / "cat" / f"{i:04d}.jpg").write_bytes(_jpeg(90 + i))
    assert os.stat(base / "train").st_mtime_ns == train_mtime
    again = load_cifar10(tmp_path, download=False, val_per_class=1)
    assert len(again.train) + len(again.val) == 42
    assert torch.bincount(torch.cat([again.train.labels, again.val.labels])).tolist()[3] == 6
    assert len(list(private_cache.glob("cifar10-*.pt"))) == 1  # the stale cache is removed


def test_an_image_replaced_in_place_rebuilds_the_cache(tmp_path, private_cache):
    base = _cifar_tree(tmp_path)
    before = load_cifar10(tmp_path, download=False, val_per_class=1).test.images.clone()
    target = base / "test" / "airplane" / "0000.jpg"
    white = io.BytesIO()
    Image.new("RGB", (32, 32), (255, 255, 255)).save(white, format="JPEG")
    target.write_bytes(white.getvalue())
    after = load_cifar10(tmp_path, download=False, val_per_class=1).test.images
    assert not torch.equal(before[0], after[0]) and (after[0].float().mean() > 250)
    assert torch.equal(before[1:], after[1:])


def test_load_dataset_never_hands_back_a_bundle_older_than_the_files(tmp_path, private_cache):
    base = _cifar_tree(tmp_path, train_per_class=6)
    first = load_dataset("cifar10", tmp_path)
    assert load_dataset("cifar10", tmp_path) is first  # unchanged files: the same bundle
    assert len(first.train) + len(first.val) == 60
    (base / "train" / "dog" / "0099.jpg").write_bytes(_jpeg(7))
    second = load_dataset("cifar10", tmp_path)
    assert second is not first and len(second.train) + len(second.val) == 61


def test_the_cache_key_covers_torchvision_batch_files(tmp_path, private_cache):
    folder = _torchvision_cifar(tmp_path)
    assert len(load_cifar10(tmp_path, download=False, val_per_class=2).test) == 20
    entry = {"data": np.zeros((30, 3072), np.uint8), "labels": [0] * 30}
    (folder / "test_batch").write_bytes(pickle.dumps(entry))
    assert len(load_cifar10(tmp_path, download=False, val_per_class=2).test) == 30


def _rewrite_image_cache(cache: Path, change) -> Path:
    """Apply ``change`` to the one decoded-image cache file's dict and save it back."""
    (path,) = cache.glob("cifar10-*.pt")
    content = torch.load(path, weights_only=True)
    change(content)
    torch.save(content, path)
    data.clear_dataset_cache()
    return path


def _cut_short(content: dict) -> None:
    for split in ("train", "test"):
        content[split] = {k: v[: len(v) // 2] for k, v in content[split].items()}


def test_an_image_cache_cut_short_is_rebuilt_with_a_notice(tmp_path, private_cache):
    _cifar_tree(tmp_path)
    first = load_cifar10(tmp_path, download=False, val_per_class=1)
    path = _rewrite_image_cache(private_cache, _cut_short)
    with pytest.warns(UserWarning, match=r"decoded-image cache .*holds 20 train images where the data has 40"):
        again = load_cifar10(tmp_path, download=False, val_per_class=1)
    assert (len(again.train), len(again.val), len(again.test)) == (len(first.train), len(first.val), len(first.test))
    assert torch.equal(again.test.images, first.test.images)
    assert torch.load(path, weights_only=True)["train"]["images"].shape[0] == 40  # rebuilt in full


def test_an_image_cache_whose_pixels_changed_fails_its_digest(tmp_path, private_cache):
    _torchvision_cifar(tmp_path)  # torchvision layout: counts are not known before decoding, the digest is
    first = load_cifar10(tmp_path, download=False, val_per_class=2).test.images.clone()

    def paint(content: dict) -> None:
        content["test"]["images"][0] = 255

    _rewrite_image_cache(private_cache, paint)
    with pytest.warns(UserWarning, match="does not match the digest"):
        again = load_cifar10(tmp_path, download=False, val_per_class=2).test.images
    assert torch.equal(again, first)


@pytest.mark.parametrize("damage", ["cut", "no-digest", "not-a-dict"])
def test_a_torchvision_image_cache_that_cannot_prove_its_content_is_rebuilt(tmp_path, private_cache, damage):
    _torchvision_cifar(tmp_path)
    first = load_cifar10(tmp_path, download=False, val_per_class=2)

    def change(content: dict) -> None:
        if damage == "cut":
            _cut_short(content)
        elif damage == "no-digest":  # the format before digests: train and test only
            for key in [k for k in content if k not in ("train", "test")]:
                del content[key]
        else:
            content["train"] = [1, 2, 3]

    _rewrite_image_cache(private_cache, change)
    with pytest.warns(UserWarning, match="decoded-image cache"):
        again = load_cifar10(tmp_path, download=False, val_per_class=2)
    assert len(again.train) + len(again.val) == len(first.train) + len(first.val) == 100


def test_a_sound_image_cache_is_used_without_a_word(tmp_path, private_cache, recwarn):
    _cifar_tree(tmp_path)
    load_cifar10(tmp_path, download=False, val_per_class=1)
    data.clear_dataset_cache()
    load_cifar10(tmp_path, download=False, val_per_class=1)
    assert not [w for w in recwarn if "cache" in str(w.message)]


@pytest.mark.parametrize("stored", [{"accuracy": 0.9}, "0.9", 1.7, [0.9]])
def test_a_cached_value_of_another_structure_is_recomputed_with_a_notice(private_cache, stored):
    from pf_envs.cache import cached

    path = private_cache / "envs" / "acc.pt"
    path.parent.mkdir(parents=True)
    torch.save(stored, path)
    with pytest.warns(UserWarning, match=r"cache file .*acc\.pt.*recomputing it"):
        value = cached("acc", lambda: 0.5, decode=lambda v: float(v) if isinstance(v, float) and v <= 1
                       else (_ for _ in ()).throw(TypeError("not an accuracy")))
    assert value == 0.5 and torch.load(path, weights_only=True) == 0.5


# ------------------------------------------------------------------ nothing read runs code


def test_a_planted_pickle_in_a_cifar_batch_file_is_refused_and_not_run(tmp_path, private_cache):
    folder = _torchvision_cifar(tmp_path)
    marker = tmp_path / "code-ran"
    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": _PlantedCode(marker), "labels": [0]}))
    with pytest.raises(ValueError) as err:
        load_cifar10(tmp_path, download=False)
    assert not marker.exists()
    msg = str(err.value)
    assert isinstance(err.value, data.CorruptDataError)
    assert str(folder / "data_batch_3") in msg and "refused" in msg and "download" in msg


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_real_cifar_batch_pickles_still_load(tmp_path, private_cache, protocol):
    """The restricted unpickler reads what numpy writes under every pickle protocol (the
    official files are protocol 2, strings as Python 2 ``str``)."""
    _torchvision_cifar(tmp_path, protocol=protocol)
    bundle = load_cifar10(tmp_path, download=False, val_per_class=2)
    assert len(bundle.train) + len(bundle.val) == 100 and bundle.train.images.dtype == torch.uint8


def test_a_planted_pickle_at_the_training_state_is_refused_and_not_run(tmp_path):
    state, marker = tmp_path / "run.state", tmp_path / "code-ran"
    torch.save({"config": {}, "model": _PlantedCode(marker)}, state)
    cfg = TrainConfig(epochs=1, batch_size=16)
    with pytest.raises(ValueError) as err:
        train(_tiny_model(), _tiny_split(), cfg, state_path=state, log=lambda _: None)
    assert not marker.exists()
    msg = str(err.value)
    assert str(state) in msg and "refused" in msg and "delete it" in msg
    assert "weights_only" not in msg


def test_the_training_state_loads_with_weights_only(tmp_path):
    state = tmp_path / "run.state"
    cfg = TrainConfig(epochs=1, swa_epochs=1, batch_size=16)
    train(_tiny_model(), _tiny_split(), cfg, state_path=state, log=lambda _: None)
    saved = torch.load(state, weights_only=True)
    assert saved["epoch"] == 2 and isinstance(saved["swa"], dict) and len(saved["history"]) == 2
    assert not list(tmp_path.glob("*.tmp*"))


def test_a_planted_pickle_in_a_checkpoint_is_refused_and_not_run(tmp_path):
    path, marker = tmp_path / "evil.pt", tmp_path / "code-ran"
    torch.save({"conv.weight": _PlantedCode(marker)}, path)
    with pytest.raises(zoo.CheckpointError) as err:
        zoo.load("resnet20", checkpoint=path)
    assert not marker.exists() and "refused" in str(err.value) and "weights_only" not in str(err.value)


def test_a_planted_pickle_in_torchs_hub_cache_is_refused_and_not_run(tmp_path, monkeypatch):
    """ImageNet models load torchvision's weights through torch.hub's download cache."""
    import torchvision

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cached_file = tmp_path / "hub" / "checkpoints" / Path(url).name
    cached_file.parent.mkdir(parents=True)
    marker = tmp_path / "code-ran"
    torch.save({"fc.weight": _PlantedCode(marker)}, cached_file)
    with pytest.raises(zoo.CheckpointError) as err:
        zoo.load("resnet18", "imagenet")
    assert not marker.exists()
    assert str(cached_file) in str(err.value) and "refused" in str(err.value) and "delete that file" in str(err.value)


def test_a_planted_pickle_in_a_cache_file_is_recomputed_not_run(tmp_path, private_cache):
    from pf_envs.cache import cached

    marker = tmp_path / "code-ran"
    path = private_cache / "envs" / "k.pt"
    path.parent.mkdir(parents=True)
    torch.save({"v": _PlantedCode(marker)}, path)
    assert cached("k", lambda: {"v": torch.ones(2)})["v"].tolist() == [1.0, 1.0]
    assert not marker.exists()
    assert torch.load(path, weights_only=True)["v"].tolist() == [1.0, 1.0]


# ------------------------------------------------------------------ corrupt data files


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_jpeg_names_the_file_and_the_split(tmp_path, private_cache, damage):
    base = _cifar_tree(tmp_path)
    bad = base / "test" / "frog" / "0001.jpg"
    bad.write_bytes(b"not a jpeg" if damage == "garbage" else bad.read_bytes()[:200])
    with pytest.raises(ValueError) as err:
        load_cifar10(tmp_path, download=False, val_per_class=1)
    msg = str(err.value)
    assert isinstance(err.value, data.CorruptDataError)
    assert str(bad) in msg and "test split" in msg and "delete it or replace it" in msg


def test_a_corrupt_cifar_batch_file_names_the_file(tmp_path, private_cache):
    folder = _torchvision_cifar(tmp_path)
    (folder / "data_batch_2").write_bytes((folder / "data_batch_2").read_bytes()[:500])
    with pytest.raises(data.CorruptDataError, match="data_batch_2.*truncated"):
        load_cifar10(tmp_path, download=False)
    (folder / "data_batch_2").write_bytes(pickle.dumps({"data": np.zeros((3, 7), np.uint8)}))
    with pytest.raises(data.CorruptDataError, match="data_batch_2 does not hold what the format promises"):
        load_cifar10(tmp_path, download=False)


def test_a_missing_cifar_batch_file_is_named(tmp_path, private_cache):
    folder = _torchvision_cifar(tmp_path)
    (folder / "data_batch_4").unlink()
    with pytest.raises(data.DataNotFoundError, match="data_batch_4 is missing"):
        load_cifar10(tmp_path, download=False)


def test_a_corrupt_imagenet_image_fails_at_batch_time_naming_it(tmp_path):
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                (tmp_path / split / cls / f"{i}.jpg").write_bytes(_jpeg(i))
    bad = tmp_path / "val" / "n02" / "1.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    bundle = load_imagenet(tmp_path, val_per_class=1)
    bundle.test.num_workers = 0
    with pytest.raises(ValueError) as err:
        list(bundle.test.batches(2))
    assert isinstance(err.value, data.CorruptDataError)
    assert str(bad) in str(err.value) and "test split" in str(err.value)


# ------------------------------------------------------------------ data roots and folders


def test_a_data_root_that_is_a_file(tmp_path, private_cache, monkeypatch):
    not_a_folder = tmp_path / "cifar.tar.gz"
    not_a_folder.write_bytes(b"x")
    monkeypatch.setenv(data.DATA_ENV_VAR, str(not_a_folder))
    with pytest.raises(data.DataNotFoundError) as err:
        load_cifar10(download=False)
    msg = str(err.value)
    assert str(not_a_folder) in msg and "is a file, not a folder" in msg and "$PF_DATA_DIR" in msg
    with pytest.raises(data.DataNotFoundError, match="is a file"):
        load_imagenet()


def test_a_data_root_without_read_permission(tmp_path, private_cache, monkeypatch):
    locked = tmp_path / "locked"
    _cifar_tree(locked)
    real_scandir = os.scandir

    def scandir(path="."):  # what a folder without r/x permission does (the tests run as root)
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(PermissionError) as err:
        load_cifar10(locked, download=False)
    assert isinstance(err.value, data.DataPermissionError)
    assert str(locked) in str(err.value) and "chmod" in str(err.value)


def test_an_empty_class_folder(tmp_path, private_cache):
    base = _cifar_tree(tmp_path)
    for f in (base / "train" / "ship").iterdir():
        f.unlink()
    with pytest.raises(data.DataNotFoundError) as err:
        load_cifar10(tmp_path, download=False, val_per_class=1)
    assert str(base / "train" / "ship") in str(err.value) and "holds no images" in str(err.value)


def test_a_missing_class_folder(tmp_path, private_cache):
    base = _cifar_tree(tmp_path)
    (base / "test" / "truck").rename(base / "test" / "lorry")
    with pytest.raises(data.DataNotFoundError) as err:
        load_cifar10(tmp_path, download=False, val_per_class=1)
    msg = str(err.value)
    assert "'truck'" in msg and "'lorry'" in msg and "create or rename" in msg and "test split" in msg


def test_a_cache_folder_that_is_a_file(tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("")
    monkeypatch.setenv(data.CACHE_ENV_VAR, str(tmp_path / "cache"))
    with pytest.raises(NotADirectoryError, match="PF_CACHE_DIR"):
        data.cache_dir()


# ------------------------------------------------------------------ checkpoints and records


def test_a_checkpoint_with_nan_weights_names_the_tensor(tmp_path):
    state = zoo.create_model("resnet20").state_dict()
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    state["classifier.bias"][1] = float("inf")
    path = tmp_path / "diverged.pt"
    torch.save(state, path)
    with pytest.raises(zoo.CheckpointError) as err:
        zoo.load("resnet20", checkpoint=path)
    msg = str(err.value)
    assert str(path) in msg and "NaN" in msg and "conv1.weight" in msg and "classifier.bias" in msg


@pytest.mark.parametrize("content", ["garbage", "truncated", "empty"])
def test_a_corrupt_checkpoint_says_so_without_the_weights_only_advice(tmp_path, content):
    path = tmp_path / "bad.pt"
    good = tmp_path / "good.pt"
    zoo.save_checkpoint(zoo.create_model("resnet20"), good)
    path.write_bytes({"garbage": b"not a checkpoint", "truncated": good.read_bytes()[:5000], "empty": b""}[content])
    with pytest.raises(zoo.CheckpointError) as err:
        zoo.load("resnet20", checkpoint=path)
    msg = str(err.value)
    assert str(path) in msg and ("truncated" in msg or "corrupt" in msg) and "train_base.py" in msg
    assert "weights_only" not in msg and "trusted source" not in msg
    assert err.value.__cause__ is None  # PyTorch's advice is not chained into the traceback


def test_save_checkpoint_refuses_nan_weights(tmp_path):
    model = zoo.create_model("resnet20")
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    with pytest.raises(zoo.CheckpointError, match="classifier.weight"):
        zoo.save_checkpoint(model, tmp_path / "r20.pt")
    assert not list(tmp_path.iterdir())


def test_a_failed_save_leaves_the_old_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    path = zoo.save_checkpoint(zoo.create_model("resnet20"), tmp_path / "r20.pt", {"v": 1})
    before = path.read_bytes()
    real_save = torch.save

    def dies_half_way(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        Path(f).write_bytes(Path(f).read_bytes()[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        zoo.save_checkpoint(zoo.create_model("resnet20"), path, {"v": 2})
    assert path.read_bytes() == before and json.loads(path.with_suffix(".json").read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r20.json", "r20.pt"]


@pytest.mark.parametrize("text", ['{"test_acc": 0.9', "[1, 2]", "\udcff"])
def test_a_broken_checkpoint_record(tmp_path, monkeypatch, text):
    monkeypatch.setattr(zoo, "CHECKPOINT_DIR", tmp_path)
    record = tmp_path / "resnet20_cifar10.json"
    record.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(zoo.CheckpointError) as err:
        zoo.checkpoint_record("resnet20")
    assert str(record) in str(err.value) and "write it again" in str(err.value)
    record.unlink()
    assert zoo.checkpoint_record("resnet20") is None


# ------------------------------------------------------------------ training states and settings


def _tiny_split(n: int = 32) -> TensorSplit:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    return TensorSplit("train", images, torch.randint(0, 4, (n,), generator=g), (0.5,) * 3, (0.25,) * 3, 4)


def _tiny_model(width: int = 8) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.BatchNorm2d(width), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(width, 4),
    )


def test_an_incomplete_or_foreign_training_state(tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=16)
    state = tmp_path / "run.state"
    torch.save({"config": dict(vars(cfg)), "epoch": 1}, state)
    with pytest.raises(ValueError, match=r"incomplete.*\['model', 'optimizer', 'generator', 'history'\].*delete it"):
        train(_tiny_model(), _tiny_split(), cfg, state_path=state, log=lambda _: None)
    state.unlink()
    train(_tiny_model(), _tiny_split(), TrainConfig(epochs=1, batch_size=16), state_path=state, log=lambda _: None)
    other = TrainConfig(epochs=1, batch_size=16)
    with pytest.raises(ValueError, match="does not fit this model.*delete it"):
        train(_tiny_model(width=6), _tiny_split(), other, state_path=state, log=lambda _: None)


@pytest.mark.parametrize("setting", [{"batch_size": 0}, {"lr": -0.1}, {"momentum": 1.5}, {"lr": float("nan")}])
def test_bad_training_settings_are_named(setting):
    name = next(iter(setting))
    with pytest.raises(ValueError, match=name):
        TrainConfig(**setting)


# ------------------------------------------------------------------ scripts


def test_train_base_rejects_bad_arguments_before_loading_anything(tmp_path, capsys):
    main = _script("train_base").main

    nowhere = ["--data-root", str(tmp_path / "nowhere")]
    for argv, expected in (
        (["--threads", "-1"], "--threads -1"),
        (["--batch-size", "0"], "batch_size=0"),
        (["--out", str(tmp_path)], "is a folder"),
        (["--init", str(tmp_path / "missing.pt")], "no such checkpoint"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["--model", "resnet20", *nowhere, *argv])
        assert exit_.value.code == 2 and expected in capsys.readouterr().err


def test_scripts_report_bad_data_in_one_line(tmp_path, private_cache, capsys):
    main = _script("evaluate").main

    base = _cifar_tree(tmp_path)
    (base / "train" / "bird" / "0000.jpg").write_bytes(b"broken")
    assert main(["--model", "resnet20", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot decode the image") and "0000.jpg" in err and "Traceback" not in err
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"")
    assert main(["--model", "resnet20", "--checkpoint", str(broken)]) == 2
    assert "empty or truncated" in capsys.readouterr().err


# ------------------------------------------------------------------ one batch-source protocol


def test_one_batch_source_protocol():
    import inspect

    from learners import batches, training

    assert training.BatchSource is batches.BatchSource and training.Batch is batches.Batch
    assert batches.BatchSource in data.Split.__mro__
    assert "batches" not in data.Split.__dict__ and "batches" not in vars(data.Split).get("__annotations__", {})
    assert inspect.signature(batches.BatchSource.batches) == inspect.signature(data.TensorSplit.batches)
    assert inspect.signature(batches.BatchSource.batches) == inspect.signature(data.FolderSplit.batches)


def test_cached_accuracies_and_channel_statistics_of_another_structure_are_recomputed(
    cifar_root, checkpoints, tmp_path, monkeypatch
):
    from conftest import SMALL_ENV_KWARGS, make_env

    import pf_envs.cache

    monkeypatch.setattr(pf_envs.cache, "cache_dir", lambda: tmp_path / "env-cache")
    first = make_env("ChannelPrune-ResNet20-v0", checkpoints, SMALL_ENV_KWARGS).unwrapped
    consumers = sorted(first._stats())
    folder = tmp_path / "env-cache" / "envs"
    (acc_file,) = folder.glob("accuracy-*.pt")
    (stats_file,) = folder.glob("chnprune-stats-*.pt")
    torch.save({"accuracy": first.accuracy_original}, acc_file)  # a dict where a number belongs
    torch.save({name: [1.0, 2.0] for name in consumers}, stats_file)  # lists where the statistics belong
    with pytest.warns(UserWarning) as notices:
        again = make_env("ChannelPrune-ResNet20-v0", checkpoints, SMALL_ENV_KWARGS).unwrapped
        assert sorted(again._stats()) == consumers
    rebuilt = " ".join(str(w.message) for w in notices)
    assert acc_file.name in rebuilt and stats_file.name in rebuilt and "another structure" in rebuilt
    assert again.accuracy_original == first.accuracy_original
    assert torch.equal(again._stats()[consumers[0]].xtx, first._stats()[consumers[0]].xtx)


@pytest.mark.parametrize("entry", ["compress", "replay", "retrain", "export"])
def test_every_entry_point_says_a_missing_checkpoint_in_one_sentence(entry, cifar_root, tmp_path, monkeypatch,
                                                                      capsys):
    """ChannelPrune-ResNet56-v0 is a documented id whose checkpoint does not ship: one sentence,
    exit 2, no CheckpointError traceback (scripts/search.py: tests/test_search.py)."""
    monkeypatch.setattr(zoo, "CHECKPOINT_DIR", tmp_path / "no-checkpoints")
    env_id = "ChannelPrune-ResNet56-v0"
    if entry == "compress":
        argv = ["--env", env_id, "--agent", "random", "--episodes", "1", "--out", str(tmp_path / "job")]
    elif entry == "replay":  # a run folder recorded where the checkpoint was there
        run = tmp_path / "run"
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"env_id": env_id, "env_kwargs": {}, "agent": "random",
                                                     "agent_kwargs": {}, "seed": 0, "episodes": 1}))
        (run / "episodes.jsonl").write_text(json.dumps({"episode": 0, "reward": 0.5, "raw_actions": [0.0],
                                                        "applied": [1.0]}) + "\n")
        argv = [str(run)]
    elif entry == "retrain":
        argv = ["--env", env_id, "--policy", "1.0", "--epochs", "1", "--out", str(tmp_path / "out")]
    else:
        argv = ["resnet56", "--out", str(tmp_path / "bundle"), "--test-samples", "0"]
    assert _script(entry).main(argv) == 2
    err = capsys.readouterr().err
    assert "no trained cifar10 checkpoint for 'resnet56'" in err and "Traceback" not in err, err
