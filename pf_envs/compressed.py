"""Compressed-model files: a state dict plus the policy record that rebuilds its architecture.

A compressed model is saved as two files side by side:

* ``NAME.pt``: the state dict, tensors only (loaded with ``torch.load(..., weights_only=True)``,
  so loading a file never runs code from it);
* ``NAME.json``: the record: :data:`FORMAT`, the env id and kwargs it was built on, the policy
  (the applied values, one per step), the base model's fingerprint, the state dict's SHA-1, and
  whatever the writer adds under ``"metrics"`` / ``"source"`` (accuracies, epochs, the run folder).

Loading replays the policy on the recorded env as a dry run (no recovery, no scoring), builds
the architecture the policy gives, and loads the state dict into it. This is the one format
``pf-replay --save``, ``pf-retrain`` and ``pf-export`` share.

>>> from pf_envs.compressed import load_compressed                         # doctest: +SKIP
>>> model, record = load_compressed("out/retrained.pt")                    # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: The record's format tag; bumped if the layout changes.
FORMAT = "pocketflow-gym/compressed-model/1"


def state_sha1(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-1 prefix of a state dict's names, shapes, dtypes and values."""
    h = hashlib.sha1()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def model_record_path(path: str | os.PathLike[str]) -> Path:
    """The JSON record beside a compressed-model ``.pt`` file."""
    return Path(path).with_suffix(".json")


def save_compressed(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    env_id: str,
    env_kwargs: Mapping[str, Any],
    policy: Sequence[float],
    model_fingerprint: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s state dict to ``path`` and its record beside it (both atomically).

    ``env_kwargs`` must be JSON-serialisable (a zoo model name, not a module object): the
    record is what rebuilds the architecture. Returns the record's path.
    """
    from learners.atomic import atomic_torch_save, atomic_write_text

    if not isinstance(env_kwargs.get("model", ""), str):
        raise TypeError(
            "save_compressed: env_kwargs['model'] is a module object; a record can only name a zoo model. "
            "Drop it from env_kwargs (record_kwargs) and pass model= to load_compressed when loading"
        )
    state = {k: (v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu())
             for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "format": FORMAT, "env_id": env_id, "env_kwargs": dict(env_kwargs),
        "policy": [float(v) for v in policy], "model_fingerprint": model_fingerprint,
        "state_sha1": state_sha1(state), "parameters": sum(p.numel() for p in model.parameters()),
        "metrics": dict(metrics or {}), "source": dict(source or {}),
    }
    text = json.dumps(record, indent=2) + "\n"  # fails before anything is written if not serialisable
    atomic_torch_save(state, path)
    atomic_write_text(model_record_path(path), text)
    return model_record_path(path)


def read_model_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The record of a compressed-model file (``path`` is the ``.pt`` or the ``.json``)."""
    path = Path(path)
    rec = model_record_path(path)
    if not rec.is_file():
        raise FileNotFoundError(
            f"{rec} does not exist: a compressed model is a .pt state dict with its .json record beside it "
            "(written by pf-replay --save, pf-retrain or pf_envs.compressed.save_compressed)"
        )
    try:
        record = json.loads(rec.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{rec} is not a valid JSON record ({exc}); write it again from its source") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{rec} is not a compressed-model record (format {record.get('format') if isinstance(record, dict) else None!r}, "
                         f"expected {FORMAT!r})")
    for key in ("env_id", "env_kwargs", "policy"):
        if key not in record:
            raise ValueError(f"{rec} lacks {key!r}: the record is damaged; write it again from its source")
    return record


def build_architecture(
    record: Mapping[str, Any],
    *,
    model: nn.Module | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    env: Any = None,
) -> tuple[nn.Module, Any]:
    """The (untrained) compressed architecture that ``record``'s policy builds, and the env.

    The policy is replayed as a dry run on the recorded env (``env_kwargs`` override the
    recorded kwargs: ``data_root``, ``device``; ``model=`` supplies a user module that a record
    cannot name). The weights are the env's candidate before recovery.
    """
    import gymnasium as gym

    from pf_envs.model_env import ModelCompressionEnv
    from pf_envs.registry import check_env_id

    kwargs = {**record["env_kwargs"], **dict(env_kwargs or {})}
    if model is not None:
        kwargs["model"] = model
    if env is None:
        check_env_id(record["env_id"])
        env = gym.make(record["env_id"], **kwargs)
    base = env.unwrapped
    if not isinstance(base, ModelCompressionEnv):
        raise TypeError(f"{record['env_id']} has no model to rebuild")
    fp = record.get("model_fingerprint")
    if fp and base.model_fingerprint and fp != base.model_fingerprint:
        raise ValueError(
            f"the record was made from a base model with fingerprint {fp}, but {record['env_id']} with "
            f"these kwargs loads one with {base.model_fingerprint}: pass the checkpoint the record was made "
            "from (env_kwargs checkpoint=...)"
        )
    return base.policy_model(record["policy"]), env


def load_compressed(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    env: Any = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a compressed model: rebuild its architecture from the record, then load its weights.

    Returns ``(model in eval mode, record)``.

    Raises:
        FileNotFoundError: the ``.pt`` or its ``.json`` record is missing.
        ValueError: the file is corrupt, not a state dict, from another base model, or does not
            fit the architecture its record builds.
    """
    from learners.safe_load import TensorFileError, load_tensor_file

    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".pt")
    record = read_model_record(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (its record {model_record_path(path)} does)")
    try:
        state = load_tensor_file(path)
    except TensorFileError as exc:
        raise ValueError(f"{exc}; write it again from its source (pf-replay --save or pf-retrain)") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict (a mapping of names to tensors)")
    if record.get("state_sha1") and state_sha1(state) != record["state_sha1"]:
        raise ValueError(f"{path} does not hold the weights its record describes (SHA-1 differs): the file was "
                         "replaced or damaged; write it again from its source")
    net, _ = build_architecture(record, model=model, env_kwargs=env_kwargs, env=env)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not fit the architecture its record's policy builds on "
                         f"{record['env_id']}: {str(exc).splitlines()[0]}") from exc
    return net.to(device).eval(), record
