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

import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from pf_agents.records import write_error

METRICS = ("accuracy", "flops_ratio", "params_ratio")
#: at most this many seconds between two flushes of the event file (and at close): every
#: episode of a real env, about once a second on a surrogate env
FLUSH_INTERVAL_S = 1.0


_hook_installed = False


def _quiet_event_writer_errors() -> None:
    """TensorBoard writes event files in a background thread; a failed write (disk full)
    kills that thread with a traceback on stderr and is raised again in the main thread by
    the next call, where :class:`CompressionLogger` turns it into one sentence. This hook
    keeps the thread's traceback off stderr (other threads' errors are reported as before)."""
    global _hook_installed
    if _hook_installed:
        return
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
            return
        previous(args)

    threading.excepthook = hook
    _hook_installed = True


def open_writer(log_dir: str | Path, first_step: int = 0) -> Any:
    """A ``SummaryWriter`` on ``log_dir`` whose curves stay in one event file across resumes.

    TensorBoard's writer always starts a new event file; a run resumed after Ctrl-C or a kill
    would leave one more file per resume. Here the events of the folder's earlier files are
    copied into the new file first (those before ``first_step``: the steps the resumed run
    has recorded; later ones belong to work that was lost) and the earlier files removed.
    """
    from torch.utils.tensorboard import SummaryWriter

    folder = Path(log_dir)
    earlier = sorted(folder.glob("events.out.tfevents.*"))
    writer = SummaryWriter(log_dir=str(folder))
    if earlier:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        sink = writer._get_file_writer()
        for path in earlier:
            try:
                for event in EventFileLoader(str(path)).Load():
                    if event.HasField("file_version") or event.step >= first_step:
                        continue
                    sink.add_event(event)
            except Exception as exc:  # a file torn by a kill: keep what was read
                warnings.warn(f"TensorBoard: {path} is damaged ({exc}); its events up to the damage are kept",
                              stacklevel=2)
        sink.flush()
        for path in earlier:
            path.unlink(missing_ok=True)
    return writer


class CompressionLogger:
    """Writes the ``compress/*`` curves of one run."""

    def __init__(self, run_dir: Path, config: dict[str, Any], first_episode: int = 0) -> None:
        """``first_episode``: the episodes already recorded (a resumed run continues its curves
        in the same event file, :func:`open_writer`)."""
        _quiet_event_writer_errors()
        self.run_dir = Path(run_dir)
        self.failed = False
        self._flushed_at = -float("inf")
        try:
            self.writer = open_writer(run_dir, first_episode)
            self.config = config
            if not first_episode:
                self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in config.items()), 0)
        except OSError as exc:
            raise write_error(self.run_dir, exc, "(TensorBoard curves)") from exc

    def episode(self, record: dict[str, Any], best_reward: float) -> None:
        """Write one episode's curves.

        Raises:
            RunWriteError: the event file cannot be written (disk full, read-only).
        """
        try:
            self._episode(record, best_reward)
        except OSError as exc:
            self.failed = True
            raise write_error(self.run_dir, exc, "(TensorBoard curves)") from exc

    def _episode(self, record: dict[str, Any], best_reward: float) -> None:
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
        now = time.monotonic()
        if now - self._flushed_at >= FLUSH_INTERVAL_S:
            w.flush()
            self._flushed_at = now

    def close(self, best_reward: float | None) -> None:
        """Write the hyper-parameters with the best reward and close the event file; a write
        failure here (disk full) is not raised: the run's records are already complete."""
        if self.failed:  # the writer thread is dead and the error already reported
            return
        try:
            if best_reward is not None:
                hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in self.config.items()}
                self.writer.add_hparams(hparams, {"hparam/best_reward": best_reward}, run_name="hparams")
            self.writer.close()
        except OSError as exc:
            warnings.warn(f"TensorBoard curves in {self.run_dir} not closed cleanly: {exc}", stacklevel=2)
