"""The search harness and every agent, on the synthetic Toy-v0 env (an episode takes
microseconds), plus a few integration tests on a small ResNet-20 environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from conftest import REPO, SMALL_ENV_KWARGS

from pf_agents import AGENTS, search
from pf_agents.cli import main as cli_main
from pf_agents.cli import parse_kwargs
from pf_agents.records import read_run

ENV_ID = "Toy-v0"
TOY_KWARGS = {"units": 6, "budget": 0.5}
RESNET_ID = "ChannelPrune-ResNet20-v0"
FAST_AGENT_KWARGS = {
    "ddpg": {"warmup_episodes": 2, "net_arch": [32, 32]},
    "td3": {"warmup_episodes": 2, "net_arch": [32, 32]},
    "sac": {"warmup_episodes": 2, "net_arch": [32, 32]},
    "gp": {"initial_points": 2},
    "tpe": {"n_startup_trials": 2},
    "random": {},
    "uniform": {},
}


@pytest.fixture(scope="module")
def resnet_kwargs(cifar_root, checkpoints):
    ckpt = checkpoints("resnet20")
    return {**SMALL_ENV_KWARGS, **({"checkpoint": ckpt} if ckpt else {})}


@pytest.fixture
def env_kwargs():
    return dict(TOY_KWARGS)


def tb_tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    return set(tags["scalars"]) | set(tags["histograms"])


def test_registry_covers_the_agents():
    assert set(FAST_AGENT_KWARGS) == set(AGENTS)


@pytest.mark.parametrize("agent", sorted(AGENTS))
def test_agent_runs_and_records(agent, env_kwargs, tmp_path):
    episodes = 1 if agent == "uniform" else 4
    result = search(ENV_ID, agent=agent, episodes=episodes, seed=0, logdir=tmp_path, env_kwargs=env_kwargs,
                    agent_kwargs=FAST_AGENT_KWARGS[agent], progress=False)
    run = result.run_dir
    assert run.name == f"{ENV_ID}__{agent}__seed0"
    lines = (run / "episodes.jsonl").read_text().splitlines()
    assert len(lines) == episodes == len(result.history)
    first = json.loads(lines[0])
    for key in ("episode", "seed", "reward", "raw_actions", "applied", "info", "wall_time_s"):
        assert key in first
    assert {"accuracy", "accuracy_original", "flops_ratio", "params_ratio"} <= set(first["info"])
    best = json.loads((run / "best.json").read_text())
    assert best["reward"] == max(json.loads(line)["reward"] for line in lines) == result.best_reward
    assert json.loads((run / "config.json").read_text())["agent"] == agent
    tags = tb_tags(run)
    assert {"compress/reward", "compress/best_reward", "compress/accuracy", "compress/flops_ratio",
            "compress/applied_actions"} <= tags
    assert all(info["flops_ratio"] <= 0.5 + 1e-9 for info in (json.loads(x)["info"] for x in lines))


def test_random_search_on_resnet20(resnet_kwargs, tmp_path):
    """Integration: the harness on a real env (records, curves, budget, fingerprints)."""
    result = search(RESNET_ID, agent="random", episodes=2, seed=0, logdir=tmp_path, env_kwargs=resnet_kwargs,
                    progress=False)
    lines = (result.run_dir / "episodes.jsonl").read_text().splitlines()
    assert len(lines) == 2 and {"accuracy", "keep_ratios"} <= set(json.loads(lines[0])["info"])
    assert all(json.loads(x)["info"]["flops_ratio"] <= 0.5 + 1e-9 for x in lines)
    config = json.loads((result.run_dir / "config.json").read_text())
    assert len(config["base_model"]) == 20 and config["recovery"].startswith("recovery-")
    assert {"compress/reward", "compress/accuracy"} <= tb_tags(result.run_dir)


@pytest.mark.parametrize("agent", ["random", "uniform", "tpe", "gp"])
def test_same_seed_same_records(agent, env_kwargs, tmp_path):
    runs = [
        search(ENV_ID, agent=agent, episodes=3, seed=5, logdir=tmp_path / str(i), env_kwargs=env_kwargs,
               agent_kwargs=FAST_AGENT_KWARGS[agent], progress=False)
        for i in range(2)
    ]
    a, b = (r.history for r in runs)
    assert [e["raw_actions"] for e in a] == [e["raw_actions"] for e in b]
    assert [e["reward"] for e in a] == [e["reward"] for e in b]
    assert [e["seed"] for e in a] == [e["seed"] for e in b]


def test_uniform_policy_meets_the_budget(env_kwargs, tmp_path):
    result = search(ENV_ID, agent="uniform", episodes=5, seed=0, logdir=tmp_path, env_kwargs=env_kwargs,
                    progress=False)
    assert len(result.history) == 1  # deterministic: scored once
    info = result.best["info"]
    assert 0.45 <= info["flops_ratio"] <= 0.5 + 1e-9
    assert len(set(np.round(result.best["raw_actions"], 6))) == 1


def test_resume_continues_and_refuses_overwrite(env_kwargs, tmp_path):
    kw = dict(agent="random", seed=1, logdir=tmp_path, env_kwargs=env_kwargs, progress=False)
    search(ENV_ID, episodes=2, **kw)
    with pytest.raises(FileExistsError, match="--resume"):
        search(ENV_ID, episodes=4, **kw)
    # a kill in the middle of writing leaves half a line: it is dropped, nothing else lost
    run = tmp_path / f"{ENV_ID}__random__seed1"
    with open(run / "episodes.jsonl", "a") as f:
        f.write('{"episode": 2, "rew')
    resumed = search(ENV_ID, episodes=4, resume=True, **kw)
    assert [e["episode"] for e in resumed.history] == [0, 1, 2, 3]
    fresh = search(ENV_ID, episodes=4, **{**kw, "logdir": tmp_path / "fresh"})
    assert [e["raw_actions"] for e in fresh.history] == [e["raw_actions"] for e in resumed.history]
    with pytest.raises(ValueError, match="other settings"):
        search(ENV_ID, episodes=5, resume=True, **{**kw, "env_kwargs": {**env_kwargs, "budget": 0.3}})


def test_resume_compares_the_settings_with_the_defaults_filled_in(tmp_path):
    """A default spelled out (or left out) is the same setting: the resume goes on."""
    kw = dict(agent="random", seed=1, logdir=tmp_path, progress=False)
    search(ENV_ID, episodes=2, env_kwargs={"units": 6}, **kw)
    resumed = search(ENV_ID, episodes=3, resume=True, env_kwargs={"units": 6, "budget": 0.5, "grid": 0.05}, **kw)
    assert len(resumed.history) == 3
    assert search(ENV_ID, episodes=4, resume=True, env_kwargs={"units": 6}, **kw).history[-1]["episode"] == 3
    with pytest.raises(ValueError, match=r"other settings: \{'env_kwargs.budget': \(0.5, 0.3\)\}"):
        search(ENV_ID, episodes=5, resume=True, env_kwargs={"units": 6, "budget": 0.3}, **kw)


def test_resume_with_the_default_flops_budget_spelled_out(resnet_kwargs, tmp_path):
    """The issue's case: --env-kwargs flops_budget=0.5 (the default) added on --resume."""
    kw = dict(agent="random", seed=0, logdir=tmp_path, progress=False)
    search(RESNET_ID, episodes=1, env_kwargs=resnet_kwargs, **kw)
    resumed = search(RESNET_ID, episodes=2, resume=True, env_kwargs={**resnet_kwargs, "flops_budget": 0.5}, **kw)
    assert len(resumed.history) == 2


def test_resume_refuses_other_base_model_weights(resnet_kwargs, tmp_path):
    """A checkpoint re-trained in place (same path, same kwargs) must not be mixed into a run."""
    import torch

    from pf_envs import zoo

    ckpt = tmp_path / "base.pt"
    model = zoo.load("resnet20", checkpoint=resnet_kwargs.get("checkpoint"))
    zoo.save_checkpoint(model, ckpt)
    kw = dict(agent="random", seed=0, logdir=tmp_path, progress=False,
              env_kwargs={**resnet_kwargs, "checkpoint": str(ckpt)})
    first = search(RESNET_ID, episodes=1, **kw)
    recorded = json.loads((first.run_dir / "config.json").read_text())["base_model"]
    assert len(recorded) == 20
    assert len(search(RESNET_ID, episodes=2, resume=True, **kw).history) == 2  # same weights: fine
    with torch.no_grad():
        next(model.parameters()).mul_(0.5)
    zoo.save_checkpoint(model, ckpt)
    with pytest.raises(ValueError, match="base-model weights"):
        search(RESNET_ID, episodes=3, resume=True, **kw)
    assert len(read_run(first.run_dir).episodes) == 2  # nothing was played against the new weights


def test_resume_refuses_another_recovery_recipe(resnet_kwargs, tmp_path, monkeypatch):
    """A default or the env's recovery changed since the run was recorded: not mixed in."""
    from pf_envs.envs import channel_prune

    kw = dict(agent="random", seed=0, logdir=tmp_path, progress=False, env_kwargs=resnet_kwargs)
    first = search(RESNET_ID, episodes=1, **kw)
    config_path = first.run_dir / "config.json"
    recorded = json.loads(config_path.read_text())["recovery"]
    assert recorded.startswith("recovery-")
    assert len(search(RESNET_ID, episodes=2, resume=True, **kw).history) == 2  # same recipe: fine
    env_cls = channel_prune.ChannelPruneEnv
    monkeypatch.setattr(env_cls, "RECOVERY_VERSION", env_cls.RECOVERY_VERSION + 1)
    with pytest.raises(ValueError, match="another recovery recipe"):
        search(RESNET_ID, episodes=3, resume=True, **kw)
    monkeypatch.undo()
    # a run recorded before recipes were recorded (episodes, no "recovery") is refused too
    config = json.loads(config_path.read_text())
    del config["recovery"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="older recovery recipe"):
        search(RESNET_ID, episodes=3, resume=True, **kw)
    assert len(read_run(first.run_dir).episodes) == 2


def _cli(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "search.py"), *args, "--no-progress", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})},
    )


def _kwargs_arg(env_kwargs: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in env_kwargs.items())


def test_killed_run_resumes(env_kwargs, tmp_path):
    """SIGKILL wherever it lands; the resumed run plays what an uninterrupted one would have.
    (DDPG: tests/test_run_folder.py::test_ddpg_sigkill_then_resume_repeats_no_episode.)"""
    args = ["--env", ENV_ID, "--agent", "random", "--episodes", "100000", "--logdir", str(tmp_path),
            "--env-kwargs", _kwargs_arg(env_kwargs), "--seed", "3"]
    run = tmp_path / f"{ENV_ID}__random__seed3"
    proc = _cli(args)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run / "episodes.jsonl").is_file() and len((run / "episodes.jsonl").read_text().splitlines()) >= 4:
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    done = len(read_run(run).episodes)
    assert 4 <= done < 100000
    target = done + 2
    args[args.index("--episodes") + 1] = str(target)
    proc = _cli(args + ["--resume"])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    episodes = read_run(run).episodes
    assert [e["episode"] for e in episodes] == list(range(target))
    fresh = search(ENV_ID, agent="random", episodes=target, seed=3, logdir=tmp_path / "fresh",
                   env_kwargs=env_kwargs, progress=False)
    assert [e["raw_actions"] for e in episodes] == [e["raw_actions"] for e in fresh.history]


def test_damaged_agent_files_get_a_clear_error(env_kwargs, tmp_path):
    kw = dict(agent="ddpg", seed=0, logdir=tmp_path, env_kwargs=env_kwargs, progress=False,
              agent_kwargs=FAST_AGENT_KWARGS["ddpg"])
    first = search(ENV_ID, episodes=3, **kw)
    assert not list(first.run_dir.glob("agent_*.tmp*"))  # saved through temporary files, renamed
    buffer = first.run_dir / "agent_replay_buffer.npz"
    buffer.write_bytes(buffer.read_bytes()[:100])  # what a non-atomic write killed midway left
    (first.run_dir / "agent_policy.tmp999.pt").write_bytes(b"partial")
    with pytest.raises(ValueError, match="delete both"):
        search(ENV_ID, episodes=4, resume=True, **kw)
    assert not (first.run_dir / "agent_policy.tmp999.pt").exists()


def test_tpe_two_processes_share_one_study(env_kwargs, tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    procs = [
        _cli(["--env", ENV_ID, "--agent", "tpe", "--episodes", "3", "--logdir", str(tmp_path), "--seed", str(i),
              "--run-name", f"worker{i}", "--storage", storage, "--study-name", "shared",
              "--env-kwargs", _kwargs_arg(env_kwargs), "--agent-kwargs", "n_startup_trials=2"])
        for i in range(2)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    study = optuna.load_study(study_name="shared", storage=storage)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 6
    assert {t.user_attrs["run"] for t in complete} == {"worker0", "worker1"}


def _saved_ddpg(run_dir: Path, steps: int, **kwargs):
    """An AMCDDPG rebuilt from a run folder's saved state (pf_agents.ddpg.load_agent)."""
    from pf_agents.ddpg import AMCDDPG, load_agent

    env = gym.make(ENV_ID, **TOY_KWARGS)
    model = AMCDDPG("MlpPolicy", env, steps_per_episode=steps, warmup_episodes=1,
                    policy_kwargs={"net_arch": {"pi": [16, 16], "qf": [16, 16]}}, **kwargs)
    load_agent(model, run_dir)
    return model


def test_ddpg_learns_from_applied_actions_and_shared_reward(env_kwargs, tmp_path):
    result = search(ENV_ID, agent="ddpg", episodes=3, seed=0, logdir=tmp_path, env_kwargs=env_kwargs,
                    agent_kwargs={"warmup_episodes": 1, "net_arch": [16, 16]}, progress=False)
    steps = len(result.history[0]["applied"])
    model = _saved_ddpg(result.run_dir, steps)
    buf = model.replay_buffer
    assert buf.pos == 3 * steps
    actions = buf.actions[: buf.pos, 0, 0]
    expected = np.concatenate([e["applied_actions"] for e in result.history])
    assert np.allclose(actions, expected, atol=1e-6)
    assert any(e["info"].get("flops_ratio") for e in result.history)
    assert not np.allclose(expected, np.concatenate([e["raw_actions"] for e in result.history]))  # clamped
    rewards = buf.rewards[: buf.pos, 0].reshape(3, steps)
    finals = np.array([e["reward"] for e in result.history], np.float32)
    assert np.allclose(rewards, finals[:, None])  # the episode's raw reward on every step
    baseline = finals[0]  # the first episode's reward, then an EMA (decay 0.95) of the others
    for r in finals[1:]:
        baseline += 0.05 * (r - baseline)
    assert model.reward_baseline == pytest.approx(baseline, abs=1e-6)
    assert buf.reward_baseline == pytest.approx(baseline, abs=1e-6)
    # AMC: the CURRENT baseline is subtracted from every sampled transition, old or new
    sampled = buf._get_samples(np.arange(buf.pos)).rewards.numpy().reshape(3, steps)
    assert np.allclose(sampled, finals[:, None] - baseline, atol=1e-6)
    assert model._n_updates == 2 * steps  # AMC: one update per transition, after episodes 2 and 3


def test_ddpg_without_the_baseline_learns_from_the_raw_rewards(env_kwargs, tmp_path):
    result = search(ENV_ID, agent="ddpg", episodes=3, seed=0, logdir=tmp_path, env_kwargs=env_kwargs,
                    agent_kwargs={"warmup_episodes": 1, "net_arch": [16, 16], "reward_baseline": "raw"},
                    progress=False)
    steps = len(result.history[0]["applied"])
    model = _saved_ddpg(result.run_dir, steps, reward_baseline="raw")
    buf = model.replay_buffer
    finals = np.array([e["reward"] for e in result.history], np.float32)
    sampled = buf._get_samples(np.arange(buf.pos)).rewards.numpy().reshape(3, steps)
    assert np.allclose(sampled, finals[:, None], atol=1e-6)  # nothing subtracted


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("warmup_episodes", -1, r"warmup_episodes must be an integer in \[0, inf\), got -1"),
    ("warmup_episodes", 2.5, r"warmup_episodes must be an integer"),
    ("noise_sigma", -0.1, r"noise_sigma must be a number in \[0, inf\)"),
    ("noise_decay", 0.0, r"noise_decay must be a number in \(0, 1\], got 0.0"),
    ("noise_decay", 1.5, r"noise_decay must be a number in \(0, 1\]"),
    ("actor_lr", 0, r"actor_lr must be a number in \(0, inf\)"),
    ("critic_lr", "fast", r"critic_lr must be a number"),
    ("batch_size", 0, r"batch_size must be an integer in \[1, inf\)"),
    ("baseline_decay", 1.0, r"baseline_decay must be a number in \[0, 1\)"),
    ("reward_baseline", "mean", r"reward_baseline must be one of \['ema', 'raw'\], got 'mean'"),
    ("gradient_steps", 0, r"gradient_steps must be -1 \(one per transition\) or an integer >= 1"),
])
def test_ddpg_settings_out_of_range_are_refused_with_a_sentence(setting, value, message, env_kwargs, tmp_path):
    with pytest.raises(ValueError, match=message):
        search(ENV_ID, agent="ddpg", episodes=2, seed=0, logdir=tmp_path, env_kwargs=env_kwargs,
               agent_kwargs={"net_arch": [16, 16], setting: value}, progress=False)
    assert not any(tmp_path.iterdir())  # a refused start leaves no run folder behind


@pytest.mark.parametrize("agent", ["ddpg", "td3", "tpe", "random"])
def test_tensorboard_off_writes_no_curves_and_changes_nothing(agent, env_kwargs, tmp_path):
    kw = {**FAST_AGENT_KWARGS[agent], **({"net_arch": [16, 16]} if agent in ("ddpg", "td3") else {})}
    runs = [search(ENV_ID, agent=agent, episodes=5, seed=2, logdir=tmp_path / str(tb), env_kwargs=env_kwargs,
                   agent_kwargs=kw, progress=False, tensorboard=tb) for tb in (True, False)]
    assert [e["raw_actions"] for e in runs[0].history] == [e["raw_actions"] for e in runs[1].history]
    assert [e["reward"] for e in runs[0].history] == [e["reward"] for e in runs[1].history]
    assert "compress/reward" in tb_tags(runs[0].run_dir)
    assert not list(runs[1].run_dir.rglob("events.out.tfevents.*"))


def test_tpe_in_memory_plays_the_sqlite_study_s_trials(env_kwargs, tmp_path):
    runs = [search(ENV_ID, agent="tpe", episodes=12, seed=4, logdir=tmp_path / str(i), env_kwargs=env_kwargs,
                   agent_kwargs={"n_startup_trials": 4, **kw}, progress=False)
            for i, kw in enumerate(({}, {"storage": "memory"}))]
    assert [e["raw_actions"] for e in runs[0].history] == [e["raw_actions"] for e in runs[1].history]
    assert (runs[0].run_dir / "optuna.db").exists() and not (runs[1].run_dir / "optuna.db").exists()
    # a resumed in-memory run rebuilds its study from the records
    more = search(ENV_ID, agent="tpe", episodes=15, seed=4, logdir=tmp_path / "1", env_kwargs=env_kwargs,
                  agent_kwargs={"n_startup_trials": 4, "storage": "memory"}, progress=False, resume=True)
    assert len(more.history) == 15 and more.history[:12] == runs[1].history


@pytest.mark.parametrize("algo", ["TD3", "SAC", "DDPG"])
def test_plain_sb3_algorithms_run_on_the_env(algo, env_kwargs):
    import stable_baselines3 as sb3

    import pf_envs  # noqa: F401  (registers the ids)

    env = gym.make(ENV_ID, **env_kwargs)
    steps = env.unwrapped.num_steps
    model = getattr(sb3, algo)("MlpPolicy", env, learning_starts=steps, train_freq=(1, "episode"),
                               policy_kwargs={"net_arch": [16, 16]}, seed=0, verbose=0)
    model.learn(total_timesteps=2 * steps)
    assert model.num_timesteps == 2 * steps


def test_cli_says_a_missing_checkpoint_in_one_sentence(cifar_root, capsys, monkeypatch, tmp_path):
    """ChannelPrune-ResNet56-v0 is documented, its checkpoint does not ship: exit 2, no traceback."""
    from pf_envs import zoo

    monkeypatch.setattr(zoo, "CHECKPOINT_DIR", tmp_path)
    code = cli_main(["--env", "ChannelPrune-ResNet56-v0", "--agent", "random", "--episodes", "1",
                     "--logdir", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: no trained cifar10 checkpoint for 'resnet56'"), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "ChannelPrune-ResNet56-v0__random__seed0").exists()


def test_cli_rejects_unknown_agent_and_env(capsys):
    with pytest.raises(SystemExit):
        cli_main(["--env", ENV_ID, "--agent", "ppo"])
    assert "invalid choice" in capsys.readouterr().err
    assert cli_main(["--env", "ChannelPrune-VGG-v0", "--agent", "random"]) == 2
    err = capsys.readouterr().err
    assert "unknown env" in err and ENV_ID in err


def test_search_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="tpe"):
        search(ENV_ID, agent="cmaes", logdir=tmp_path)
    with pytest.raises(ValueError, match="ChannelPrune-ResNet20-v0.*Toy-v0|Toy-v0.*ChannelPrune-ResNet20-v0"):
        search("ChannelPrune-Foo-v0", agent="random", logdir=tmp_path)
    with pytest.raises(TypeError, match="warmup_episodes"):
        search(ENV_ID, agent="ddpg", agent_kwargs={"warmup": 3}, logdir=tmp_path)


def test_parse_kwargs():
    assert parse_kwargs("flops_budget=0.3,ft_iters=0,selection=l1,net=[1,2],x=true,c=/a/b.pt") == {
        "flops_budget": 0.3, "ft_iters": 0, "selection": "l1", "net": [1, 2], "x": True, "c": "/a/b.pt"}


def test_transient_episode_failure_is_replayed(env_kwargs, tmp_path, monkeypatch):
    from pf_envs.envs.toy import ToyEnv

    real = ToyEnv._evaluate
    calls = {"n": 0}

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(self)

    monkeypatch.setattr(ToyEnv, "_evaluate", flaky)
    with pytest.warns(UserWarning, match="replaying"):
        result = search(ENV_ID, agent="random", episodes=2, seed=0, logdir=tmp_path, env_kwargs=env_kwargs,
                        progress=False)
    assert [e["episode"] for e in result.history] == [0, 1] and calls["n"] == 3


def test_tpe_storage_race_is_retried():
    from sqlalchemy.exc import IntegrityError

    from baselines.tpe import retry_storage_race

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:  # what a second process creating the same SQLite file meets
            raise IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed"))
        return "study"

    assert retry_storage_race(flaky) == "study" and len(calls) == 3

    def broken():
        raise ValueError("not a race")

    with pytest.raises(ValueError):
        retry_storage_race(broken)

    from sqlalchemy.exc import OperationalError

    unreachable = []

    def no_server():
        unreachable.append(1)
        raise OperationalError("connect", {}, Exception("could not connect to server"))

    with pytest.raises(OperationalError):
        retry_storage_race(no_server)
    assert len(unreachable) == 1  # a wrong URL is not retried


def test_tpe_retries_a_second_schema_creation():
    from sqlalchemy.exc import OperationalError

    from baselines.tpe import retry_storage_race

    calls = []

    def second_creator():
        calls.append(1)
        if len(calls) == 1:  # the other process created the schema between check and CREATE
            raise OperationalError("CREATE TABLE alembic_version", {},
                                   Exception("table alembic_version already exists"))
        return "study"

    assert retry_storage_race(second_creator) == "study" and len(calls) == 2


_CREATE_STUDY = """
import sys, optuna
from baselines.tpe import storage_creation_lock
optuna.logging.set_verbosity(optuna.logging.WARNING)
with storage_creation_lock(sys.argv[1]):
    optuna.create_study(study_name="s", storage=sys.argv[1], load_if_exists=True)
"""


def test_sqlite_storage_creation_is_serialised_between_processes(tmp_path):
    """Six processes opening one new SQLite study at once: without the lock about a third of
    them fail with 'table ... already exists' (measured 12 of 30); with it none may."""
    url = f"sqlite:///{tmp_path / 'new.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", _CREATE_STUDY, url], cwd=Path(__file__).parents[1],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(6)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, "\n".join(outs)
    assert (tmp_path / "new.db.lock").exists()


def test_ddpg_updates_per_episode(env_kwargs, tmp_path):
    """AMC trains once per transition after each episode (the default, -1); a number sets
    the updates per episode."""
    result = search(ENV_ID, agent="ddpg", episodes=3, seed=0, logdir=tmp_path, env_kwargs=env_kwargs,
                    agent_kwargs={"warmup_episodes": 1, "net_arch": [16, 16], "gradient_steps": 5},
                    progress=False)
    state = json.loads((result.run_dir / "agent_state.json").read_text())
    assert state["n_updates"] == 2 * 5  # trained after episodes 2 and 3
    assert state["episodes_trained"] == 3


def test_gp_optimize_restarts_is_gpyopt_s_setting(env_kwargs, tmp_path):
    """GPyOpt's default (5 restarts) is the agent's; 1 is the cheaper refit (another search)."""
    from baselines.gp import GPAgent

    assert GPAgent.DEFAULTS["optimize_restarts"] == 5
    result = search(ENV_ID, agent="gp", episodes=4, seed=0, logdir=tmp_path, env_kwargs=env_kwargs,
                    agent_kwargs={"initial_points": 2, "optimize_restarts": 1}, progress=False)
    assert len(result.history) == 4
    assert json.loads((result.run_dir / "config.json").read_text())["agent_kwargs"]["optimize_restarts"] == 1
