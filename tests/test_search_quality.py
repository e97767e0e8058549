"""benchmarks/search_quality.py: the test re-score replays the recorded best episode."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import SMALL_ENV_KWARGS

from pf_agents.search import search

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import search_quality  # noqa: E402

KWARGS = {k: v for k, v in SMALL_ENV_KWARGS.items() if k not in ("feature_images", "points_per_image")}


def test_rescore_replays_a_random_order_episode_with_its_seed(cifar_root, tmp_path):
    """Under ``random_order`` the visit order comes from the episode's seed: the re-score must
    play the recorded policy in that order (``play_policy`` refuses a value the budget would cut
    on the way, so a replay in another order fails or gives another policy)."""
    env_id = "UniformQuant-ResNet20-v0"
    kwargs = {**KWARGS, "avg_bits": 3.0, "random_order": True}
    assert search_quality.budget_kwarg(env_id) == "avg_bits"
    result = search(env_id, agent="random", episodes=2, seed=3, logdir=tmp_path, env_kwargs=kwargs, progress=False)
    for episode in result.history:
        row = search_quality.rescore(env_id, kwargs, episode, samples=100)
        assert row["test_images"] == 100 and 0.0 <= row["test_accuracy"] <= 1.0
        assert abs(row["cost_ratio"] - episode["info"]["cost_ratio"]) < 1e-12
