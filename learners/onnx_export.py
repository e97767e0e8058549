"""fp32 ONNX export of a (compressed) PyTorch model, its check against PyTorch, ORT sessions,
and the ORT format for ONNX Runtime Mobile.

* :func:`export_onnx` - ``torch.onnx.export`` (TorchScript exporter: node names carry the torch
  module scope, which :func:`learners.onnx_names.layer_nodes` reads; the torch.export-based
  exporter needs ``onnxscript``, which this project does not depend on), batch axis dynamic,
  input ``"input"``, output ``"logits"``, BatchNorm folded into the convolutions. A pruned
  model is physically smaller, so its graph is too.
* :func:`compare_with_torch` - the exported graph against PyTorch on real images: max absolute
  and relative logit difference, top-1 agreement; :data:`FP32_ATOL` / :data:`FP32_RTOL` are
  the tolerances (measured, see docs/export.md).
* :func:`session` / :func:`run_logits` / :func:`accuracy` - ORT CPU sessions.
* :func:`convert_to_ort_format` - ``python -m onnxruntime.tools.convert_onnx_models_to_ort``.

No gymnasium here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from learners.ort_int8 import QuantizationError, load_onnx

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: Opset of the exported graphs (ORT Mobile and every ORT >= 1.14 run it).
OPSET = 17
#: Tolerance of the fp32 ONNX logits against PyTorch's (|onnx - torch| <= atol + rtol |torch|).
#: Measured on the CIFAR-10 test split: ResNet-20 and MobileNet-V1 differ by at most ~1e-5
#: (float32 reassociation after BN folding); 1e-4 leaves a margin of 10x.
FP32_ATOL = 1e-4
FP32_RTOL = 1e-4


class ExportError(ValueError):
    """An export or its check failed; the message says what and what to do."""


def export_onnx(
    model: nn.Module,
    out_path: str | os.PathLike[str],
    *,
    input_size: int | tuple[int, int] = 32,
    channels: int = 3,
    opset: int = OPSET,
) -> Path:
    """Export ``model`` (eval mode, CPU, fp32) to ONNX at ``out_path`` (written atomically).

    The input is ``"input"`` of shape ``[batch, channels, H, W]`` with ``batch`` dynamic; the
    output is ``"logits"`` ``[batch, classes]``. Returns ``out_path``.

    Raises:
        ExportError: a weight or buffer of ``model`` is NaN or infinite (names them).
    """
    from learners.atomic import atomic_write
    from learners.modules import non_finite_tensors

    bad = non_finite_tensors(model.state_dict())
    if bad:
        raise ExportError(
            f"the model's weights are not finite: {len(bad)} tensor(s) {bad[:5]}{' ...' if len(bad) > 5 else ''} "
            "hold NaN or infinite values (the training that wrote them diverged, or the file was damaged), so "
            "no export of it can work; export a checkpoint with finite weights (re-train with a lower learning rate)"
        )

    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    was_training = model.training
    net = model.to("cpu").float().eval()
    dummy = torch.zeros(2, channels, h, w)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                net, (dummy,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset, do_constant_folding=True, dynamo=False,
            )

    try:
        return atomic_write(out_path, write)
    finally:
        model.train(was_training)


def session(path: str | os.PathLike[str], *, threads: int = 1, optimize: bool = True) -> Any:
    """A fresh ONNX Runtime CPU session of ``path`` (an ``.onnx`` or ``.ort`` file;
    ``threads`` intra-op threads).

    ``optimize=False`` turns ORT's graph optimizations off: a QDQ int8 graph then runs its
    QuantizeLinear / DequantizeLinear and float ops one by one (ORT's reference path), which
    computes the int8 model's arithmetic exactly, free of any int8 kernel's shortcuts (x86
    AVX2 without VNNI saturates 16-bit pair sums in its u8s8 kernels).
    """
    import onnxruntime as ort

    if Path(path).suffix == ".ort":
        if not Path(path).is_file():
            raise QuantizationError(f"{path} does not exist; convert it again (convert_to_ort_format)")
    else:
        load_onnx(path)  # clear error for a missing or non-ONNX file
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
        raise QuantizationError(f"ONNX Runtime cannot load {path}: {exc}; export it again") from None


def run_logits(sess: Any, images: Iterable[Any], batch_size: int = 256) -> np.ndarray:
    """Logits of ``sess`` over float32 NCHW images (one array, or an iterable of batches)."""
    name = sess.get_inputs()[0].name
    chunks = [images] if isinstance(images, (np.ndarray, torch.Tensor)) else images
    out = []
    for chunk in chunks:
        arr = chunk.detach().cpu().numpy() if isinstance(chunk, torch.Tensor) else np.asarray(chunk)
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        for i in range(0, len(arr), batch_size):
            out.append(sess.run(None, {name: arr[i : i + batch_size]})[0])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@dataclass(frozen=True)
class Agreement:
    """How an exported graph's logits compare with PyTorch's on the same images."""

    images: int
    max_abs: float
    max_rel: float
    top1_agreement: float
    within_tolerance: bool
    atol: float
    rtol: float


def compare_with_torch(
    model: nn.Module,
    onnx_path: str | os.PathLike[str],
    images: torch.Tensor,
    *,
    atol: float = FP32_ATOL,
    rtol: float = FP32_RTOL,
    batch_size: int = 256,
) -> Agreement:
    """Run ``images`` (float32 NCHW, normalised) through PyTorch and a fresh ORT session of
    ``onnx_path``; return the worst differences and whether every logit is within
    ``atol + rtol * |torch|``."""
    net = model.to("cpu").float().eval()
    with torch.no_grad():
        ref = torch.cat([net(images[i : i + batch_size].contiguous())
                         for i in range(0, len(images), batch_size)]).numpy()
    got = run_logits(session(onnx_path), images, batch_size)
    if got.shape != ref.shape:
        raise ExportError(f"{onnx_path} gives logits of shape {got.shape}, PyTorch {ref.shape}; export it again")
    diff = np.abs(got - ref)
    return Agreement(
        images=len(ref), max_abs=float(diff.max()), max_rel=float((diff / np.maximum(np.abs(ref), 1e-6)).max()),
        top1_agreement=float((got.argmax(1) == ref.argmax(1)).mean()),
        within_tolerance=bool((diff <= atol + rtol * np.abs(ref)).all()), atol=atol, rtol=rtol,
    )


def accuracy(sess: Any, batches: Iterable[tuple[Any, Any]], batch_size: int = 256) -> tuple[float, int]:
    """Top-1 accuracy of an ORT session over ``(images, labels)`` batches: ``(accuracy, images)``."""
    correct = total = 0
    for images, labels in batches:
        logits = run_logits(sess, images, batch_size)
        labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        correct += int((logits.argmax(1) == labels).sum())
        total += len(labels)
    if total == 0:
        raise ExportError("accuracy: no images")
    return correct / total, total


def convert_to_ort_format(onnx_path: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> Path:
    """ORT format (``.ort``, for ONNX Runtime Mobile) of ``onnx_path`` by ONNX Runtime's own tool,
    ``python -m onnxruntime.tools.convert_onnx_models_to_ort`` (optimisation level "Fixed":
    graph optimisations that do not depend on the device, so the file runs on any phone CPU).
    Written atomically to ``out_path``; returns it."""
    from learners.atomic import atomic_write

    onnx_path = Path(onnx_path)
    load_onnx(onnx_path)
    with tempfile.TemporaryDirectory(prefix="pf-ort-") as tmp:
        src = Path(tmp) / onnx_path.name
        shutil.copyfile(onnx_path, src)
        cmd = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(src),
               "--output_dir", tmp, "--optimization_style", "Fixed"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        made = Path(tmp) / (src.stem + ".ort")
        if proc.returncode != 0 or not made.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise ExportError(f"ORT-format conversion of {onnx_path} failed: {' | '.join(tail)}")
        return atomic_write(out_path, lambda t: shutil.copyfile(made, t))
