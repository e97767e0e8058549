"""benchmarks/prune_quant_compare.py: searched PruneQuant policies against uniform + all-int8 at
equal measured latency, and the same re-training for both (issue 23's targets), on a small
ResNet-20 slice."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from conftest import SMALL_ENV_KWARGS, make_env

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import prune_quant_compare  # noqa: E402

KWARGS = dict(SMALL_ENV_KWARGS, calibration_images=64, latency_runs=20, latency_widths=3, measure_runs=0,
              latency_conv_grid=False)


def test_compare_times_scores_and_retrains(cifar_root, checkpoints, tmp_path, monkeypatch):
    env = make_env("PruneQuant-ResNet20-v0", checkpoints, KWARGS, latency_budget=0.6)
    u = env.unwrapped
    rng = np.random.default_rng(0)
    u.reset(seed=0, options={"dry_run": True})
    for a in rng.uniform(-1, 1, u.num_steps):
        *_, info = u.step(np.array([a], np.float32))
    policy = list(info["policy"])
    env.close()
    search = tmp_path / "search.json"
    search.write_text(json.dumps({"env": "PruneQuant-ResNet20-v0", "env_kwargs": KWARGS,
                                  "rows": [{"agent": "random", "seed": 0, "budget": 0.6, "policy": policy}]}))
    out = tmp_path / "compare.json"
    monkeypatch.setattr(sys, "argv", [
        "prune_quant_compare.py", "--search", str(search), "--uniform-keeps", "0.5", "0.75", "1.0",
        "--test-images", "100", "--rounds", "1", "--runs-per-round", "2", "--retrain-epochs", "1",
        "--train-images", "256", "--val-images", "100", "--target-speedup", "0", "--out", str(out)])
    prune_quant_compare.main()
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert set(rows) == {"random-seed0-b0.6", "uniform50.0-int8", "uniform75.0-int8", "uniform100.0-int8"}
    searched = rows["random-seed0-b0.6"]
    assert searched["kind"] == "searched" and searched["policy"] == policy
    assert all(r["int8_layers"] == r["layers"] for n, r in rows.items() if n.startswith("uniform"))
    for r in rows.values():
        assert r["measured_min_ms"] > 0 and 0.0 <= r["test_accuracy"] <= 1.0
        assert abs(r["speedup"] - result["dense_fp32_ms"] / r["measured_min_ms"]) < 1e-9
    # the comparison is against the uniform model nearest in measured latency that is not faster
    near = searched["nearest_not_faster_uniform"]
    if near is not None:
        assert rows[near]["measured_min_ms"] >= searched["measured_min_ms"]
        assert abs(searched["margin_vs_nearest_not_faster"]
                   - (searched["test_accuracy"] - rows[near]["test_accuracy"])) < 1e-12
    # the same re-training for the searched policy and uniform-50% + all-int8, then ORT int8 scoring
    names = [r["policy_name"] for r in result["retrained"]]
    assert names == ["random-seed0-b0_6", "uniform50_0-int8"]
    for r in result["retrained"]:
        assert 0.0 <= r["int8_test_accuracy"] <= 1.0 and r["epochs"] == 1 and r["train_images"] == 256
        # int8 of the same re-trained weights: close to their fp32 accuracy on 100 images
        assert abs(r["int8_test_accuracy"] - r["fp32_test_accuracy"]) <= 0.1
