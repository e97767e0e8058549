"""A deploy bundle: a folder of ONNX / ORT files of one model plus ``manifest.json`` and the
test images it was scored on, what ``benchmarks/deploy.py`` reads.

:func:`write_bundle` exports fp32 ONNX (checked against PyTorch), optionally the static int8
model (:mod:`learners.ort_quant`) and the ORT-format files for ONNX Runtime Mobile, scores
every file in a fresh ONNX Runtime session on the given test images, and writes the manifest
(:data:`MANIFEST_FORMAT`, schema in docs/export.md). Everything is built in a staging folder
beside ``out_dir`` and moved in at the end, manifest last: a failed or killed export leaves no
half-written file in ``out_dir`` (at worst a ``.<name>.tmp<pid>`` folder beside it).

Plain PyTorch / ONNX Runtime: the caller supplies the images and the MACs.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from learners import onnx_export as ox
from learners import ort_quant as oq

MANIFEST_FORMAT = "pocketflow-gym/deploy-manifest/1"
MANIFEST_NAME = "manifest.json"
TEST_DATA_NAME = "test.npz"
#: int8 may lose at most this much top-1 accuracy (points) against fp32; larger is reported.
INT8_MAX_DROP_POINTS = 0.3
#: Quantization settings per deployment target (ORT's advice in ``quantize_static``'s docs).
INT8_TARGETS: dict[str, dict[str, Any]] = {
    "arm": {"activation_type": "int8", "reduce_range": False},
    "x86": {"activation_type": "uint8", "reduce_range": True},
}
#: Keys every model entry of a manifest has.
MODEL_KEYS = ("name", "file", "precision", "macs", "params", "size_bytes", "test_accuracy", "test_images")


class BundleError(ValueError):
    """A bundle cannot be written or a manifest is malformed; the message says what to do."""


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
    _remove_stale_stages(out_dir)
    stage = out_dir.parent / f".{out_dir.name}.tmp{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        manifest = _build(model, stage, input_size=input_size, mean=mean, std=std, class_names=class_names,
                          macs=macs, calibration=calibration, test=test, check_images=check_images,
                          ort_format=ort_format, int8_target=int8_target, exact_int8=exact_int8,
                          check_samples=check_samples, source=source, extra=extra, log=log)
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


def _build(model, stage: Path, *, input_size, mean, std, class_names, macs, calibration, test, check_images,
           ort_format, int8_target, exact_int8, check_samples, source, extra, log) -> dict[str, Any]:
    params = sum(p.numel() for p in model.parameters())
    models: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}

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
        oq.quantize_int8(prep, stage / "model.int8.onnx", ranges, **INT8_TARGETS[int8_target])
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
                          "target": int8_target, **{k: v for k, v in INT8_TARGETS[int8_target].items()},
                          "weights": "int8 per-channel symmetric"
                          + (" (7-bit range)" if INT8_TARGETS[int8_target]["reduce_range"] else ""),
                          "activations": f"{INT8_TARGETS[int8_target]['activation_type']} (calibrated)",
                          "calibration": "MinMax", "calibration_file": "calibration.json",
                          "preprocessed_fp32": "model.prep.onnx"} if calibration is not None else None),
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


def _stays_inside(folder: str | os.PathLike[str] | None, name: str) -> bool:
    """``name`` is a relative path without ``..`` and (with ``folder``) resolves inside it
    (a symbolic link out of the folder does not)."""
    rel = Path(name)
    if not name or rel.is_absolute() or ".." in rel.parts:
        return False
    return folder is None or (Path(folder) / rel).resolve().is_relative_to(Path(folder).resolve())


def validate_manifest(manifest: Any, folder: str | os.PathLike[str] | None = None) -> None:
    """Check a manifest against the schema (docs/export.md); with ``folder``, also that every
    file it names exists there.

    Raises:
        BundleError: naming the first key that is missing or malformed.
    """
    def need(cond: bool, what: str) -> None:
        if not cond:
            raise BundleError(f"manifest: {what}; export the folder again (scripts/export.py)")

    need(isinstance(manifest, dict), "not a JSON object")
    need(manifest.get("format") == MANIFEST_FORMAT, f"format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    need(isinstance(manifest.get("models"), list) and manifest["models"], "'models' must be a non-empty list")
    for m in manifest["models"]:
        need(isinstance(m, dict) and all(k in m for k in MODEL_KEYS), f"a model entry lacks one of {MODEL_KEYS}")
        need(m["precision"] in ("fp32", "int8"), f"precision {m['precision']!r} is not fp32 or int8")
        need(all(isinstance(m[k], int) and m[k] >= 0 for k in ("macs", "params", "size_bytes")),
             f"{m['name']}: macs, params and size_bytes must be non-negative integers")
        need(m["test_accuracy"] is None or (isinstance(m["test_accuracy"], float) and 0 <= m["test_accuracy"] <= 1),
             f"{m['name']}: test_accuracy must be null or a fraction")
        need(m["test_images"] is None or isinstance(m["test_images"], int),
             f"{m['name']}: test_images must be an integer or null")
        need(isinstance(m["file"], str) and _stays_inside(folder, m["file"]),
             f"{m['name']}: file {m['file']!r} points outside the folder (it must be a relative path inside it)")
        if folder is not None:
            need((Path(folder) / m["file"]).is_file(), f"{m['file']} is missing")
    inp = manifest.get("input")
    need(isinstance(inp, dict) and inp.get("name") and inp.get("dtype") == "float32" and inp.get("layout") == "NCHW",
         "'input' must name the input, dtype float32, layout NCHW")
    shape = inp["shape"]
    need(isinstance(shape, list) and len(shape) == 4 and shape[0] is None and shape[1] == 3
         and all(isinstance(v, int) and v > 0 for v in shape[2:]), "'input.shape' must be [null, 3, H, W]")
    pre = manifest.get("preprocess")
    need(isinstance(pre, dict) and isinstance(pre.get("scale"), float) and len(pre.get("mean", [])) == 3
         and len(pre.get("std", [])) == 3, "'preprocess' needs scale, mean[3], std[3]")
    need(isinstance(manifest.get("class_names"), list) and manifest["class_names"], "'class_names' must be a list")
    td = manifest.get("test_data")
    need(td is None or isinstance(td, str), "'test_data' must be a file name or null")
    need(td is None or _stays_inside(folder, td), f"'test_data' {td!r} points outside the folder")
    if folder is not None and td is not None:
        need((Path(folder) / td).is_file(), f"{td} is missing")
    need(isinstance(manifest.get("source"), dict), "'source' must be an object")


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated manifest of a bundle folder."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{path} does not exist; export the folder with scripts/export.py")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); export the folder again") from None
    validate_manifest(manifest, folder)
    return manifest
