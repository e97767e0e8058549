"""Model zoo: one registry table (:data:`MODELS`), constructors and trained checkpoints.

>>> from pf_envs import zoo
>>> model = zoo.load("mobilenet_v1")            # CIFAR-10, trained weights shipped in the package
>>> zoo.list_models()
['mobilenet_v1', 'mobilenet_v2', 'resnet18', 'resnet20', 'resnet50', 'resnet56']

Checkpoints are fp16 state dicts in ``pf_envs/zoo/checkpoints/`` with a JSON record beside
each (how it was trained, its measured test accuracy). ImageNet models load torchvision's
weights where a network is available, or a user's file.

Checkpoints are read with ``weights_only=True`` (:func:`learners.safe_load.load_tensor_file`):
a file holding anything but tensors is refused, never run. A checkpoint that is missing,
corrupt, holds NaN/inf weights or does not fit the model raises :class:`CheckpointError`
naming the file and what to do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from learners.atomic import atomic_torch_save, atomic_write_text
from learners.modules import non_finite_tensors
from learners.safe_load import TensorFileError, failure_reason, load_tensor_file
from pf_envs.zoo.cifar import CifarResNet, MobileNetV1, MobileNetV2

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint (or its JSON record) is missing, unreadable, corrupt, holds non-finite
    weights or does not fit the model; the message names the file and what to do."""

_RETRAIN = "download it again or train it again (scripts/train_base.py)"


def _torchvision(name: str, weights: str | None = None) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(num_classes=num_classes)

    build.__name__ = f"torchvision_{name}"
    return build


@dataclass(frozen=True)
class ModelSpec:
    """One zoo entry.

    Attributes:
        name: registry key (``mobilenet_v1``).
        env_name: the name in environment ids (``MobileNetV1`` -> ``ChannelPrune-MobileNetV1-v0``).
        builders: dataset -> constructor taking ``num_classes``.
        channel_round: kept channel counts are rounded to a multiple of this when pruning.
        ft_lr: initial learning rate of the environments' fast fine-tuning (``ft_iters``) for
            this model, measured on its shipped checkpoint (see the entries below).
        torchvision_weights: dataset -> torchvision weights enum name (ImageNet only).
    """

    name: str
    env_name: str
    builders: dict[str, Callable[[int], nn.Module]]
    channel_round: int = 8
    ft_lr: float = 0.01
    torchvision_weights: dict[str, str] = field(default_factory=dict)

    def checkpoint_path(self, dataset: str) -> Path:
        """Where the shipped checkpoint for ``dataset`` lives (it may not exist yet)."""
        return CHECKPOINT_DIR / f"{self.name}_{dataset}.pt"

    def has_checkpoint(self, dataset: str) -> bool:
        """Whether trained weights for ``dataset`` ship with the package."""
        return self.checkpoint_path(dataset).is_file()


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "mobilenet_v1", "MobileNetV1",
            {"cifar10": lambda n: MobileNetV1(n), "imagenet": lambda n: MobileNetV1(n, stem_stride=2)},
            # 100 SGD steps at 0.01 cost the shipped checkpoint 2.5 points of val accuracy under
            # uniform 50% FLOPs (84.3 against 86.8 with no fine-tuning) and 3.2 at 30%; at 0.001
            # they are neutral (86.6; 83.7 against 83.6 at 30%). ResNet-20 gains 4.9 points at
            # 0.01 (3.1 at 0.001). Figures: benchmarks/recovery.py, docs/benchmarks.md.
            ft_lr=0.001,
        ),
        ModelSpec(
            "mobilenet_v2", "MobileNetV2",
            {"cifar10": lambda n: MobileNetV2(n), "imagenet": _torchvision("mobilenet_v2")},
            torchvision_weights={"imagenet": "MobileNet_V2_Weights.IMAGENET1K_V1"},
        ),
        ModelSpec("resnet20", "ResNet20", {"cifar10": lambda n: CifarResNet(20, n)}, channel_round=4),
        ModelSpec("resnet56", "ResNet56", {"cifar10": lambda n: CifarResNet(56, n)}, channel_round=4),
        ModelSpec(
            "resnet18", "ResNet18", {"imagenet": _torchvision("resnet18")},
            torchvision_weights={"imagenet": "ResNet18_Weights.IMAGENET1K_V1"},
        ),
        ModelSpec(
            "resnet50", "ResNet50", {"imagenet": _torchvision("resnet50")},
            torchvision_weights={"imagenet": "ResNet50_Weights.IMAGENET1K_V1"},
        ),
    )
}

NUM_CLASSES = {"cifar10": 10, "imagenet": 1000}


def list_models(dataset: str | None = None) -> list[str]:
    """Registered model names, optionally only those with a constructor for ``dataset``."""
    return sorted(n for n, s in MODELS.items() if dataset is None or dataset in s.builders)


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name`` (registry key or env name, case-insensitive)."""
    key = name.lower().replace("-", "_")
    for spec in MODELS.values():
        if key in (spec.name, spec.env_name.lower()):
            return spec
    raise KeyError(f"unknown model {name!r}; the zoo has {list_models()}")


def create_model(name: str, dataset: str = "cifar10", num_classes: int | None = None) -> nn.Module:
    """A freshly initialised (untrained) model."""
    spec = get_spec(name)
    if dataset not in spec.builders:
        raise ValueError(
            f"model {spec.name!r} has no {dataset!r} variant; it exists for {sorted(spec.builders)}"
        )
    return spec.builders[dataset](num_classes or NUM_CLASSES[dataset])


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from a file (plain, or wrapped as ``{"model": ...}``/``{"state_dict": ...}``).

    Only tensors, numbers, strings and containers of them are loaded (``weights_only=True``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist{' (it is a folder)' if path.is_dir() else ''}; "
            "pass the path of a state-dict file"
        )
    try:
        obj = load_tensor_file(path)
    except PermissionError as exc:
        raise CheckpointError(
            f"checkpoint {path} cannot be read: permission denied; give this user read access"
        ) from exc
    except TensorFileError as exc:
        raise CheckpointError(f"checkpoint {path} could not be read: {exc.reason}; {_RETRAIN}") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"checkpoint {path} does not hold a state dict of tensors (a dict of parameter name "
            f"-> tensor); {_RETRAIN}"
        )
    return obj


def load_state_dict_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Copy ``state`` into ``model`` in fp32; any missing, extra or misshapen key, or any
    NaN/inf in a floating-point tensor, is an error naming ``source``."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"checkpoint {source} does not fit {type(model).__name__}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}; "
            "pass the checkpoint of this model (and dataset / num_classes)"
        )
    bad = non_finite_tensors(state)
    if bad:
        raise CheckpointError(
            f"checkpoint {source} holds NaN or infinite values in {len(bad)} tensor(s) "
            f"{bad[:5]}{' ...' if len(bad) > 5 else ''}: the training that wrote it diverged "
            f"or the file was damaged; {_RETRAIN} (e.g. with a lower --lr)"
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return model


def load(
    name: str,
    dataset: str = "cifar10",
    checkpoint: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
) -> nn.Module:
    """A model with trained weights, in eval mode.

    Args:
        name: zoo name (see :func:`list_models`).
        dataset: ``cifar10`` or ``imagenet``.
        checkpoint: a state-dict file; default: the checkpoint shipped in the package, or
            (ImageNet) torchvision's published weights, downloaded when a network is reachable.
        num_classes: classifier outputs when ``checkpoint`` was trained on another label set.

    Raises:
        CheckpointError: no trained weights are available, or they do not fit the model.
    """
    spec = get_spec(name)
    model = create_model(spec.name, dataset, num_classes)
    if checkpoint is not None:
        return load_state_dict_into(model, read_state_dict(checkpoint), str(checkpoint)).eval()
    if spec.has_checkpoint(dataset):
        path = spec.checkpoint_path(dataset)
        return load_state_dict_into(model, read_state_dict(path), str(path)).eval()
    if dataset in spec.torchvision_weights:
        import torchvision

        enum_name, member = spec.torchvision_weights[dataset].split(".")
        weights = getattr(getattr(torchvision.models, enum_name), member)
        try:  # weights_only: a file planted in torch's hub cache is refused, never run
            state = weights.get_state_dict(progress=False, weights_only=True, map_location="cpu")
        except OSError as exc:  # no network, or the hub folder is not writable
            raise CheckpointError(
                f"torchvision's {spec.torchvision_weights[dataset]} for {spec.name} could not "
                f"be downloaded ({exc}); pass checkpoint=<your state-dict file>"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - the cached download is damaged or unsafe
            cached_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
            raise CheckpointError(
                f"torchvision's {spec.torchvision_weights[dataset]} for {spec.name} could not be "
                f"read from {cached_file}: {failure_reason(exc)}; delete that file to download "
                "it again, or pass checkpoint=<your state-dict file>"
            ) from None
        return load_state_dict_into(model, state, spec.torchvision_weights[dataset]).eval()
    raise _no_checkpoint(spec, dataset)


def _no_checkpoint(spec: ModelSpec, dataset: str) -> CheckpointError:
    shipped = [f"{s.name}/{d}" for s in MODELS.values() for d in s.builders if s.has_checkpoint(d)]
    return CheckpointError(
        f"no trained {dataset} checkpoint for {spec.name!r} ships with this version (shipped: "
        f"{shipped}). Train one with `pf-train-base --model {spec.name} --dataset {dataset}` "
        "and pass checkpoint=<file>."
    )


def check_weights_available(name: str, dataset: str = "cifar10", checkpoint: str | os.PathLike[str] | None = None
                            ) -> None:
    """Refuse, before any work, a zoo model that :func:`load` could not give trained weights
    (no ``checkpoint``, none shipped, no torchvision weights for ``dataset``); what the whole job
    checks before its first stage.

    Raises:
        CheckpointError: the sentence :func:`load` would say.
    """
    spec = get_spec(name)
    if checkpoint is None and not spec.has_checkpoint(dataset) and dataset not in spec.torchvision_weights:
        raise _no_checkpoint(spec, dataset)


def checkpoint_record(name: str, dataset: str = "cifar10") -> dict | None:
    """The JSON training record beside a shipped checkpoint (command, epochs, seed, accuracy),
    or None where there is none.

    Raises:
        CheckpointError: the record is not valid JSON or not a JSON object.
    """
    path = get_spec(name).checkpoint_path(dataset).with_suffix(".json")
    if not path.is_file():
        return None
    return read_record(path)


def read_record(path: str | os.PathLike[str]) -> dict:
    """A checkpoint's JSON record (an object), or :class:`CheckpointError` saying what is wrong."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise CheckpointError(
            f"the checkpoint record {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
            "restore it (git checkout) or write it again (scripts/train_base.py)"
        ) from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"the checkpoint record {path} is not valid JSON ({exc.msg} at line {exc.lineno}, "
            f"column {exc.colno}); restore it (git checkout) or write it again (scripts/train_base.py)"
        ) from None
    if not isinstance(record, dict):
        raise CheckpointError(
            f"the checkpoint record {path} holds a JSON {type(record).__name__}, not an object; "
            "restore it (git checkout) or write it again (scripts/train_base.py)"
        )
    return record


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str], record: dict | None = None) -> Path:
    """Save ``model`` as an fp16 state dict (BN counters kept as they are) plus a JSON record,
    each written atomically (a reader sees the old file or the new one, never half of one).

    Raises:
        CheckpointError: a weight is NaN or infinite (a diverged run is not saved), or a
            float32 weight overflows fp16.
        TypeError: ``record`` holds a value JSON cannot write (nothing is written then).
    """
    path = Path(path)
    bad = non_finite_tensors(model.state_dict())
    if bad:
        raise CheckpointError(
            f"not saving {path}: the model's {bad[:5]} hold NaN or infinite values (training "
            "diverged); train again with a lower learning rate"
        )
    state = {
        k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()
    }
    overflow = non_finite_tensors(state)
    if overflow:
        raise CheckpointError(
            f"not saving {path}: {overflow[:5]} exceed fp16's range (65504) and would load as "
            "infinities; the weights are unusually large (check the training)"
        )
    text = json.dumps(record, indent=2) + "\n" if record is not None else None
    atomic_torch_save(state, path)
    if text is not None:
        atomic_write_text(path.with_suffix(".json"), text)
    return path
