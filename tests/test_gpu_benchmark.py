"""benchmarks/gpu.py: its parts on the CPU (fast), the whole --smoke run (slow), and the
watchdog of python -m pf_envs.zoo.train. The GPU figures come from a GPU machine."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from pf_envs.zoo.train import watchdog

REPO = Path(__file__).resolve().parents[1]


def _gpu():
    spec = importlib.util.spec_from_file_location("_bench_gpu", REPO / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["_bench_gpu"] = module
    spec.loader.exec_module(module)
    return module


def test_a_step_row_times_the_real_loop_on_the_cpu():
    gpu = _gpu()
    data = gpu.synthetic_split(32, "cpu")
    assert data.images.shape == (32, 3, 32, 32) and data.images.dtype == torch.uint8
    row = gpu.time_steps("resnet20", 8, device="cpu", bf16=False, capture=False, steps=2, warmup=1, data=data)
    assert row["model"] == "resnet20" and row["ms_per_step"] > 0 and row["loss_finite"]
    assert row["images_per_s"] == pytest.approx(8e3 / row["ms_per_step"], rel=0.01)


def test_large_files_are_split_into_parts_that_join_back(tmp_path):
    gpu = _gpu()
    payload = bytes(range(256)) * 40  # 10,240 bytes
    (tmp_path / "big.state").write_bytes(payload)
    (tmp_path / "small.json").write_text("{}")
    assert gpu.split_large_files(tmp_path, limit=4096) == ["big.state"]
    parts = sorted(tmp_path.glob("big.state.part*"))
    assert len(parts) == 3 and not (tmp_path / "big.state").exists()
    bundle, work = tmp_path, tmp_path / "work"
    work.mkdir()
    (tmp_path / "big.state.part0").rename(tmp_path / "resnet56.state.part0")
    (tmp_path / "big.state.part1").rename(tmp_path / "resnet56.state.part1")
    (tmp_path / "big.state.part2").rename(tmp_path / "resnet56.state.part2")
    assert gpu.restore_states(bundle, work) == ["resnet56"]
    assert (work / "resnet56.state").read_bytes() == payload


def test_the_out_folder_check_names_what_would_not_come_back(tmp_path):
    gpu = _gpu()
    assert gpu.check_out_folder(tmp_path) == []
    for i in range(9):
        (tmp_path / f"f{i}").write_text("x")
    assert any("9 files" in p for p in gpu.check_out_folder(tmp_path))


def test_the_table_lists_every_part():
    gpu = _gpu()
    text = gpu.format_table({
        "steps": [{"model": "resnet56", "batch": 128, "dtype": "bf16", "captured": True, "ms_per_step": 6.0,
                   "images_per_s": 21333.0}, {"skipped": "capture needs CUDA"}],
        "episodes": [{"env": "ChannelPrune-ResNet20-v0", "setting": "ft_iters=0", "episode_s": 0.5, "finetune_s": 0.0,
                      "bn_s": 0.1, "eval_s": 0.2}],
        "search": {"env": "ChannelPrune-MobileNetV1-v0", "episodes": 30, "seconds": 30.0, "s_per_episode": 1.0,
                   "best_reward": -0.1},
        "train_zoo": [{"model": "resnet56", "exit": 3, "seconds": 500, "state": "resnet56.state"}],
        "skipped": {"search": "--skip"},
    })
    for piece in ("resnet56", "6.00", "ChannelPrune-ResNet20-v0", "30 episodes", "stopped, state resnet56.state",
                  "skipped search"):
        assert piece in text


def test_the_watchdog_stops_when_the_next_epoch_would_not_fit():
    clock = [0.0]
    stop = watchdog(100.0, margin=1.0, start=0.0)
    import pf_envs.zoo.train as train_mod

    real = train_mod.time.monotonic
    train_mod.time.monotonic = lambda: clock[0]
    try:
        clock[0] = 30.0  # epoch 1 took 30 s: 30 + 30 <= 100
        assert not stop()
        clock[0] = 60.0  # epoch 2 took 30 s: 60 + 30 <= 100
        assert not stop()
        clock[0] = 75.0  # 75 + 30 (the longest epoch) > 100
        assert stop()
    finally:
        train_mod.time.monotonic = real


def test_train_zoo_and_smoke_together_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        _gpu().main(["--out", str(tmp_path), "--smoke", "--train-zoo"])
    assert exit_.value.code == 2 and "--train-zoo" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_run_writes_its_json_and_table(tmp_path, cifar_root, monkeypatch, capsys):
    from pf_envs.data import cache_dir

    monkeypatch.setenv("PF_DATA_DIR", str(cifar_root))
    monkeypatch.setenv("PF_CACHE_DIR", str(cache_dir()))  # main() sets it where unset: keep it from leaking
    assert _gpu().main(["--smoke", "--device", "cpu", "--out", str(tmp_path / "out"), "--work",
                        str(tmp_path / "work")]) == 0
    result = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert {r["model"] for r in result["steps"] if "model" in r} == {"resnet20", "mobilenet_v1", "resnet56",
                                                                    "mobilenet_v2"}
    assert [r["setting"] for r in result["episodes"]] == ["ft_iters=0", "default"]
    assert result["search"]["episodes"] == 2 and result["search"]["best_reward"] is not None
    assert "ms/step" in capsys.readouterr().out
