"""benchmarks/league.py --smoke: the league's size test (tiny synthetic dataset, temp folders)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import league  # noqa: E402


def test_league_smoke(tmp_path, capsys):
    out = tmp_path / "league.json"
    assert league.main(["--smoke", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    assert {(r["agent"], r["budget"]) for r in result["runs"]} == {
        (a, b) for a in ("uniform", "random", "tpe") for b in (0.5, 0.3)}
    for r in result["runs"]:
        assert len(r["rewards"]) == (1 if r["agent"] == "uniform" else 8)
        assert r["best"]["reward"] == max(r["rewards"]) and len(r["best"]["policy"]) == 12
    text = capsys.readouterr().out
    assert "best @ 8" in text and "seeds (warm-up 4)" in text  # tpe's warm-up: 4 startup trials
    assert {r["warmup"] for r in result["runs"] if r["agent"] == "tpe"} == {4}


def test_best_so_far_and_interval():
    assert league.best_so_far([0.1, 0.3, 0.2, 0.5]) == [0.1, 0.3, 0.3, 0.5]
    mean, half = league.interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and 2.4 < half < 2.5  # t(0.975, 2) = 4.30, sd 1, sqrt(3)
    assert league.at([0.4], 50) == 0.4  # uniform plays one episode
    assert league.parse_entry("ddpg_w100=ddpg") == ("ddpg_w100", "ddpg") and league.parse_entry("gp") == ("gp", "gp")
    assert league.warmup_length("ddpg", {}) == 25 and league.warmup_length("ddpg", {"warmup_episodes": 5}) == 5
    assert league.warmup_length("random", {}) is None
