"""Model zoo: one registry table (:data:`MODELS`), constructors and trained checkpoints.

>>> from pf_envs import zoo
>>> model = zoo.load("mobilenet_v1")            # CIFAR-10, trained weights shipped in the package
>>> zoo.list_models()
['mobilenet_v1', 'mobilenet_v2', 'resnet18', 'resnet20', 'resnet50', 'resnet56']

Checkpoints are fp16 state dicts in ``pf_envs/zoo/checkpoints/`` with a JSON record beside
each (how it was trained, its measured test accuracy). ImageNet models load torchvision's
weights where a network is available, or a user's file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pf_envs.zoo.cifar import CifarResNet, MobileNetV1, MobileNetV2

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model."""


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
    """Read a state dict from a file (plain, or wrapped as ``{"model": ...}``/``{"state_dict": ...}``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} could not be read ({type(exc).__name__}: {exc}); it may be "
            "truncated or corrupt: download or train it again (scripts/train_base.py)"
        ) from exc
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    return obj


def load_state_dict_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Copy ``state`` into ``model`` in fp32; any missing, extra or misshapen key is an error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"checkpoint {source} does not fit {type(model).__name__}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
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
        try:
            state = weights.get_state_dict(progress=False)
        except Exception as exc:
            raise CheckpointError(
                f"torchvision's {spec.torchvision_weights[dataset]} for {spec.name} could not "
                f"be downloaded ({exc}); pass checkpoint=<your state-dict file>"
            ) from exc
        return load_state_dict_into(model, state, spec.torchvision_weights[dataset]).eval()
    shipped = [f"{s.name}/{d}" for s in MODELS.values() for d in s.builders if s.has_checkpoint(d)]
    raise CheckpointError(
        f"no trained {dataset} checkpoint for {spec.name!r} ships with this version (shipped: "
        f"{shipped}). Train one with `python scripts/train_base.py --model {spec.name} "
        f"--dataset {dataset}` and pass checkpoint=<file>."
    )


def checkpoint_record(name: str, dataset: str = "cifar10") -> dict | None:
    """The JSON training record beside a shipped checkpoint (command, epochs, seed, accuracy)."""
    path = get_spec(name).checkpoint_path(dataset).with_suffix(".json")
    return json.loads(path.read_text()) if path.is_file() else None


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str], record: dict | None = None) -> Path:
    """Save ``model`` as an fp16 state dict (BN counters kept as they are) plus a JSON record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    if record is not None:
        path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return path
