"""QuantORT environments (int8/fp32 per layer in ONNX Runtime), generated from the registry table.

Construction exports, pre-processes, calibrates and measures the latency table once per model
(all cached on disk, keyed by the weights' fingerprint); the envs here use small settings
(64 calibration images, 20 latency runs, 200 reward images) and are built once per module.
"""

from __future__ import annotations

import json
import uuid

import gymnasium as gym
import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import SMALL_ENV_KWARGS, make_env, play
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import pf_deploy
import pf_envs
from learners import onnx_export as ox
from learners import ort_int8 as oq
from learners.onnx_names import assign_nodes
from pf_envs.budget import floor_ratio
from pf_envs.data import cache_dir
from pf_envs.envs import quant_ort as qo

MODEL_IDS = [i for i in pf_envs.env_ids("QuantORT") if i != "QuantORT-v0"]
SMALL = dict(reward_samples=200, calibration_images=64, latency_runs=20, measure_runs=5)
R20 = "QuantORT-ResNet20-v0"


def make(env_id: str, checkpoints, **kwargs) -> gym.Env:
    return make_env(env_id, checkpoints, SMALL, **kwargs)




@pytest.fixture(scope="module")
def r20(cifar_root, checkpoints):
    env = make(R20, checkpoints, latency_budget=0.8)
    yield env
    env.close()


def test_registry_ids():
    assert set(MODEL_IDS) == {f"QuantORT-{m}-v0" for m in ("MobileNetV1", "MobileNetV2", "ResNet20", "ResNet56")}
    assert "QuantORT-v0" in pf_envs.ENV_IDS and all(i in gym.registry for i in MODEL_IDS)


# ResNet-20 by default; the bigger models' first construction (export, calibration, latency
# table) takes minutes on a shared core, so they run with -m slow.
CHECKED_IDS = [i if i == R20 else pytest.param(i, marks=pytest.mark.slow) for i in MODEL_IDS]


@pytest.mark.parametrize("env_id", CHECKED_IDS)
def test_env_checkers(env_id, cifar_root, checkpoints):
    env = make(env_id, checkpoints, latency_budget=1.0)
    u = env.unwrapped
    try:
        gym_check_env(u, skip_render_check=True)
        sb3_check_env(u, warn=True)
        floor = floor_ratio(u.cost, u.unit_spaces)
        u.budget = (1 + floor) / 2  # a budget between all-int8 and fp32 (the clamp reads it per step)
        reward, info = play(env, lambda t: 1.0)
        assert isinstance(reward, float) and 0.0 <= info["accuracy"] <= 1.0
        assert info["latency_ratio"] <= u.budget + 1e-9 and info["cost_name"] == "latency_ms"
        assert len(info["precisions"]) == u.num_steps == len(u.layers) > 0
        assert u.num_steps == sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in u.model.modules())
        assert info["latency_ms_measured"] > 0
    finally:
        env.close()


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.7, 1.0])
def test_budget_never_exceeded(fraction, r20):
    u = r20.unwrapped
    floor = floor_ratio(u.cost, u.unit_spaces)
    u.budget = floor + fraction * (1 - floor)
    rng = np.random.default_rng(0)
    policies = [lambda t: -1.0, lambda t: 1.0, lambda t: 1.0 if t % 2 else -1.0, lambda t: -1.0 if t % 2 else 1.0]
    policies += [lambda t, r=rng.uniform(-1, 1, 100): r[t] for _ in range(20)]
    try:
        for i, policy in enumerate(policies):
            _, info = play(r20, policy, seed=i, dry_run=True)
            assert info["latency_ratio"] <= u.budget * (1 + 1e-9), (i, info["precisions"])
            assert set(info["policy"]) <= {8.0, 32.0}
            assert info["latency_ms"] == pytest.approx(info["latency_ratio"] * u.cost.reference)
    finally:
        u.budget = 0.8


def test_latency_table_is_consistent(r20):
    u = r20.unwrapped
    lat = u.latency
    assert lat.layers == tuple(u.layers) and lat.cpu and lat.threads == 1 and lat.batch == 1
    # scaled to the measured end-to-end latency of each model
    assert sum(lat.fp32_ms) == pytest.approx(lat.fp32_total_ms) and sum(lat.int8_ms) == pytest.approx(lat.int8_total_ms)
    assert lat.predict_ms([True] * u.num_steps) == pytest.approx(lat.int8_total_ms)
    # the cost never under-prices: every layer at least its measured time in either precision
    int8 = [8.0] * u.num_steps
    assert u.cost(int8) == pytest.approx(lat.int8_total_ms)
    assert u.cost([32.0] * u.num_steps) >= lat.fp32_total_ms - 1e-12
    assert set(u.int8_slower) <= set(u.layers)


def test_candidate_is_the_ort_model_and_exports(r20, tmp_path):
    u = r20.unwrapped
    u.budget = 1.0
    try:
        _, info = play(r20, lambda t: 1.0 if t % 3 == 0 else -1.0)
    finally:
        u.budget = 0.8
    path = u.export(tmp_path / "cand.onnx")
    # the file runs with onnxruntime alone and scores what the env scored
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: u._reward_x})[0]
    assert float((logits.argmax(1) == u._reward_y).mean()) == info["accuracy"]
    # layers the policy kept in fp32 are fp32 in the graph, the others int8
    prec = oq.node_precisions(path)
    for name, p in zip(u.layers, info["precisions"]):
        assert prec[u.layer_nodes[name]] == p, name
    assert info["int8_layers"] == sum(p == "int8" for p in info["precisions"]) == sum(v == 8 for v in info["policy"])
    assert 0 < info["int8_layers"] < u.num_steps


def test_extreme_policies_are_the_plain_models(r20, tmp_path):
    u = r20.unwrapped
    u.budget = 1.0
    try:
        _, info32 = play(r20, lambda t: 1.0)
        assert info32["precisions"] == ["fp32"] * u.num_steps and info32["accuracy"] == u.accuracy_original
        p32 = u.export(tmp_path / "fp32.onnx")
        assert set(oq.node_precisions(p32).values()) == {"fp32"}
        _, info8 = play(r20, lambda t: -1.0)
        assert set(oq.node_precisions(u.export(tmp_path / "int8.onnx")).values()) == {"int8"}
        assert info8["latency_ratio"] < info32["latency_ratio"] == 1.0
        assert abs(info8["accuracy"] - info32["accuracy"]) < 0.05
    finally:
        u.budget = 0.8


def test_memo_and_determinism(r20):
    policy = lambda t: 0.5 if t % 4 == 0 else -0.5  # noqa: E731
    a = play(r20, policy, seed=1)
    first = dict(r20.unwrapped.last_timing)
    b = play(r20, policy, seed=2)
    assert a[0] == b[0] and a[1]["precisions"] == b[1]["precisions"]
    assert r20.unwrapped.last_timing["memo_hit"] == 1.0 and first["memo_hit"] == 0.0


def test_calibration_runs_once_per_env_not_per_episode(cifar_root, checkpoints, monkeypatch):
    calls = []
    real = oq.calibrate
    monkeypatch.setattr(oq, "calibrate", lambda *a, **k: calls.append(1) or real(*a, **k))
    env = make(R20, checkpoints, cache=False, latency_runs=10)
    assert calls == [1]
    monkeypatch.setattr(oq, "calibrate", lambda *a, **k: pytest.fail("calibrated again in an episode"))
    u = env.unwrapped
    u.budget = 1.0
    for i in range(2):
        play(env, lambda t, i=i: 1.0 if (t + i) % 2 else -1.0, seed=i)
    env.close()


def test_latency_table_is_cached_with_the_cpu_name(cifar_root, checkpoints, monkeypatch):
    env = make(R20, checkpoints)  # table on disk now
    table = env.unwrapped.latency
    env.close()
    calls = []
    monkeypatch.setattr(qo, "measure_layer_latency", lambda *a, **k: calls.append(1) or table)
    make(R20, checkpoints).close()
    assert calls == []  # same machine: read from the cache
    folder = cache_dir() / "envs"
    before = set(folder.glob("ort-latency-*"))
    monkeypatch.setattr(qo, "cpu_name", lambda: f"Another CPU {uuid.uuid4()}")
    try:
        make(R20, checkpoints).close()
        assert calls == [1]  # another CPU: measured again
    finally:  # the fake CPU's table leaves the shared cache
        for path in set(folder.glob("ort-latency-*")) - before:
            path.unlink()


def test_mnas_latency_reward(r20, cifar_root, checkpoints):
    env = make(R20, checkpoints, reward="mnas_latency", latency_budget=0.9)
    reward, info = play(env, lambda t: -1.0 if t % 2 else 1.0)
    assert reward == pytest.approx(info["accuracy"] * info["latency_ratio"] ** -0.07)
    assert reward > info["accuracy"]
    env.close()


def test_nan_action_is_a_clear_error(r20):
    r20.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        r20.unwrapped.step(np.array([np.nan], np.float32))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"latency_budget": 0.05}, "below the all-int8"),
        ({"latency_budgte": 0.8}, "latency_budget"),
        ({"latency_budget": 1.5}, r"\(0, 1\]"),
        ({"latency_budget": "0.8"}, r"latency_budget must be a finite number"),
        ({"ft_iters": 5}, "no fine-tuning"),
        ({"bn_batches": 2}, "no recovery"),
        ({"activation_type": "int4"}, "uint8"),
        ({"threads": 0}, "threads must be an integer >= 1"),
        ({"latency_runs": 2}, "latency_runs must be an integer >= 10"),
        ({"reward": "speed"}, "mnas_latency"),
        ({"render_mode": "human"}, "no rendering"),
    ],
)
def test_bad_kwargs(kwargs, match, cifar_root, checkpoints):
    with pytest.raises((TypeError, ValueError), match=match):
        make(R20, checkpoints, **kwargs)


def test_valid_kwargs_hide_the_recovery_ones():
    valid = qo.QuantORTEnv.valid_kwargs()
    assert "latency_budget" in valid and "ft_iters" in valid and "bn_batches" not in valid


def test_replay_policy_model_and_compressed_files(r20, cifar_root, checkpoints, tmp_path):
    u = r20.unwrapped
    kwargs = {**SMALL, "latency_budget": 0.8}
    _, info = play(r20, lambda t: 1.0 if t % 2 else -1.0)
    out = pf_envs.replay(R20, kwargs, info["policy"])
    assert out.reward == info["accuracy"] and out.info["precisions"] == info["precisions"]
    # the torch side is the fp32 model (the candidate is an ONNX graph)
    sd, ref = out.model.state_dict(), u.model.state_dict()
    assert all(torch.equal(sd[k], ref[k]) for k in ref)
    net = u.policy_model(info["policy"])
    assert all(torch.equal(net.state_dict()[k], ref[k]) for k in ref)
    rec = pf_envs.save_compressed(out.model, tmp_path / "q.pt", env_id=R20, env_kwargs=kwargs, policy=out.policy,
                                  model_fingerprint=out.model_fingerprint)
    model, record = pf_envs.load_compressed(tmp_path / "q.pt", env=r20)
    assert record["policy"] == info["policy"] and json.loads(rec.read_text())["env_id"] == R20
    # the int8 graph is rebuilt from the record: replay its policy, export
    u.play_policy(record["policy"], dry_run=True)
    assert oq.node_precisions(u.export(tmp_path / "q.onnx")) == oq.node_precisions(u.export(tmp_path / "q2.onnx"))


def test_pruned_model_from_channel_prune(cifar_root, checkpoints, tmp_path):
    cp = gym.make("ChannelPrune-ResNet20-v0", flops_budget=0.5, **SMALL_ENV_KWARGS)
    _, info = play(cp, lambda t: -0.2)
    pruned = cp.unwrapped.policy_model(info["policy"])
    cp.close()
    env = gym.make("QuantORT-v0", model=pruned, **SMALL, latency_budget=1.0)
    u = env.unwrapped
    assert u.num_steps == 22 and u.model_name == type(pruned).__name__
    # the table of the pruned model's own layers (its thin layers may not gain from int8)
    assert len(u.latency.int8_ms) == 22 and u.latency.fp32_total_ms > 0
    _, qinfo = play(env, lambda t: -1.0 if t % 3 else 1.0)
    assert qinfo["latency_ratio"] <= 1.0 + 1e-9 and 0.0 <= qinfo["accuracy"] <= 1.0
    assert "int8" in qinfo["precisions"] and "fp32" in qinfo["precisions"]
    path = u.export(tmp_path / "pruned-int8.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    conv1 = oq.load_onnx(path).graph
    assert sess.run(None, {"input": np.zeros((2, 3, 32, 32), np.float32)})[0].shape == (2, 10)
    assert any(n.op_type == "QuantizeLinear" for n in conv1.node)
    env.close()


def test_search_harness_runs_on_quant_ort(cifar_root, checkpoints, tmp_path):
    from pf_agents import search
    from pf_agents.records import read_run

    result = search(R20, agent="random", episodes=2, seed=0, logdir=tmp_path,
                    env_kwargs={**SMALL, "latency_budget": 0.8}, progress=False)
    run = read_run(result.run_dir)
    assert len(run.episodes) == 2
    assert all(e["info"]["latency_ratio"] <= 0.8 + 1e-9 and "precisions" in e["info"] for e in run.episodes)
    assert any(p.name.startswith("events.out.tfevents") for p in result.run_dir.rglob("*"))
    replayed = pf_deploy.replay_run(result.run_dir)  # the best episode, from the folder alone
    assert replayed.reward == result.best_reward and replayed.policy == run.best["applied"]


def test_assign_nodes_follows_the_last_layer():
    names = ["input_QuantizeLinear", "/conv1/Conv_token_1", "/relu/Relu", "/layers/layers.0/conv1/Conv",
             "/layers/layers.0/Add", "/classifier/Gemm", "logits_DequantizeLinear"]
    owner = assign_nodes(names, ["conv1", "layers.0.conv1", "classifier"])
    assert owner == {"input_QuantizeLinear": "conv1", "/conv1/Conv_token_1": "conv1", "/relu/Relu": "conv1",
                     "/layers/layers.0/conv1/Conv": "layers.0.conv1", "/layers/layers.0/Add": "layers.0.conv1",
                     "/classifier/Gemm": "classifier", "logits_DequantizeLinear": "classifier"}
    with pytest.raises(oq.QuantizationError, match="not exported from this model"):
        assign_nodes(["/a/Conv"], ["b"])


def test_fp32_onnx_baseline_matches_torch(r20):
    u = r20.unwrapped
    assert abs(u.accuracy_original - u.accuracy_torch) <= 2 / len(u._reward_y)
    assert ox.OPSET and u.prep_path.is_file()
