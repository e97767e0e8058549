"""scripts/replay.py: a recorded policy replayed from its run folder, without an agent."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO

from pf_agents import search

sys.path.insert(0, str(REPO / "scripts"))
from replay import main  # noqa: E402


def test_replays_the_best_and_any_episode_of_a_run(tmp_path, capsys):
    kwargs = {"units": 6, "budget": 0.4}
    result = search("Toy-v0", agent="random", episodes=4, seed=3, logdir=tmp_path, env_kwargs=kwargs, progress=False)
    assert main([str(result.run_dir)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reward"] == out["recorded_reward"] == result.best_reward
    assert out["policy"] == [round(v, 6) for v in result.best["applied"]]
    assert main([str(result.run_dir), "--episode", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reward"] == result.history[2]["reward"]
    assert main([str(result.run_dir), "--save", str(tmp_path / "m.pt")]) == 2  # Toy has no model
    assert "no model" in capsys.readouterr().err


def test_a_folder_that_is_not_a_run_is_one_sentence(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "is not a search run folder" in capsys.readouterr().err
    assert main([str(tmp_path), "--episode", "7"]) == 2


# ------------------------------------------------------------------ replay checks what it replays


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _edit_episodes(run_dir, change):
    lines = [json.loads(line) for line in (run_dir / "episodes.jsonl").read_text().splitlines()]
    for rec in lines:
        change(rec)
    (run_dir / "episodes.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in lines))


@pytest.fixture(scope="module")
def resnet_run(cifar_root, checkpoints, tmp_path_factory):
    """A one-episode ChannelPrune-ResNet20 run (small settings, ft_iters=0: bit-deterministic)."""
    from conftest import SMALL_ENV_KWARGS

    ckpt = checkpoints("resnet20")
    kwargs = {**SMALL_ENV_KWARGS, **({"checkpoint": ckpt} if ckpt else {})}
    return search("ChannelPrune-ResNet20-v0", agent="random", episodes=1, seed=0, progress=False,
                  logdir=tmp_path_factory.mktemp("runs"), env_kwargs=kwargs).run_dir


def test_a_config_edited_to_other_settings_is_refused_in_one_sentence(tmp_path, capsys):
    result = search("Toy-v0", agent="random", episodes=3, seed=3, logdir=tmp_path,
                    env_kwargs={"units": 6, "budget": 0.4}, progress=False)
    _edit_json(result.run_dir / "config.json", lambda c: c["env_kwargs"].update(budget=0.5))
    assert main([str(result.run_dir)]) == 2
    err = capsys.readouterr().err
    assert "was recorded with recovery fingerprint" in err and "config.json" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_replayed_reward_other_than_the_recorded_one_is_an_error(tmp_path, capsys):
    result = search("Toy-v0", agent="random", episodes=3, seed=3, logdir=tmp_path,
                    env_kwargs={"units": 6, "budget": 0.4}, progress=False)
    _edit_episodes(result.run_dir, lambda rec: rec.update(reward=rec["reward"] + 0.1))
    assert main([str(result.run_dir)]) == 2
    err = capsys.readouterr().err
    assert "the replayed reward of episode" in err and "bit-deterministic" in err, err


@pytest.mark.slow  # ~90 s: six ResNet-20 envs
def test_replay_checks_the_recorded_model_and_recipe(resnet_run, tmp_path, capsys):
    """ResNet-20 at ft_iters=0: the recorded run replays to its reward, also scored on another
    split; an edited recipe, another base model or a damaged reward is refused, by replay and by
    the source re-training and export read."""
    import shutil

    from pf_deploy.starting_model import resolve_source
    from pf_envs.recorded import RecordMismatchError

    assert main([str(resnet_run)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reward"] == out["recorded_reward"]
    assert main([str(resnet_run), "--split", "test", "--samples", "300"]) == 0  # other settings on purpose: fine
    capsys.readouterr()
    resolve_source(run=resnet_run).make_env().close()

    def edited(change, name):
        run = tmp_path / name
        shutil.copytree(resnet_run, run)
        _edit_json(run / "config.json", change)
        return run

    budget = edited(lambda c: c["env_kwargs"].update(flops_budget=0.7), "budget")
    weights = edited(lambda c: c.update(base_model="0" * 20), "weights")
    for run, said in ((budget, "recovery fingerprint"), (weights, "base-model weights")):
        assert main([str(run)]) == 2
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, err
        with pytest.raises(RecordMismatchError, match=said):
            resolve_source(run=run).make_env()
    reward = edited(lambda c: None, "reward")
    _edit_episodes(reward, lambda rec: rec.update(reward=rec["reward"] - 0.05))
    assert main([str(reward)]) == 2
    assert "the replayed reward of episode 0" in capsys.readouterr().err


def test_check_recorded_compares_both_fingerprints_and_the_reward():
    """The one check replay and the re-training/export sources call, on a stand-in env."""
    from types import SimpleNamespace

    import torch

    from pf_envs.recorded import RecordMismatchError, ReplayedRewardWarning, check_recorded

    env = SimpleNamespace(model_fingerprint="m1", recovery_fingerprint="r1", device=torch.device("cpu"), ft_iters=0)
    config = {"env_id": "X-v0", "base_model": "m1", "recovery": "r1"}
    check_recorded(env, config, record={"episode": 0, "reward": 0.5}, reward=0.5)
    with pytest.raises(RecordMismatchError,
                       match="fingerprint m0, but X-v0 with these kwargs loads weights of fingerprint m1"):
        check_recorded(env, {**config, "base_model": "m0"})
    with pytest.raises(RecordMismatchError, match="recovery fingerprint r0, but X-v0 with the recorded settings"):
        check_recorded(env, {**config, "recovery": "r0"})
    with pytest.raises(RecordMismatchError, match=r"is 0\.750000, but 0\.725000 was recorded"):
        check_recorded(env, config, record={"episode": 0, "reward": 0.725}, reward=0.75)
    env.ft_iters = 100  # fine-tuning on several threads: a warning with both numbers
    with pytest.warns(ReplayedRewardWarning, match=r"0\.750000, but 0\.725000.*not bit-deterministic.*ft_iters=100"):
        check_recorded(env, config, record={"episode": 0, "reward": 0.725}, reward=0.75)
