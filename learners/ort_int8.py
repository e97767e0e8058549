"""ONNX Runtime static int8 quantization, with calibration done once and reused.

Stock ONNX Runtime tooling throughout; this module only splits its pipeline where a search
needs it split:

1. :func:`preprocess` - ORT's pre-processing (``quant_pre_process``: symbolic + ONNX shape
   inference and ORT's basic graph optimizations), once per fp32 model.
2. :func:`calibrate` - activation ranges from ORT's own calibrator (MinMax by default) over a
   few hundred training images, returned as :class:`CalibrationRanges`: plain floats, JSON-able
   (:meth:`CalibrationRanges.save` / :meth:`CalibrationRanges.load`) and picklable, tied to the
   exact pre-processed file by its SHA-1.
3. :func:`quantize_int8` - ``quantize_static`` in QDQ format (int8 weights per output channel,
   int8 activations) fed the precomputed ranges through ORT's calibration cache, so it never
   runs the calibrator: quantizing again with another set of fp32-kept nodes
   (``exclude_nodes``) costs the quantizer alone (ResNet-20 on one busy core: 0.6 s, against
   8 s to calibrate on 512 images).

:func:`learners.onnx_names.layer_nodes` maps the torch module names of the quantizable
layers (``Conv2d``, ``Linear``) to the ONNX node names of an exported graph, so a caller can
decide per torch layer what stays fp32; :func:`node_precisions` reads back which of those
nodes a quantized graph runs in int8.

>>> from learners.ort_int8 import preprocess, calibrate, quantize_int8        # doctest: +SKIP
>>> prep = preprocess("model.onnx", "model.prep.onnx")                        # doctest: +SKIP
>>> ranges = calibrate(prep, calibration_batches)                              # doctest: +SKIP
>>> quantize_int8(prep, "model.int8.onnx", ranges, exclude_nodes=["/classifier/Gemm"])  # doctest: +SKIP

No gymnasium here (learners/ stays plain PyTorch/ONNX).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Format tag of a saved :class:`CalibrationRanges` file.
RANGES_FORMAT = "pocketflow-gym/ort-calibration/1"
#: ONNX op types whose weights the quantizer quantizes (what :func:`learners.onnx_names.layer_nodes` maps).
WEIGHT_OPS: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Calibration methods of ORT this module accepts (names of ``CalibrationMethod``).
CALIBRATION_METHODS: tuple[str, ...] = ("MinMax", "Entropy", "Percentile", "Distribution")
#: Metadata key ORT's pre-processing writes into the model.
_PRE_PROCESS_KEY = "onnx.quant.pre_process"


class QuantizationError(ValueError):
    """A model, range set or option does not fit; the message says what to do."""


def file_sha1(path: str | os.PathLike[str]) -> str:
    """SHA-1 of a file's bytes (hex, 16 characters), what ranges are tied to."""
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def load_onnx(path: str | os.PathLike[str]) -> Any:
    """An ONNX ``ModelProto`` read from ``path``, or a :class:`QuantizationError` that says the
    file is missing or not an ONNX model."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise QuantizationError(f"{path} does not exist{' (it is a folder)' if path.is_dir() else ''}; "
                                "pass the path of an .onnx model (export one with pf-export)")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and friends
        raise QuantizationError(f"{path} is not an ONNX model ({type(exc).__name__}: {exc}); "
                                "export it again (pf-export)") from None
    if not model.graph.node:
        raise QuantizationError(f"{path} holds no ONNX graph (no nodes); export it again (pf-export)")
    return model


def is_preprocessed(model_or_path: Any) -> bool:
    """Whether ORT's pre-processing (:func:`preprocess`) ran on this model."""
    model = load_onnx(model_or_path) if isinstance(model_or_path, (str, os.PathLike)) else model_or_path
    return any(p.key == _PRE_PROCESS_KEY for p in model.metadata_props)


def preprocess(fp32_onnx: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> Path:
    """ORT's quantization pre-processing of ``fp32_onnx`` written (atomically) to ``out_path``.

    Shape inference (symbolic, then ONNX) and ORT's basic graph optimizations (constant
    folding, Conv+BN/Add/Mul fusion) - the step ORT asks for before static quantization.
    Node names of surviving nodes are kept, so :func:`layer_nodes` of the fp32 export still
    holds. Returns ``out_path``.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from learners.atomic import atomic_write

    load_onnx(fp32_onnx)  # clear error for a missing or non-ONNX file
    return atomic_write(out_path, lambda tmp: quant_pre_process(str(fp32_onnx), str(tmp)))


def _require_preprocessed(path: Path, what: str) -> None:
    if not is_preprocessed(path):
        raise QuantizationError(
            f"{what}: {path} has not been through ORT's pre-processing; run "
            "learners.ort_int8.preprocess(fp32_onnx, out) first and pass its output"
        )


@dataclass(frozen=True)
class CalibrationRanges:
    """Activation ranges of one pre-processed ONNX model, computed once by :func:`calibrate`.

    Attributes:
        method: ORT calibration method (``MinMax``, ``Entropy``, ``Percentile``, ``Distribution``).
        ranges: tensor name -> ``(lowest, highest)`` as Python floats.
        model_sha1: :func:`file_sha1` of the model the ranges were measured on; quantizing
            another file with them is refused.
        images: how many images were run.
        options: the calibrator options used (``symmetric``, ``percentile`` ...), for the record.
    """

    method: str
    ranges: Mapping[str, tuple[float, float]]
    model_sha1: str
    images: int
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (see :meth:`from_dict`)."""
        return {"format": RANGES_FORMAT, "method": self.method, "model_sha1": self.model_sha1,
                "images": self.images, "options": dict(self.options),
                "ranges": {k: [float(lo), float(hi)] for k, (lo, hi) in sorted(self.ranges.items())}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CalibrationRanges:
        """Rebuild from :meth:`to_dict`'s output; a damaged dict is a :class:`QuantizationError`."""
        if not isinstance(data, Mapping) or data.get("format") != RANGES_FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise QuantizationError(f"not a calibration-range record (format {found!r}, expected "
                                    f"{RANGES_FORMAT!r}); calibrate again (learners.ort_int8.calibrate)")
        try:
            ranges = {str(k): (float(v[0]), float(v[1])) for k, v in data["ranges"].items()}
            out = cls(str(data["method"]), ranges, str(data["model_sha1"]), int(data["images"]),
                      dict(data.get("options", {})))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise QuantizationError(f"damaged calibration-range record ({type(exc).__name__}: {exc}); "
                                    "calibrate again") from None
        if out.method not in CALIBRATION_METHODS:
            raise QuantizationError(f"calibration method {out.method!r} unknown; expected one of {CALIBRATION_METHODS}")
        bad = [k for k, (lo, hi) in ranges.items() if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi)]
        if bad:
            raise QuantizationError(f"calibration ranges of {bad[:5]} are not finite or have lowest > highest; "
                                    "calibrate again")
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write as JSON (atomically)."""
        from learners.atomic import atomic_write_text

        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CalibrationRanges:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise QuantizationError(f"calibration ranges {path} do not exist; calibrate first")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise QuantizationError(f"{path} is not valid JSON ({exc}); calibrate again") from None
        return cls.from_dict(data)

    def to_tensors_data(self) -> Any:
        """ORT's ``TensorsData`` holding these ranges (what its quantizers read)."""
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

        data = {k: TensorData(lowest=np.array(lo, dtype=np.float32), highest=np.array(hi, dtype=np.float32))
                for k, (lo, hi) in self.ranges.items()}
        return TensorsData(getattr(CalibrationMethod, self.method), data)


def _batch_reader(input_name: str, batches: Iterable[Any]) -> Any:
    """An ORT ``CalibrationDataReader`` over an iterable of float32 NCHW batches; its
    ``images`` attribute counts what it handed out."""
    from onnxruntime.quantization import CalibrationDataReader

    class BatchReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)
            self.images = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            if batch is None:
                return None
            if hasattr(batch, "detach"):  # torch tensor
                batch = batch.detach().cpu().contiguous().numpy()
            arr = np.ascontiguousarray(batch, dtype=np.float32)
            if arr.ndim != 4:
                raise QuantizationError(
                    f"calibration batches must be float32 N x C x H x W arrays, got shape {arr.shape}")
            if not np.isfinite(arr).all():
                raise QuantizationError("a calibration batch holds NaN or infinite values; check the image source")
            self.images += len(arr)
            return {input_name: arr}

    return BatchReader()


def calibrate(
    model_path: str | os.PathLike[str],
    batches: Iterable[Any],
    *,
    method: str = "MinMax",
    options: Mapping[str, Any] | None = None,
) -> CalibrationRanges:
    """Activation ranges of a pre-processed model from ORT's calibrator.

    Args:
        model_path: output of :func:`preprocess`.
        batches: float32 ``N x C x H x W`` batches (numpy arrays or torch tensors), normalised
            exactly as the model's input; a few hundred training images in all.
        method: ORT calibration method; MinMax (default) is what ``quantize_static`` uses.
        options: extra calibrator options (``symmetric``, ``percentile``, ``num_bins`` ...).
            MinMax keeps only per-batch minima and maxima (ReduceMin/ReduceMax outputs), so
            memory does not grow with the image size.

    Raises:
        QuantizationError: the model is not pre-processed, the batches are empty or malformed.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, create_calibrator

    model_path = Path(model_path)
    model = load_onnx(model_path)
    _require_preprocessed(model_path, "calibrate")
    if method not in CALIBRATION_METHODS:
        raise QuantizationError(f"unknown calibration method {method!r}; choose one of {CALIBRATION_METHODS}")
    if len(model.graph.input) != 1:
        raise QuantizationError(f"{model_path} has {len(model.graph.input)} inputs; only single-input image models "
                                "are supported")
    reader = _batch_reader(model.graph.input[0].name, batches)
    extra = dict(options or {})
    with tempfile.TemporaryDirectory(prefix="pf-calib-") as tmp:
        # ORT writes "<model>-inferred.onnx" beside the file it loads: work on a private copy so
        # that processes calibrating the same file never collide.
        private = Path(tmp) / "model.onnx"
        shutil.copyfile(model_path, private)
        calibrator = create_calibrator(
            private, None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=getattr(CalibrationMethod, method), extra_options=extra,
        )
        try:
            calibrator.collect_data(reader)
        except QuantizationError:
            raise
        except (StopIteration, ValueError) as exc:
            if reader.images == 0:
                raise QuantizationError("calibrate got no batches; pass a few hundred training images") from None
            raise QuantizationError(f"calibration failed: {exc}") from exc
        if reader.images == 0:
            raise QuantizationError("calibrate got no batches; pass a few hundred training images")
        data = calibrator.compute_data()
        del calibrator
    if not isinstance(data, TensorsData):
        raise QuantizationError(f"ORT's calibrator returned {type(data).__name__}, not TensorsData")
    ranges = {}
    for name, td in data.items():
        lo, hi = td.range_value
        ranges[name] = (float(np.asarray(lo).min()), float(np.asarray(hi).max()))
    return CalibrationRanges(method, ranges, file_sha1(model_path), reader.images,
                             {k: v for k, v in extra.items() if isinstance(v, (int, float, str, bool))})


def _check_cache_support() -> None:
    import inspect

    from onnxruntime.quantization import quantize_static

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        import onnxruntime

        raise QuantizationError(
            f"onnxruntime {onnxruntime.__version__} cannot quantize from precomputed ranges (quantize_static has no "
            "calibration_cache_path); upgrade it: pip install -U 'onnxruntime>=1.32'"
        )


def quantize_int8(
    model_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    ranges: CalibrationRanges,
    *,
    exclude_nodes: Sequence[str] = (),
    per_channel: bool = True,
    activation_type: str = "int8",
    reduce_range: bool = False,
) -> Path:
    """Static int8 QDQ model of a pre-processed model, from precomputed ``ranges``.

    ORT's ``quantize_static`` in QDQ format with the ranges handed over as its calibration
    cache: the calibrator never runs, so this costs the quantizer alone.

    Args:
        model_path: output of :func:`preprocess` (the same file ``ranges`` were measured on).
        out_path: where the int8 model goes (written atomically).
        ranges: from :func:`calibrate` (or :meth:`CalibrationRanges.load`).
        exclude_nodes: ONNX node names kept in fp32 (see :func:`layer_nodes` for the names of
            torch layers); every name must exist in the graph.
        per_channel: int8 weights per output channel (default) instead of per tensor.
        activation_type: ``"int8"`` (symmetric-capable, what ARM kernels prefer; default) or
            ``"uint8"`` (ORT's advice for x86 without VNNI).
        reduce_range: 7-bit weights (ORT's advice for per-channel on x86 without VNNI).

    Raises:
        QuantizationError: ranges from another model, an unknown node name, a model that is not
            pre-processed, an ORT too old to take precomputed ranges.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    from learners.atomic import atomic_write

    _check_cache_support()
    model_path = Path(model_path)
    model = load_onnx(model_path)
    _require_preprocessed(model_path, "quantize_int8")
    if not isinstance(ranges, CalibrationRanges):
        raise QuantizationError(f"ranges must be CalibrationRanges (from calibrate), got {type(ranges).__name__}")
    sha = file_sha1(model_path)
    if sha != ranges.model_sha1:
        raise QuantizationError(
            f"the ranges were calibrated on another model (SHA-1 {ranges.model_sha1}, {model_path} has {sha}); "
            "calibrate this model again (learners.ort_int8.calibrate)"
        )
    names = {n.name for n in model.graph.node}
    unknown = sorted(set(exclude_nodes) - names)
    if unknown:
        raise QuantizationError(f"exclude_nodes {unknown[:5]} are not nodes of {model_path}; use the names that "
                                "learners.onnx_names.layer_nodes gives")
    act = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}.get(activation_type)
    if act is None:
        raise QuantizationError(f"activation_type must be 'int8' or 'uint8', got {activation_type!r}")
    with tempfile.TemporaryDirectory(prefix="pf-quant-") as tmp:
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(ranges.to_tensors_data(), cache)
        method = ranges.to_tensors_data().calibration_method

        def write(target: Path) -> None:
            logger = logging.getLogger()
            level = logger.level
            logger.setLevel(max(level, logging.ERROR))  # ORT logs a warning per quantize call
            try:
                quantize_static(  # a ModelProto: ORT shape-infers it in its own temporary folder
                    model, str(target), calibration_data_reader=None,
                    quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
                    activation_type=act, weight_type=QuantType.QInt8,
                    nodes_to_exclude=list(exclude_nodes), calibrate_method=method,
                    calibration_cache_path=str(cache),
                )
            finally:
                logger.setLevel(level)

        return atomic_write(out_path, write)


def quantizable_nodes(model_or_path: Any) -> list[str]:
    """Names of the nodes with a constant weight the quantizer turns int8 (Conv, Gemm, MatMul
    with an initializer as second input), in graph order."""
    model = load_onnx(model_or_path) if isinstance(model_or_path, (str, os.PathLike)) else model_or_path
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type in WEIGHT_OPS and len(n.input) > 1 and n.input[1] in inits]


def node_precisions(model_or_path: Any) -> dict[str, str]:
    """``{node name: "int8" | "fp32"}`` for every weight layer (Conv, Gemm, MatMul) of a graph:
    int8 where its weight comes out of a DequantizeLinear (QDQ), fp32 where it is a float
    initializer."""
    model = load_onnx(model_or_path) if isinstance(model_or_path, (str, os.PathLike)) else model_or_path
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type not in WEIGHT_OPS or len(n.input) < 2:
            continue
        src = producer.get(n.input[1])
        if src is not None and src.op_type == "DequantizeLinear":
            out[n.name] = "int8"
        elif n.input[1] in inits:
            out[n.name] = "fp32"
    return out
