"""The error-floor benchmark's analysis (benchmarks/surrogate_floor.py) on made-up real episodes:
second differences give the noise, disagreement gives the image-sampling part."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import surrogate_floor  # noqa: E402


def _row(base: int, unit: int, step: int, correct: np.ndarray) -> dict:
    return {"base": base, "unit": unit, "step": step, "k": [2, 2], "accuracy": float(correct.mean()),
            "cost_ratio": 0.5, "correct": np.packbits(correct).tobytes().hex()}


def test_independent_part():
    a = np.zeros(1000, bool)
    a[:700] = True
    b = a.copy()
    b[:100] = False  # 10% disagreement, all one way: a difference of 10 points
    r = surrogate_floor.independent_part(a, b)
    assert r["disagreement"] == pytest.approx(0.1) and r["accuracies"] == [0.7, 0.6]
    assert r["sd_of_difference_points"] == pytest.approx(100 * np.sqrt(0.1 * 0.9 / 1000))
    assert r["per_model_points"] == pytest.approx(r["sd_of_difference_points"] / np.sqrt(2))


def test_analyse_second_differences():
    """A linear response has zero second differences (sigma 0); adding +-e to the base's
    neighbours makes them 2e each: sigma = 2e / sqrt(6)."""
    n = 2000
    rng = np.random.default_rng(0)
    order = rng.permutation(n)

    def model(acc: float) -> np.ndarray:  # nested correctness sets: a model right on the first acc*n images
        c = np.zeros(n, bool)
        c[order[: int(round(acc * n))]] = True
        return c

    class Data:
        accuracy = np.array([0.7])

    rows = [_row(0, -1, 0, model(0.7))]
    for u, slope in ((0, 0.01), (1, 0.005)):
        rows += [_row(0, u, -1, model(0.7 - slope)), _row(0, u, 1, model(0.7 + slope))]
    flat = surrogate_floor.analyse(rows, Data, n)["0"]
    assert flat["sigma_points_calm_units"] == pytest.approx(0.0, abs=1e-9) and flat["steps_up_that_lose"] == 0
    assert flat["calm_units"] == 2 and flat["recorded_accuracy"] == 0.7
    bumped = [_row(0, -1, 0, model(0.7))] + [
        _row(0, u, s, model(0.7 + s * slope + 0.002)) for u, slope in ((0, 0.01), (1, 0.005)) for s in (-1, 1)]
    r = surrogate_floor.analyse(bumped, Data, n)["0"]
    assert r["sigma_points_calm_units"] == pytest.approx(2 * 0.2 / np.sqrt(6))
    assert r["mean_disagreement"] > 0 and r["binomial_se_points"] == pytest.approx(100 * np.sqrt(0.21 / n))
