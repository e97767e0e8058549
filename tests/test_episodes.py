"""Episode-dataset collection (pf_agents/episodes.py) on the Toy env: the file, resume, refusal."""

from __future__ import annotations

import json

import pytest

from pf_agents.episodes import DatasetLockedError, DatasetWriter, Plan, collect, main, read_dataset
from pf_envs.episode_data import DamagedDatasetError, export_npz, load_episodes

PLAN = Plan(seed=0, block_episodes=3, search_episodes=6, mix=(("random", 0.4), ("jitter", 0.3), ("tpe", 0.3)))


def keys(records):
    return sorted((r["block"], r["seed"], r["reward"], tuple(r["values"])) for r in records)


def test_collect_writes_a_header_and_compact_records(tmp_path):
    out = tmp_path / "toy.jsonl"
    assert collect("Toy-v0", out, 20, env_kwargs={"units": 5}, plan=PLAN, progress=False, note="n") == 20
    header, records = read_dataset(out)
    assert header["env_id"] == "Toy-v0" and header["env_settings"]["units"] == 5 and header["note"] == "n"
    assert header["budget_kwarg"] == "budget" and "budget" not in header["env_settings"]
    assert header["recovery_fingerprint"] and header["plan"]["mix"] == dict(PLAN.mix)
    assert len(records) == 20 and {r["source"] for r in records} <= {"random", "jitter", "tpe"}
    for r in records:
        assert len(r["values"]) == 5 and 0.2 <= r["budget"] <= 0.8 and r["cost_ratio"] <= r["budget"] + 1e-9
        assert r["reward"] == r["accuracy"]
    assert len({(r["block"], r["seed"]) for r in records}) == 20
    data = load_episodes(out)
    assert data.values.shape == (20, 5) and len(load_episodes(_npz(data, tmp_path))) == 20


def _npz(data, tmp_path):
    path = tmp_path / "d.npz"
    export_npz(data, path)
    return path


def test_resume_after_a_kill_plays_what_an_uninterrupted_run_would(tmp_path):
    whole, cut = tmp_path / "whole.jsonl", tmp_path / "cut.jsonl"
    collect("Toy-v0", whole, 20, plan=PLAN, progress=False)
    collect("Toy-v0", cut, 11, plan=PLAN, progress=False)  # stops inside a block
    with open(cut, "ab") as fh:
        fh.write(b'{"block": 3, "sou')  # killed mid-write
    collect("Toy-v0", cut, 20, plan=PLAN, progress=False)
    assert keys(read_dataset(cut)[1]) == keys(read_dataset(whole)[1])
    assert all(json.loads(line) for line in cut.read_text().splitlines())  # the damaged line is gone


def test_resume_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "toy.jsonl"
    collect("Toy-v0", out, 3, plan=PLAN, progress=False)
    with pytest.raises(ValueError, match="env_kwargs"):
        collect("Toy-v0", out, 6, env_kwargs={"units": 4}, plan=PLAN, progress=False)
    with pytest.raises(ValueError, match="plan"):
        collect("Toy-v0", out, 6, plan=Plan(seed=1), progress=False)
    with pytest.raises(ValueError, match="drawn per block"):
        collect("Toy-v0", tmp_path / "b.jsonl", 6, env_kwargs={"budget": 0.5}, progress=False)


def test_a_damaged_middle_line_is_an_error(tmp_path):
    out = tmp_path / "toy.jsonl"
    collect("Toy-v0", out, 4, plan=PLAN, progress=False)
    lines = out.read_text().splitlines()
    lines[2] = lines[2][:10]
    out.write_text("\n".join(lines) + "\n")
    with pytest.raises(DamagedDatasetError, match="line 3"):
        read_dataset(out)


def test_one_writer(tmp_path):
    out = tmp_path / "toy.jsonl"
    writer = DatasetWriter(out, None)
    try:
        with pytest.raises(DatasetLockedError):
            DatasetWriter(out, None)
    finally:
        writer.close()


def test_plan_is_deterministic_and_checked():
    assert [PLAN.block(i) for i in range(5)] == [PLAN.block(i) for i in range(5)]
    with pytest.raises(ValueError, match="unknown policy source"):
        Plan(mix=(("bogus", 1.0),))
    with pytest.raises(ValueError, match="budgets"):
        Plan(budgets=(0.8, 0.2))


def test_cli(tmp_path, capsys):
    out = tmp_path / "toy.jsonl"
    assert main(["--env", "Toy-v0", "--out", str(out), "--episodes", "4", "--mix", "random=1", "--no-progress"]) == 0
    assert main(["--env", "Toy-v0", "--out", str(out), "--export", str(tmp_path / "t.npz")]) == 0
    assert "sha256" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["--env", "Toy-v0", "--out", str(out), "--mix", "bogus=1"])
    assert exc.value.code == 2


def test_jitter_centre_is_the_largest_unclamped_constant():
    import gymnasium as gym
    import numpy as np

    import pf_envs  # noqa: F401
    from pf_agents.base import play_episode
    from pf_agents.episodes import uniform_action

    env = gym.make("Toy-v0", units=6, budget=0.4)
    c = uniform_action(env)
    assert not play_episode(env, np.full(6, c), dry_run=True).clamped_any
    assert play_episode(env, np.full(6, c + 0.01), dry_run=True).clamped_any


def test_a_failing_block_is_skipped_and_three_in_a_row_stop(tmp_path, monkeypatch, capsys):
    import pf_agents.episodes as ep

    calls = []
    real = ep.play_block

    def flaky(env, block, seen, remaining):
        calls.append(block.index)
        if block.index == 0:
            raise RuntimeError("boom")
        return real(env, block, seen, remaining)

    monkeypatch.setattr(ep, "play_block", flaky)
    plan = Plan(mix=(("random", 1.0),), block_episodes=2)
    assert collect("Toy-v0", tmp_path / "a.jsonl", 4, plan=plan, progress=False) == 4
    assert "block 0 (random" in capsys.readouterr().err and calls[:3] == [0, 1, 2]
    monkeypatch.setattr(ep, "play_block", lambda *a: (_ for _ in ()).throw(RuntimeError("always")))
    with pytest.raises(RuntimeError, match="always"):
        collect("Toy-v0", tmp_path / "b.jsonl", 4, plan=plan, progress=False)


def test_several_workers_collect_what_one_process_would(tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    collect("Toy-v0", one, 23, env_kwargs={"units": 5}, plan=PLAN, progress=False)
    collect("Toy-v0", two, 9, env_kwargs={"units": 5}, plan=PLAN, progress=False, workers=2)  # stops in a block
    assert len(read_dataset(two)[1]) == 9
    assert collect("Toy-v0", two, 23, env_kwargs={"units": 5}, plan=PLAN, progress=False, workers=3) == 23
    assert keys(read_dataset(two)[1]) == keys(read_dataset(one)[1])
    with pytest.raises(ValueError, match="workers"):
        collect("Toy-v0", two, 23, plan=PLAN, progress=False, workers=0)
