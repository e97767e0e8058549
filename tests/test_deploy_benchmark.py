"""The deploy benchmark (pf_deploy.benchmark, run as benchmarks/deploy.py) where torch cannot be
imported, on real exported models.

The fixture exports the shipped ResNet-20 (fp32 ONNX + ORT static int8 QDQ, a 64-image
test.npz) with the exporter (pf_deploy.export.write_bundle); every run of deploy.py is a
subprocess whose meta-path blocker makes ``import torch`` (and the project's torch-importing
modules: everything but pf_deploy.benchmark and learners.host) raise ImportError, as on a
board where only ``pip install onnxruntime numpy`` was done.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO

import pf_deploy.benchmark as deploy  # imports no torch: safe in-process

DEPLOY = REPO / "benchmarks" / "deploy.py"
ARM_RUN = REPO / "benchmarks" / "arm" / "run.sh"
BLOCKED = ("torch", "torchvision", "pf_envs", "learners", "pf_agents", "baselines", "pf_deploy")
#: what the benchmark may import of the project (standard library only)
ALLOWED = ("pf_deploy", "pf_deploy.benchmark", "learners", "learners.host")

BLOCKER = textwrap.dedent(f"""
    import sys

    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED!r} and name not in {ALLOWED!r}:
                raise ImportError(f"{{name}} is blocked: deploy.py must run with onnxruntime and numpy only")
            return None

    sys.meta_path.insert(0, _NoTorch())
""")


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory) -> dict[str, str]:
    """Environment for a subprocess in which importing torch fails."""
    folder = tmp_path_factory.mktemp("no_torch")
    (folder / "sitecustomize.py").write_text(BLOCKER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(folder)
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked" in probe.stderr, "the torch blocker does not work"
    return env


def _nhwc(split, n: int) -> tuple[np.ndarray, np.ndarray]:
    idx = torch.from_numpy(deploy.evenly_spaced(len(split), n))
    return split.images[idx].permute(0, 2, 3, 1).contiguous().numpy(), split.labels[idx].numpy()


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, cifar) -> Path:
    from pf_deploy.export import TestSet, normalise, write_bundle
    from pf_envs import zoo
    from pf_envs.data import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
    from pf_envs.layers import count_macs

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("export") / "resnet20"
    calib, _ = _nhwc(cifar.split("train"), 32)
    test, labels = _nhwc(cifar.split("test"), 64)
    model = zoo.load("resnet20")
    write_bundle(model, out, input_size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD, class_names=CIFAR10_CLASSES,
                 macs=count_macs(model, 32), calibration=lambda: [normalise(calib, CIFAR10_MEAN, CIFAR10_STD)],
                 test=TestSet(test, labels.astype(np.int64)), exact_int8=False,
                 source={"kind": "zoo", "zoo_model": "resnet20"}, log=lambda _m: None)
    return out


@pytest.fixture(scope="module")
def other_shape_model(tmp_path_factory) -> Path:
    """A small fp32 classifier with 16x16 inputs (the zoo's take 32x32)."""
    path = tmp_path_factory.mktemp("other") / "small16.onnx"
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()
    torch.onnx.export(net, (torch.zeros(1, 3, 16, 16),), str(path), dynamo=False, input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}})
    return path


def run_deploy(env, *args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(DEPLOY), *map(str, args), "--quiet"], env=env, capture_output=True,
                          text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


FAST = ("--runs", "3", "--warmup", "1", "--threads", "1")


def test_manifest_without_torch(no_torch_env, export_dir, tmp_path):
    out = tmp_path / "r.json"
    proc = run_deploy(no_torch_env, export_dir / "manifest.json", *FAST, "--out", out)
    result = json.loads(out.read_text())
    assert result["format"] == deploy.RESULT_FORMAT and not result["platform"]["emulated"]
    (group,) = result["groups"]
    assert group["reference"] == "resnet20/fp32" and group["input_shape"] == [3, 32, 32]
    rows = {r["name"]: r for r in group["models"]}
    assert set(rows) == {"fp32", "int8"}
    manifest = json.loads((export_dir / "manifest.json").read_text())
    fp32, int8 = rows["fp32"], rows["int8"]
    # ORT fp32 predicts what PyTorch predicted when exporting (one borderline image allowed)
    assert fp32["test_images"] == 64
    assert abs(fp32["accuracy"] - manifest["models"][0]["test_accuracy"]) <= 1 / 64
    assert fp32["accuracy"] > 0.75 and abs(int8["accuracy"] - fp32["accuracy"]) <= 0.1
    assert fp32["structure"] == int8["structure"] == "dense"  # the manifest's source is a zoo model
    assert int8["precision"] == "int8" and int8["size_bytes"] < fp32["size_bytes"] / 2
    assert fp32["macs"] == manifest["models"][0]["macs"] > 0
    assert fp32["speedup"]["1"] == 1.0 and int8["speedup"]["1"] > 0
    lat = int8["latency"]["1"]
    assert lat["runs"] == 3 and 0 < lat["p10_ms"] <= lat["median_ms"] <= lat["p90_ms"]
    assert "speed-up against resnet20/fp32" in proc.stdout and "EMULATION" not in proc.stdout


def test_profile_splits_kernel_time_by_operator(no_torch_env, export_dir, tmp_path):
    out = tmp_path / "r.json"
    proc = run_deploy(no_torch_env, export_dir / "manifest.json", *FAST, "--profile", "2", "--limit", "8",
                      "--out", out)
    rows = {r["name"]: r for r in json.loads(out.read_text())["groups"][0]["models"]}
    fp32, int8 = rows["fp32"]["profile"], rows["int8"]["profile"]
    assert fp32["runs"] == 2 and fp32["threads"] == 1
    assert "QLinearConv" in int8["by_op_ms"] and "QLinearConv" not in fp32["by_op_ms"]
    assert abs(sum(int8["by_op_ms"].values()) - int8["kernel_ms"]) < 1e-6 and int8["kernel_ms"] > 0
    assert len(int8["top_nodes"]) == 10 and int8["top_nodes"][0][2] >= int8["top_nodes"][-1][2]
    assert "profile resnet20/int8" in proc.stdout
    assert run_deploy(no_torch_env, export_dir / "manifest.json", "--profile", "-1", check=False).returncode == 2


def test_bare_files_with_image_folder(no_torch_env, export_dir, cifar_root, tmp_path):
    out = tmp_path / "r.json"
    run_deploy(no_torch_env, export_dir / "model.int8.onnx", export_dir / "model.onnx", "--data", cifar_root / "test",
               "--limit", "30", *FAST, "--out", out)
    (group,) = json.loads(out.read_text())["groups"]
    rows = {r["name"]: r for r in group["models"]}
    # the reference is the fp32 model, though listed second; precision read from the graph
    assert group["reference"] == "files/model"
    assert rows["model.int8"]["precision"] == "int8" and rows["model.int8"]["precision_from"] == "graph op types"
    assert rows["model"]["macs"] is None and rows["model"]["test_images"] == 30
    assert rows["model"]["accuracy"] > 0.6


def test_emulated_label_and_logit_comparison(no_torch_env, export_dir, tmp_path):
    dump = tmp_path / "logits"
    run_deploy(no_torch_env, export_dir / "manifest.json", *FAST, "--dump-logits", dump)
    assert (dump / "resnet20_int8.npy").is_file()
    out = tmp_path / "r.json"
    proc = run_deploy(no_torch_env, export_dir / "manifest.json", *FAST, "--compare-logits", dump,
                      "--emulated", "qemu test", "--label", "test board", "--out", out)
    result = json.loads(out.read_text())
    assert result["platform"]["emulated"] and result["platform"]["label"] == "test board"
    assert "EMULATION (qemu test)" in proc.stdout and "(emu)" in proc.stdout
    for row in result["groups"][0]["models"]:
        assert row["logits_vs"]["identical"] and row["logits_vs"]["top1_agreement"] == 1.0


def test_different_input_shapes(no_torch_env, export_dir, other_shape_model, tmp_path):
    proc = run_deploy(no_torch_env, export_dir / "model.onnx", other_shape_model, *FAST, check=False)
    assert proc.returncode == 2 and "different shapes" in proc.stderr and "--separate-shapes" in proc.stderr
    out = tmp_path / "r.json"
    run_deploy(no_torch_env, export_dir / "model.onnx", other_shape_model, *FAST, "--separate-shapes", "--out", out)
    groups = json.loads(out.read_text())["groups"]
    assert sorted(g["input_shape"] for g in groups) == [[3, 16, 16], [3, 32, 32]]
    assert all(len(g["models"]) == 1 and g["models"][0]["accuracy"] is None for g in groups)


@pytest.mark.parametrize("case", ["not_a_model", "missing", "bad_manifest", "wrong_suffix", "bad_reference",
                                  "file_outside", "test_data_outside"])
def test_bad_input_is_a_clear_error(case, no_torch_env, export_dir, tmp_path):
    if case == "not_a_model":
        bad = tmp_path / "junk.onnx"
        bad.write_bytes(b"this is not a protobuf" * 10)
        args, expect = [bad], "is not a model ONNX Runtime"
    elif case == "missing":
        args, expect = [tmp_path / "nope.onnx"], "does not exist"
    elif case == "bad_manifest":
        bad = tmp_path / "manifest.json"
        bad.write_text(json.dumps({"format": "something/else", "models": []}))
        args, expect = [bad], "is not a deploy manifest"
    elif case == "wrong_suffix":
        bad = tmp_path / "model.pt"
        shutil.copy(export_dir / "model.onnx", bad)
        args, expect = [bad], "unknown model file type"
    elif case in ("file_outside", "test_data_outside"):  # docs/export.md: paths are relative to the folder
        manifest = json.loads((export_dir / "manifest.json").read_text())
        if case == "file_outside":
            manifest["models"][0]["file"] = f"../{export_dir.name}/{manifest['models'][0]['file']}"
        else:
            manifest["test_data"] = f"../{export_dir.name}/{manifest['test_data']}"
        bundle = tmp_path / "bundle"
        bundle.mkdir()
        for m in manifest["models"][1 if case == "file_outside" else 0:]:
            shutil.copy(export_dir / m["file"], bundle / m["file"])
        (bundle / "manifest.json").write_text(json.dumps(manifest))
        args, expect = [bundle / "manifest.json"], "points outside its folder"
    else:
        args, expect = [export_dir / "manifest.json", "--reference", "nope"], "--reference 'nope' matches 0"
    proc = run_deploy(no_torch_env, *args, *FAST, check=False)
    assert proc.returncode == 2 and expect in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_board_copy_of_three_files_runs_alone(no_torch_env, export_dir, tmp_path):
    """What docs/deploy.md tells a board user to copy: deploy.py, benchmark.py, host.py, nothing else."""
    board = tmp_path / "board"
    board.mkdir()
    for f in (DEPLOY, REPO / "pf_deploy" / "benchmark.py", REPO / "learners" / "host.py"):
        shutil.copy(f, board / f.name)
    env = {**no_torch_env, "PYTHONPATH": no_torch_env["PYTHONPATH"]}
    blocker = Path(no_torch_env["PYTHONPATH"]) / "sitecustomize.py"
    (board / "sitecustomize.py").write_text(blocker.read_text().replace(f"{ALLOWED!r}", "()"))
    env["PYTHONPATH"] = str(board)
    proc = subprocess.run([sys.executable, str(board / "deploy.py"), str(export_dir / "manifest.json"), *FAST,
                           "--limit", "8", "--quiet"], env=env, capture_output=True, text=True, timeout=300,
                          cwd=board)
    assert proc.returncode == 0, proc.stderr
    assert "speed-up against resnet20/fp32" in proc.stdout


def test_evenly_spaced_and_threads():
    assert deploy.evenly_spaced(10, None).tolist() == list(range(10))
    assert deploy.evenly_spaced(10000, 10).tolist() == [0, 1111, 2222, 3333, 4444, 5555, 6666, 7777, 8888, 9999]
    assert deploy.parse_threads(["1", "1", "all"])[0] == 1
    with pytest.raises(deploy.DeployError, match="positive integers"):
        deploy.parse_threads(["0"])


def test_preprocess_matches_the_project():
    """The numbers deploy.py copies (it may not import pf_envs) are the project's."""
    from pf_envs.data import CIFAR10_MEAN, CIFAR10_STD

    assert deploy.CIFAR10_MEAN == CIFAR10_MEAN and deploy.CIFAR10_STD == CIFAR10_STD
    images = np.full((1, 2, 2, 3), 255, np.uint8)
    x = deploy.Preprocess().apply(images, "NCHW")
    assert x.shape == (1, 3, 2, 2) and np.allclose(x[0, :, 0, 0], (1 - np.array(CIFAR10_MEAN)) / CIFAR10_STD)


@pytest.mark.slow
def test_arm_emulation_matches_x86(export_dir, tmp_path):
    """deploy.py under qemu aarch64 (benchmarks/arm/run.sh): fp32 logits as on x86 to float
    rounding; int8 predictions as on x86 up to a few borderline images."""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    setup = subprocess.run(["bash", str(ARM_RUN), "--setup-only"], capture_output=True, text=True, timeout=1800)
    if setup.returncode == 77:
        pytest.skip(f"ARM emulation not available: {setup.stderr.strip().splitlines()[-1]}")
    assert setup.returncode == 0, setup.stderr
    x86 = tmp_path / "x86"
    args = [export_dir / "manifest.json", "--limit", "16", "--runs", "2", "--warmup", "1", "--threads", "1"]
    subprocess.run([sys.executable, str(DEPLOY), *map(str, args), "--dump-logits", str(x86)], check=True,
                   capture_output=True, timeout=300)
    out = tmp_path / "arm.json"
    proc = subprocess.run(["bash", str(ARM_RUN), *map(str, args), "--compare-logits", str(x86), "--out", str(out)],
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr
    assert "EMULATION" in proc.stdout
    result = json.loads(out.read_text())
    assert result["platform"]["machine"] == "aarch64" and result["platform"]["emulated"]
    rows = {r["name"]: r for r in result["groups"][0]["models"]}
    assert rows["fp32"]["logits_vs"]["max_abs_diff_relative_to_max_logit"] < 1e-4
    assert rows["fp32"]["logits_vs"]["top1_agreement"] == 1.0
    assert rows["int8"]["logits_vs"]["top1_agreement"] >= 14 / 16


def test_dense_and_pruned_exports_reference_the_dense_fp32(export_dir, tmp_path):
    """Two exports (a zoo model and a compressed one): the reference is the dense fp32."""
    pruned = tmp_path / "pruned"
    shutil.copytree(export_dir, pruned)
    manifest = json.loads((pruned / "manifest.json").read_text())
    manifest["source"] = {"kind": "compressed", "policy": [0.5, 0.5]}
    for m in manifest["models"]:
        m["macs"] //= 2  # what a pruned model's manifest says; the files stay the dense ones here
    (pruned / "manifest.json").write_text(json.dumps(manifest))
    entries = deploy.collect_models([str(pruned / "manifest.json"), str(export_dir / "manifest.json")])
    assert [(e.label, e.structure, e.precision) for e in entries] == [
        ("pruned/fp32", "pruned", "fp32"), ("pruned/int8", "pruned", "int8"),
        ("resnet20/fp32", "dense", "fp32"), ("resnet20/int8", "dense", "int8")]
    assert deploy.pick_reference(entries, None).label == "resnet20/fp32"
    assert deploy.pick_reference(entries, "pruned/int8").label == "pruned/int8"


class _FakeSession:
    """Records which model ran, in order (for the round-robin test)."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def get_inputs(self):
        return [type("Input", (), {"name": "x"})()]

    def run(self, _outputs, feed):
        assert set(feed) == {"x"}
        self.calls.append(self.name)


def test_models_are_timed_in_round_robin_rounds():
    calls: list[str] = []
    sessions = [_FakeSession(n, calls) for n in "abc"]
    x = np.zeros((1, 3, 4, 4), np.float32)
    stats = deploy.time_interleaved(sessions, [x] * 3, warmup=1, runs=7, rounds=3)
    assert calls[:3] == ["a", "b", "c"]  # the warm-up, once each
    # 7 runs in 3 rounds (3, 2, 2), the order rotating by one model each round
    assert "".join(calls[3:]) == "aaabbbccc" + "bbccaa" + "ccaabb"
    assert [s["runs"] for s in stats] == [7, 7, 7] and all(s["rounds"] == 3 for s in stats)
    assert all(0 <= s["min_ms"] <= s["median_ms"] <= s["p90_ms"] for s in stats)
    with pytest.raises(deploy.DeployError, match="rounds must be >= 1"):
        deploy.time_interleaved(sessions, [x] * 3, warmup=0, runs=3, rounds=0)
