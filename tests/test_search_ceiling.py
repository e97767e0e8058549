"""The search-ceiling benchmark's parts: reading matching records, the surrogate and its picks."""

from __future__ import annotations

import json
import sys

import gymnasium as gym
import numpy as np
import pytest
from conftest import REPO, SMALL_ENV_KWARGS

sys.path.insert(0, str(REPO / "benchmarks"))
from search_ceiling import fit_surrogate, load_records, propose  # noqa: E402

from pf_agents import search

ENV_ID = "ChannelPrune-ResNet20-v0"
EPISODES = 14


@pytest.fixture(scope="module")
def recorded(cifar_root, checkpoints, tmp_path_factory):
    """A small random search's run folder, and the env kwargs it was recorded with."""
    ckpt = checkpoints("resnet20")
    kwargs = {**SMALL_ENV_KWARGS, "flops_budget": 0.5, **({"checkpoint": ckpt} if ckpt else {})}
    logdir = tmp_path_factory.mktemp("ceiling_runs")
    search(ENV_ID, agent="random", episodes=EPISODES, seed=0, logdir=logdir, env_kwargs=kwargs, progress=False)
    env = gym.make(ENV_ID, **kwargs)
    yield logdir, kwargs, env
    env.close()


def test_records_are_read_only_from_matching_runs(recorded):
    logdir, kwargs, env = recorded
    fingerprint, recovery = env.unwrapped.model_fingerprint, env.unwrapped.recovery_fingerprint
    records = load_records([str(logdir)], ENV_ID, kwargs, fingerprint, recovery)
    assert len(records) == EPISODES
    assert all(len(r["applied"]) == env.unwrapped.num_steps for r in records)
    assert load_records([str(logdir)], ENV_ID, {**kwargs, "ft_iters": 5}, fingerprint) == []
    assert load_records([str(logdir)], ENV_ID, {**kwargs, "flops_budget": 0.3}, fingerprint) == []
    assert load_records([str(logdir)], "ChannelPrune-MobileNetV1-v0", kwargs, fingerprint) == []
    assert load_records([str(logdir)], ENV_ID, kwargs, "another-model") == []
    assert load_records([str(logdir)], ENV_ID, kwargs, fingerprint, "recovery-other") == []
    # a half-written last line (a killed run) is skipped, not an error
    (run,) = [p for p in logdir.iterdir() if p.is_dir()]
    with open(run / "episodes.jsonl", "a") as f:
        f.write(json.dumps(records[0])[:40])
    before = (run / "episodes.jsonl").read_text()
    assert len(load_records([str(logdir)], ENV_ID, kwargs, fingerprint, recovery)) == EPISODES
    assert (run / "episodes.jsonl").read_text() == before  # read only: the run may be live
    # a run recorded before recovery fingerprints is the plain-image BatchNorm recipe
    config = json.loads((run / "config.json").read_text())
    del config["recovery"]
    (run / "config.json").write_text(json.dumps(config))
    assert load_records([str(logdir)], ENV_ID, kwargs, fingerprint, recovery) == []
    legacy = load_records([str(logdir)], ENV_ID, {**kwargs, "bn_augment": False}, fingerprint, "recovery-plain")
    assert len(legacy) == EPISODES


def test_surrogate_picks_are_distinct_policies_the_budget_allows(recorded):
    logdir, kwargs, env = recorded
    records = load_records([str(logdir)], ENV_ID, kwargs, env.unwrapped.model_fingerprint)
    gp = fit_surrogate(records, kwargs["reward_samples"])
    picks = propose(env, gp, records, np.random.default_rng(0), rounds=2, per_round=40, picks=4)
    assert 1 <= len(picks) <= 4
    preds = [c["predicted"] for c in picks]
    assert preds == sorted(preds, reverse=True)
    for i, c in enumerate(picks):
        # what the env applies to these actions (a dry run): the picks are real, clamped policies
        env.reset(options={"dry_run": True})
        for a in c["actions"]:
            *_, info = env.step(np.array([a], np.float32))
        assert np.allclose(info["keep_ratios"], c["applied"])
        assert info["flops_ratio"] <= kwargs["flops_budget"] + 1e-6
        for other in picks[:i]:
            assert np.abs(np.subtract(c["applied"], other["applied"])).max() > 0.04
    # the surrogate ranks like the records it was fitted on (it is a regression, not noise)
    x = np.array([r["applied"] for r in records])
    y = np.array([r["reward"] for r in records])
    assert np.corrcoef(gp.predict(x), y)[0, 1] > 0.5
