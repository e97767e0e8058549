"""Re-training (pf-retrain: pf_deploy.retrain, pf_deploy.starting_model, learners.retraining): replay + re-train,
resume, refusals, distillation loss, DDP (gloo), group fine-tuning, the saved model format."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, SMALL_ENV_KWARGS
from torch import nn

from learners.distillation import Distillation, distillation_loss
from learners.distributed import DistributedContext, DistributedSetupError, init_distributed
from learners.retraining import RetrainConfig, StateMismatchError, lr_at, retrain
from pf_envs.data import TensorSplit

ENV = "ChannelPrune-ResNet20-v0"
KWARGS = {**SMALL_ENV_KWARGS, "flops_budget": 0.5}
# 256 training images, global batch 32: 8 optimizer steps an epoch
SMALL_RUN = ["--train-images", "256", "--batch-size", "32", "--val-images", "100", "--test-images", "100",
             "--threads", "1", "--no-progress", "--lr", "0.01"]


# -- learners: no env, a tiny network on random images ------------------------------------------
def tiny_data(n: int = 64, seed: int = 0) -> TensorSplit:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = (images.float().mean((1, 2, 3)) > 127.5).long()  # learnable: bright vs dark
    return TensorSplit("tiny", images, labels, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), num_classes=2)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 2))


def test_distillation_loss_matches_a_hand_computation():
    z_s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], requires_grad=True)
    z_t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]], requires_grad=True)
    T = 4.0
    expected = 0.0
    for s_row, t_row in zip(z_s.tolist(), z_t.tolist()):
        et = [math.exp(v / T) for v in t_row]
        p_t = [v / sum(et) for v in et]
        log_norm = math.log(sum(math.exp(v / T) for v in s_row))
        expected += -sum(p * (s / T - log_norm) for p, s in zip(p_t, s_row))
    expected /= 2
    loss = distillation_loss(z_s, z_t, T)
    assert loss.item() == pytest.approx(expected, rel=1e-6)  # no T**2 factor
    loss.backward()
    assert z_t.grad is None and z_s.grad is not None  # the teacher's logits are detached
    # the combined loss: task CE + 4.0 x distillation (PocketFlow's loss_w_dst)
    teacher = nn.Linear(3, 3)
    images, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    logits = torch.randn(5, 3)
    total, task = Distillation(teacher).combined(logits, images, labels)
    assert task.item() == pytest.approx(nn.functional.cross_entropy(logits, labels).item())
    assert total.item() == pytest.approx(task.item() + 4.0 * distillation_loss(logits, teacher(images), 4.0).item())
    with pytest.raises(ValueError, match="temperature"):
        Distillation(teacher, temperature=0.0)


def test_cosine_schedule():
    cfg = RetrainConfig(epochs=2, lr=0.1)
    assert lr_at(cfg, 0, 20, 10) == pytest.approx(0.1)
    assert lr_at(cfg, 10, 20, 10) == pytest.approx(0.05)
    assert lr_at(cfg, 19, 20, 10) < 0.002
    warm = RetrainConfig(epochs=2, lr=0.1, warmup_epochs=1)
    assert lr_at(warm, 0, 20, 10) == pytest.approx(0.01) and lr_at(warm, 10, 20, 10) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        RetrainConfig(label_smoothing=1.5)
    with pytest.raises(ValueError, match="finite"):
        RetrainConfig(lr=float("nan"))


def test_resume_after_an_interruption_gives_the_uninterrupted_result(tmp_path):
    data, cfg = tiny_data(), RetrainConfig(epochs=3, batch_size=16, lr=0.05, seed=1)
    whole = tiny_net()
    full = retrain(whole, data, cfg, state_path=tmp_path / "a.state", identity="x", log=lambda m: None, progress=False)
    assert full.steps == 3 * 4 and len(full.history) == 3
    assert full.history[-1]["train_loss"] < full.history[0]["train_loss"]

    class Killed(Exception):
        pass

    def kill_in_epoch_2(tag, value, step):
        if step > 5:
            raise Killed

    with pytest.raises(Killed):
        retrain(tiny_net(), data, cfg, state_path=tmp_path / "b.state", identity="x", scalar=kill_in_epoch_2,
                log=lambda m: None, progress=False)
    assert torch.load(tmp_path / "b.state", weights_only=True)["epoch"] == 1  # at most the epoch in flight is lost
    resumed_net = tiny_net()
    resumed = retrain(resumed_net, data, cfg, state_path=tmp_path / "b.state", identity="x", log=lambda m: None,
                      progress=False)
    assert resumed.resumed_from == 1 and resumed.steps == full.steps
    for a, b in zip(whole.state_dict().values(), resumed_net.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    # a state file of another run, or another recipe, is refused
    with pytest.raises(StateMismatchError, match="belongs to another run"):
        retrain(tiny_net(), data, cfg, state_path=tmp_path / "b.state", identity="y", log=lambda m: None)
    with pytest.raises(StateMismatchError, match="other re-training settings"):
        retrain(tiny_net(), data, RetrainConfig(epochs=3, batch_size=16, lr=0.1, seed=1),
                state_path=tmp_path / "b.state", identity="x", log=lambda m: None)
    (tmp_path / "c.state").write_bytes(b"not a state")
    with pytest.raises(StateMismatchError, match="delete"):
        retrain(tiny_net(), data, cfg, state_path=tmp_path / "c.state", identity="x", log=lambda m: None)


def test_step_hook_runs_after_every_optimizer_step():
    calls = []

    def make(model, total):
        calls.append(("total", total))
        return lambda m, step: calls.append(step)

    retrain(tiny_net(), tiny_data(), RetrainConfig(epochs=2, batch_size=16), make_step_hook=make,
            log=lambda m: None, progress=False)
    assert calls == [("total", 8)] + list(range(1, 9))


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ctx = init_distributed("cpu", timeout_s=60)
    net = tiny_net()
    res = retrain(net, tiny_data(), RetrainConfig(epochs=2, batch_size=16, seed=1), ctx=ctx, log=lambda m: None,
                  progress=False)
    torch.save({"steps": res.steps, "state": net.state_dict(), "loss": [h["train_loss"] for h in res.history]},
               f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_take_the_single_process_steps(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    single = retrain(tiny_net(), tiny_data(), RetrainConfig(epochs=2, batch_size=16, seed=1), log=lambda m: None,
                     progress=False)
    assert r0["steps"] == r1["steps"] == single.steps == 8
    params = {n for n, _ in tiny_net().named_parameters()}
    for k in params:  # DDP keeps the replicas' weights identical (BatchNorm running stats stay per process)
        assert torch.allclose(r0["state"][k].float(), r1["state"][k].float(), atol=1e-6), k
    assert r0["loss"] == r1["loss"] and r0["loss"][1] < r0["loss"][0]


def test_half_set_distributed_environment_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(DistributedSetupError, match="no rendezvous.*torchrun"):
        init_distributed("cpu")
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(DistributedSetupError, match="broken distributed set-up"):
        init_distributed("cpu")
    assert DistributedContext().is_main


# -- the command line on ResNet-20 -----------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, cifar_root):
    """A one-episode search run (the uniform policy) on ResNet-20 at 50% of the MACs."""
    from pf_agents.cli import main as search

    logdir = tmp_path_factory.mktemp("runs")
    kw = ",".join(f"{k}={v}" for k, v in KWARGS.items())
    assert search(["--env", ENV, "--agent", "uniform", "--episodes", "1", "--logdir", str(logdir), "--threads", "1",
                   "--no-progress", "--env-kwargs", kw]) == 0
    return next(p for p in logdir.iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def retrained(run_dir, tmp_path_factory):
    from pf_deploy.retrain import main

    out = tmp_path_factory.mktemp("retrained")
    assert main(["--run", str(run_dir), "--epochs", "1", "--out", str(out), *SMALL_RUN]) == 0
    return out


def test_replay_and_retrain_writes_one_loadable_model(retrained, run_dir):
    import pf_envs

    assert sorted(p.name for p in retrained.glob("*.pt")) == ["retrained.pt"]
    assert not list(retrained.glob("*.tmp*"))
    model, record = pf_envs.load_compressed(retrained / "retrained.pt")
    m = record["metrics"]
    assert m["steps"] == 8 and m["epochs"] == 1 and 0 <= m["test_accuracy"] <= 1
    assert m["test_accuracy"] > 0.3  # a re-trained 50% ResNet-20, not chance
    assert record["policy"] == json.loads((run_dir / "best.json").read_text())["applied"]
    assert record["source"]["run_dir"] == str(run_dir) and record["source"]["config"]["epochs"] == 1
    assert sum(p.numel() for p in model.parameters()) < 0.7 * 272_474
    events = list((retrained / "tensorboard" / "retrained").glob("events.out.tfevents.*"))
    assert events


def test_bad_input_is_a_clear_error_and_writes_nothing(run_dir, retrained, tmp_path, capsys):
    from pf_deploy.retrain import main

    out = tmp_path / "out"
    base = ["--epochs", "1", "--out", str(out), *SMALL_RUN]
    assert main(["--record", str(tmp_path / "missing.json"), *base]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "junk.json").write_text("{broken")
    assert main(["--record", str(tmp_path / "junk.json"), *base]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    (tmp_path / "nopolicy.json").write_text("{}")
    assert main(["--record", str(tmp_path / "nopolicy.json"), *base]) == 2
    assert "no 'applied'" in capsys.readouterr().err
    # a record of another base model: the fingerprint check names the checkpoint to pass
    other = tmp_path / "other_run"
    other.mkdir()
    config = json.loads((run_dir / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "base_model": "0123456789abcdef0123"}))
    (other / "best.json").write_text((run_dir / "best.json").read_text())
    assert main(["--record", str(other / "best.json"), *base]) == 2
    assert "fingerprint" in capsys.readouterr().err
    # the state file of a finished run, re-used with another recipe, is refused
    assert main(["--run", str(run_dir), "--out", str(retrained), *SMALL_RUN[:-2], "--lr", "0.02", "--epochs", "1"]) == 2
    assert "other re-training settings" in capsys.readouterr().err
    assert not out.exists() or not list(out.glob("*.pt"))


def test_retrain_a_saved_model_again(retrained, tmp_path):
    import pf_envs
    from pf_deploy.retrain import main

    assert main(["--record", str(retrained / "retrained.json"), "--epochs", "1", "--out", str(tmp_path),
                 "--no-tensorboard", *SMALL_RUN]) == 0
    _, record = pf_envs.load_compressed(tmp_path / "retrained.pt")
    assert record["source"]["compressed_model"] == str(retrained / "retrained.pt")


def test_group_fine_tuning_ends_in_the_policy_architecture(run_dir):
    import gymnasium as gym

    from learners.training import finetune
    from pf_deploy.starting_model import group_finetune, resolve_source

    src = resolve_source(run=run_dir)
    env = src.make_env()
    data = env.unwrapped.data.train.subset(64, seed=0)
    rounds = []

    def ft(model, r):
        rounds.append(r)
        return finetune(model, data, 2, batch_size=32, generator=torch.Generator().manual_seed(r))

    model = group_finetune(env, src.policy, group_size=5, finetune_fn=ft, log=lambda m: None)
    n_units = len(src.policy)
    assert rounds == list(range(math.ceil(n_units / 5) - 1))
    direct = env.unwrapped.policy_model(src.policy)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in direct.state_dict().items()}
    # the rounds after the first re-selected on the fine-tuned model: the weights are not the direct ones
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), direct.state_dict().values()))
    env.close()
    toy = gym.make("Toy-v0")
    with pytest.raises(ValueError, match="channel groups"):
        group_finetune(toy, [0.5], group_size=2, finetune_fn=ft)


@pytest.mark.slow
def test_torchrun_two_processes_match_one(run_dir, retrained, tmp_path):
    """``python -m torch.distributed.run --standalone --nproc_per_node=2 scripts/retrain.py``: the same
    optimizer steps as one process with the same global batch, one model file, rank 0 alone writes."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "scripts" / "retrain.py"), "--run-dir", str(run_dir), "--epochs", "1", "--out", str(tmp_path),
           *SMALL_RUN]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["retrained.pt"]
    ddp = json.loads((tmp_path / "retrained.json").read_text())
    single = json.loads((retrained / "retrained.json").read_text())
    assert ddp["metrics"]["steps"] == single["metrics"]["steps"] == 8
    assert ddp["source"]["world_size"] == 2
    import pf_envs

    pf_envs.load_compressed(tmp_path / "retrained.pt")


@pytest.mark.slow
def test_group_fine_tuning_from_the_command_line(run_dir, tmp_path):
    from pf_deploy.retrain import main

    assert main(["--run", str(run_dir), "--epochs", "1", "--out", str(tmp_path), "--group-size", "4",
                 "--group-ft-iters", "4", "--distill", *SMALL_RUN]) == 0
    record = json.loads((tmp_path / "retrained.json").read_text())
    assert record["source"]["group_fine_tuning"]["group_size"] == 4 and record["metrics"]["distill"]["weight"] == 4.0


def test_torchrun_without_rendezvous_via_the_script(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    env.update(RANK="0", WORLD_SIZE="2", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "retrain.py"), "--policy", "0.5", "--env", ENV,
                           "--epochs", "1", "--out", str(tmp_path / "o")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "no rendezvous" in proc.stderr and "torchrun" in proc.stderr
    assert not (tmp_path / "o").exists()
