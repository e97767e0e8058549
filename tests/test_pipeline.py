"""pf-compress (pf_deploy.job; scripts/compress.py in a checkout): search -> re-training -> export ->
benchmark in one command."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from compress import main  # noqa: E402

SMALL = ("ft_iters=0,reward_samples=200,bn_batches=2,bn_batch_size=64,feature_images=32,points_per_image=4,"
         "flops_budget=0.5")


def test_bad_input_is_one_sentence_and_writes_nothing(tmp_path, capsys):
    assert main(["--env", "Nope-v0", "--out", str(tmp_path / "job")]) == 2
    assert "unknown env 'Nope-v0'" in capsys.readouterr().err
    assert main(["--env", "Toy-v0", "--episodes", "0", "--out", str(tmp_path / "job")]) == 2
    assert ">= 1" in capsys.readouterr().err
    assert not (tmp_path / "job").exists()


def test_a_stage_streams_its_output_and_the_log_keeps_it(tmp_path, capsys):
    from pf_deploy.job import JobInterrupted, StageError, _run

    log = tmp_path / "pipeline.log"
    stage = "import sys; print('epoch 1/1'); print('50%|#####', end='\\r', file=sys.stderr)"
    _run("one", [sys.executable, "-c", stage], log)
    assert "epoch 1/1" in capsys.readouterr().out
    text = log.read_text()
    assert "[one] $" in text and "epoch 1/1" in text and "50%|#####" in text
    with pytest.raises(JobInterrupted):  # the stage ended by Ctrl-C (exit 130)
        _run("two", [sys.executable, "-c", "raise SystemExit(130)"], log)
    with pytest.raises(StageError, match="(?s)stage three failed.*boom.*run the same command again"):
        _run("three", [sys.executable, "-c", "import sys; sys.exit('boom')"], log)


def test_a_second_job_on_the_same_out_is_refused_for_the_whole_job(tmp_path, capsys, monkeypatch):
    """The --out folder is locked from the search to the last stage: a second compress.py on it
    says so in one sentence and exits 2 (the search stage is done here, the re-training runs)."""
    import pf_deploy.job as pipeline
    from pf_agents.records import RunLock

    out = tmp_path / "job"
    argv = ["--env", "Toy-v0", "--agent", "random", "--episodes", "2", "--retrain-epochs", "0", "--out", str(out)]
    second: list[int] = []
    calls: list[str] = []

    def stage(name, cmd, log):
        calls.append(name)
        if len(calls) == 1:
            second.append(main(argv))  # another job on the same --out while this one runs its second stage
        raise pipeline.StageError(f"stage {name} stopped by the test")

    monkeypatch.setattr(pipeline, "_run", stage)
    assert main(argv) == 1  # the first job: stopped by the test in its second stage
    err = capsys.readouterr().err
    assert second == [2], err
    assert f"error: {out} is being written by another compress job (pid" in err and "pass another --out" in err
    lock = RunLock(out)  # released when the job ended
    lock.acquire()
    try:  # and a job started while another holds the folder (e.g. during its search) is refused at once
        assert main(argv) == 2
        assert "is being written by another compress job" in capsys.readouterr().err
    finally:
        lock.release()


@pytest.mark.slow
def test_the_whole_job_then_a_second_run_skips_every_stage(tmp_path, cifar_root, capsys):
    argv = ["--env", "ChannelPrune-ResNet20-v0", "--agent", "random", "--episodes", "2", "--env-kwargs", SMALL,
            "--retrain-epochs", "1", "--retrain-args", "--train-images 256 --val-images 100 --test-images 200 "
            "--no-progress --no-tensorboard", "--int8", "--export-args", "--test-samples 200 --calib-images 32",
            "--bench-runs", "5", "--bench-args", "--limit 100 --warmup 2 --threads 1 --quiet",
            "--threads", "1", "--out", str(tmp_path / "job")]
    assert main(argv) == 0
    job = tmp_path / "job"
    record = json.loads((job / "retrain" / "retrained.json").read_text())
    best = json.loads(next((job / "search").glob("*/best.json")).read_text())
    assert record["policy"] == best["applied"]
    manifest = json.loads((job / "export" / "manifest.json").read_text())
    assert {m["precision"] for m in manifest["models"]} == {"fp32", "int8"}
    assert manifest["source"]["state_sha1"] == record["state_sha1"]
    assert (job / "export-dense" / "manifest.json").is_file()
    bench = json.loads((job / "benchmark.json").read_text())
    assert bench
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("already done") == 5


@pytest.mark.slow
def test_the_whole_job_on_prune_quant_exports_the_searched_precisions(tmp_path, cifar_root):
    """Issue 23 item 4: ``pf-compress`` on a PruneQuant env ends in the re-trained model exported
    as the mixed int8 model the search chose (not all-int8), with the search's quantizer
    options, and the dense model in fp32 and int8 with the same options, all benchmarked."""
    from learners.onnx_names import layer_nodes
    from learners.ort_int8 import node_precisions

    kwargs = SMALL.replace("flops_budget=0.5", "calibration_images=64,latency_runs=20,latency_widths=3,measure_runs=3,"
                                               "latency_budget=0.6")
    argv = ["--env", "PruneQuant-ResNet20-v0", "--agent", "random", "--episodes", "2", "--env-kwargs", kwargs,
            "--retrain-epochs", "1", "--retrain-args", "--train-images 256 --val-images 100 --test-images 200 "
            "--no-progress --no-tensorboard", "--export-args", "--test-samples 200 --calib-images 32",
            "--bench-runs", "5", "--bench-args", "--limit 100 --warmup 2 --threads 1 --quiet",
            "--threads", "1", "--out", str(tmp_path / "job")]
    assert main(argv) == 0  # no --int8: the searched precisions are int8 by themselves
    job = tmp_path / "job"
    best = json.loads(next((job / "search").glob("*/best.json")).read_text())
    manifest = json.loads((job / "export" / "manifest.json").read_text())
    q = manifest["quantization"]
    assert q["mixed"] is True and list(q["precisions"].values()) == best["info"]["precisions"]
    assert (q["activation_type"], q["reduce_range"]) == ("uint8", True)  # the env's options, not --int8-target's
    graph = node_precisions(job / "export" / "model.int8.onnx")
    import torch

    from pf_envs.compressed import load_compressed

    model, _ = load_compressed(job / "retrain" / "retrained.pt")
    node_of = layer_nodes(model, job / "export" / "model.onnx")
    assert {name: graph[node_of[name]] for name in q["precisions"]} == q["precisions"]
    assert isinstance(model, torch.nn.Module)
    dense = json.loads((job / "export-dense" / "manifest.json").read_text())
    assert [m["name"] for m in dense["models"]][:2] == ["fp32", "int8"]
    assert dense["quantization"]["target"] == "x86" and dense["quantization"]["mixed"] is False
    bench = json.loads((job / "benchmark.json").read_text())
    assert bench
