"""Ctrl-C on a command: one line saying how to resume (no traceback), exit 130, and a resumed
run continues its TensorBoard curves in the same event file (issue 21)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO


def _search_then_ctrl_c(logdir: Path, *extra: str, after_lines: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pf_agents.cli", "--env", "Toy-v0", "--agent", "random", "--episodes", "100000",
           "--logdir", str(logdir), "--no-progress", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # SIGINT as a terminal sends it (a shell's background job would ignore it)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    episodes = logdir / "Toy-v0__random__seed0" / "episodes.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not episodes.is_file() or len(episodes.read_text().splitlines()) < after_lines):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_ctrl_c_is_one_line_and_a_resume_keeps_one_event_file(tmp_path):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    first = _search_then_ctrl_c(tmp_path, after_lines=5)
    assert first.returncode == 130, first.stderr
    assert "Traceback" not in first.stderr and first.stderr.strip().splitlines() == [
        "interrupted: the episodes finished so far are recorded; run the same command with --resume to continue"]
    run = tmp_path / "Toy-v0__random__seed0"
    n_first = len((run / "episodes.jsonl").read_text().splitlines())
    second = _search_then_ctrl_c(tmp_path, "--resume", after_lines=n_first + 5)
    assert second.returncode == 130 and "Traceback" not in second.stderr, second.stderr
    (events,) = run.glob("events.out.tfevents.*")  # one file, not one per resume
    steps = [e.step for e in EventFileLoader(str(events)).Load()
             if e.HasField("summary") and any(v.tag == "compress/reward" for v in e.summary.value)]
    n = len((run / "episodes.jsonl").read_text().splitlines())
    assert len(steps) == len(set(steps)) and n - 2 <= len(steps) <= n  # every episode once (a kill may cut one)
    assert max(steps) > n_first
