"""benchmarks/league.py --smoke: the league's size test (tiny synthetic dataset, temp folders)."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

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


def test_league_reports_its_cpu_cost_and_runs_an_agent_at_fewer_episodes(tmp_path, capsys):
    out = tmp_path / "league.json"
    assert league.main(["--smoke", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "CPU ms an episode" in text and "| all |" in text
    result = json.loads(out.read_text())
    assert all(r["cpu_s"] >= 0 and r["played"] == len(r["rewards"]) for r in result["runs"])
    assert {r["agent"]: r["played"] for r in result["runs"]}["tpe"] == 8


def test_table_leaves_out_checkpoints_past_a_shorter_run():
    runs = [{"agent": a, "budget": 0.5, "rewards": [0.001 * i for i in range(n)], "warmup": None, "best": {}}
            for a, n in (("ddpg", 100), ("gp", 60), ("uniform", 1))]
    text = league.table(runs, ["ddpg", "gp", "uniform"], [0.5], 100)
    gp = next(line for line in text.splitlines() if "| gp |" in line)
    assert gp.split(" | ")[3].startswith("4.90") and gp.split(" | ")[4] == "-"  # @ 50 shown, @ 100 not
    assert "| uniform | 1 | 0.00 +- 0.00 | 0.00 +- 0.00" in text


@pytest.mark.parametrize(("args", "message"), [
    (["--agents", "gp", "--agent-episodes", "gp=0"], "--agent-episodes takes LABEL=N"),
    (["--agents", "gp", "--agent-episodes", "tpe=50"], "--agent-episodes takes LABEL=N"),
    (["--agents", "ddpg", "--agent-kwargs", "ddpg:warmup=5"], r"unknown setting\(s\) \['warmup'\]"),
    (["--agents", "ddpg", "--agent-kwargs", "ddpg:noise_decay=2"], "noise_decay must be a number in"),
    (["--agents", "ddpg", "--agent-kwargs", "td3:warmup_episodes=5"], "which --agents does not list"),
])
def test_league_refuses_bad_settings_before_any_run(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        league.main(args)
    assert exc.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_ddpg_diagnosis_smoke(tmp_path, capsys):
    import ddpg_diagnosis

    out = tmp_path / "diag.json"
    assert ddpg_diagnosis.main(["--smoke", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {r["agent"] for r in result["runs"]} == {"default", "warmup2", "random"}
    assert {r["warmup"] for r in result["runs"] if r["agent"] == "warmup2"} == {2}
    text = capsys.readouterr().out
    assert "seeds (warm-up 4)" in text and "seeds (warm-up 2)" in text
    assert "| warmup2 | " in result["against_default"] and "wins at every budget" in result["against_default"]
    assert {r["agent"] for r in result["runs"]} >= {"random"}
    assert "random, best after episode 4 beats the first 4" in text and "- random @ 8" in text


def test_ddpg_diagnosis_refuses_unknown_variants(capsys):
    import ddpg_diagnosis

    with pytest.raises(SystemExit):
        ddpg_diagnosis.main(["--variants", "default", "warmup1000"])
    assert "unknown variant(s) ['warmup1000']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ddpg_diagnosis.main(["--variant", "noise_sigma=0.5"])
    assert "--variant takes LABEL:K=V" in capsys.readouterr().err
    assert ddpg_diagnosis.welch([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == (0.0, pytest.approx(2.26, abs=0.01))


def test_every_named_ddpg_variant_is_a_valid_setting_as_the_league_spells_it():
    import ddpg_diagnosis

    from pf_agents.cli import parse_kwargs
    from pf_agents.ddpg import DDPGAgent

    for name, (kwargs, _) in ddpg_diagnosis.VARIANTS.items():
        back = parse_kwargs(ddpg_diagnosis.spell(kwargs))
        assert back == kwargs, name
        DDPGAgent.check_settings({**DDPGAgent.DEFAULTS, **back})


@pytest.mark.parametrize("workers", [1, 2])
def test_rescore_and_confirm_play_real_policies_once_and_resume(cifar_root, tmp_path, capsys, workers):
    """``--rescore`` and ``--confirm`` on a tiny dataset whose header names a small real
    ChannelPrune-ResNet20 configuration: every run's best is played on the real test split, the
    best agent's top policies on the dataset's own reward, the best of those on test; the
    scores are kept in the log folder and a second call plays nothing again."""
    from conftest import SMALL_ENV_KWARGS

    data = league.smoke_dataset(tmp_path / "d.npz", dict(SMALL_ENV_KWARGS, reward_samples=100))
    out, logdir = tmp_path / "league.json", tmp_path / "runs"
    argv = ["--env-kwargs", f"data={data},surrogate=hgb", "--agents", "uniform", "random", "--seeds", "2",
            "--episodes", "4", "--budgets", "0.5", "--rescore", "100", "--confirm", "3", "--logdir", str(logdir),
            "--out", str(out), "--workers", str(workers)]
    assert league.main(argv) == 0
    result = json.loads(out.read_text())
    for r in result["runs"]:
        assert 0.0 <= r["best"]["real"] <= 1.0
    (row,) = result["confirmed"]
    assert row["agent"] == "random" and row["budget"] == 0.5 and row["evaluations"] == 3
    assert row["test_images"] == 100 and 0.0 <= row["test_accuracy"] <= 1.0
    top = league.top_policies(logdir, result["runs"], "random", 0.5, 3)
    assert [t["reward"] for t in top] == sorted((t["reward"] for t in top), reverse=True)
    assert row["policy"] in [t["policy"] for t in top] and 1 <= row["its_surrogate_rank"] <= 3
    lines = (logdir / "real_scores.jsonl").read_text().splitlines()
    # each run's best on test (4 runs), 3 top policies on the reward split, the chosen one on test
    # (a policy and seed already scored in the same configuration is not played again)
    assert len(lines) <= 4 + 3 + 1 and len({json.loads(line)["key"] for line in lines}) == len(lines)
    assert "real evaluations" in capsys.readouterr().out
    assert league.main(argv) == 0
    assert (logdir / "real_scores.jsonl").read_text().splitlines() == lines
    assert json.loads(out.read_text())["confirmed"] == result["confirmed"]


def test_confirm_agents_must_be_league_agents(capsys):
    with pytest.raises(SystemExit):
        league.main(["--smoke", "--confirm", "3", "--confirm-agents", "sac"])
    assert "--confirm-agents ['sac']" in capsys.readouterr().err


class _CleanRealEnvs:
    """A stand-in for :class:`league.RealEnvs`: the noise-free synthetic accuracy of each policy."""

    def __init__(self):
        self.requests = []

    def score_many(self, requests, desc=""):
        from test_surrogate import synthetic_accuracy

        self.requests += requests
        return [{"accuracy": float(synthetic_accuracy(np.asarray([policy]))[0])} for _, _, _, policy, _ in requests]


def test_top_decile_rescore_separates_the_label_s_noise_from_the_surrogate_s():
    """The held-out top decile re-scored by a clean real env: the labels' own ranking of the
    clean scores is below 1 (they carry noise), and every figure covers the same episodes."""
    import surrogate_topdecile
    from test_surrogate import synthetic_dataset

    data = synthetic_dataset(400, seed=3)
    noisy = dataclasses.replace(data, accuracy=data.accuracy + np.random.default_rng(0).normal(0, 0.03, len(data)))
    real = _CleanRealEnvs()
    out = surrogate_topdecile.top_decile_rescore(noisy, "hgb", real, split="test", images=500, seed=0)
    assert out["episodes"] == len(real.requests) == len(out["rows"]) == 8  # 10% of the 80 held out
    assert all(split == "test" and n == 500 for _, split, n, _, _ in real.requests)
    assert sorted(seed for *_, seed in real.requests) == sorted(int(data.seed[r["index"]]) for r in out["rows"])
    assert out["label_vs_clean"]["spearman"] < 1.0
    assert all(abs(r["label"] - r["clean"]) < 0.15 for r in out["rows"])
    assert set(out) >= {"surrogate_vs_label", "surrogate_vs_clean", "mean_label_minus_clean_points"}


def test_a_restarted_league_still_reports_what_its_searches_cost(tmp_path):
    """The cost of a run is kept in its folder: a second league over finished runs plays nothing
    and reports the first one's episodes and CPU time, not zeros."""
    data = league.smoke_dataset(tmp_path / "smoke.npz")
    job = {"env": "Surrogate-ChannelPrune-ResNet20-v0", "env_kwargs": {"data": data, "flops_budget": 0.5},
           "agent": "random", "algo": "random", "seed": 0, "budget": 0.5, "episodes": 6, "agent_kwargs": {},
           "warmup": None, "logdir": str(tmp_path / "runs"), "name": "r"}
    first = league.run_one(job)
    assert first["played"] == 6 and first["cpu_s"] > 0
    again = league.run_one(job)
    assert again["rewards"] == first["rewards"]
    assert (again["played"], again["cpu_s"]) == (6, first["cpu_s"])
    more = league.run_one({**job, "episodes": 9})  # resumed to more episodes: the costs add up
    assert more["played"] == 9 and more["cpu_s"] > first["cpu_s"]
    (tmp_path / "runs" / "r" / league.COST_FILE).write_text("{not json")
    assert league.run_one({**job, "episodes": 9})["played"] == 0  # an unreadable ledger counts as zeros
