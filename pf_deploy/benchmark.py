"""Stage 4 after the search: benchmark exported models where they will run (size, MACs/params,
test accuracy, latency), and the deploy manifest's schema (:func:`validate_manifest`,
:func:`read_manifest`: the one reader, which the exporter checks what it writes with).

    pf-deploy-benchmark out/manifest.json                   # an export (fp32 + int8) and its test.npz
    pf-deploy-benchmark dense/manifest.json pruned/manifest.json --out results.json
    pf-deploy-benchmark model.onnx model_int8.onnx --data cifar10-jpeg/test --limit 2000
    pf-deploy-benchmark out/manifest.json --dump-logits x86/     # then, on the board:
    python deploy.py out/manifest.json --compare-logits x86/     # same outputs as on x86?

(``python -m pf_deploy.benchmark`` and ``python benchmarks/deploy.py`` are the same command.)
Needs only ``pip install onnxruntime numpy`` (Pillow only to read a JPEG test tree with
``--data``): it never imports torch, nor anything of pocketflow-gym but the standard-library
module :mod:`learners.host`, so it runs on a phone (Termux), a Raspberry Pi or any board with
a Python. On a board without the package, copy three files into one folder and run
``deploy.py`` there: ``benchmarks/deploy.py``, ``pf_deploy/benchmark.py``, ``learners/host.py``.

Inputs are ``.onnx`` / ``.ort`` files or ``manifest.json`` files written by the exporter
(format :data:`MANIFEST_FORMAT`: several models of one export, their MACs,
params, preprocessing and a ``test.npz``; schema in docs/export.md). For every model it reports the file size, MACs and
params (from the manifest; ``-`` for a bare file), the top-1 test accuracy measured here with
ONNX Runtime, and the batch-1 latency: ``--warmup`` runs, then ``--runs`` timed runs (median,
p10, p90), once per ``--threads`` setting (ONNX Runtime's ``intra_op_num_threads``; ``all`` =
every core this process may use). Speed-ups are against the reference model (``--reference``;
default: the fp32 model with the most MACs, i.e. the dense fp32 one).

Test images, first found: ``--test-npz`` (``images`` uint8 NHWC, ``labels`` int),
``--data`` (an ImageFolder test tree ``<class>/*.jpg``: CIFAR-10's is
``$PF_DATA_DIR/test``), the manifest's ``test_data``. ``--limit N`` takes N of them, evenly
spaced (all classes when the file is ordered by class).

Preprocessing: ``x = (uint8 * scale - mean) / std`` per channel, from the manifest, else from
``--scale/--mean/--std`` (defaults: CIFAR-10's, as pf_envs/data.py uses them).

Platform label: every result carries the machine, the ONNX Runtime version and ``--label``.
Runs under emulation (``--emulated DESCRIPTION``, or the ``PF_EMULATION`` variable that
benchmarks/arm/run.sh sets) are marked as such in the table and the JSON: their timings are
the emulator's, never device times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

try:
    from learners.host import cpu_name, usable_cores
except ImportError:  # copied onto a board without the package: host.py beside this file
    from host import cpu_name, usable_cores  # type: ignore[no-redef]

MANIFEST_FORMAT = "pocketflow-gym/deploy-manifest/1"
MANIFEST_NAME = "manifest.json"
TEST_DATA_NAME = "test.npz"
#: Keys every model entry of a manifest has.
MODEL_KEYS = ("name", "file", "precision", "macs", "params", "size_bytes", "test_accuracy", "test_images")
RESULT_FORMAT = "pocketflow-gym/deploy-benchmark/1"
MODEL_SUFFIXES = (".onnx", ".ort")
# CIFAR-10 per-channel mean/std of the training set (the numbers of pf_envs/data.py).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
DEFAULT_SCALE = 1.0 / 255.0
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# op types that only a quantized graph holds (QDQ, QOperator or integer-op formats)
_INT8_OP_TYPES = (b"QuantizeLinear", b"DequantizeLinear", b"QLinearConv", b"QLinearMatMul", b"ConvInteger",
                  b"MatMulInteger", b"DynamicQuantizeLinear")


class DeployError(Exception):
    """Bad input to the benchmark: the message names the file and says what to do."""


class ManifestError(DeployError, ValueError):
    """A manifest does not follow the schema; the message names the first key that does not."""


# ----------------------------------------------------------------------------- the manifest


def _stays_inside(folder: str | os.PathLike[str] | None, name: Any) -> bool:
    """``name`` is a relative path without ``..`` and (with ``folder``) resolves inside it (a
    symbolic link out of the folder does not): a manifest names its files relative to its own
    folder (docs/export.md)."""
    if not isinstance(name, str) or not name:
        return False
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        return False
    return folder is None or (Path(folder) / rel).resolve().is_relative_to(Path(folder).resolve())


def validate_manifest(manifest: Any, folder: str | os.PathLike[str] | None = None) -> None:
    """Check a manifest against the schema (docs/export.md); with ``folder``, also that every
    file it names exists there.

    Raises:
        ManifestError: naming the first key that is missing or malformed.
    """
    def need(cond: bool, what: str) -> None:
        if not cond:
            raise ManifestError(f"manifest: {what}; export the folder again (pf-export)")

    need(isinstance(manifest, dict), "not a JSON object")
    need(manifest.get("format") == MANIFEST_FORMAT,
         f"format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}: it is not a deploy manifest")
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
        need(_stays_inside(folder, m["file"]),
             f"{m['name']}: file {m['file']!r} points outside its folder (it must be a relative path inside it; "
             "this manifest was edited or damaged)")
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
    need(td is None or _stays_inside(folder, td), f"'test_data' {td!r} points outside its folder")
    if folder is not None and td is not None:
        need((Path(folder) / td).is_file(), f"{td} is missing")
    need(isinstance(manifest.get("source"), dict), "'source' must be an object")


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated manifest ``path`` (a ``manifest.json``, or the export folder holding one).

    Raises:
        ManifestError: missing, not JSON, or not following the schema.
    """
    path = Path(path)
    if path.is_dir() or path.suffix != ".json":
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"the manifest {path} does not exist; export the folder with pf-export")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read the manifest {path}: {exc}; export the model again") from None
    try:
        validate_manifest(manifest, path.parent)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from None
    return manifest


@dataclass
class Preprocess:
    """``x = (uint8 * scale - mean) / std`` per channel."""

    scale: float = DEFAULT_SCALE
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD

    def apply(self, images: np.ndarray, layout: str) -> np.ndarray:
        """uint8 NHWC -> float32 in ``layout`` (NCHW or NHWC)."""
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        x = (images.astype(np.float32) * np.float32(self.scale) - mean) / std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if layout == "NCHW" else x)


@dataclass
class ModelEntry:
    """One model to benchmark, with what its manifest (if any) says about it."""

    path: Path
    name: str
    group: str  # the export it belongs to: the manifest's folder name, or "files"
    precision: str
    precision_from: str  # "manifest" or "graph op types"
    structure: str = "-"  # "dense" / "pruned" (from the manifest's source), "-" when unknown
    macs: int | None = None
    params: int | None = None
    manifest: Path | None = None
    manifest_entry: dict[str, Any] = field(default_factory=dict)
    preprocess: Preprocess | None = None
    layout: str | None = None
    class_names: list[str] | None = None
    test_npz: Path | None = None

    @property
    def label(self) -> str:
        return f"{self.group}/{self.name}"


# ----------------------------------------------------------------------------- inputs


def _detect_precision(path: Path) -> str:
    """int8 where the file holds a quantization op type (op names are plain strings in both
    the ONNX protobuf and the ORT flatbuffer), else fp32."""
    data = path.read_bytes()
    return "int8" if any(op in data for op in _INT8_OP_TYPES) else "fp32"


def _check_model_file(path: Path, origin: str) -> None:
    if not path.is_file():
        raise DeployError(f"{path} ({origin}) does not exist or is not a file; give the path of an exported "
                          f"{'/'.join(MODEL_SUFFIXES)} model or its manifest.json")
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise DeployError(f"{path} ({origin}): unknown model file type {path.suffix!r}; expected one of "
                          f"{', '.join(MODEL_SUFFIXES)} or a manifest.json")


def _read_manifest(path: Path) -> list[ModelEntry]:
    manifest = read_manifest(path)
    models = manifest["models"]
    pre = manifest["preprocess"]
    preprocess = Preprocess(float(pre["scale"]), tuple(map(float, pre["mean"])), tuple(map(float, pre["std"])))
    layout = manifest["input"]["layout"]
    test_data = manifest.get("test_data")
    test_npz = (path.parent / test_data) if test_data else None
    source = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
    group = path.parent.resolve().name or str(source.get("name") or "export")
    # dense or pruned: the exporter's source says whether a compression policy made the model
    kind = source.get("kind")
    structure = ("pruned" if kind == "compressed" or source.get("policy") else "dense" if kind == "zoo"
                 else str(source.get("structure") or "-"))
    entries = []
    for i, m in enumerate(models):
        file = path.parent / m["file"]
        _check_model_file(file, f"models[{i}] of {path}")
        entries.append(ModelEntry(
            path=file, name=str(m["name"]), group=group, precision=str(m["precision"]), precision_from="manifest",
            structure=structure, macs=m.get("macs"), params=m.get("params"), manifest=path, manifest_entry=m,
            preprocess=preprocess, layout=layout, class_names=manifest.get("class_names"), test_npz=test_npz,
        ))
    return entries


def collect_models(paths: list[str]) -> list[ModelEntry]:
    """The models of the given manifests and model files, in order; labels must be unique."""
    entries: list[ModelEntry] = []
    for text in paths:
        path = Path(text).expanduser()
        if path.suffix.lower() == ".json":
            if not path.is_file():
                raise DeployError(f"the manifest {path} does not exist")
            entries += _read_manifest(path)
        else:
            _check_model_file(path, "command line")
            entries.append(ModelEntry(path=path, name=path.stem, group="files", precision=_detect_precision(path),
                                      precision_from="graph op types"))
    seen: dict[str, int] = {}
    for e in entries:  # two exports in folders of the same name: number them
        n = seen[e.label] = seen.get(e.label, 0) + 1
        if n > 1:
            e.group = f"{e.group}#{n}"
    return entries


def load_image_folder(root: Path, class_names: list[str] | None = None,
                      limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An ImageFolder tree ``root/<class>/*.jpg`` as uint8 NHWC images and int64 labels.

    Labels follow ``class_names`` where given (a manifest's), else the sorted folder names
    (torchvision's ImageFolder order; CIFAR-10's sorted names are its official order).
    ``limit``: that many images, evenly spaced over the sorted file list (decodes only those).
    """
    if not root.is_dir():
        raise DeployError(f"the test image folder {root} does not exist; give the ImageFolder test tree "
                          "(CIFAR-10: $PF_DATA_DIR/test, holding one folder per class)")
    if (root / "test").is_dir() and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.rglob("*/*")):
        root = root / "test"
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise DeployError(f"{root} holds no class folders; expected {root}/<class>/*.jpg")
    names = list(class_names) if class_names else folders
    missing = sorted(set(folders) - set(names))
    if missing:
        raise DeployError(f"{root} has class folders {missing} that are not among the model's classes {names}")
    try:
        from PIL import Image
    except ImportError as exc:
        raise DeployError("reading JPEG test images needs Pillow (pip install pillow), or pass --test-npz") from exc
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(names):
        folder = root / name
        if folder.is_dir():
            files += [(f, label) for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    images, labels = [], []
    for i in evenly_spaced(len(files), limit):  # decode only the images used
        file, label = files[i]
        try:
            with Image.open(file) as img:
                images.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
        except OSError as exc:
            raise DeployError(f"cannot decode the image {file}: {exc}") from exc
        labels.append(label)
    if not images:
        raise DeployError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}/<class>/")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DeployError(f"the images under {root} have different sizes {sorted(shapes)[:4]}; deploy.py does not "
                          "resize: give images of the model's input size")
    return np.stack(images), np.asarray(labels, np.int64)


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``images`` (uint8 N x H x W x 3) and ``labels`` (int N) of a test.npz."""
    try:
        with np.load(path, allow_pickle=False) as data:
            images, labels = data["images"], data["labels"]
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise DeployError(f"cannot read the test data {path} (needs arrays 'images' uint8 NHWC and 'labels'): "
                          f"{exc}") from exc
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DeployError(f"{path}: 'images' must be uint8 N x H x W x 3, got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DeployError(f"{path}: 'labels' must hold one int per image, got shape {labels.shape} "
                          f"for {len(images)} images")
    return images, labels.astype(np.int64)


def evenly_spaced(n_total: int, limit: int | None) -> np.ndarray:
    """``limit`` indices spread over ``range(n_total)`` (all where limit is None or larger)."""
    if limit is None or limit >= n_total:
        return np.arange(n_total)
    if limit < 1:
        raise DeployError(f"--limit must be at least 1, got {limit}")
    return np.unique(np.round(np.linspace(0, n_total - 1, limit)).astype(np.int64))


# ----------------------------------------------------------------------------- running


OPTIMIZATION_LEVELS = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                       "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                       "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                       "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}


def make_session(path: Path, threads: int, optimization: str = "all") -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads (one inter-op thread, sequential).

    ``optimization="disable"`` runs a QDQ int8 graph as written (DequantizeLinear -> fp32
    op -> QuantizeLinear): the reference semantics the fused integer kernels approximate.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/InvalidGraph types
        raise DeployError(f"{path} is not a model ONNX Runtime {ort.__version__} can load: "
                          f"{type(exc).__name__}: {str(exc).strip()[:400]}") from exc


def profile_kernels(path: Path, threads: int, x1: np.ndarray, runs: int, optimization: str = "all",
                    top: int = 10) -> dict[str, Any]:
    """Where a model's time goes: ONNX Runtime's own profiler over ``runs`` batch-1 runs (after
    one untimed run), the kernel time per operator type and the ``top`` slowest nodes, in ms
    per run (the optimised graph's operators: fused ``Conv``, ``QLinearConv``, ...)."""
    import json as _json
    import tempfile

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    opts.log_severity_level = 3
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="pf-profile-") as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for _ in range(runs + 1):  # the first run (allocations, first touches) is left out below
            session.run(None, {name: x1})
        events = _json.loads(Path(session.end_profiling()).read_text())
    model_runs = sorted((ev["ts"], ev["ts"] + ev["dur"]) for ev in events
                        if ev.get("cat") == "Session" and ev.get("name") == "model_run")
    warm_from = model_runs[0][1] if len(model_runs) > runs else float("-inf")
    by_op: dict[str, float] = {}
    by_node: dict[tuple[str, str], float] = {}
    for ev in events:
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time") or ev["ts"] < warm_from:
            continue
        op = ev.get("args", {}).get("op_name", "?")
        by_op[op] = by_op.get(op, 0.0) + ev["dur"]
        key = (ev["name"][: -len("_kernel_time")], op)
        by_node[key] = by_node.get(key, 0.0) + ev["dur"]
    per_run = 1e-3 / runs  # microseconds in all -> ms per run
    return {
        "threads": threads, "runs": runs,
        "kernel_ms": sum(by_op.values()) * per_run,
        "by_op_ms": {k: v * per_run for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
        "top_nodes": [[n, op, v * per_run] for (n, op), v in sorted(by_node.items(), key=lambda kv: -kv[1])[:top]],
    }


def input_signature(session: ort.InferenceSession, path: Path) -> tuple[str, tuple, str]:
    """(input name, shape without the batch dim, element type) of a one-input model."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise DeployError(f"{path} has {len(inputs)} inputs ({[i.name for i in inputs]}); deploy.py benchmarks "
                          "image classifiers with one input")
    inp = inputs[0]
    if inp.type != "tensor(float)":
        raise DeployError(f"{path}: input {inp.name!r} is {inp.type}; deploy.py feeds float32 images")
    if len(inp.shape) != 4 or not all(isinstance(d, int) for d in inp.shape[1:]):
        raise DeployError(f"{path}: input {inp.name!r} has shape {inp.shape}; expected [batch, C, H, W] or "
                          "[batch, H, W, C] with fixed C, H, W")
    return inp.name, tuple(inp.shape[1:]), inp.type


def guess_layout(shape: tuple) -> str:
    if shape[0] == 3:
        return "NCHW"
    if shape[-1] == 3:
        return "NHWC"
    raise DeployError(f"cannot tell the layout of an input of shape {shape}: neither C=3 first nor last; "
                      "use a manifest that states it")


def fixed_batch(session: ort.InferenceSession) -> int | None:
    dim = session.get_inputs()[0].shape[0]
    return dim if isinstance(dim, int) else None


def predict(session: ort.InferenceSession, x: np.ndarray, batch_size: int, progress: str | None = None) -> np.ndarray:
    """Logits for every image of ``x`` (already preprocessed), in batches; ``progress``: a
    name to print progress under, at most every 10 s (emulated runs take minutes)."""
    name = session.get_inputs()[0].name
    batch = fixed_batch(session) or batch_size
    out = []
    last = time.perf_counter()
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        pad = batch - len(chunk) if fixed_batch(session) else 0
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        logits = session.run(None, {name: chunk})[0]
        out.append(logits[:len(chunk) - pad])
        if progress and time.perf_counter() - last > 10:
            last = time.perf_counter()
            print(f"  {progress}: {start + len(chunk) - pad}/{len(x)} images", file=sys.stderr, flush=True)
    return np.concatenate(out).astype(np.float32)


def _latency_stats(times: np.ndarray, warmup: int, rounds: int) -> dict[str, float]:
    return {"median_ms": float(np.median(times)), "p10_ms": float(np.percentile(times, 10)),
            "p90_ms": float(np.percentile(times, 90)), "mean_ms": float(times.mean()),
            "min_ms": float(times.min()), "runs": int(len(times)), "warmup": warmup, "rounds": rounds}


def time_batch1(session: ort.InferenceSession, x1: np.ndarray, warmup: int, runs: int) -> dict[str, float]:
    """Batch-1 latency in ms of one model alone: ``warmup`` untimed runs, then ``runs`` timed ones."""
    return time_interleaved([session], [x1], warmup, runs, rounds=1)[0]


def time_interleaved(sessions: list[ort.InferenceSession], inputs: list[np.ndarray], warmup: int, runs: int,
                     rounds: int) -> list[dict[str, float]]:
    """Batch-1 latency in ms of several models, timed in round-robin rounds: every model gets
    ``warmup`` untimed runs, then each of ``rounds`` rounds runs every model ``runs / rounds``
    times in turn (the order rotating by one model per round). Back-to-back timing lets a
    drift of the machine (frequency, a neighbour's load) land on one model; interleaving
    spreads it over all, so their ratios hold (the 32x32 int8 speed-up read 2.8x back to back
    and 2.05x interleaved on one machine).

    Returns:
        per model: median, p10, p90, mean and min over its ``runs`` timed runs.
    """
    if runs < 1 or rounds < 1:
        raise DeployError(f"runs and rounds must be >= 1, got {runs} and {rounds}")
    rounds = min(rounds, runs)
    feeds = [{sess.get_inputs()[0].name: x} for sess, x in zip(sessions, inputs)]
    for sess, feed in zip(sessions, feeds):
        for _ in range(warmup):
            sess.run(None, feed)
    per_round = [runs // rounds + (1 if r < runs % rounds else 0) for r in range(rounds)]
    times: list[list[float]] = [[] for _ in sessions]
    k = len(sessions)
    for r, n in enumerate(per_round):
        for j in range(k):
            i = (j + r) % k
            sess, feed = sessions[i], feeds[i]
            for _ in range(n):
                t0 = time.perf_counter_ns()
                sess.run(None, feed)
                times[i].append((time.perf_counter_ns() - t0) / 1e6)
    return [_latency_stats(np.asarray(t), warmup, rounds) for t in times]


def parse_threads(values: list[str]) -> list[int]:
    out: list[int] = []
    for v in values:
        n = usable_cores() if v == "all" else int(v) if v.isdigit() else 0
        if n < 1:
            raise DeployError(f"--threads takes positive integers or 'all', got {v!r}")
        if n not in out:
            out.append(n)
    return out


def platform_info(label: str | None, emulated: str | None) -> dict[str, Any]:
    return {"label": label or f"{platform.machine()} {platform.system()}", "machine": platform.machine(),
            "system": platform.system(), "cpu": cpu_name(), "cores": usable_cores(),
            "python": platform.python_version(), "onnxruntime": ort.__version__, "numpy": np.__version__,
            "emulated": bool(emulated), "emulation": emulated or None}


# ----------------------------------------------------------------------------- benchmark


def group_by_input(entries: list[ModelEntry], shapes: dict[str, tuple], separate: bool) -> list[list[ModelEntry]]:
    groups: dict[tuple, list[ModelEntry]] = {}
    for e in entries:
        groups.setdefault(shapes[e.label], []).append(e)
    if len(groups) > 1 and not separate:
        lines = "; ".join(f"{list(s)}: {', '.join(e.label for e in g)}" for s, g in groups.items())
        raise DeployError(f"the models take inputs of different shapes ({lines}); speed-ups between them mean "
                          "nothing. Compare models of one input shape, or pass --separate-shapes for one table "
                          "(and one reference) per shape")
    return list(groups.values())


def pick_reference(group: list[ModelEntry], wanted: str | None) -> ModelEntry:
    """``wanted`` (a label or a name) where given, else the dense fp32 model: among the fp32
    models those marked dense (all where none is), the one with the most MACs, else the
    first; where no model is fp32, the first model."""
    if wanted:
        hits = [e for e in group if wanted in (e.label, e.name, str(e.path))]
        if len(hits) != 1:
            raise DeployError(f"--reference {wanted!r} matches {len(hits)} models of "
                              f"{[e.label for e in group]}; give one of these labels")
        return hits[0]
    fp32 = [e for e in group if e.precision == "fp32"]
    fp32 = [e for e in fp32 if e.structure == "dense"] or fp32
    with_macs = [e for e in fp32 if isinstance(e.macs, int)]
    if with_macs:
        return max(with_macs, key=lambda e: e.macs)
    return (fp32 or group)[0]


def test_data_for(e: ModelEntry, args: argparse.Namespace, cache: dict) -> tuple[str, np.ndarray, np.ndarray] | None:
    if args.test_npz:
        key = ("npz", args.test_npz)
    elif args.data:
        key = ("folder", args.data, tuple(e.class_names or ()))
    elif e.test_npz is not None:
        key = ("npz", str(e.test_npz))
    else:
        return None
    if key not in cache:
        if key[0] == "npz":
            path = Path(key[1]).expanduser()
            images, labels = load_npz(path)
        else:
            path = Path(key[1]).expanduser()
            images, labels = load_image_folder(path, e.class_names, args.limit)
        idx = evenly_spaced(len(labels), args.limit)
        cache[key] = (str(path), images[idx], labels[idx])
    return cache[key]


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    entries = collect_models(args.models)
    threads = parse_threads(args.threads)
    emulated = args.emulated or os.environ.get("PF_EMULATION") or None
    default_pre = Preprocess(args.scale, tuple(args.mean), tuple(args.std))
    sessions: dict[str, dict[int, ort.InferenceSession]] = {}
    shapes: dict[str, tuple] = {}
    for e in entries:  # load everything first: a bad file fails before minutes of timing
        sessions[e.label] = {n: make_session(e.path, n, args.optimization) for n in threads}
        _, shapes[e.label], _ = input_signature(sessions[e.label][threads[0]], e.path)
        e.layout = e.layout or guess_layout(shapes[e.label])
    groups = group_by_input(entries, shapes, args.separate_shapes)
    data_cache: dict = {}
    result_groups = []
    progress = args.progress
    for group in groups:
        ref = pick_reference(group, args.reference)
        rows = []
        inputs: dict[str, np.ndarray] = {}
        for e in group:
            row: dict[str, Any] = {
                "label": e.label, "name": e.name, "group": e.group, "file": str(e.path),
                "manifest": str(e.manifest) if e.manifest else None, "precision": e.precision,
                "precision_from": e.precision_from, "structure": e.structure,
                "size_bytes": e.path.stat().st_size, "macs": e.macs,
                "params": e.params, "input_shape": list(shapes[e.label]), "layout": e.layout,
                "accuracy_in_manifest": e.manifest_entry.get("test_accuracy"),
            }
            pre = e.preprocess or default_pre
            data = test_data_for(e, args, data_cache)
            fast = sessions[e.label][max(threads)]
            x1 = None
            if data is not None:
                source, images, labels = data
                img_shape = images.shape[1:3]
                want = shapes[e.label][1:3] if e.layout == "NCHW" else shapes[e.label][0:2]
                if tuple(img_shape) != tuple(want):
                    raise DeployError(f"the test images of {source} are {img_shape[0]}x{img_shape[1]} but "
                                      f"{e.label} takes {want[0]}x{want[1]}; deploy.py does not resize")
                t0 = time.perf_counter()
                x = pre.apply(images, e.layout)
                logits = predict(fast, x, args.batch_size, e.label if progress else None)
                correct = int((logits.argmax(1) == labels).sum())
                row.update(test_data=source, test_images=len(labels), correct=correct,
                           accuracy=correct / len(labels), accuracy_seconds=time.perf_counter() - t0)
                if args.dump_logits:
                    dump = Path(args.dump_logits)
                    dump.mkdir(parents=True, exist_ok=True)
                    np.save(dump / f"{_file_label(e.label)}.npy", logits)
                    np.save(dump / f"{_file_label(e.label)}.labels.npy", labels)
                if args.compare_logits:
                    row["logits_vs"] = compare_logits(Path(args.compare_logits), e.label, logits, labels)
                x1 = x[:1]
                if progress:
                    print(f"  {e.label}: accuracy {row['accuracy']:.4f} on {len(labels)} images "
                          f"({row['accuracy_seconds']:.1f} s)", file=sys.stderr, flush=True)
            else:
                row.update(test_data=None, test_images=0, accuracy=None)
            if x1 is None:
                rng = np.random.default_rng(0)
                x1 = rng.standard_normal((1, *shapes[e.label]), dtype=np.float32)
            row["latency"] = {}
            inputs[e.label] = x1
            rows.append(row)
        # latency: every model of the group in round-robin rounds, per thread count
        for n in threads:
            stats = time_interleaved([sessions[e.label][n] for e in group], [inputs[e.label] for e in group],
                                     args.warmup, args.runs, args.rounds)
            for row, lat in zip(rows, stats):
                row["latency"][str(n)] = lat
                if progress:
                    print(f"  {row['label']}: {n} thread(s) median {lat['median_ms']:.3f} ms, "
                          f"min {lat['min_ms']:.3f} ms", file=sys.stderr, flush=True)
        if args.profile:
            for e, row in zip(group, rows):
                row["profile"] = profile_kernels(e.path, threads[0], inputs[e.label], args.profile, args.optimization)
        ref_row = next(r for r in rows if r["label"] == ref.label)
        for r in rows:
            r["speedup"] = {n: ref_row["latency"][n]["median_ms"] / r["latency"][n]["median_ms"]
                            for n in r["latency"]}
            r["speedup_min"] = {n: ref_row["latency"][n]["min_ms"] / r["latency"][n]["min_ms"]
                                for n in r["latency"]}
        result_groups.append({"input_shape": list(shapes[ref.label]), "reference": ref.label, "models": rows})
    return {"format": RESULT_FORMAT, "platform": platform_info(args.label, emulated),
            "settings": {"threads": threads, "runs": args.runs, "warmup": args.warmup, "rounds": args.rounds,
                         "timing": "interleaved", "batch": 1,
                         "limit": args.limit, "optimization": args.optimization, "inputs": args.models},
            "groups": result_groups}


def _file_label(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def compare_logits(folder: Path, label: str, logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """How far ``logits`` are from the ones another run dumped for the same model and images."""
    path = folder / f"{_file_label(label)}.npy"
    if not path.is_file():
        raise DeployError(f"--compare-logits: no logits of {label} at {path}; run deploy.py with --dump-logits "
                          f"{folder} on the same models and --limit first")
    other = np.load(path, allow_pickle=False)
    other_labels = np.load(folder / f"{_file_label(label)}.labels.npy", allow_pickle=False)
    if other.shape != logits.shape or not np.array_equal(other_labels, labels):
        raise DeployError(f"--compare-logits: {path} holds logits of other images ({other.shape} vs "
                          f"{logits.shape}); use the same test data and --limit on both runs")
    diff = np.abs(other.astype(np.float64) - logits)
    scale = float(np.abs(other).max()) or 1.0
    return {"against": str(path), "identical": bool(np.array_equal(other, logits)),
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "max_abs_diff_relative_to_max_logit": float(diff.max()) / scale,
            "top1_agreement": float((other.argmax(1) == logits.argmax(1)).mean()),
            "images_differing": int((diff.max(1) > 0).sum())}


# ----------------------------------------------------------------------------- report


def _fmt_int(v: Any, unit: float, suffix: str) -> str:
    return f"{v / unit:.2f}{suffix}" if isinstance(v, int) and not isinstance(v, bool) else "-"


def format_table(result: dict[str, Any]) -> str:
    p = result["platform"]
    head = (f"platform: {p['label']} | {p['machine']} {p['cpu']} | {p['cores']} cores | python {p['python']} | "
            f"onnxruntime {p['onnxruntime']}")
    lines = [head]
    if p["emulated"]:
        lines.append(f"EMULATION ({p['emulation']}): latencies are the emulator's, NOT device times")
    s = result["settings"]
    lines.append(f"batch 1, {s['warmup']} warm-up + {s['runs']} timed runs per model, interleaved in "
                 f"{s.get('rounds', 1)} round-robin rounds: median [min] ms; speed-up of the medians [of the minima]")
    for g in result["groups"]:
        threads = list(g["models"][0]["latency"])
        lines.append("")
        lines.append(f"input {g['input_shape']}, speed-up against {g['reference']}")
        cols = ["model", "precision", "structure", "MACs", "params", "size", "test acc"]
        for n in threads:
            cols += [f"{n} thr ms{' (emu)' if p['emulated'] else ''}", "speed-up"]
        table = [cols]
        for r in g["models"]:
            acc = f"{r['accuracy']:.4f} ({r['test_images']})" if r["accuracy"] is not None else "-"
            cells = [r["label"], r["precision"], r["structure"], _fmt_int(r["macs"], 1e6, "M"),
                     _fmt_int(r["params"], 1e6, "M"),
                     f"{r['size_bytes'] / 2**20:.2f} MiB", acc]
            for n in threads:
                lat = r["latency"][n]
                smin = r.get("speedup_min", {}).get(n)
                cells += [f"{lat['median_ms']:.3f} [{lat['min_ms']:.3f}]",
                          f"{r['speedup'][n]:.2f}x" + (f" [{smin:.2f}x]" if smin is not None else "")]
            table.append(cells)
        widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
        for i, row in enumerate(table):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        for r in g["models"]:
            if "profile" in r:
                prof = r["profile"]
                ops = ", ".join(f"{op} {ms:.2f}" for op, ms in list(prof["by_op_ms"].items())[:6])
                lines.append(f"profile {r['label']} ({prof['threads']} thread(s), {prof['runs']} runs, ms per run): "
                             f"kernels {prof['kernel_ms']:.2f} = {ops}")
        cmp_rows = [r for r in g["models"] if "logits_vs" in r]
        if cmp_rows:
            lines.append("logits against " + str(Path(cmp_rows[0]["logits_vs"]["against"]).parent) + ":")
            for r in cmp_rows:
                c = r["logits_vs"]
                lines.append(f"  {r['label']}: identical={c['identical']} max|diff|={c['max_abs_diff']:.3g} "
                             f"(relative {c['max_abs_diff_relative_to_max_logit']:.2g}) "
                             f"top-1 agreement {c['top1_agreement']:.4f}, {c['images_differing']} images differ")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pf-deploy-benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="manifest.json files and/or .onnx/.ort model files")
    p.add_argument("--data", help="ImageFolder test tree <class>/*.jpg (needs Pillow)")
    p.add_argument("--test-npz", help="test images as .npz (images uint8 NHWC, labels)")
    p.add_argument("--limit", type=int, default=None, help="test on this many images (evenly spaced); default all")
    p.add_argument("--batch-size", type=int, default=100, help="batch size of the accuracy pass")
    p.add_argument("--threads", nargs="+", default=["1", "all"], help="intra-op thread counts to time ('all' = "
                   "every usable core); default: 1 all")
    p.add_argument("--runs", type=int, default=200, help="timed batch-1 runs per model and thread count")
    p.add_argument("--warmup", type=int, default=20, help="untimed runs before timing")
    p.add_argument("--rounds", type=int, default=10,
                   help="round-robin rounds the timed runs are split into: every model of a group runs in "
                        "turn each round, so a drift of the machine lands on all of them (10)")
    p.add_argument("--optimization", choices=list(OPTIMIZATION_LEVELS), default="all",
                   help="ORT graph optimization level (default all; 'disable' = QDQ reference semantics, slow)")
    p.add_argument("--reference", help="label or name of the model speed-ups are against (default: the dense fp32)")
    p.add_argument("--separate-shapes", action="store_true",
                   help="models of different input shapes: one table per shape instead of an error")
    p.add_argument("--scale", type=float, default=DEFAULT_SCALE, help="bare .onnx files: x = (uint8*scale-mean)/std")
    p.add_argument("--mean", type=float, nargs=3, default=list(CIFAR10_MEAN), help="bare .onnx files (CIFAR-10's)")
    p.add_argument("--std", type=float, nargs=3, default=list(CIFAR10_STD), help="bare .onnx files (CIFAR-10's)")
    p.add_argument("--label", help="platform label for the table and JSON (e.g. 'Raspberry Pi 4')")
    p.add_argument("--emulated", help="this run is under an emulator: a description (timings get labelled)")
    p.add_argument("--dump-logits", help="write each model's test logits to this folder (<label>.npy)")
    p.add_argument("--compare-logits", help="compare each model's test logits with those dumped in this folder")
    p.add_argument("--profile", type=int, default=0, metavar="RUNS",
                   help="also profile each model over RUNS batch-1 runs at the first thread count: kernel time "
                        "per operator type and the slowest nodes (where int8 gains or loses)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--quiet", dest="progress", action="store_false", help="no progress lines on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.runs < 1 or args.rounds < 1 or args.warmup < 0 or args.profile < 0:
        print("deploy benchmark: error: --runs and --rounds must be >= 1, --warmup and --profile >= 0",
              file=sys.stderr)
        return 2
    try:
        result = benchmark(args)
    except DeployError as exc:
        print(f"deploy benchmark: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was written; run the same command again", file=sys.stderr)
        return 130
    print(format_table(result))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
