"""Per-layer latency of an ONNX Runtime model, fp32 and int8, measured once on this machine.

What a mixed-precision search needs to price a policy without running it: for every
quantizable torch layer, how long its part of the graph takes in fp32 and in int8. Stock ORT
tooling throughout:

* :func:`learners.onnx_names.assign_nodes` - which torch layer every node of a graph belongs
  to: a node whose name carries a layer's module scope (``/layers/layers.0/conv1/Conv``, the fused
  ``..._token_4``, the ``..._QuantizeLinear`` of its output) is that layer's; any other node
  (ReLU, residual Add, pooling, a layout Transpose, a Q/DQ pair between layers) belongs to the
  layer that ran before it, and nodes before the first layer to the first. The same rule
  splits the pre-processed graph into the blocks that stay fp32 together
  (:func:`layer_blocks`) and the profiled kernels of an optimized session into per-layer times.
* :func:`profile_kernels` - ORT's own profiler (``SessionOptions.enable_profiling``): every
  kernel's time over ``runs`` runs, in execution order; the minimum per kernel is kept (on a
  shared machine the minimum is the figure least disturbed by other processes).
* :func:`end_to_end_ms` - wall time of ``session.run`` (no profiler), minimum and median.
* :func:`measure_layer_latency` - both models profiled; each layer's kernel times summed;
  each model's per-layer times scaled so that they add up to its measured end-to-end minimum
  (the profiler's own per-kernel overhead, ~5 us a kernel, would otherwise inflate models of
  many small kernels; the profile gives the shares, the plain runs the totals). The profiled
  session runs without MLAS's NCHWc layout transformer (:data:`PROFILE_DISABLED_OPTIMIZERS`),
  whose renamed nodes no longer carry their layer's scope; the timed one with every optimizer.

No gymnasium here.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from learners.host import cpu_name
from learners.onnx_names import assign_nodes, scope_module
from learners.ort_int8 import QuantizationError, load_onnx


def layer_blocks(onnx_model: Any, layers: Sequence[str]) -> dict[str, list[str]]:
    """``{torch layer: node names}`` of a graph (a path or ModelProto, usually the
    pre-processed one), in graph order: the nodes :func:`assign_nodes` gives each layer. The
    nodes to exclude from quantization to keep a layer in fp32, with what follows it."""
    graph = load_onnx(onnx_model) if isinstance(onnx_model, (str, os.PathLike)) else onnx_model
    owner = assign_nodes([n.name for n in graph.graph.node], layers)
    blocks: dict[str, list[str]] = {name: [] for name in layers}
    for node, layer in owner.items():
        blocks[layer].append(node)
    return blocks


#: ORT optimizers left out while profiling: MLAS's NCHWc layout transformer renames the fp32
#: convolutions after their output tensors (``/relu/Relu_output_0_nchwc``), which no longer say
#: which layer they are; without it the nodes keep their module scopes. Only the shares come
#: from the profile: the totals are timed with every optimizer on.
PROFILE_DISABLED_OPTIMIZERS: tuple[str, ...] = ("NchwcTransformer",)


def _session(path: str | os.PathLike[str], threads: int, profile_prefix: str | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    kwargs = {"disabled_optimizers": list(PROFILE_DISABLED_OPTIMIZERS)} if profile_prefix else {}
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"], **kwargs)


def _input(sess: Any, batch: int, rng_seed: int = 0) -> dict[str, np.ndarray]:
    inp = sess.get_inputs()[0]
    shape = [batch] + [int(d) for d in inp.shape[1:]]
    return {inp.name: np.random.default_rng(rng_seed).standard_normal(shape).astype(np.float32)}


def profile_kernels(
    path: str | os.PathLike[str], *, batch: int = 1, runs: int = 200, warmup: int = 20, threads: int = 1
) -> list[tuple[str, str, float]]:
    """``(node name, op type, minimum ms)`` of every kernel of ``path``'s optimized session over
    ``runs`` profiled runs (after ``warmup`` unprofiled ones are discarded), in execution order."""
    with tempfile.TemporaryDirectory(prefix="pf-prof-") as tmp:
        sess = _session(path, threads, str(Path(tmp) / "prof"))
        feed = _input(sess, batch)
        for _ in range(warmup + runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    times: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    order: list[str] = []
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        if name not in times:
            times[name], ops[name] = [], e.get("args", {}).get("op_name", "")
            order.append(name)
        times[name].append(float(e["dur"]))
    # the first warmup runs are profiled too (ORT profiles from session start): drop them
    return [(n, ops[n], min(times[n][warmup:] or times[n]) / 1e3) for n in order]


@dataclass(frozen=True)
class EndToEnd:
    """Wall time of ``session.run`` over ``runs`` runs, in ms."""

    min_ms: float
    median_ms: float
    runs: int


def end_to_end_ms(
    path_or_session: Any, *, batch: int = 1, runs: int = 100, warmup: int = 10, threads: int = 1
) -> EndToEnd:
    """Measured latency of one ``session.run`` at ``batch`` images (random inputs)."""
    sess = path_or_session if hasattr(path_or_session, "run") else _session(path_or_session, threads)
    feed = _input(sess, batch)
    for _ in range(warmup):
        sess.run(None, feed)
    ts = np.empty(max(1, runs))
    for i in range(len(ts)):
        t0 = time.perf_counter()
        sess.run(None, feed)
        ts[i] = time.perf_counter() - t0
    return EndToEnd(float(ts.min() * 1e3), float(np.median(ts) * 1e3), len(ts))


@dataclass(frozen=True)
class LayerLatency:
    """Per-layer latency of one model in fp32 and in int8, in ms (see the module docstring).

    Attributes:
        layers: torch layer names, in execution order.
        fp32_ms / int8_ms: each layer's share of the all-fp32 / all-int8 model's latency.
        fp32_total_ms / int8_total_ms: measured end-to-end minima of the two models.
        profiled_fp32_ms / profiled_int8_ms: the profiler's sums before scaling.
        batch, runs, threads: how it was measured; cpu: :func:`cpu_name`; onnxruntime: version.
    """

    layers: tuple[str, ...]
    fp32_ms: tuple[float, ...]
    int8_ms: tuple[float, ...]
    fp32_total_ms: float
    int8_total_ms: float
    profiled_fp32_ms: float
    profiled_int8_ms: float
    batch: int
    runs: int
    threads: int
    cpu: str
    onnxruntime: str

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers, strings and lists (what :func:`pf_envs.cache.cached` stores)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerLatency:
        kw = dict(data)
        for k in ("layers", "fp32_ms", "int8_ms"):
            kw[k] = tuple(kw[k])
        return cls(**kw)

    def predict_ms(self, int8: Sequence[bool]) -> float:
        """Predicted latency of the model with layer ``i`` in int8 where ``int8[i]``."""
        return float(sum(a if q else b for q, a, b in zip(int8, self.int8_ms, self.fp32_ms)))


def per_layer_ms(kernels: Sequence[tuple[str, str, float]], layers: Sequence[str]) -> dict[str, float]:
    """Kernel times summed per layer (:func:`assign_nodes` on the kernels' names).

    Raises:
        QuantizationError: a layer got no kernel (the graph does not carry its scope).
    """
    owner = assign_nodes([k[0] for k in kernels], layers)
    out = {name: 0.0 for name in layers}
    got: set[str] = set()
    for name, _, ms in kernels:
        out[owner[name]] += ms
        if scope_module(name) == owner[name]:
            got.add(owner[name])
    missing = [n for n in layers if n not in got]
    if missing:
        raise QuantizationError(f"the profile has no kernel of layers {missing[:5]}: their nodes were renamed "
                                "by ORT's optimizer beyond recognition; report this with the model")
    return out


def measure_layer_latency(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    layers: Sequence[str],
    *,
    batch: int = 1,
    runs: int = 200,
    threads: int = 1,
) -> LayerLatency:
    """Measure :class:`LayerLatency` of ``layers`` from the all-fp32 and the all-int8 model."""
    import onnxruntime

    shares, totals, profiled = [], [], []
    for path in (fp32_path, int8_path):
        per = per_layer_ms(profile_kernels(path, batch=batch, runs=runs, threads=threads), layers)
        e2e = end_to_end_ms(path, batch=batch, runs=runs, threads=threads)
        s = sum(per.values())
        shares.append([per[n] * e2e.min_ms / s for n in layers])
        totals.append(e2e.min_ms)
        profiled.append(s)
    return LayerLatency(
        tuple(layers), tuple(shares[0]), tuple(shares[1]), totals[0], totals[1], profiled[0], profiled[1],
        int(batch), int(runs), int(threads), cpu_name(), onnxruntime.__version__,
    )


# -- channel counts: per-layer tables at several widths, and the int8 <-> fp32 boundaries ------
@dataclass(frozen=True)
class BlockEdge:
    """A tensor that one layer's block (:func:`layer_blocks`) hands to other blocks: where an
    fp32 and an int8 block meet, ONNX Runtime runs a QuantizeLinear or DequantizeLinear on it
    (and re-lays it out between its fp32 NCHWc and its int8 NHWC kernels).

    Attributes:
        tensor: the tensor's name in the pre-processed graph.
        producer: the layer whose block writes it.
        consumers: the layers whose blocks read it (in graph order).
        elements: its elements per image at full width (shape without the batch dimension).
    """

    tensor: str
    producer: str
    consumers: tuple[str, ...]
    elements: int


def block_edges(onnx_model: Any, layers: Sequence[str]) -> list[BlockEdge]:
    """The tensors that cross from one layer's block to another's (:class:`BlockEdge`), in
    graph order. The network input and output are not edges: their Q / DQ belong to the first
    and last layer's int8 block in every profile.

    Raises:
        QuantizationError: an edge tensor has no static shape (pre-process the graph first:
            :func:`learners.ort_int8.preprocess` infers every shape).
    """
    import onnx

    graph = load_onnx(onnx_model) if isinstance(onnx_model, (str, os.PathLike)) else onnx_model
    if not any(True for _ in graph.graph.value_info):
        graph = onnx.shape_inference.infer_shapes(graph)
    owner = assign_nodes([n.name for n in graph.graph.node], layers)
    made_by: dict[str, str] = {}
    read_by: dict[str, list[str]] = {}
    for node in graph.graph.node:
        for out in node.output:
            made_by[out] = owner[node.name]
    for node in graph.graph.node:
        for inp in node.input:
            src = made_by.get(inp)
            if src is not None and src != owner[node.name] and owner[node.name] not in read_by.setdefault(inp, []):
                read_by[inp].append(owner[node.name])
    shapes = {v.name: v.type.tensor_type.shape for v in list(graph.graph.value_info) + list(graph.graph.output)}
    edges = []
    for tensor, consumers in read_by.items():
        if not consumers:
            continue
        shape = shapes.get(tensor)
        dims = [d.dim_value if d.HasField("dim_value") else None for d in shape.dim] if shape is not None else [None]
        if len(dims) < 2 or any(d is None for d in dims[1:]):
            raise QuantizationError(f"tensor {tensor!r} between layer blocks has no static shape ({dims}); pass the "
                                    "pre-processed graph (learners.ort_int8.preprocess)")
        edges.append(BlockEdge(tensor, made_by[tensor], tuple(consumers), int(np.prod(dims[1:]))))
    return edges


def fit_boundary_cost(boundaries: Sequence[float], elements: Sequence[float],
                      extra_ms: Sequence[float]) -> tuple[float, float, float]:
    """``(ms per mixed model, ms per boundary, ms per element)``: the non-negative least-squares
    fit of ``extra_ms[k] = c + a * boundaries[k] + b * elements[k]`` over mixed-precision
    models, where ``extra_ms`` is what a model measured beyond the sum of its layers' times
    (each layer's share of a uniform-precision model's end-to-end time), ``boundaries`` how
    many int8 <-> fp32 conversions it runs and ``elements`` how many elements those convert
    (per image). ``c`` is what a graph with both precisions costs once.

    Raises:
        ValueError: fewer than three samples, or lengths that differ.
    """
    from scipy.optimize import nnls

    n = len(extra_ms)
    if not len(boundaries) == len(elements) == n or n < 3:
        raise ValueError("fit_boundary_cost needs at least three mixed models, one count, elements and extra ms each")
    a = np.column_stack([np.ones(n), np.asarray(boundaries, np.float64), np.asarray(elements, np.float64) / 1e3])
    coef, _ = nnls(a, np.asarray(extra_ms, np.float64))
    return float(coef[0]), float(coef[1]), float(coef[2]) / 1e3


def interleaved_end_to_end(
    paths: Mapping[str, str | os.PathLike[str]], *, batch: int = 1, runs: int = 100, rounds: int = 10,
    threads: int = 1, warmup: int = 5,
) -> dict[str, EndToEnd]:
    """:class:`EndToEnd` of several models timed in interleaved rounds: each of ``rounds``
    rounds runs every model ``ceil(runs / rounds)`` times in turn. On a shared machine a burst
    of load then slows every model a little instead of one model a lot, so the minima are
    comparable across models (timed back to back, a model's minimum depends on when it ran)."""
    sessions = {k: _session(p, threads) for k, p in paths.items()}
    feeds = {k: _input(s, batch) for k, s in sessions.items()}
    for k, s in sessions.items():
        for _ in range(warmup):
            s.run(None, feeds[k])
    per = max(1, -(-int(runs) // max(1, int(rounds))))
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(max(1, int(rounds))):
        for k, s in sessions.items():
            feed = feeds[k]
            for _ in range(per):
                t0 = time.perf_counter()
                s.run(None, feed)
                times[k].append(time.perf_counter() - t0)
    return {k: EndToEnd(float(np.min(v) * 1e3), float(np.median(v) * 1e3), len(v)) for k, v in times.items()}
