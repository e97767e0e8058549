"""Run folders you can trust (issue 16): one writer per run, no silent loss, exact resume for
every agent, nothing loaded from disk runs code, a sentence for every bad case.

All on the synthetic ``Toy-v0`` env (an episode takes microseconds).
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from pf_agents import search
from pf_agents.cli import main as cli_main
from pf_agents.records import DamagedRunError, RunLock, RunLockedError, RunRecord, RunWriteError, read_run

ENV_ID = "Toy-v0"
ENV_KWARGS = {"units": 6, "budget": 0.5}
DDPG_KWARGS = {"warmup_episodes": 3, "net_arch": [16, 16]}


def _search(tmp_path: Path, agent: str = "random", episodes: int = 6, **kw):
    kw.setdefault("env_kwargs", ENV_KWARGS)
    kw.setdefault("agent_kwargs", DDPG_KWARGS if agent in ("ddpg", "td3", "sac") else {})
    return search(ENV_ID, agent=agent, episodes=episodes, seed=0, logdir=tmp_path, run_name="run",
                  progress=False, **kw)


def _cli_args(tmp_path: Path, agent: str, episodes: int, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "scripts" / "search.py"), "--env", ENV_ID, "--agent", agent,
            "--episodes", str(episodes), "--logdir", str(tmp_path), "--run-name", "run", "--seed", "0",
            "--env-kwargs", "units=6,budget=0.5", "--no-progress", "--threads", "1", *extra]


def _lines(run: Path) -> list[str]:
    return (run / "episodes.jsonl").read_text().splitlines()


# -- 1. one writer per run folder -------------------------------------------------------------

def test_a_second_writer_is_refused_while_the_first_holds_the_run(tmp_path):
    first = _search(tmp_path, episodes=2)
    holder = RunRecord.open(first.run_dir, json.loads((first.run_dir / "config.json").read_text()), resume=True)
    try:
        with pytest.raises(RunLockedError, match=rf"another process \(pid {os.getpid()}.*--resume"):
            _search(tmp_path, episodes=10, resume=True)
        assert len(_lines(first.run_dir)) == 2  # nothing was read-modified or appended
    finally:
        holder.close()
    assert len(_search(tmp_path, episodes=4, resume=True).history) == 4  # released: fine


_HOLD = """
import sys, time
from pathlib import Path
from pf_agents.records import RunLock
lock = RunLock(Path(sys.argv[1]))
lock.acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_cli_second_process_exits_2_and_a_killed_writer_leaves_no_stale_lock(tmp_path):
    """The issue's case: a run being written and the same command with --resume."""
    first = _search(tmp_path, episodes=2)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(first.run_dir)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        out = subprocess.run(_cli_args(tmp_path, "random", 10, "--resume"), capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "another process" in out.stderr and f"pid {holder.pid}" in out.stderr
        assert "Traceback" not in out.stderr
        assert len(_lines(first.run_dir)) == 2
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the OS released the dead holder's lock: the run continues
    out = subprocess.run(_cli_args(tmp_path, "random", 5, "--resume"), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert [json.loads(x)["episode"] for x in _lines(first.run_dir)] == list(range(5))


# -- 2. damage is never silently dropped -------------------------------------------------------

def test_a_damaged_middle_line_stops_the_resume_and_nothing_is_rewritten(tmp_path):
    run = _search(tmp_path, episodes=6).run_dir
    path = run / "episodes.jsonl"
    data = bytearray(path.read_bytes())
    second = data.index(b"\n") + 1
    data[second + 5: second + 7] = b"\0\0"
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedRunError, match=rf"{path} line 2 is not valid JSON.*left as it is"):
        _search(tmp_path, episodes=8, resume=True)
    with pytest.raises(DamagedRunError, match="line 2"):
        read_run(run)
    assert path.read_bytes() == bytes(data)


def test_an_invalid_record_anywhere_is_named(tmp_path):
    run = _search(tmp_path, episodes=4).run_dir
    path = run / "episodes.jsonl"
    lines = _lines(run)
    rec = json.loads(lines[1])
    del rec["reward"]
    path.write_text("\n".join([lines[0], json.dumps(rec), *lines[2:]]) + "\n")
    with pytest.raises(DamagedRunError, match=rf"{path} line 2 is not a valid episode record \(missing 'reward'\)"):
        _search(tmp_path, episodes=6, resume=True)
    # a complete LAST line that is not a valid record is damage too, not a kill
    path.write_text("\n".join([*lines, lines[-1]]) + "\n")
    with pytest.raises(DamagedRunError, match="line 5 .*episode is 3 where episode 4 belongs"):
        _search(tmp_path, episodes=6, resume=True)


def test_only_a_half_written_last_line_is_dropped(tmp_path):
    run = _search(tmp_path, episodes=3).run_dir
    path = run / "episodes.jsonl"
    with open(path, "a") as f:
        f.write('{"episode": 3, "rew')
    assert len(read_run(run).episodes) == 3 and path.read_text().endswith('"rew')  # reader: no write
    assert [e["episode"] for e in _search(tmp_path, episodes=5, resume=True).history] == list(range(5))
    assert all(json.loads(x) for x in _lines(run))


# -- 3. records without a config ---------------------------------------------------------------

def test_records_without_a_config_are_refused(tmp_path):
    run = _search(tmp_path, episodes=3).run_dir
    (run / "config.json").unlink()
    with pytest.raises(FileExistsError, match="no config.json"):
        _search(tmp_path, episodes=6)
    with pytest.raises(FileExistsError, match="no config.json"):
        _search(tmp_path, episodes=6, resume=True)
    assert len(_lines(run)) == 3


def test_a_damaged_config_is_named(tmp_path, capsys):
    run = _search(tmp_path, episodes=2).run_dir
    (run / "config.json").write_text('{"env_id": "Toy-v0", ')
    with pytest.raises(DamagedRunError, match=rf"cannot read {run / 'config.json'} .*config is damaged"):
        _search(tmp_path, episodes=4, resume=True)
    args = _cli_args(tmp_path, "random", 4, "--resume")[2:]
    assert cli_main(args) == 2
    assert "config is damaged" in capsys.readouterr().err


# -- 4. nothing loaded from a run folder runs code ---------------------------------------------

class _Planted:
    """A pickle that, when loaded, creates a marker file (what a hostile folder would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_planted_pickles_are_never_loaded(tmp_path):
    marker = tmp_path / "code-ran"
    run = _search(tmp_path, "ddpg", episodes=4).run_dir
    for name in ("agent_policy.pt", "agent_replay_buffer.npz", "agent_state.json"):
        (run / name).unlink()
    # the old pickle format: refused by name, never opened
    (run / "agent_replay_buffer.pkl").write_bytes(pickle.dumps(_Planted(marker)))
    import zipfile

    with zipfile.ZipFile(run / "agent_model.zip", "w") as z:
        z.writestr("data", json.dumps({"policy_class": {":serialized:": pickle.dumps(_Planted(marker)).hex()}}))
    with pytest.raises(ValueError, match="older, unsafe format"):
        _search(tmp_path, "ddpg", episodes=6, resume=True)
    assert not marker.exists()
    # a pickle planted under the new names: torch.load(weights_only=True) / np.load(allow_pickle=False) refuse
    (run / "agent_replay_buffer.pkl").unlink()
    (run / "agent_model.zip").unlink()
    import torch

    torch.save({"state": _Planted(marker)}, run / "agent_policy.pt")
    with open(run / "agent_replay_buffer.npz", "wb") as f:
        np.save(f, np.array([_Planted(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="cannot resume the agent") as err:
        _search(tmp_path, "ddpg", episodes=6, resume=True)
    assert not marker.exists()
    # the reason, without PyTorch's advice to load the file with weights_only=False (which runs it)
    assert "refused" in str(err.value) and "weights_only" not in str(err.value), err.value


def test_a_planted_object_array_in_the_buffer_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    run = _search(tmp_path, "ddpg", episodes=4).run_dir
    with np.load(run / "agent_replay_buffer.npz") as z:
        arrays = dict(z)
    arrays["observations"] = np.array([_Planted(marker)], dtype=object)
    with open(run / "agent_replay_buffer.npz", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match="cannot resume the agent.*agent_replay_buffer.npz"):
        _search(tmp_path, "ddpg", episodes=6, resume=True)
    assert not marker.exists()


def test_deleting_the_agent_files_rebuilds_the_agent_from_the_records(tmp_path):
    """The way out of a refused (unsafe or damaged) agent state: records are enough."""
    full = _search(tmp_path / "full", "ddpg", episodes=7)
    run = _search(tmp_path, "ddpg", episodes=4).run_dir
    for name in ("agent_policy.pt", "agent_replay_buffer.npz", "agent_state.json"):
        (run / name).unlink()
    resumed = _search(tmp_path, "ddpg", episodes=7, resume=True)
    assert [e["raw_actions"] for e in resumed.history] == [e["raw_actions"] for e in full.history]
    assert json.loads((run / "agent_state.json").read_text())["episodes_trained"] == 7


# -- 5. exact resume for the learning agents after a kill at any point -------------------------

class _Kill(BaseException):
    """Stands for SIGKILL inside the process (nothing catches a BaseException subclass)."""


def _kill_at(monkeypatch, point: str, episode: int) -> None:
    from pf_agents import ddpg, records

    if point == "before_record":
        real = records.RunRecord._append_line

        def append_line(path, text):
            if json.loads(text)["episode"] == episode:
                raise _Kill
            real(path, text)

        monkeypatch.setattr(records.RunRecord, "_append_line", staticmethod(append_line))
    elif point == "after_record":  # recorded, not trained on, not saved
        real_append = records.RunRecord.append

        def append(self, rec):
            out = real_append(self, rec)
            if rec["episode"] == episode:
                raise _Kill
            return out

        monkeypatch.setattr(records.RunRecord, "append", append)
    elif point in ("during_save", "after_save"):  # the save after training on `episode`
        monkeypatch.setattr(ddpg, "SAVE_INTERVAL_S", 0.0)  # a save after every episode's update
        real_save = ddpg.atomic_torch_save

        def torch_save(obj, path, **kw):
            trained = json.loads(obj["state"])["episodes_trained"]
            if point == "during_save" and trained == episode + 1:
                raise _Kill  # the replay buffer is already replaced, the policy not
            real_save(obj, path, **kw)
            if point == "after_save" and trained == episode + 1:
                raise _Kill

        monkeypatch.setattr(ddpg, "atomic_torch_save", torch_save)
    else:
        raise AssertionError(point)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Uninterrupted 8-episode runs of each learning agent, to compare resumed ones with."""
    cache: dict[str, object] = {}

    def get(agent: str):
        if agent not in cache:
            cache[agent] = _search(tmp_path_factory.mktemp(agent), agent, episodes=8)
        return cache[agent]

    return get


def _assert_same_as_uninterrupted(result, reference, run: Path, episodes: int = 8) -> None:
    assert [e["episode"] for e in read_run(run).episodes] == list(range(episodes))
    assert [e["raw_actions"] for e in result.history] == [e["raw_actions"] for e in reference.history]
    assert [e["reward"] for e in result.history] == [e["reward"] for e in reference.history]
    state = json.loads((run / "agent_state.json").read_text())
    assert state["episodes_trained"] == episodes
    assert state == {**json.loads((reference.run_dir / "agent_state.json").read_text()), "saved": state["saved"]}


@pytest.mark.parametrize("point", ["before_record", "after_record", "during_save", "after_save"])
@pytest.mark.parametrize("episode", [1, 4])  # in the warm-up, and once learning
def test_ddpg_resumes_exactly_after_a_kill_at_any_point(point, episode, tmp_path, monkeypatch, uninterrupted):
    with monkeypatch.context() as m:
        _kill_at(m, point, episode)
        with pytest.raises(_Kill):
            _search(tmp_path, "ddpg", episodes=8)
    run = tmp_path / "run"
    recorded = len(read_run(run).episodes)
    assert recorded == episode + (point != "before_record")
    resumed = _search(tmp_path, "ddpg", episodes=8, resume=True)
    _assert_same_as_uninterrupted(resumed, uninterrupted("ddpg"), run)


@pytest.mark.parametrize("agent", ["td3", "sac"])
def test_td3_and_sac_resume_exactly_after_a_kill_between_record_and_save(agent, tmp_path, monkeypatch,
                                                                          uninterrupted):
    with monkeypatch.context() as m:
        _kill_at(m, "after_record", 4)
        with pytest.raises(_Kill):
            _search(tmp_path, agent, episodes=8)
    resumed = _search(tmp_path, agent, episodes=8, resume=True)
    _assert_same_as_uninterrupted(resumed, uninterrupted(agent), tmp_path / "run")


def test_ddpg_resumes_exactly_after_a_kill_many_episodes_after_its_last_save(tmp_path, monkeypatch, uninterrupted):
    """Saves are throttled (ddpg.SAVE_INTERVAL_S): a kill long after the last save replays every
    recorded episode the saved state has not trained on, with their updates."""
    from pf_agents import ddpg

    monkeypatch.setattr(ddpg, "SAVE_INTERVAL_S", 1e9)  # saved once (after episode 0's update), then at the end
    with monkeypatch.context() as m:
        _kill_at(m, "after_record", 6)
        with pytest.raises(_Kill):
            _search(tmp_path, "ddpg", episodes=8)
    assert json.loads((tmp_path / "run" / "agent_state.json").read_text())["episodes_trained"] == 1
    resumed = _search(tmp_path, "ddpg", episodes=8, resume=True)
    _assert_same_as_uninterrupted(resumed, uninterrupted("ddpg"), tmp_path / "run")


def test_episodes_are_fsynced_at_most_once_a_second_and_at_the_end(tmp_path, monkeypatch):
    from pf_agents import records

    synced: list[str] = []
    real = records.RunRecord._fsync_path
    monkeypatch.setattr(records.RunRecord, "_fsync_path",
                        staticmethod(lambda path: (synced.append(Path(path).name), real(path))[1]))
    monkeypatch.setattr(records, "SYNC_INTERVAL_S", 1e9)
    result = _search(tmp_path, episodes=5)
    # the first episode, then once when the run ends (episodes and best.json); every line is there
    assert synced == ["episodes.jsonl", "episodes.jsonl", "best.json"]
    assert len(_lines(result.run_dir)) == 5
    synced.clear()
    monkeypatch.setattr(records, "SYNC_INTERVAL_S", 0.0)
    _search(tmp_path / "each", episodes=3)
    assert synced.count("episodes.jsonl") == 3  # a real env's episodes (seconds each): every one


def test_a_run_recorded_before_a_setting_existed_resumes(tmp_path):
    """A setting added to an agent later (its default keeps the earlier behaviour) does not
    refuse the resume of a run whose config does not name it."""
    run = _search(tmp_path, "ddpg", episodes=3).run_dir
    config = json.loads((run / "config.json").read_text())
    del config["agent_kwargs"]["reward_baseline"]
    (run / "config.json").write_text(json.dumps(config))
    assert len(_search(tmp_path, "ddpg", episodes=4, resume=True).history) == 4
    assert json.loads((run / "config.json").read_text())["agent_kwargs"]["reward_baseline"] == "ema"
    with pytest.raises(ValueError, match="cannot resume .* other settings"):
        _search(tmp_path, "ddpg", episodes=5, resume=True, agent_kwargs={**DDPG_KWARGS, "reward_baseline": "raw"})


def test_ddpg_sigkill_then_resume_repeats_no_episode(tmp_path):
    """The issue's case with a real SIGKILL, wherever it lands (in an episode, a write, a save)."""
    args = _cli_args(tmp_path, "ddpg", 5000, "--agent-kwargs", "warmup_episodes=3,net_arch=[16,16]")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "run"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run / "episodes.jsonl").is_file() and len(_lines(run)) >= 5:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(read_run(run).episodes)
    assert 5 <= done < 5000
    target = done + 3
    args[args.index("--episodes") + 1] = str(target)
    out = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    episodes = read_run(run).episodes
    assert [e["episode"] for e in episodes] == list(range(target))
    assert json.loads((run / "agent_state.json").read_text())["episodes_trained"] == target
    reference = _search(tmp_path / "ref", "ddpg", episodes=target)
    assert [e["raw_actions"] for e in episodes] == [e["raw_actions"] for e in reference.history]


# -- a failed start leaves nothing that refuses the corrected command ---------------------------

def test_a_failed_start_leaves_no_run_folder(tmp_path):
    with pytest.raises(ValueError, match="budget"):
        _search(tmp_path, env_kwargs={"units": 6, "budget": 0.01})  # unreachable budget
    assert not (tmp_path / "run").exists()
    with pytest.raises(TypeError, match="unknown keyword"):
        _search(tmp_path, env_kwargs={"units": 6, "budgte": 0.5})
    with pytest.raises(TypeError, match="warmup_episodes"):
        _search(tmp_path, "ddpg", agent_kwargs={"warmup": 3})
    assert not (tmp_path / "run").exists()
    assert len(_search(tmp_path, episodes=2).history) == 2  # the corrected command runs


def test_a_folder_that_exists_but_never_finished_an_episode_is_started_afresh(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    from pf_agents import ddpg

    def boom(*a, **k):
        raise RuntimeError("out of memory (simulated)")

    with monkeypatch.context() as m:
        m.setattr(ddpg.SB3Agent, "run", boom)
        with pytest.raises(RuntimeError):
            _search(tmp_path, "ddpg")
    assert (tmp_path / "run").is_dir() and not (tmp_path / "run" / "config.json").exists()
    assert not list((tmp_path / "run").rglob("events.out.tfevents.*"))  # no curves of a run that never ran
    assert len(_search(tmp_path, "random", episodes=2).history) == 2


def test_logdir_that_is_a_file_gets_a_sentence(tmp_path, capsys):
    logdir = tmp_path / "runs"
    logdir.write_text("not a folder")
    with pytest.raises(ValueError, match=f"{logdir} is a file, not a folder"):
        search(ENV_ID, agent="random", episodes=1, logdir=logdir, env_kwargs=ENV_KWARGS, progress=False)
    args = ["--env", ENV_ID, "--agent", "random", "--episodes", "1", "--logdir", str(logdir), "--no-progress"]
    assert cli_main(args) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


# -- a full or read-only disk: a sentence, and the records stay intact ---------------------------

@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_gets_a_sentence_and_keeps_the_records(code, tmp_path, monkeypatch):
    from pf_agents import records

    _search(tmp_path, episodes=3)
    real = records.RunRecord._append_line

    def append_line(path, text):
        if json.loads(text)["episode"] == 4:
            raise OSError(code, os.strerror(code), str(path))
        real(path, text)

    with monkeypatch.context() as m:
        m.setattr(records.RunRecord, "_append_line", staticmethod(append_line))
        with pytest.raises(RunWriteError, match=r"cannot write .*episodes.jsonl .*intact.*--resume"):
            _search(tmp_path, episodes=8, resume=True)
    assert [e["episode"] for e in read_run(tmp_path / "run").episodes] == [0, 1, 2, 3]
    assert len(_search(tmp_path, episodes=8, resume=True).history) == 8


def test_a_file_size_limit_in_the_cli_is_one_sentence(tmp_path):
    """A real failing write (RLIMIT_FSIZE: the kernel refuses to grow files, as on a full disk)."""
    resource = pytest.importorskip("resource")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))

    out = subprocess.run(_cli_args(tmp_path, "random", 200), capture_output=True, text=True, timeout=120,
                         preexec_fn=limit)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "cannot write" in out.stderr and "--resume" in out.stderr
    episodes = read_run(tmp_path / "run").episodes
    assert len(episodes) >= 1 and [e["episode"] for e in episodes] == list(range(len(episodes)))


# -- TPE -----------------------------------------------------------------------------------------

def test_a_garbage_optuna_db_is_named(tmp_path):
    run = _search(tmp_path, "tpe", episodes=2, agent_kwargs={"n_startup_trials": 1}).run_dir
    (run / "optuna.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(ValueError, match=rf"{run / 'optuna.db'} .*Delete it"):
        _search(tmp_path, "tpe", episodes=4, agent_kwargs={"n_startup_trials": 1}, resume=True)
    (run / "optuna.db").unlink()  # as the message says: the study is rebuilt from the records
    assert len(_search(tmp_path, "tpe", episodes=4, agent_kwargs={"n_startup_trials": 1}, resume=True).history) == 4


def test_lock_file_names_its_holder(tmp_path):
    lock = RunLock(tmp_path)
    lock.acquire()
    try:
        assert (tmp_path / ".lock").read_text().startswith(f"pid {os.getpid()} ")
        with pytest.raises(RunLockedError):
            RunLock(tmp_path).acquire()
    finally:
        lock.release()
    again = RunLock(tmp_path)
    again.acquire()  # released: free again
    again.release()


def test_a_nan_reward_is_recorded_and_does_not_end_the_search(tmp_path):
    """A non-finite reward is stored as "nan" in JSON; the record kept in memory must read it
    back as the float it was (the comparison with the best one crashed on the string)."""
    import math

    import gymnasium as gym

    from pf_envs.envs.toy import ToyEnv
    from pf_envs.rewards import Measurements

    class NanToy(ToyEnv):
        calls = 0

        def _evaluate(self):
            NanToy.calls += 1
            measured, extra = super()._evaluate()
            if NanToy.calls == 2:
                measured = Measurements(float("nan"), *list(measured.__dict__.values())[1:])
            return measured, extra

    if "NanToy-v0" not in gym.registry:
        gym.register("NanToy-v0", entry_point=NanToy)
    result = search("NanToy-v0", agent="random", episodes=4, logdir=tmp_path, env_kwargs={"units": 4}, progress=False)
    rewards = [e["reward"] for e in result.history]
    assert len(rewards) == 4 and math.isnan(rewards[1]) and all(isinstance(r, float) for r in rewards)
    assert not math.isnan(result.best_reward)
    resumed = search("NanToy-v0", agent="random", episodes=5, logdir=tmp_path, env_kwargs={"units": 4},
                     progress=False, resume=True)
    assert len(resumed.history) == 5


def test_a_complete_but_garbled_last_line_is_damage_not_a_kill(tmp_path):
    """A kill leaves a last line without its newline; a terminated line that is not JSON was
    damaged otherwise: the resume stops instead of dropping it."""
    kw = dict(agent="random", seed=0, logdir=tmp_path, env_kwargs={"units": 4}, progress=False)
    run = search("Toy-v0", episodes=3, **kw).run_dir
    lines = (run / "episodes.jsonl").read_text().splitlines()
    (run / "episodes.jsonl").write_text("\n".join(lines[:-1] + ["{garbled" + lines[-1][8:]]) + "\n")
    with pytest.raises(DamagedRunError, match="line 3"):
        search("Toy-v0", episodes=4, resume=True, **kw)


def test_a_start_that_loses_the_lock_race_never_deletes_the_winners_folder(tmp_path, monkeypatch):
    """A makes the new folder, B takes its lock first: A must refuse without deleting B's run
    (it removed the folder it had made, lock file and all, and a third writer could start)."""
    original = RunLock.acquire
    winner: list[RunLock] = []

    def b_wins_first(self):
        if not winner:
            b = RunLock(self.path.parent)
            original(b)
            winner.append(b)
        return original(self)

    monkeypatch.setattr(RunLock, "acquire", b_wins_first)
    with pytest.raises(RunLockedError):
        search("Toy-v0", agent="random", episodes=1, logdir=tmp_path, run_name="r", env_kwargs={"units": 3},
               progress=False)
    monkeypatch.setattr(RunLock, "acquire", original)
    assert (tmp_path / "r" / ".lock").is_file()  # B's folder and lock file are still there
    with pytest.raises(RunLockedError):  # and B still holds the only lock on it
        RunLock(tmp_path / "r").acquire()
    winner[0].release()
