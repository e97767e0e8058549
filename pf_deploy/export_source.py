"""Export, part 1: what ``pf-export`` exports, a compressed-model file or a zoo model, with its data.

:func:`load_export_source` turns the command line's input into an :class:`ExportSource`: the
PyTorch model (eval mode, CPU), the zoo architecture it is built on, the dataset bundle, the
input preprocessing (``x = (uint8 / 255 - mean) / std``), the class names and a ``source``
record for the deploy manifest (env id, policy, SHA-1 of the record file, base-model
fingerprint, state SHA-1, the file). :func:`imagenet_twin` builds the latency twin: the zoo's
ImageNet-shaped variant of the same architecture with the source's channel counts.

>>> src = load_export_source("out/mbv1_uniform50.pt")       # doctest: +SKIP
>>> src = load_export_source("mobilenet_v1")                  # the dense zoo model   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from pf_envs import zoo
from pf_envs.data import CIFAR10_CLASSES, DatasetBundle, load_dataset
from pf_envs.zoo.twin import TWIN_INPUT_SIZE, TWIN_MEAN, TWIN_STD, imagenet_twin_of  # noqa: F401  (the export stage reads them here)


@dataclass
class ExportSource:
    """A model to export and what the manifest says about it.

    Attributes:
        model: the PyTorch model (eval mode, CPU).
        arch: zoo name of its architecture (``mobilenet_v1``).
        kind: ``"compressed"`` (a ``.pt`` + ``.json`` file) or ``"zoo"`` (the dense model).
        data: the dataset bundle the model was trained on.
        input_size: input height = width.
        mean / std: per-channel normalisation applied after scaling uint8 pixels by 1/255.
        class_names: one name per output.
        source: provenance for the manifest (JSON-able).
        precisions: ``{torch layer: "int8" | "fp32"}`` where the searched policy chose each
            layer's precision (``PruneQuant``): the int8 export quantizes those layers only.
            None: the policy says nothing of precision (every weight layer int8 with ``--int8``).
        int8_options: the quantizer options the search priced and scored its candidates with
            (``activation_type``, ``reduce_range``, ``per_channel``), where it had any.
    """

    model: nn.Module
    arch: str
    kind: str
    data: DatasetBundle
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: list[str]
    source: dict[str, Any] = field(default_factory=dict)
    precisions: dict[str, str] | None = None
    int8_options: dict[str, Any] | None = None

    def uint8_images(self, split: str, n: int | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(images uint8 N x H x W x 3, labels int64 N)``: a fixed ``seed`` subset of ``n``
        images of ``split`` (all of them for ``None``).

        Raises:
            ValueError: the split is not held in memory (ImageNet folders): use CIFAR-10 here.
        """
        s = self.data.split(split)
        if n is not None:
            s = s.subset(int(n), seed=seed)
        if not hasattr(s, "images"):
            raise ValueError(f"the {self.data.name} {split} split is read from image folders; export measures "
                             "accuracy on in-memory splits (CIFAR-10) only: pass --test-samples 0")
        return (s.images.permute(0, 2, 3, 1).contiguous().numpy(), s.labels.numpy().astype(np.int64))


def _sha1_file(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()[:16]


def _class_names(data: DatasetBundle) -> list[str]:
    if data.name == "cifar10":
        return list(CIFAR10_CLASSES)
    classes = getattr(data.test, "classes", None)
    return list(classes) if classes else [str(i) for i in range(data.num_classes)]


def load_export_source(
    spec: str | os.PathLike[str],
    *,
    data_root: str | os.PathLike[str] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    dataset: str = "cifar10",
) -> ExportSource:
    """The model named by ``spec``: a compressed-model file (``NAME.pt`` with ``NAME.json``
    beside it, or the ``.json``) or a zoo model name (the dense model, with ``checkpoint`` or
    the shipped weights).

    Raises:
        FileNotFoundError: the compressed-model file or its record is missing.
        ValueError: the record or state is damaged, from another base model (fingerprint), or
            ``spec`` is neither a file nor a zoo name.
    """
    import gymnasium as gym

    from pf_envs.cache import model_fingerprint
    from pf_envs.compressed import load_compressed, model_record_path, read_model_record
    from pf_envs.registry import check_env_id

    text = str(spec)
    path = Path(text)
    precisions: dict[str, str] | None = None
    int8_options: dict[str, Any] | None = None
    if path.suffix in (".pt", ".json") or path.exists():
        if path.is_dir():
            raise ValueError(f"{path} is a folder; pass a compressed-model file (NAME.pt with NAME.json beside it) "
                             f"or a zoo model name ({zoo.list_models('cifar10')})")
        record = read_model_record(path)  # clear errors for a missing or damaged record
        kwargs = {**record["env_kwargs"], **({"data_root": str(data_root)} if data_root else {})}
        check_env_id(record["env_id"])
        env = gym.make(record["env_id"], **kwargs)
        try:
            model, record = load_compressed(path, env=env)
            base = env.unwrapped
            pt = path.with_suffix(".pt")
            source = {
                "kind": "compressed", "file": str(pt), "record": str(model_record_path(pt)),
                "env_id": record["env_id"], "env_kwargs": record["env_kwargs"], "policy": record["policy"],
                "record_sha1": _sha1_file(model_record_path(pt)), "model_fingerprint": record.get("model_fingerprint"),
                "state_sha1": record.get("state_sha1"), "base_model": base.model_name,
                "metrics": record.get("metrics", {}),
            }
            if hasattr(base, "precisions") and hasattr(base, "layers"):  # the policy chose precisions
                precisions = dict(zip(base.layers, base.precisions(record["policy"])))
                int8_options = dict(getattr(base, "quant_options", {}) or {}) or None
                source["precisions"] = precisions
            # base.model_name is the zoo name (gym.make replaces base.spec with its EnvSpec)
            arch = base.model_name
            data, size = base.data, int(base.input_size)
        finally:
            env.close()
        kind = "compressed"
    else:
        try:
            zspec = zoo.get_spec(text)
        except KeyError:
            raise ValueError(f"{text!r} is neither a compressed-model file (NAME.pt + NAME.json) nor a zoo model; "
                             f"the zoo has {zoo.list_models()}") from None
        data = load_dataset(dataset, data_root)
        model = zoo.load(zspec.name, dataset, checkpoint, num_classes=data.num_classes)
        ckpt = Path(checkpoint) if checkpoint else zspec.checkpoint_path(dataset)
        source = {"kind": "zoo", "zoo_model": zspec.name, "dataset": dataset,
                  "file": str(ckpt) if ckpt.is_file() else None,
                  "model_fingerprint": model_fingerprint(model), "env_id": None, "policy": None,
                  "record_sha1": None, "state_sha1": None}
        arch, size, kind = zspec.name, int(data.input_size), "zoo"
    return ExportSource(model.cpu().float().eval(), arch, kind, data, size, tuple(data.train.mean),
                        tuple(data.train.std), _class_names(data), source, precisions, int8_options)


def imagenet_twin(src: ExportSource, *, seed: int = 0) -> nn.Module:
    """The latency twin of ``src`` (:func:`pf_envs.zoo.twin.imagenet_twin_of` on its model and
    architecture).

    Raises:
        ValueError: the architecture has no ImageNet variant in the zoo, or its layers do not
            match the source model's.
    """
    return imagenet_twin_of(src.model, src.arch, seed=seed)
