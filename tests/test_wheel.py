"""The whole job from an installed wheel, outside the checkout (issue 21).

Builds the wheel, installs it (``--no-deps``) into a fresh venv under a temporary folder
whose third-party packages come from this interpreter's site-packages through a ``.pth`` line
(so nothing is downloaded, and this checkout's editable install is not seen: a ``.pth`` line
adds a folder to ``sys.path`` but runs none of the ``.pth`` files in it), then runs the
console scripts from another folder: ``pf-compress`` on small slices (the settings of the
slow whole-job test of tests/test_pipeline.py), and checks every stage's output.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import REPO

SMALL = ("ft_iters=0,reward_samples=200,bn_batches=2,bn_batch_size=64,feature_images=32,points_per_image=4,"
         "flops_budget=0.5")
SCRIPTS = ("pf-search", "pf-replay", "pf-retrain", "pf-export", "pf-deploy-benchmark", "pf-compress",
           "pf-evaluate", "pf-cost-table")


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    # built from a copy of the files git knows (tracked, or new and not ignored): a stale build/ folder in
    # the checkout would otherwise ship modules that no longer exist
    src = tmp / "src"
    files = _run(["git", "-C", REPO, "ls-files", "-co", "--exclude-standard", "-z"]).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist",
          src], timeout=600)
    (wheel,) = (tmp / "dist").glob("pocketflow_gym-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", venv], timeout=300)
    py = venv / "bin" / "python"
    purelib = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    _run([py, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], timeout=600)
    # after the install: pip would otherwise see this checkout's editable install there and skip the wheel
    deps = [p for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()} if Path(p).is_dir()]
    (purelib / "zz_third_party.pth").write_text("\n".join(deps) + "\n")
    return venv


def _env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.slow
def test_the_wheel_runs_the_whole_job_outside_the_checkout(wheel_venv, tmp_path, cifar_root):
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**_env(wheel_venv), "PF_DATA_DIR": str(cifar_root)}
    where = _run([wheel_venv / "bin" / "python", "-c", "import pf_deploy, pf_envs; print(pf_deploy.__file__); "
                  "print(pf_envs.__file__)"], cwd=work, env=env).stdout.split()
    assert all(str(wheel_venv) in w and str(REPO) not in w for w in where), where
    for name in SCRIPTS:
        assert (wheel_venv / "bin" / name).is_file(), f"{name} is not installed"
    _run([wheel_venv / "bin" / "pf-deploy-benchmark", "--help"], cwd=work, env=env)
    job = work / "job"
    argv = ["--env", "ChannelPrune-ResNet20-v0", "--agent", "random", "--episodes", "2", "--env-kwargs", SMALL,
            "--retrain-epochs", "1", "--retrain-args", "--train-images 256 --val-images 100 --test-images 200 "
            "--no-progress --no-tensorboard", "--int8", "--export-args", "--test-samples 200 --calib-images 32",
            "--bench-runs", "5", "--bench-args", "--limit 100 --warmup 2 --threads 1 --quiet",
            "--threads", "1", "--out", job]
    proc = _run([wheel_venv / "bin" / "pf-compress", *argv], cwd=work, env=env, timeout=1800)
    record = json.loads((job / "retrain" / "retrained.json").read_text())
    best = json.loads(next((job / "search").glob("*/best.json")).read_text())
    assert record["policy"] == best["applied"]
    manifest = json.loads((job / "export" / "manifest.json").read_text())
    assert {m["precision"] for m in manifest["models"]} == {"fp32", "int8"}
    assert json.loads((job / "benchmark.json").read_text())["groups"]
    log = (job / "pipeline.log").read_text()
    # the log keeps what each stage printed (not only its command line), as the terminal saw it
    assert "speed-up against" in log and "[retrain] $" in log and '"test_accuracy"' in log
    assert "speed-up against" in proc.stdout
