"""The run folder: config, one JSON line per episode, the best episode so far.

``<logdir>/<run>/``
    ``config.json``     what was asked for (env id and kwargs, agent and kwargs, seed, episodes)
                        and the fingerprints of the base model's weights (``base_model``) and of
                        the env's recovery recipe (``recovery``)
    ``episodes.jsonl``  one line per finished episode, appended and flushed as it ends
    ``best.json``       the best episode so far (replaced atomically)
    ``events.out.tfevents.*``  TensorBoard curves (x-axis: episode)

A run killed at any moment loses at most the episode in flight: a half-written last line
(the process died while writing it) is ignored on reading.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG = "config.json"
EPISODES = "episodes.jsonl"
BEST = "best.json"


def to_jsonable(value: Any) -> Any:
    """Numbers, strings, lists and dicts as JSON can hold them (NaN/inf become strings)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return to_jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return repr(value)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class RunRecord:
    """Reads and writes one run folder."""

    path: Path
    episodes: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None

    @classmethod
    def create(cls, path: Path, config: dict[str, Any], resume: bool) -> RunRecord:
        """Open ``path`` for a new run, or (``resume``) for continuing the run recorded there.

        Raises:
            FileExistsError: the folder holds a run and ``resume`` is false.
            FileNotFoundError: ``resume`` is true but there is no run to continue.
            ValueError: resuming with settings other than the recorded ones.
        """
        path = Path(path)
        cfg_path = path / CONFIG
        if cfg_path.is_file() and not resume:
            raise FileExistsError(
                f"{path} already holds a run: pass --resume (resume=True) to continue it, or "
                "--run-name / another --logdir to start a new one (nothing was overwritten)"
            )
        if resume:
            if not cfg_path.is_file():
                raise FileNotFoundError(f"nothing to resume: {cfg_path} does not exist")
            old = json.loads(cfg_path.read_text())
            keys = ("env_id", "env_kwargs", "agent", "agent_kwargs", "seed")
            diff = {
                k: (old.get(k), config.get(k)) for k in keys if to_jsonable(old.get(k)) != to_jsonable(config.get(k))
            }
            if diff:
                raise ValueError(
                    f"cannot resume {path} with other settings: {diff} (recorded, asked); "
                    "use the recorded settings or start a new run"
                )
            record = cls(path)
            record._load()
            old["episodes"] = config.get("episodes", old.get("episodes"))
            _atomic_write(cfg_path, json.dumps(to_jsonable(old), indent=2) + "\n")
            return record
        path.mkdir(parents=True, exist_ok=True)
        _atomic_write(cfg_path, json.dumps(to_jsonable(config), indent=2) + "\n")
        return cls(path)

    def check_base_model(self, fingerprint: str | None) -> None:
        """Record the env's base-model fingerprint in ``config.json`` (``base_model``), or,
        for a resumed run that has one, refuse other weights: a search resumed against a
        re-trained checkpoint would mix two models' rewards in one record.

        Raises:
            ValueError: the run was recorded with another base model.
        """
        if fingerprint is None:
            return
        config = self.config
        recorded = config.get("base_model")
        if recorded is not None and recorded != fingerprint:
            raise ValueError(
                f"cannot resume {self.path}: it was recorded with base-model weights {recorded}, but the "
                f"env now loads {fingerprint} (another checkpoint). Pass the checkpoint the run used "
                "(env kwarg checkpoint=...) or start a new run (--run-name / another --logdir)"
            )
        if recorded is None:
            config["base_model"] = fingerprint
            _atomic_write(self.path / CONFIG, json.dumps(to_jsonable(config), indent=2) + "\n")

    def check_recovery(self, fingerprint: str | None) -> None:
        """Record the env's recovery fingerprint in ``config.json`` (``recovery``), or, for a
        resumed run, refuse another one: rewards scored under two recipes (another default,
        another version of the env's recovery) are not comparable in one record. A run with
        episodes but no recorded recovery was made before it was recorded, under an older
        recipe, and is refused too.

        Raises:
            ValueError: the run was recorded with another recovery.
        """
        if fingerprint is None:
            return
        config = self.config
        recorded = config.get("recovery")
        if recorded != fingerprint and (recorded is not None or self.episodes):
            what = ("another recovery recipe (an env setting or default, or the env's recovery "
                    f"version, differs: recorded {recorded}, now {fingerprint})" if recorded is not None
                    else "an older recovery recipe, before recipes were recorded")
            raise ValueError(
                f"cannot resume {self.path}: its rewards were scored with {what}; they are not comparable "
                "with the env's rewards now. Start a new run (--run-name / another --logdir)"
            )
        if recorded is None:
            config["recovery"] = fingerprint
            _atomic_write(self.path / CONFIG, json.dumps(to_jsonable(config), indent=2) + "\n")

    def _load(self, repair: bool = True) -> None:
        """Read the episodes; ``repair`` rewrites the file without a half-written last line
        (only the process that will append to the run may do that)."""
        ep_path = self.path / EPISODES
        if ep_path.is_file():
            lines = ep_path.read_text().splitlines()
            good: list[str] = []
            for line in lines:
                try:
                    self.episodes.append(json.loads(line))
                    good.append(line)
                except json.JSONDecodeError:
                    break  # a line cut short by a kill: it and anything after are dropped
            if repair and len(good) != len(lines):
                _atomic_write(ep_path, "".join(g + "\n" for g in good))
        for ep in self.episodes:
            if self.best is None or ep["reward"] > self.best["reward"]:
                self.best = ep

    @property
    def config(self) -> dict[str, Any]:
        return json.loads((self.path / CONFIG).read_text())

    def append(self, episode: dict[str, Any]) -> bool:
        """Append one finished episode; returns whether it is the new best."""
        line = json.dumps(to_jsonable(episode))
        with open(self.path / EPISODES, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.episodes.append(json.loads(line))
        if self.best is None or episode["reward"] > self.best["reward"]:
            self.best = self.episodes[-1]
            _atomic_write(self.path / BEST, json.dumps(self.best, indent=2) + "\n")
            return True
        return False


def read_run(path: str | os.PathLike[str]) -> RunRecord:
    """Read a run folder (for analysis). Nothing is written: the run may be live, and a
    half-written last line (the episode in flight, or a kill) is skipped, not removed."""
    record = RunRecord(Path(path))
    record._load(repair=False)
    return record
