"""Model zoo: generated from the registry table, so a new entry is tested when registered."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from learners.training import evaluate
from pf_envs import zoo
from pf_envs.envs.channel_prune import channel_table
from pf_envs.layers import cost_table

INPUT = {"cifar10": 32, "imagenet": 224}
ENTRIES = [(name, ds) for name in zoo.list_models() for ds in sorted(zoo.MODELS[name].builders)]
SHIPPED = [(n, ds) for n, ds in ENTRIES if zoo.MODELS[n].has_checkpoint(ds)]
# Floors on the first 2,000 test images for shipped checkpoints (their full-test accuracy
# is in the JSON record beside each; the floor leaves room for the slice's noise).
ACCURACY_FLOOR = {"mobilenet_v1": 0.86, "resnet20": 0.88, "mobilenet_v2": 0.86, "resnet56": 0.88}


@pytest.mark.parametrize("name,dataset", ENTRIES)
def test_constructs_and_forward_shape(name, dataset):
    model = zoo.create_model(name, dataset).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, INPUT[dataset], INPUT[dataset]))
    assert out.shape == (2, zoo.NUM_CLASSES[dataset])


@pytest.mark.parametrize("name,dataset", ENTRIES)
def test_cost_table_matches_flop_counter(name, dataset):
    model = zoo.create_model(name, dataset).eval()
    size = INPUT[dataset]
    table = cost_table(model, size)
    if dataset == "cifar10":  # the channel groups of every CIFAR model are found (ChannelPrune needs them)
        assert channel_table(model, size).groups
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    independent = counter.get_total_flops() / 2
    assert abs(table.total_macs - independent) <= 0.01 * independent
    assert table.total_params == sum(
        p.numel() for n, p in model.named_parameters() if n.rsplit(".", 1)[0] in {r.name for r in table.rows}
    )


@pytest.mark.parametrize("name,dataset", SHIPPED)
def test_shipped_checkpoint_loads_with_record(name, dataset):
    model = zoo.load(name, dataset)
    assert not model.training
    record = zoo.checkpoint_record(name, dataset)
    assert record and record["test_acc"] > 0.5 and "command" in record and "config" in record


@pytest.mark.parametrize("name,dataset", [e for e in SHIPPED if e[1] == "cifar10"])
def test_shipped_checkpoint_accuracy(name, dataset, cifar):
    model = zoo.load(name, dataset)
    acc = evaluate(model, cifar.test.subset(2000, seed=0))
    assert acc >= ACCURACY_FLOOR[name], f"{name}: {acc:.4f} on 2,000 test images"


def test_unknown_model_lists_the_zoo():
    with pytest.raises(KeyError, match="mobilenet_v1"):
        zoo.create_model("vgg16")


def test_wrong_dataset_variant():
    with pytest.raises(ValueError, match="cifar10"):
        zoo.create_model("resnet20", "imagenet")


def test_missing_checkpoint_is_an_error_not_random_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(zoo, "CHECKPOINT_DIR", tmp_path)
    with pytest.raises(zoo.CheckpointError, match="pf-train-base --model resnet56"):
        zoo.load("resnet56", "cifar10")
    with pytest.raises(zoo.CheckpointError, match="pf-train-base --model resnet56"):  # the same, before any work
        zoo.check_weights_available("resnet56", "cifar10")
    zoo.check_weights_available("resnet56", "cifar10", checkpoint=tmp_path / "mine.pt")  # the caller's own file


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(zoo.CheckpointError, match="corrupt"):
        zoo.load("resnet20", checkpoint=bad)
    with pytest.raises(zoo.CheckpointError, match="does not exist"):
        zoo.load("resnet20", checkpoint=tmp_path / "missing.pt")


def test_checkpoint_of_another_model(tmp_path):
    path = zoo.save_checkpoint(zoo.create_model("resnet20"), tmp_path / "r20.pt")
    with pytest.raises(zoo.CheckpointError, match="does not fit"):
        zoo.load("resnet56", checkpoint=path)


def test_save_load_round_trip_fp16(tmp_path):
    torch.manual_seed(0)
    model = zoo.create_model("resnet20").eval()
    path = zoo.save_checkpoint(model, tmp_path / "r20.pt", {"note": "test"})
    assert all(v.dtype != torch.float32 for v in torch.load(path).values())
    again = zoo.load("resnet20", checkpoint=path)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), again(x), atol=5e-2, rtol=5e-2)
    assert (tmp_path / "r20.json").is_file()
