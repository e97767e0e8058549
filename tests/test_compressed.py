"""Compressed-model files: save a replayed candidate, load it back through its record."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SMALL_ENV_KWARGS

import pf_envs
from pf_envs.compressed import load_compressed, read_model_record, save_compressed

ENV = "ChannelPrune-ResNet20-v0"
KWARGS = {**SMALL_ENV_KWARGS, "flops_budget": 0.5}


@pytest.fixture(scope="module")
def saved(tmp_path_factory, cifar_root):
    import gymnasium as gym

    from baselines.uniform import equal_value_policy

    env = gym.make(ENV, **KWARGS)
    policy, _ = equal_value_policy(env.unwrapped)
    out = pf_envs.replay(ENV, KWARGS, policy, env=env)
    path = tmp_path_factory.mktemp("compressed") / "m.pt"
    save_compressed(out.model, path, env_id=ENV, env_kwargs=KWARGS, policy=out.policy,
                    model_fingerprint=out.model_fingerprint, metrics={"accuracy": out.info["accuracy"]})
    return out, path


def test_load_rebuilds_the_same_model(saved):
    out, path = saved
    model, record = load_compressed(path)
    assert record["policy"] == out.policy and record["metrics"]["accuracy"] == out.info["accuracy"]
    x = torch.randn(4, 3, 32, 32)
    out.model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), out.model(x))
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in pf_envs.zoo.load("resnet20").parameters())


def test_damaged_files_are_clear_errors(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "bad.pt"
    bad.write_bytes(path.read_bytes()[:100])
    (tmp_path / "bad.json").write_text(path.with_suffix(".json").read_text())
    with pytest.raises(ValueError, match="truncated|corrupt"):
        load_compressed(bad)
    with pytest.raises(FileNotFoundError, match="record"):
        load_compressed(tmp_path / "none.pt")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid JSON"):
        read_model_record(tmp_path / "junk.pt")


def test_weights_that_do_not_match_the_record_are_refused(saved, tmp_path):
    _, path = saved
    record = json.loads(path.with_suffix(".json").read_text())
    other = tmp_path / "other.pt"
    state = torch.load(path, weights_only=True)
    state["classifier.bias"] = state["classifier.bias"] + 1
    torch.save(state, other)
    other.with_suffix(".json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="SHA-1"):
        load_compressed(other)
    record["model_fingerprint"] = "0" * 16
    other.with_suffix(".json").write_text(json.dumps(record))
    torch.save(torch.load(path, weights_only=True), other)
    with pytest.raises(ValueError, match="fingerprint"):
        load_compressed(other)
    record = json.loads(path.with_suffix(".json").read_text())
    record["env_kwargs"]["flops_budget"] = 1.0
    record["policy"] = [1.0] * len(record["policy"])  # another architecture: nothing pruned
    record.pop("state_sha1")
    other.with_suffix(".json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="does not fit the architecture"):
        load_compressed(other)
    record["policy"] = record["policy"][:-1]
    other.with_suffix(".json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="has 11 values but"):
        load_compressed(other)
