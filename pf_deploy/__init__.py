"""pocketflow-gym after the search: from a searched policy to a model benchmarked where it runs.

One module per stage, in the order a user meets them (each is also a command, ``pf-*`` or
``python -m pf_deploy.<module>``):

1. :mod:`pf_deploy.replay` (``pf-replay``): rebuild the compressed model of a run folder's
   best (or any) episode; :func:`replay_run`.
2. :mod:`pf_deploy.starting_model` and :mod:`pf_deploy.retrain` (``pf-retrain``): where the
   policy comes from, the model re-training starts from (replay, optionally PocketFlow's
   group fine-tuning), the teacher; then the re-training itself
   (:func:`learners.retraining.retrain`), resumable, under ``torchrun`` too.
3. :mod:`pf_deploy.export_source` and :mod:`pf_deploy.export` (``pf-export``): fp32 ONNX,
   static int8, ``.ort`` files, the test images and the manifest.
4. :mod:`pf_deploy.benchmark` (``pf-deploy-benchmark``): size, MACs, accuracy and latency of
   exported models on the target; onnxruntime + numpy only, and the manifest's schema.
5. :mod:`pf_deploy.job` (``pf-compress``): the whole job, each stage above a ``python -m``
   process, resumable, skipped when its output is there.

The package sits above the environments (:mod:`pf_envs`) and the agents (:mod:`pf_agents`,
whose run folders it reads through :mod:`pf_agents.records`); neither imports it. Importing
``pf_deploy`` imports nothing heavy (no torch): a board with only onnxruntime and numpy can
run :mod:`pf_deploy.benchmark`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["replay_run"]


def replay_run(*args: Any, **kwargs: Any) -> Any:
    """:func:`pf_deploy.replay.replay_run` (imported on first use: this package stays light)."""
    from pf_deploy.replay import replay_run as run

    return run(*args, **kwargs)
