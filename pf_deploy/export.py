"""Stage 3 after the search: export a compressed (or dense zoo) model for deployment, a deploy
bundle: fp32 ONNX, static int8 ONNX, ORT format, the test images and ``manifest.json``.

    pf-export out/mbv1_uniform50.pt --out out/export/mbv1-uniform50 --int8 --ort-format
    pf-export mobilenet_v1 --out out/export/mbv1-dense --int8 --imagenet-twin

(``python -m pf_deploy.export`` and, in a checkout, ``python scripts/export.py`` are the same.)
Input: a compressed-model file (``NAME.pt`` + ``NAME.json``, from ``pf-replay --save`` or
``pf-retrain``) or a zoo model name (the dense model); :mod:`pf_deploy.export_source` reads
it. Writes ``model.onnx`` (fp32, checked against PyTorch), with ``--int8`` ``model.int8.onnx``
(ONNX Runtime static int8, QDQ, per-channel weights, MinMax ranges from ``--calib-images``
training images), with ``--ort-format`` the ``.ort`` files for ONNX Runtime Mobile,
``test.npz`` (the raw test images scored) and ``manifest.json`` (docs/export.md).
``--imagenet-twin`` adds ``OUT/imagenet-twin/``: the ImageNet-shaped variant of the
architecture at 224x224 with the model's channel counts and random weights, for latency only
(accuracy ``null``). Cost on a CPU: about a minute for ResNet-20 on all 10,000 test images
(``--test-samples 2000`` and ``--no-exact-int8`` make it several times shorter).

:func:`write_bundle` is the library call: it scores every file in a fresh ONNX Runtime
session and writes the manifest (:data:`pf_deploy.benchmark.MANIFEST_FORMAT`, checked with
the benchmark's own :func:`pf_deploy.benchmark.validate_manifest` before it is written).
Everything is built in a staging folder beside ``out_dir`` and moved in at the end, manifest
last: a failed or killed export leaves no half-written file in ``out_dir`` (at worst a
``.<name>.tmp<pid>`` folder beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from learners import onnx_export as ox
from learners import ort_int8 as oq
from pf_agents.cli import on_interrupt
from pf_deploy.benchmark import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    TEST_DATA_NAME,
    ManifestError,
    validate_manifest,
)

#: int8 may lose at most this much top-1 accuracy (points) against fp32; larger is reported.
INT8_MAX_DROP_POINTS = 0.3
#: Quantization settings per deployment target (ORT's advice in ``quantize_static``'s docs).
INT8_TARGETS: dict[str, dict[str, Any]] = {
    "arm": {"activation_type": "int8", "reduce_range": False},
    "x86": {"activation_type": "uint8", "reduce_range": True},
}


class BundleError(ValueError):
    """A bundle cannot be written; the message says what to do."""


@dataclass(frozen=True)
class TestSet:
    """Raw test images (uint8 N x H x W x 3) and labels (int64 N)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise BundleError(f"test images must be uint8 N x H x W x 3, got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise BundleError(f"{len(self.images)} test images but {len(self.labels)} labels")


def normalise(images_nhwc: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The manifest's preprocessing: ``(uint8 / 255 - mean) / std`` as float32 NCHW."""
    x = images_nhwc.astype(np.float32) * np.float32(1 / 255)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _batches(test: TestSet, mean, std, batch: int = 500) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    for i in range(0, len(test.labels), batch):
        yield normalise(test.images[i : i + batch], mean, std), test.labels[i : i + batch]


def _log(msg: str) -> None:
    print(msg, flush=True)


def write_bundle(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    class_names: Sequence[str],
    macs: int,
    calibration: Callable[[], Iterable[np.ndarray]] | None = None,
    test: TestSet | None = None,
    check_images: np.ndarray | None = None,
    ort_format: bool = False,
    int8_target: str = "arm",
    exact_int8: bool = True,
    check_samples: int | None = None,
    source: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    int8_precisions: Mapping[str, str] | None = None,
    int8_options: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = _log,
) -> dict[str, Any]:
    """Export ``model`` into ``out_dir`` and return the manifest written there.

    Args:
        model: the PyTorch model (any device; exported on CPU in fp32).
        input_size: input height = width of the exported graph.
        mean / std: normalisation after scaling pixels by 1/255 (recorded in the manifest).
        class_names: one per output.
        macs: MACs of one forward pass at ``input_size`` (the caller's cost counter).
        calibration: returns float32 NCHW batches (normalised) for int8 calibration; None: no
            int8 model.
        test: raw test images to score every file on and save as ``test.npz``; None: accuracy
            not applicable (``null``), no test data (a latency twin).
        check_images: float32 NCHW images on which fp32 ONNX must match PyTorch within
            :data:`learners.onnx_export.FP32_ATOL` / ``FP32_RTOL`` (default: up to 1000 of
            ``test``; random normal images when there is no test set).
        ort_format: also write ``.ort`` files (ONNX Runtime Mobile) of each ONNX model.
        int8_target: quantization settings per ORT's advice (:data:`INT8_TARGETS`): ``"arm"``
            (int8 activations, 8-bit per-channel weights: ARM, and x86 with VNNI) or ``"x86"``
            (uint8 activations, 7-bit weights: x86 without VNNI, whose u8s8 kernels would
            otherwise saturate).
        exact_int8: also score the int8 ONNX file with ORT's graph optimizations off
            (``test_accuracy_exact``: the int8 arithmetic itself, what ARM / VNNI kernels
            compute; slower).
        check_samples: score the secondary entries (exact int8, ``.ort`` files) on the first
            this many test images only (``test_images`` says how many); None: all.
        source / extra: provenance and extra top-level keys for the manifest.
        int8_precisions: ``{torch layer: "int8" | "fp32"}``, a searched mixed-precision policy
            (``PruneQuant``, ``QuantORT``): the int8 model quantizes the ``int8`` layers only and
            keeps each ``fp32`` layer, with the nodes after it up to the next layer, in fp32, as
            the env scored it (:func:`learners.ort_latency.layer_blocks`). Every weight layer of
            the graph must be named. No ``int8`` layer: no int8 model is written. None: every
            weight layer int8.
        int8_options: quantizer options (``activation_type``, ``reduce_range``,
            ``per_channel``) instead of ``int8_target``'s (the options the search priced its
            candidates with).

    Raises:
        BundleError / ExportError / QuantizationError: an input is malformed, or fp32 ONNX does
            not match PyTorch within tolerance (nothing is written to ``out_dir`` then).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BundleError(f"--out {out_dir} is a file; pass a folder")
    if len(class_names) != _num_outputs(model, input_size):
        raise BundleError(f"{len(class_names)} class names but the model has {_num_outputs(model, input_size)} outputs")
    if int8_target not in INT8_TARGETS:
        raise BundleError(f"int8_target {int8_target!r} unknown; choose one of {sorted(INT8_TARGETS)}")
    if int8_precisions is not None:
        bad = {k: v for k, v in int8_precisions.items() if v not in ("int8", "fp32")}
        if bad:
            raise BundleError(f"int8_precisions must map layers to 'int8' or 'fp32', got {bad}")
        if "int8" not in int8_precisions.values() and calibration is not None:
            log("  note: the policy keeps every layer in fp32: no int8 model is written")
            calibration = None
    unknown_opts = set(int8_options or {}) - {"activation_type", "reduce_range", "per_channel"}
    if unknown_opts:
        raise BundleError(f"int8_options {sorted(unknown_opts)} unknown; pass activation_type, reduce_range, "
                          "per_channel")
    _remove_stale_stages(out_dir)
    stage = out_dir.parent / f".{out_dir.name}.tmp{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        manifest = _build(model, stage, input_size=input_size, mean=mean, std=std, class_names=class_names,
                          macs=macs, calibration=calibration, test=test, check_images=check_images,
                          ort_format=ort_format, int8_target=int8_target, exact_int8=exact_int8,
                          check_samples=check_samples, source=source, extra=extra, log=log,
                          int8_precisions=int8_precisions, int8_options=int8_options)
        out_dir.mkdir(parents=True, exist_ok=True)
        stale = out_dir / MANIFEST_NAME
        stale.unlink(missing_ok=True)  # a reader never pairs an old manifest with new files
        for f in sorted(stage.iterdir()):
            if f.name != MANIFEST_NAME:
                os.replace(f, out_dir / f.name)
        os.replace(stage / MANIFEST_NAME, out_dir / MANIFEST_NAME)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return manifest


def write_env_bundle(env: Any, out_dir: str | os.PathLike[str], *, test_samples: int | None = None) -> dict[str, Any]:
    """Write the deploy bundle of an env's last finished episode, for envs whose candidate is
    already a deployable ONNX graph (``PruneQuant``: pruned, then int8 for the chosen layers):
    ``model.onnx`` (the pruned fp32 model), ``model.int8.onnx`` (the mixed model the episode
    scored), ``test.npz`` and ``manifest.json``. Returns the manifest.

    Args:
        env: the env (or its wrapper) with a ``deploy_candidate()`` method.
        test_samples: test images to score both files on and ship (None: the whole test
            split, 0: none).

    Raises:
        BundleError: the env has no deployable candidate (no ``deploy_candidate``), or its test
            split is read from image folders and ``test_samples`` is not 0.
    """
    from learners.atomic import atomic_write

    base = getattr(env, "unwrapped", env)
    if not hasattr(base, "deploy_candidate"):
        raise BundleError(f"{type(base).__name__} has no deploy candidate of its own; export its compressed model "
                          "with pf-export --run RUN instead")
    c = base.deploy_candidate()
    out_dir = Path(out_dir)
    test = None
    if test_samples != 0:
        split = base.data.split("test")
        if test_samples is not None:
            split = split.subset(int(test_samples), seed=0)
        if not hasattr(split, "images"):
            raise BundleError(f"the {base.data.name} test split is read from image folders; pass test_samples=0")
        test = TestSet(split.images.permute(0, 2, 3, 1).contiguous().numpy(), split.labels.numpy().astype(np.int64))
    manifest = write_bundle(c.model, out_dir, input_size=c.input_size, mean=c.mean, std=c.std,
                            class_names=c.class_names, macs=c.macs, calibration=None, test=test, source=c.source,
                            extra=c.extra, log=lambda _m: None)
    shutil.copyfile(c.int8_path, out_dir / "model.int8.onnx")
    entry = {"name": "int8", "file": "model.int8.onnx", "precision": "int8", "macs": c.macs, "params": c.params,
             "size_bytes": (out_dir / "model.int8.onnx").stat().st_size, "test_accuracy": None, "test_images": None}
    if test is not None:
        acc, n = ox.accuracy(ox.session(out_dir / "model.int8.onnx", threads=c.threads),
                             _batches(test, c.mean, c.std))
        entry.update(test_accuracy=float(acc), test_images=int(n))
    manifest["models"].append(entry)
    manifest["quantization"] = dict(c.quantization)
    validate_manifest(manifest, out_dir)
    atomic_write(out_dir / MANIFEST_NAME,
                 lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8"))
    return manifest


def _remove_stale_stages(out_dir: Path) -> None:
    """Remove staging folders of exports to ``out_dir`` whose process is gone (killed)."""
    for d in out_dir.parent.glob(f".{out_dir.name}.tmp*"):
        pid = d.name.rsplit(".tmp", 1)[1]
        if not pid.isdigit() or not d.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass  # another user's live process


def _num_outputs(model: nn.Module, input_size: int) -> int:
    net = model.to("cpu").float().eval()
    with torch.no_grad():
        return int(net(torch.zeros(1, 3, input_size, input_size)).shape[1])


def _int8_exclude(model: nn.Module, prep: Path, precisions: Mapping[str, str]) -> list[str]:
    """The nodes of the pre-processed graph ``prep`` kept in fp32 under ``precisions``."""
    from learners.ort_latency import layer_blocks

    weight_layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    missing = [n for n in weight_layers if n not in precisions]
    extra = [n for n in precisions if n not in weight_layers]
    if missing or extra:
        raise BundleError(f"the precisions do not name the model's weight layers (missing {missing[:4]}, unknown "
                          f"{extra[:4]}): the policy was searched on another architecture; export the model the "
                          "policy was searched on")
    blocks = layer_blocks(prep, weight_layers)
    return [node for name in weight_layers if precisions[name] == "fp32" for node in blocks[name]]


def _build(model, stage: Path, *, input_size, mean, std, class_names, macs, calibration, test, check_images,
           ort_format, int8_target, exact_int8, check_samples, source, extra, log, int8_precisions=None,
           int8_options=None) -> dict[str, Any]:
    params = sum(p.numel() for p in model.parameters())
    models: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    quant_opts = dict(int8_options) if int8_options else dict(INT8_TARGETS[int8_target])
    target = next((name for name, o in INT8_TARGETS.items()
                   if all(quant_opts.get(k) == v for k, v in o.items())), "custom")

    sub = test
    if test is not None and check_samples is not None and check_samples < len(test.labels):
        sub = TestSet(test.images[:check_samples], test.labels[:check_samples])

    def entry(name: str, file: str, precision: str, exact: bool = False, on: TestSet | None = test) -> dict[str, Any]:
        path = stage / file
        acc = n = None
        out: dict[str, Any] = {}
        if on is not None:
            t = time.perf_counter()
            acc, n = ox.accuracy(ox.session(path), _batches(on, mean, std))
            log(f"  {name:<9} {file:<18} test accuracy {100 * acc:.2f}% on {n} images "
                f"({time.perf_counter() - t:.0f} s)")
            if exact:
                t = time.perf_counter()
                out["test_accuracy_exact"], out["test_images_exact"] = ox.accuracy(
                    ox.session(path, optimize=False), _batches(sub, mean, std))
                log(f"  {name:<9} {file:<18} exact int8 arithmetic (ORT reference ops) "
                    f"{100 * out['test_accuracy_exact']:.2f}% on {out['test_images_exact']} images "
                    f"({time.perf_counter() - t:.0f} s)")
        return {"name": name, "file": file, "precision": precision, "macs": int(macs), "params": int(params),
                "size_bytes": path.stat().st_size, "test_accuracy": acc, "test_images": n, **out}

    # fp32 --------------------------------------------------------------------------------
    fp32 = ox.export_onnx(model, stage / "model.onnx", input_size=input_size)
    if check_images is None:
        if test is not None:
            check_images = normalise(test.images[:1000], mean, std)
        else:
            check_images = np.random.default_rng(0).standard_normal((8, 3, input_size, input_size), np.float32)
    agree = ox.compare_with_torch(model, fp32, torch.from_numpy(np.ascontiguousarray(check_images)))
    checks["fp32_vs_torch"] = {"images": agree.images, "max_abs": agree.max_abs, "max_rel": agree.max_rel,
                               "top1_agreement": agree.top1_agreement, "atol": agree.atol, "rtol": agree.rtol}
    log(f"  fp32 ONNX vs PyTorch on {agree.images} images: max |diff| {agree.max_abs:.2e}, "
        f"top-1 agreement {100 * agree.top1_agreement:.2f}%")
    if not agree.within_tolerance:
        raise ox.ExportError(f"the fp32 ONNX graph differs from PyTorch by {agree.max_abs:.3g} (tolerance "
                             f"{agree.atol} + {agree.rtol} x |logit|): the export is wrong; report it with the model")
    models.append(entry("fp32", "model.onnx", "fp32"))

    # int8 --------------------------------------------------------------------------------
    if calibration is not None:
        prep = oq.preprocess(fp32, stage / "model.prep.onnx")
        t = time.perf_counter()
        ranges = oq.calibrate(prep, calibration())
        ranges.save(stage / "calibration.json")
        log(f"  calibrated on {ranges.images} images ({ranges.method}, {time.perf_counter() - t:.0f} s)")
        exclude = _int8_exclude(model, prep, int8_precisions) if int8_precisions is not None else []
        if int8_precisions is not None:
            n8 = sum(v == "int8" for v in int8_precisions.values())
            log(f"  mixed precision as searched: {n8} of {len(int8_precisions)} layers int8, "
                f"{len(exclude)} nodes kept fp32")
        oq.quantize_int8(prep, stage / "model.int8.onnx", ranges, exclude_nodes=exclude, **quant_opts)
        models.append(entry("int8", "model.int8.onnx", "int8", exact=exact_int8))
        if test is not None:
            fp32_acc, int8 = models[0]["test_accuracy"], models[-1]
            checks["int8_drop_points"] = 100 * (fp32_acc - int8["test_accuracy"])
            checks["host_int8_kernels"] = _host_kernels()
            if "test_accuracy_exact" in int8:
                if int8["test_images_exact"] != int8["test_images"]:  # the fp32 figure on the same images
                    fp32_acc, _ = ox.accuracy(ox.session(stage / "model.onnx"), _batches(sub, mean, std))
                    checks["fp32_accuracy_on_exact_images"] = fp32_acc
                checks["int8_drop_points_exact"] = 100 * (fp32_acc - int8["test_accuracy_exact"])
            drop = checks.get("int8_drop_points_exact", checks["int8_drop_points"])
            checks["int8_within_bound"] = bool(drop <= INT8_MAX_DROP_POINTS)
            if drop > INT8_MAX_DROP_POINTS:
                log(f"  WARNING: int8 loses {drop:.2f} points against fp32 (bound {INT8_MAX_DROP_POINTS})")

    # ORT format ----------------------------------------------------------------------------
    if ort_format:
        for m in list(models):
            file = Path(m["file"]).with_suffix(".ort").name
            ox.convert_to_ort_format(stage / m["file"], stage / file)
            models.append(entry(f"{m['name']}-ort", file, m["precision"], on=sub))

    if test is not None:
        np.savez_compressed(stage / TEST_DATA_NAME, images=test.images, labels=test.labels.astype(np.int64))
    manifest = {
        "format": MANIFEST_FORMAT,
        "models": models,
        "input": {"name": ox.INPUT_NAME, "shape": [None, 3, input_size, input_size], "dtype": "float32",
                  "layout": "NCHW"},
        "output": {"name": ox.OUTPUT_NAME, "shape": [None, len(class_names)]},
        "preprocess": {"scale": 1 / 255, "mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "class_names": list(class_names),
        "test_data": TEST_DATA_NAME if test is not None else None,
        "source": dict(source or {}),
        "checks": checks,
        "quantization": ({"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                          "target": target, **quant_opts,
                          "weights": f"int8 per-{'channel' if quant_opts.get('per_channel', True) else 'tensor'} "
                          "symmetric" + (" (7-bit range)" if quant_opts.get("reduce_range") else ""),
                          "activations": f"{quant_opts.get('activation_type', 'int8')} (calibrated)",
                          "calibration": "MinMax", "calibration_file": "calibration.json",
                          "preprocessed_fp32": "model.prep.onnx",
                          **({"mixed": True, "precisions": dict(int8_precisions)} if int8_precisions is not None
                             else {"mixed": False})} if calibration is not None else None),
        "versions": _versions(),
        **dict(extra or {}),
    }
    validate_manifest(manifest, stage)
    (stage / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _host_kernels() -> str:
    """What the scoring machine's ORT int8 kernels do (the test accuracy depends on it)."""
    import platform

    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            flags = ""
        if "vnni" in flags:
            return "x86-64 with VNNI: exact int8 dot products"
        return ("x86-64 without VNNI: ORT's u8s8 kernels sum pairs of products in saturating 16-bit "
                "arithmetic, so 8-bit weights can lose accuracy here that ARM / VNNI CPUs do not "
                "(see test_accuracy_exact)")
    return f"{machine}: int8 dot products accumulate in 32 bits"


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


# ----------------------------------------------------------------------------- command line
@on_interrupt("nothing half-written is left in --out; run the same command again")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pf-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="compressed-model file (NAME.pt with NAME.json beside it) or zoo model name")
    p.add_argument("--out", required=True, help="output folder (files are replaced atomically)")
    p.add_argument("--int8", action="store_true", help="also write the static int8 model")
    p.add_argument("--calib-images", type=int, default=512, help="training images for int8 calibration (512)")
    p.add_argument("--int8-target", choices=["arm", "x86"], default=None,
                   help="int8 settings: arm (int8 activations, 8-bit weights; also x86 with VNNI; the default) or "
                        "x86 (uint8 activations, 7-bit weights, for x86 without VNNI). A model whose search chose "
                        "per-layer precisions (PruneQuant, QuantORT) is quantized with the search's own options "
                        "unless this is given")
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

    # a kill (SIGTERM) unwinds like Ctrl-C, so the staging folder is removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    torch.set_num_threads(args.threads)
    from learners.onnx_export import ExportError
    from learners.ort_int8 import QuantizationError
    from pf_envs.data import DataError
    from pf_envs.zoo import CheckpointError

    try:
        return _export(args)
    except (FileNotFoundError, ValueError, TypeError, BundleError, ManifestError, ExportError, QuantizationError,
            DataError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _export(args: argparse.Namespace) -> int:
    from pf_deploy.export_source import TWIN_INPUT_SIZE, TWIN_MEAN, TWIN_STD, imagenet_twin, load_export_source
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

    int8 = args.int8
    if src.precisions is not None:  # the search chose each layer's precision: export what it chose
        n8 = sum(p == "int8" for p in src.precisions.values())
        print(f"the policy chose per-layer precisions ({n8} of {len(src.precisions)} layers int8): the int8 model "
              "quantizes those layers only" + ("" if args.int8 or not n8 else " (written without --int8 too)"))
        int8 = int8 or n8 > 0
    options = src.int8_options if (src.precisions is not None and args.int8_target is None) else None
    if options and args.int8_target is None:
        print(f"int8 options as the search priced its candidates: {options}")
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
        calibration=(lambda: batches(calib_u8, src.mean, src.std, size)) if int8 else None,
        test=test, ort_format=args.ort_format, int8_target=args.int8_target or "arm",
        exact_int8=not args.no_exact_int8, check_samples=args.check_samples, source=source,
        extra={"calibration_images": args.calib_images if int8 else None, "twin": None},
        int8_precisions=src.precisions, int8_options=options,
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
            calibration=(lambda: batches(twin_calib, TWIN_MEAN, TWIN_STD, TWIN_INPUT_SIZE, 16)) if int8 else None,
            test=None, ort_format=args.ort_format, int8_target=args.int8_target or "arm",
            int8_precisions=src.precisions, int8_options=options,
            source={**source, "twin_of": str(args.model), "weights": "random (latency only)"},
            extra={"calibration_images": len(twin_calib) if int8 else None,
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
