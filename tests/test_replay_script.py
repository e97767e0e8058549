"""scripts/replay.py: a recorded policy replayed from its run folder, without an agent."""

from __future__ import annotations

import json
import sys

from conftest import REPO

from pf_agents import search

sys.path.insert(0, str(REPO / "scripts"))
from replay import main  # noqa: E402


def test_replays_the_best_and_any_episode_of_a_run(tmp_path, capsys):
    kwargs = {"units": 6, "budget": 0.4}
    result = search("Toy-v0", agent="random", episodes=4, seed=3, logdir=tmp_path, env_kwargs=kwargs, progress=False)
    assert main([str(result.run_dir)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reward"] == out["recorded_reward"] == result.best_reward
    assert out["policy"] == [round(v, 6) for v in result.best["applied"]]
    assert main([str(result.run_dir), "--episode", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reward"] == result.history[2]["reward"]
    assert main([str(result.run_dir), "--save", str(tmp_path / "m.pt")]) == 2  # Toy has no model
    assert "no model" in capsys.readouterr().err


def test_a_folder_that_is_not_a_run_is_one_sentence(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "is not a search run folder" in capsys.readouterr().err
    assert main([str(tmp_path), "--episode", "7"]) == 2
