"""Export a zoo model to fp32 ONNX + int8 ONNX Runtime QDQ, with a deploy manifest and test.npz.

    python benchmarks/make_deploy_models.py --model mobilenet_v1 --out benchmarks/deploy_models/mobilenet_v1
    python benchmarks/make_deploy_models.py --model resnet20 --calib 64 --test 200 --out /tmp/r20

A stand-in for the project's exporter (issue 12, built separately) so that
benchmarks/deploy.py has files to measure: it writes exactly the manifest schema the
exporter writes (``pocketflow-gym/deploy-manifest/1``), so deploy.py reads both alike.

- ``model.onnx``: fp32, ``torch.onnx.export`` (TorchScript exporter, opset 17), batch
  dimension dynamic, BatchNorm folded by constant folding;
- ``model_int8.onnx``: ``onnxruntime.quantization.quantize_static``, QDQ format, weights
  int8 per output channel (symmetric), activations int8 (S8S8, ORT's default and the
  exporter's; MinMax calibration on ``--calib``
  training images, evenly spaced over the train split), after ORT's ``quant_pre_process``;
- ``test.npz``: ``--test`` test images (uint8 NHWC, evenly spaced over the test split,
  all 10,000 by default) and their labels;
- ``manifest.json``: both models with MACs, params, size and the PyTorch test accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from pf_envs import zoo
from pf_envs.data import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, load_cifar10
from pf_envs.layers import count_macs
from pf_envs.model_env import count_params

MANIFEST_FORMAT = "pocketflow-gym/deploy-manifest/1"


def evenly_spaced(n_total: int, n: int) -> np.ndarray:
    return np.arange(n_total) if n >= n_total else np.unique(np.round(np.linspace(0, n_total - 1, n)).astype(int))


def normalise(images_nhwc: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW, (x/255 - mean)/std: the manifest's preprocessing."""
    x = (images_nhwc.astype(np.float32) / 255.0 - np.asarray(CIFAR10_MEAN, np.float32)) / np.asarray(
        CIFAR10_STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class _Calibration(CalibrationDataReader):
    def __init__(self, input_name: str, x: np.ndarray, batch: int = 32) -> None:
        self.batches = iter([{input_name: x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self.batches, None)


def export(model: torch.nn.Module, out: Path, calib_nhwc: np.ndarray, test_nhwc: np.ndarray,
           test_labels: np.ndarray, name: str, opset: int = 17) -> dict:
    """Write model.onnx, model_int8.onnx, test.npz and manifest.json into ``out``; the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval().float()
    h, w = test_nhwc.shape[1:3]
    example = torch.zeros(1, 3, h, w)
    fp32 = out / "model.onnx"
    torch.onnx.export(model, (example,), str(fp32), dynamo=False, opset_version=opset, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    onnx.checker.check_model(str(fp32))
    int8 = out / "model_int8.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(int8), _Calibration("input", normalise(calib_nhwc)),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    np.savez_compressed(out / "test.npz", images=test_nhwc, labels=test_labels.astype(np.int64))
    macs, params = count_macs(model, (h, w)), count_params(model)
    with torch.no_grad():
        x = torch.from_numpy(normalise(test_nhwc))
        correct = sum(int((model(x[i:i + 500]).argmax(1) == torch.from_numpy(test_labels[i:i + 500])).sum())
                      for i in range(0, len(x), 500))
    manifest = {
        "format": MANIFEST_FORMAT,
        "models": [
            {"name": "fp32", "file": fp32.name, "precision": "fp32", "macs": macs, "params": params,
             "size_bytes": fp32.stat().st_size, "test_accuracy": correct / len(test_labels),
             "test_images": len(test_labels)},
            # int8 accuracy is measured where it runs (benchmarks/deploy.py): not known here
            {"name": "int8", "file": int8.name, "precision": "int8", "macs": macs, "params": params,
             "size_bytes": int8.stat().st_size, "test_accuracy": None, "test_images": None},
        ],
        "input": {"name": "input", "shape": [None, 3, h, w], "dtype": "float32", "layout": "NCHW"},
        "preprocess": {"scale": 1.0 / 255.0, "mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD)},
        "class_names": list(CIFAR10_CLASSES),
        "test_data": "test.npz",
        "source": {"kind": "zoo", "zoo_model": name, "tool": "benchmarks/make_deploy_models.py",
                   "calibration_images": len(calib_nhwc),
                   "quantization": "onnxruntime quantize_static QDQ, per-channel int8 weights, int8 activations, "
                                   "MinMax"},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def split_nhwc(split, n: int) -> tuple[np.ndarray, np.ndarray]:
    idx = evenly_spaced(len(split), n)
    images = split.images[torch.from_numpy(idx)].permute(0, 2, 3, 1).contiguous().numpy()
    return images, split.labels[torch.from_numpy(idx)].numpy()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenet_v1", help="zoo name (CIFAR-10 checkpoint shipped)")
    p.add_argument("--checkpoint", help="a state-dict file instead of the shipped checkpoint")
    p.add_argument("--calib", type=int, default=512, help="calibration images from the train split")
    p.add_argument("--test", type=int, default=10000, help="test images written to test.npz")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    data = load_cifar10()
    model = zoo.load(args.model, "cifar10", checkpoint=args.checkpoint)
    calib, _ = split_nhwc(data.split("train"), args.calib)
    test, labels = split_nhwc(data.split("test"), args.test)
    manifest = export(model, Path(args.out), calib, test, labels, args.model)
    for m in manifest["models"]:
        print(f"{m['name']}: {m['file']} {m['size_bytes'] / 2**20:.2f} MiB, {m['macs'] / 1e6:.1f} M MACs, "
              f"pytorch test accuracy {m['test_accuracy']}")
    print(f"wrote {args.out} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
