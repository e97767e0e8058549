"""TensorBoard curves with the same keys for every agent (x-axis: episode).

- ``compress/reward``, ``compress/best_reward``: this episode's reward and the best so far
- ``compress/accuracy``, ``compress/flops_ratio``, ``compress/params_ratio``: measurements of
  this episode's candidate (where the env reports them)
- ``compress/episode_time_s``: wall time of the episode
- ``compress/applied_actions``, ``compress/raw_actions``: histograms of the per-layer values
- ``compress/layer_XX``: applied value of each layer (keep ratio, sparsity, bits)
- text ``config`` and, when the run ends, the hyper-parameters with ``hparam/best_reward``
DDPG/TD3/SAC also write SB3's own ``train/*`` losses under ``<run>/sb3_1``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("accuracy", "flops_ratio", "params_ratio")


class CompressionLogger:
    """Writes the ``compress/*`` curves of one run."""

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir))
        self.config = config
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in config.items()), 0)

    def episode(self, record: dict[str, Any], best_reward: float) -> None:
        ep = int(record["episode"])
        w = self.writer
        w.add_scalar("compress/reward", record["reward"], ep)
        w.add_scalar("compress/best_reward", best_reward, ep)
        w.add_scalar("compress/episode_time_s", record["wall_time_s"], ep)
        info = record.get("info", {})
        for key in METRICS:
            if isinstance(info.get(key), (int, float)):
                w.add_scalar(f"compress/{key}", info[key], ep)
        applied = np.asarray([a for a in record["applied"] if a is not None], float)
        raw = np.asarray([a for a in record["raw_actions"] if a is not None], float)
        if applied.size:
            w.add_histogram("compress/applied_actions", applied, ep)
            for i, a in enumerate(applied):
                w.add_scalar(f"compress/layer_{i:02d}", a, ep)
        if raw.size:
            w.add_histogram("compress/raw_actions", raw, ep)
        w.flush()

    def close(self, best_reward: float | None) -> None:
        if best_reward is not None:
            hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in self.config.items()}
            self.writer.add_hparams(hparams, {"hparam/best_reward": best_reward}, run_name="hparams")
        self.writer.close()
