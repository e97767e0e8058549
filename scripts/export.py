"""Export a compressed (or dense zoo) model for deployment: fp32 ONNX, static int8 ONNX, ORT format.

    python scripts/export.py out/mbv1_uniform50.pt --out out/export/mbv1-uniform50 --int8 --ort-format
    python scripts/export.py mobilenet_v1 --out out/export/mbv1-dense --int8 --imagenet-twin

Input: a compressed-model file (``NAME.pt`` + ``NAME.json``, from ``scripts/replay.py --save``
or ``scripts/retrain.py``) or a zoo model name (the dense model). Writes ``model.onnx`` (fp32,
checked against PyTorch), with ``--int8`` ``model.int8.onnx`` (ONNX Runtime static int8, QDQ,
per-channel weights, MinMax ranges from ``--calib-images`` training images), with
``--ort-format`` the ``.ort`` files for ONNX Runtime Mobile, ``test.npz`` (the raw test images
scored) and ``manifest.json`` (docs/export.md). ``--imagenet-twin`` adds ``OUT/imagenet-twin/``:
the ImageNet-shaped variant of the architecture at 224x224 with the model's channel counts and
random weights, for latency only (accuracy ``null``).
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="compressed-model file (NAME.pt with NAME.json beside it) or zoo model name")
    p.add_argument("--out", required=True, help="output folder (files are replaced atomically)")
    p.add_argument("--int8", action="store_true", help="also write the static int8 model")
    p.add_argument("--calib-images", type=int, default=512, help="training images for int8 calibration (512)")
    p.add_argument("--int8-target", choices=["arm", "x86"], default="arm",
                   help="int8 settings: arm (int8 activations, 8-bit weights; also x86 with VNNI; default) or "
                        "x86 (uint8 activations, 7-bit weights, for x86 without VNNI)")
    p.add_argument("--no-exact-int8", action="store_true",
                   help="skip scoring int8 with ORT's reference ops (the exact int8 arithmetic; slower)")
    p.add_argument("--check-samples", type=int, default=None,
                   help="score the exact-int8 pass and the .ort files on the first N test images only "
                        "(default: all --test-samples)")
    p.add_argument("--ort-format", action="store_true", help="also write .ort files for ONNX Runtime Mobile")
    p.add_argument("--test-samples", type=int, default=None,
                   help="test images to score every file on (default: the whole test split; 0: none)")
    p.add_argument("--input-size", type=int, default=None,
                   help="input height = width of the exported graph (default: the dataset's)")
    p.add_argument("--imagenet-twin", action="store_true",
                   help="also export the 224x224 ImageNet-shaped twin (same channel counts, random weights) "
                        "to OUT/imagenet-twin for latency")
    p.add_argument("--twin-calib-images", type=int, default=64,
                   help="training images (upscaled) to calibrate the twin's int8 ranges (64)")
    p.add_argument("--checkpoint", default=None, help="zoo models: a state-dict file instead of the shipped one")
    p.add_argument("--data-root", default=None, help="dataset folder (default: $PF_DATA_DIR)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args(argv)
    if args.calib_images < 1 or (args.test_samples is not None and args.test_samples < 0):
        p.error("--calib-images must be >= 1 and --test-samples >= 0")

    import signal

    import torch

    # a kill (SIGTERM) unwinds like Ctrl-C, so the staging folder is removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    torch.set_num_threads(args.threads)
    from learners.deploy_bundle import BundleError
    from learners.onnx_export import ExportError
    from learners.ort_quant import QuantizationError
    from pf_envs.data import DataError
    from pf_envs.zoo import CheckpointError

    try:
        return _export(args)
    except (FileNotFoundError, ValueError, TypeError, BundleError, ExportError, QuantizationError, DataError,
            CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _export(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from learners.deploy_bundle import TestSet, normalise, write_bundle
    from pf_envs.export_source import TWIN_INPUT_SIZE, TWIN_MEAN, TWIN_STD, imagenet_twin, load_export_source
    from pf_envs.layers import count_macs

    t0 = time.perf_counter()
    src = load_export_source(args.model, data_root=args.data_root, checkpoint=args.checkpoint)
    size = args.input_size or src.input_size
    print(f"{args.model}: {src.kind} {src.arch}, {sum(p.numel() for p in src.model.parameters()):,} parameters, "
          f"input {size}x{size}")
    twin = imagenet_twin(src) if args.imagenet_twin else None  # fails before anything is written
    calib_u8, _ = src.uint8_images("train", args.calib_images, seed=1)

    def batches(images: np.ndarray, mean, std, side: int, batch: int = 64):
        for i in range(0, len(images), batch):
            x = normalise(images[i : i + batch], mean, std)
            if x.shape[-1] != side:
                x = torch.nn.functional.interpolate(torch.from_numpy(x), size=(side, side), mode="bilinear",
                                                    align_corners=False).numpy()
            yield x

    test = None
    if args.test_samples != 0:
        images, labels = src.uint8_images("test", args.test_samples)
        if images.shape[1] != size:
            print(f"note: test images are {images.shape[1]}x{images.shape[2]}, the graph takes {size}x{size}: "
                  "accuracy is not measured (--test-samples 0)")
        else:
            test = TestSet(images, labels)
    source = {**src.source, "arch": src.arch}
    manifest = write_bundle(
        src.model, args.out, input_size=size, mean=src.mean, std=src.std, class_names=src.class_names,
        macs=count_macs(src.model, size),
        calibration=(lambda: batches(calib_u8, src.mean, src.std, size)) if args.int8 else None,
        test=test, ort_format=args.ort_format, int8_target=args.int8_target, exact_int8=not args.no_exact_int8,
        check_samples=args.check_samples, source=source,
        extra={"calibration_images": args.calib_images if args.int8 else None, "twin": None},
    )
    _summary(args.out, manifest)
    if twin is not None:
        out = Path(args.out) / "imagenet-twin"
        print(f"imagenet twin: {sum(p.numel() for p in twin.parameters()):,} parameters, "
              f"input {TWIN_INPUT_SIZE}x{TWIN_INPUT_SIZE}, random weights (latency only)")
        twin_calib = calib_u8[: args.twin_calib_images]
        tm = write_bundle(
            twin, out, input_size=TWIN_INPUT_SIZE, mean=TWIN_MEAN, std=TWIN_STD,
            class_names=[str(i) for i in range(twin.classifier.out_features)] if hasattr(twin, "classifier")
            else [str(i) for i in range(1000)],
            macs=count_macs(twin, TWIN_INPUT_SIZE),
            calibration=(lambda: batches(twin_calib, TWIN_MEAN, TWIN_STD, TWIN_INPUT_SIZE, 16)) if args.int8 else None,
            test=None, ort_format=args.ort_format, int8_target=args.int8_target,
            source={**source, "twin_of": str(args.model), "weights": "random (latency only)"},
            extra={"calibration_images": len(twin_calib) if args.int8 else None,
                   "twin": {"of": str(Path(args.out).resolve()), "dataset": "imagenet-shaped",
                            "accuracy": "not applicable: random weights"}},
        )
        _summary(out, tm)
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


def _summary(out, manifest) -> None:
    print(f"{out}/manifest.json:")
    for m in manifest["models"]:
        acc = "n/a" if m["test_accuracy"] is None else f"{100 * m['test_accuracy']:.2f}% ({m['test_images']})"
        if "test_accuracy_exact" in m:
            acc += f", exact int8 arithmetic {100 * m['test_accuracy_exact']:.2f}%"
        print(f"  {m['name']:<9} {m['file']:<18} {m['size_bytes'] / 1e6:7.2f} MB  {m['macs'] / 1e6:8.1f} MMACs  "
              f"test {acc}")


if __name__ == "__main__":
    raise SystemExit(main())
