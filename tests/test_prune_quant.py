"""PruneQuant environments (kept channels and int8/fp32 per layer, ONNX Runtime latency budget).

Construction profiles the model at a few uniform widths (cached on disk with the weights'
fingerprint, the machine and the ORT version); the envs here use small settings (3 widths, 20
latency runs, 64 calibration images, 200 reward images) on ResNet-20 and are built once per
module. The latency model's own arithmetic is tested on synthetic tables (no model).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import onnxruntime as ort
import pytest
from conftest import SMALL_ENV_KWARGS, make_env, play
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import pf_envs
from learners import ort_int8 as oq
from learners.onnx_names import layer_nodes
from learners.ort_latency import fit_boundary_cost
from pf_deploy.benchmark import read_manifest
from pf_deploy.export import write_env_bundle
from pf_envs.envs import prune_quant as pq

MODEL_IDS = [i for i in pf_envs.env_ids("PruneQuant") if i != "PruneQuant-v0"]
SMALL = dict(SMALL_ENV_KWARGS, calibration_images=64, latency_runs=20, latency_widths=3, measure_runs=3,
             latency_conv_grid=False)  # the per-count grid of ResNet-20 (476 shapes) is tested on a tiny model below
R20 = "PruneQuant-ResNet20-v0"


def make(env_id: str, checkpoints, **kwargs) -> gym.Env:
    return make_env(env_id, checkpoints, SMALL, **kwargs)


@pytest.fixture(scope="module")
def r20(cifar_root, checkpoints):
    env = make(R20, checkpoints, latency_budget=1.0)
    yield env
    env.close()


def values_of(u, keep: float, bits) -> list[float]:
    """A policy in unit order: every group at ``u._round_group(g, keep)``, layer ``li`` at ``bits(li)``."""
    return [u._round_group(i, keep) if k == pq.KEEP else bits(i) for k, i in u.units]


# -- registry and the latency model's arithmetic (no model) ----------------------------------------
def test_registry_ids():
    assert set(MODEL_IDS) == {f"PruneQuant-{m}-v0" for m in ("MobileNetV1", "MobileNetV2", "ResNet20", "ResNet56")}
    assert "PruneQuant-v0" in pf_envs.ENV_IDS and all(i in gym.registry for i in MODEL_IDS)


def test_effective_width():
    assert pq.effective_width(0.25, 1.0, True, True, False) == pytest.approx(0.5)
    assert pq.effective_width(0.25, 0.5, True, True, True) == 0.5  # depthwise: its input is its output
    assert pq.effective_width(0.25, 0.5, False, False, False) == 1.0


def test_latency_model_on_a_chain():
    # three layers a -> b -> c; unit 0 keeps a's output group (read by b), units 1..3 precisions
    xs = (0.5, 1.0)
    terms = [pq.LayerTerm(None, 0, False, 1, xs, (1.0, 2.0), (0.5, 1.0)),
             pq.LayerTerm(0, None, False, 2, xs, (1.0, 2.0), (0.2, 0.4)),
             pq.LayerTerm(None, None, False, 3, (1.0,), (1.0,), (0.9,))]
    edges = [(0, (1,), 0, 1000), (1, (2,), None, 10)]
    cost = pq.PruneQuantLatency(terms, edges, units=4, boundary_ms=0.1, boundary_ms_per_element=1e-4, mixed_ms=0.3)
    assert cost.reference == pytest.approx(2.0 + 2.0 + 1.0)  # dense fp32: no boundary
    assert cost.boundaries([1.0, 32, 32, 32]) == (0, 0.0)
    assert cost.boundaries([0.5, 8, 32, 32]) == (1, 500.0)  # a int8 -> b fp32: half a's channels
    assert cost.boundaries([1.0, 8, 32, 8]) == (2, 1010.0)
    # exact value: a int8 at width 0.5 (0.5), b fp32 at width 0.5 (1.0), c fp32 (1.0), one boundary
    assert cost([0.5, 8, 32, 32]) == pytest.approx(0.5 + 1.0 + 1.0 + 0.3 + 0.1 + 500 * 1e-4)
    assert cost([0.5, 8, 8, 8]) == pytest.approx(0.5 + 0.2 + 0.9)  # one precision: no mixed-graph cost
    # grows with the keep ratio at any precisions
    for bits in ([8, 8, 8], [32, 8, 32], [8, 32, 8]):
        assert cost([0.5, *bits]) <= cost([0.75, *bits]) <= cost([1.0, *bits])
    with pytest.raises(ValueError, match="4 values"):
        cost([1.0, 32])


def test_fit_boundary_cost_recovers_known_costs():
    n = [4, 10, 6, 2, 9, 3]
    e = [1e4, 5e4, 2e4, 8e3, 1e4, 3e4]
    extra = [0.05 + 0.01 * a + 2e-6 * b for a, b in zip(n, e)]
    assert fit_boundary_cost(n, e, extra) == pytest.approx((0.05, 0.01, 2e-6), rel=1e-6)
    c, a, b = fit_boundary_cost(n, e, [0.05 + 0.01 * a for a in n])
    assert (c, a, b) == pytest.approx((0.05, 0.01, 0.0), abs=1e-9)
    with pytest.raises(ValueError, match="at least three"):
        fit_boundary_cost([1, 2], [1.0, 2.0], [0.1, 0.2])


# -- the environment on ResNet-20 --------------------------------------------------------------------
def test_spaces_and_unit_order(r20):
    u = r20.unwrapped
    assert r20.action_space.shape == (1,) and r20.observation_space.shape == (len(pq.OBSERVATION_FEATURES),)
    assert u.num_steps == len(u.layers) + len(u.step_groups) == 22 + 12
    # every group's keep step comes right before the precision step of the layer that opens it
    for g, ku in u.keep_unit.items():
        kind, li = u.units[ku + 1] if u.units[ku + 1][0] == pq.PRECISION else u.units[ku + 2]
        assert u.layers[li] in u.table.groups[g].producers
    assert u.observation_features()[1] == "kind"
    obs, _ = r20.reset(seed=0)
    kinds = []
    for t in range(u.num_steps):
        kinds.append(obs[1])
        obs, _, term, _, info = r20.step(np.array([0.3], np.float32))
        assert info["kind"] == u.units[t][0]
    assert term and info["dry_run"] is False and 0.0 <= info["accuracy"] <= 1.0
    assert kinds[0] == 0.0 and kinds[1] == 1.0  # conv1's group, then conv1's precision


def test_env_checkers(r20):
    u = r20.unwrapped
    gym_check_env(u, skip_render_check=True)
    sb3_check_env(u, warn=True)


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 1.0])
def test_budget_never_exceeded(fraction, r20):
    u = r20.unwrapped
    floor = u._floor_ratio()
    u.budget = floor + fraction * (1 - floor)
    try:
        rng = np.random.default_rng(0)
        policies = [lambda t: -1.0, lambda t: 1.0, lambda t: 1.0 if t % 2 else -1.0, lambda t: -1.0 if t % 2 else 1.0]
        policies += [lambda t, r=rng.uniform(-1, 1, 100): r[t] for _ in range(12)]
        for i, policy in enumerate(policies):
            _, info = play(r20, policy, seed=i, dry_run=True)
            assert info["cost_ratio"] <= u.budget * (1 + 1e-9), (fraction, i, info["cost_ratio"], u.budget)
            assert info["latency_ms"] == pytest.approx(info["cost_ratio"] * u.cost.reference)
        if fraction == 1.0:  # the dense fp32 model is within a budget of 1.0: never clamped
            _, info = play(r20, lambda t: 1.0, dry_run=True)
            assert info["cost_ratio"] == pytest.approx(1.0) and set(info["precisions"]) == {"fp32"}
    finally:
        u.budget = 1.0


def test_dense_policies_score_as_the_model(r20):
    u = r20.unwrapped
    _, fp32 = u.play_policy(values_of(u, 1.0, lambda li: pq.FP32))
    assert abs(fp32["accuracy"] - fp32["accuracy_original"]) <= 1 / 200 + 1e-9  # ORT fp32 = torch, to an image
    assert fp32["boundaries"] == 0 and fp32["cost_ratio"] == pytest.approx(1.0)
    _, int8 = u.play_policy(values_of(u, 1.0, lambda li: pq.INT8))
    assert int8["int8_layers"] == len(u.layers) and abs(int8["accuracy"] - fp32["accuracy"]) <= 0.03
    assert int8["cost_ratio"] < 1.0


def test_export_round_trip(r20, tmp_path):
    u = r20.unwrapped
    values = values_of(u, 0.5, lambda li: pq.INT8 if li % 3 else pq.FP32)
    _, info = u.play_policy(values)
    assert 0 < info["boundaries"] and set(info["precisions"]) == {"int8", "fp32"}
    manifest = write_env_bundle(r20, tmp_path / "bundle", test_samples=100)
    assert read_manifest(tmp_path / "bundle") == manifest
    # the env's own export() writes the same deployable int8 graph the bundle ships
    own = u.export(tmp_path / "own.onnx")
    assert own.read_bytes() == (tmp_path / "bundle" / "model.int8.onnx").read_bytes()
    entries = {m["name"]: m for m in manifest["models"]}
    assert entries["int8"]["file"] == "model.int8.onnx" and entries["int8"]["test_images"] == 100
    assert manifest["quantization"]["precisions"] == dict(zip(u.layers, info["precisions"]))
    path = tmp_path / "bundle" / "model.int8.onnx"
    # the exported file is the scored candidate: plain onnxruntime, the episode's accuracy
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: u._reward_x})[0]
    assert float((logits.argmax(1) == u._reward_y).mean()) == info["accuracy"]
    # the layers the policy kept in fp32 are fp32 in the graph, the others int8
    got = oq.node_precisions(path)
    node_of = layer_nodes(u.compressed_model(), path)
    assert [got[node_of[n]] for n in u.layers] == info["precisions"]
    # physically pruned: both files hold the pruned model (fewer MACs than the dense one)
    assert entries["int8"]["macs"] == entries["fp32"]["macs"] == int(info["macs"]) < u.total_macs


@pytest.mark.slow  # three scored episodes: ~20 s on a shared core
def test_determinism(r20):
    u = r20.unwrapped
    values = values_of(u, 0.6, lambda li: pq.FP32 if li in (0, 5, 21) else pq.INT8)
    _, a = u.play_policy(values)
    u._memo.clear()
    u._built = None
    _, b = u.play_policy(values)
    assert b["accuracy"] == a["accuracy"] and b["accuracy_fp32_pruned"] == a["accuracy_fp32_pruned"]
    assert b["latency_ms"] == a["latency_ms"] and b["policy"] == a["policy"]
    _, c = u.play_policy(values)
    assert u.last_timing["memo_hit"] == 1.0 and c["accuracy"] == a["accuracy"]


def test_latency_table_is_cached(r20, checkpoints):
    env = make(R20, checkpoints, latency_budget=1.0)
    try:
        u = env.unwrapped
        assert u.setup_timing["latency_table_s"] < 1.0
        assert u.cost.reference == r20.unwrapped.cost.reference
        assert u.latency_table["onnxruntime"] == ort.__version__ and u.latency_table["cpu"]
        assert len(u.latency_table["variants"]) == 3 and len(u.latency_table["boundary_samples"]) == 9
    finally:
        env.close()


def test_bad_inputs(r20, checkpoints):
    u = r20.unwrapped
    floor = u._floor_ratio()
    with pytest.raises(ValueError, match=r"latency_budget=0.05 is unreachable .* choose latency_budget >="):
        make(R20, checkpoints, latency_budget=0.05)
    assert floor > 0.05
    with pytest.raises(TypeError, match="unknown keyword"):
        make(R20, checkpoints, flops_budget=0.5)
    with pytest.raises(ValueError, match="latency_widths"):
        make(R20, checkpoints, latency_widths=1)
    with pytest.raises(ValueError, match="latency_twin=True needs a zoo model with an ImageNet-shaped variant"):
        make(R20, checkpoints, latency_twin=True)
    r20.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        r20.step(np.array([np.nan], np.float32))
    with pytest.raises(ValueError, match="exactly one number"):
        r20.step(np.array([0.1, 0.2], np.float32))
    with pytest.raises(ValueError, match="34 steps"):
        u.play_policy([1.0] * 5)
    with pytest.raises(ValueError, match="plays as"):  # 0.3 keep is not on a 16-channel group's grid of 4s
        u.play_policy([0.3 if k == pq.KEEP else pq.INT8 for k, _ in u.units])


@pytest.mark.slow  # the 224x224 twin's table: minutes on a shared core
def test_latency_twin_mobilenet_v1(checkpoints, cifar_root, tmp_path):
    env = make("PruneQuant-MobileNetV1-v0", checkpoints, latency_twin=True, latency_widths=2, latency_runs=10,
               latency_budget=1.0)
    try:
        u = env.unwrapped
        assert u.latency_input_size == 224 and u.latency_table["variants"][-1]["fp32_total_ms"] > 1.0
        values = [u._round_group(i, 0.5) if k == pq.KEEP else pq.INT8 for k, i in u.units]
        path = u.write_latency_model(values, tmp_path / "twin.onnx")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert sess.get_inputs()[0].shape[2:] == [224, 224] and sess.get_outputs()[0].shape[1] == 1000
        _, info = play(env, lambda t: -1.0, dry_run=True)
        assert info["cost_ratio"] < 1.0
    finally:
        env.close()


def test_export_needs_an_episode(checkpoints, cifar_root, tmp_path):
    env = make(R20, checkpoints, latency_budget=1.0)
    try:
        with pytest.raises(RuntimeError, match="no episode has finished"):
            env.unwrapped.export(tmp_path / "b")
    finally:
        env.close()


# -- the channel-count grid (learners.conv_grid + LayerTerm.correction) -------------------------------
def test_grid_subset_and_bracket():
    assert pq.grid_subset([4, 8, 12]) == [4, 8, 12]  # few counts: all of them
    many = list(range(208, 1025, 8))  # MobileNet's 1024-channel group on multiples of 8: two classes mod 16
    sub = pq.grid_subset(many, limit=12)
    assert len(sub) <= 12 and {208, 216, 1016, 1024} <= set(sub)  # both ends of both classes
    assert {c % 16 for c in sub} == {0, 8}
    # interpolation stays inside a remainder class: 24 (class 8) between 8 and 40, not 16 / 32
    assert pq._bracket([8, 16, 32, 40], 24) == [(8, 0.5), (40, 0.5)]
    assert pq._bracket([8, 16], 4) == [(8, 1.0)] and pq._bracket([8, 16], 48) == [(16, 1.0)]
    # a pair that was not timed: bilinear within the measured counts (here no same-class count)
    grid = {(8, 8): (1.0, 10.0), (8, 24): (2.0, 20.0), (24, 8): (3.0, 30.0), (24, 24): (4.0, 40.0)}
    term = pq.LayerTerm(0, 1, False, 2, (0.5, 1.0), (1.0, 2.0), (1.0, 2.0), (24, 24), grid=grid,
                        grid_ref=((1.0, 4.0), (10.0, 40.0)))
    assert term.grid_ms(8, 24, True) == 20.0 and term.grid_ms(16, 16, False) == pytest.approx(2.5)
    assert term.grid_ms(16, 16, True) == pytest.approx(25.0) == term.grid_ms(16, 16, True)  # cached sides reused


def test_conv_shape_and_grid_timing():
    from torch import nn

    from learners.conv_grid import ConvShape, conv_grid_ms, conv_of

    with pytest.raises(ValueError, match="depthwise"):
        ConvShape(3, 1, 1, True, 8, 8, 4, 8)
    with pytest.raises(ValueError, match="grouped"):
        conv_of(nn.Conv2d(8, 8, 3, groups=2), 8, 8)
    dw = conv_of(nn.Conv2d(16, 16, 3, 1, 1, groups=16), 8, 8, cout=8)
    assert (dw.cin, dw.cout, dw.depthwise) == (8, 8, True)
    shapes = [ConvShape(3, 1, 1, False, 8, 8, 4, 8), ConvShape(3, 1, 1, False, 8, 8, 8, 8), dw]
    times = conv_grid_ms(shapes, options={"activation_type": "uint8", "reduce_range": True}, runs=5, rounds=1)
    assert set(times) == set(shapes) and all(a > 0 and b > 0 for a, b in times.values())


@pytest.mark.filterwarnings("ignore::pf_envs.model_env.NearChanceWarning")  # an untrained model: latency only
def test_conv_grid_corrects_layers_for_their_exact_counts(cifar_root):
    """On a small user model: every convolution's count pairs are timed; the dense model's
    latency is the table's (factor 1); another policy's layers are scaled by their isolated time
    at their counts over the isolated time at their MAC-equivalent width."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10))
    kwargs = dict(SMALL, latency_conv_grid=True, latency_widths=2, channel_round=2, latency_budget=1.0, cache=False)
    env = gym.make("PruneQuant-v0", model=model, **kwargs)
    u = env.unwrapped
    grid = u.latency_table["conv_grid"]
    shapes = u._conv_shapes()
    assert len(grid) == len({sh for per in shapes for sh in per}) > 10
    second = u.cost.terms[1]
    assert second.grid is not None and (4, 6) in second.grid  # (cin, cout) pairs of both groups' grids
    dense = values_of(u, 1.0, lambda li: pq.FP32)
    assert u.cost(dense) == pytest.approx(u.cost.reference)
    assert [t.correction(1.0, 1.0, 1.0, False) for t in u.cost.terms[:2]] == [pytest.approx(1.0)] * 2
    values = values_of(u, 1.0, lambda li: pq.INT8)
    values[u.keep_unit[u.step_groups[0]]] = 0.25  # 2 of 8 channels: far from any uniform width's counts pair
    x = pq.effective_width(0.25, 1.0, True, True, False)
    plain = float(np.interp(x, second.xs, second.int8_ms))
    ratio = second.grid[(2, 12)][1] / float(np.interp(x, second.xs, second.grid_ref[1]))
    assert u.cost.layer_ms(values)[1] == pytest.approx(plain * ratio)
    env.close()


def test_latency_twin_refuses_a_twin_with_other_layer_names(checkpoints, cifar_root):
    """MobileNet-V2's ImageNet variant (torchvision's) names its layers differently from the zoo's
    CIFAR one: the table could not price the candidate's layers on it, so it is refused."""
    with pytest.raises(ValueError, match="names its layers differently"):
        make("PruneQuant-MobileNetV2-v0", checkpoints, latency_twin=True, latency_widths=2, latency_runs=10)
