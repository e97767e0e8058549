"""Shared fixtures: CIFAR-10 for the tests, unpacked once from the shared tarball.

Where ``PF_DATA_DIR`` already points at CIFAR-10 it is used as is; otherwise the JPEG
tarball (``PF_CIFAR_TARBALL``, default ``../shared/data/cifar10-jpeg.tar.gz`` beside the
checkout) is unpacked into the cache folder once and ``PF_DATA_DIR`` is pointed at it.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TARBALL = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"

# Tests are small; one thread avoids oversubscription when pytest-xdist or a background
# training job shares the two cores, and keeps results bit-for-bit reproducible.
torch.set_num_threads(max(1, int(os.environ.get("PF_TEST_THREADS", "2"))))


def _has_cifar(root: Path) -> bool:
    from pf_envs.data import _find_cifar10

    return root.is_dir() and _find_cifar10(root) is not None


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    """A folder holding CIFAR-10 (skips the test where none can be found)."""
    env_root = os.environ.get("PF_DATA_DIR")
    if env_root and _has_cifar(Path(env_root)):
        return Path(env_root)
    tarball = Path(os.environ.get("PF_CIFAR_TARBALL", DEFAULT_TARBALL))
    from pf_envs.data import cache_dir

    target = cache_dir() / "data" / "cifar10-jpeg"
    if not _has_cifar(target):
        if not tarball.is_file():
            pytest.skip(f"CIFAR-10 not available: set PF_DATA_DIR or PF_CIFAR_TARBALL (looked for {tarball})")
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as tar:
            tar.extractall(target, filter="data")
    os.environ["PF_DATA_DIR"] = str(target)
    return target


@pytest.fixture(scope="session")
def cifar(cifar_root):
    from pf_envs.data import load_cifar10

    return load_cifar10(cifar_root)


# Small settings that keep an episode to about a second on two cores.
SMALL_ENV_KWARGS = dict(
    ft_iters=0, reward_samples=200, bn_batches=2, bn_batch_size=64, feature_images=32, points_per_image=4
)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """``checkpoints(name)``: None where the zoo ships a CIFAR-10 checkpoint (the env loads it),
    else the path of a seeded, untrained checkpoint saved for the test."""
    from pf_envs import zoo

    folder = tmp_path_factory.mktemp("checkpoints")

    def get(name: str, dataset: str = "cifar10"):
        spec = zoo.get_spec(name)
        if spec.has_checkpoint(dataset):
            return None
        path = folder / f"{spec.name}_{dataset}.pt"
        if not path.is_file():
            torch.manual_seed(0)
            zoo.save_checkpoint(zoo.create_model(spec.name, dataset), path)
        return str(path)

    return get


def make_env(env_id: str, checkpoints, defaults: dict, **kwargs):
    """``gym.make(env_id)`` with ``defaults`` under ``kwargs``, and the test checkpoint of the
    id's zoo model where the zoo ships none."""
    import gymnasium as gym

    import pf_envs

    model = pf_envs.ENV_IDS.get(env_id, {}).get("kwargs", {}).get("model")
    if model is not None:
        ckpt = checkpoints(model)
        if ckpt is not None:
            kwargs.setdefault("checkpoint", ckpt)
    return gym.make(env_id, **{**defaults, **kwargs})


def play(env, policy, seed: int = 0, dry_run: bool = False):
    """Play one episode with action ``policy(t)`` at step ``t``; returns the last (reward, info)."""
    import numpy as np

    obs, _ = env.reset(seed=seed, options={"dry_run": dry_run})
    t = 0
    while True:
        obs, reward, terminated, truncated, info = env.step(np.array([policy(t)], np.float32))
        assert env.observation_space.contains(obs)
        t += 1
        if terminated or truncated:
            return reward, info
