"""PruneQuant: channels and int8/fp32 per layer in one episode, under a measured latency budget.

Channel pruning (ChannelPrune's groups, selection and reconstruction) and ONNX Runtime int8
(QuantORT's static QDQ quantizer) searched together: neither decision is priced alone,
because neither pays alone on a real CPU (halving a layer's channels does not halve its
time, and int8 is slower than fp32 for some layers: docs/prune_quant.md).

>>> import gymnasium as gym, pf_envs
>>> env = gym.make("PruneQuant-ResNet20-v0", latency_budget=0.4, ft_iters=0)     # doctest: +SKIP
>>> obs, info = env.reset(seed=0)                                                # doctest: +SKIP

**Two steps per layer, one number each** (not a 2-dimensional action): the env core, the DDPG
agent (its replay buffer stores the scalar ``applied_action``), the GP and TPE baselines (one
dimension per step of ``raw_actions``) and the uniform baseline (one common action mapped
through every unit's space) all take one number per step. In execution order, a layer that
opens a prunable channel group first gets a *keep* step (the group's keep ratio, ChannelPrune's
grid and rounding), then every layer gets a *precision* step (``a <= 0`` int8, ``a > 0`` fp32,
QuantORT's mapping). The observation says which kind of step it is (``kind``: 0 keep, 1
precision), so one actor serves both.

The cost is latency in ms from :class:`PruneQuantLatency`: each layer's ONNX Runtime time at
its kept channels and precision (profiled on this machine at ``latency_widths`` uniform
widths, all-fp32 and all-int8, and interpolated between them in the layer's MAC-equivalent
width), plus a measured cost for every tensor that crosses between an int8 and an fp32 block
(QuantizeLinear / DequantizeLinear and the layout change around it, fitted on mixed models).
The budget is ``latency_budget`` x the dense fp32 model's. The core's clamp keeps it reachable
(every later unit at its cheapest: min_keep and int8).

After the last step the model is pruned as ChannelPrune prunes it (LASSO selection,
least-squares reconstruction, ``ft_iters`` of fine-tuning, BatchNorm re-estimation), exported
to ONNX, calibrated (ORT's MinMax calibrator on ``calibration_images`` training images, as
the exporter does), quantized with the fp32 layers (and the nodes after them up to the next
layer) excluded, and scored in ONNX Runtime: the reward is the deployable model's accuracy.

``env.unwrapped.export(path)`` writes the last candidate's mixed int8/fp32 ONNX model;
:func:`pf_deploy.export.write_env_bundle` writes its deploy bundle (with the pruned fp32 model
and the manifest the deploy benchmark reads).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from learners import onnx_export as ox
from learners import ort_int8 as oq
from learners.channel_pruning import ChannelPruner
from learners.conv_grid import ConvShape, conv_grid_ms, conv_of
from learners.host import cpu_name
from learners.onnx_names import layer_nodes
from learners.ort_latency import (
    BlockEdge,
    block_edges,
    end_to_end_ms,
    fit_boundary_cost,
    interleaved_end_to_end,
    layer_blocks,
    per_layer_ms,
    profile_kernels,
)
from learners.recovery import recover
from pf_envs.budget import UnitSpace
from pf_envs.cache import cache_key, cached
from pf_envs.core import CompressionEnv
from pf_envs.data import CIFAR10_CLASSES, cache_dir
from pf_envs.envs.channel_prune import SETTINGS as CHANNEL_SETTINGS
from pf_envs.envs.channel_prune import ChannelPruneEnv, channel_table
from pf_envs.envs.quant_ort import FP32, INT8, policy_digest
from pf_envs.envs.quant_ort import SETTINGS as QUANT_SETTINGS
from pf_envs.model_env import COMMON_SETTINGS, ModelCompressionEnv, count_params
from pf_envs.rewards import Measurements
from pf_envs.settings import Setting, bind_settings, table_signature
from pf_envs.zoo.twin import TWIN_INPUT_SIZE, imagenet_twin_of

#: Bumped whenever the candidate, its scoring or the latency model changes (recovery fingerprint).
PRUNE_QUANT_VERSION = 4
KEEP, PRECISION = "keep", "precision"


@dataclass
class DeployCandidate:
    """A finished episode's candidate as the export stage needs it: the pruned, recovered fp32
    model, its mixed int8/fp32 ONNX file, the input preprocessing, and the manifest's
    ``source``, ``quantization`` and extra keys."""

    model: nn.Module
    int8_path: Path
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    macs: int
    params: int
    source: dict[str, Any]
    quantization: dict[str, Any]
    threads: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

OBSERVATION_FEATURES: tuple[str, ...] = (
    "step", "kind", "in_channels", "out_channels", "in_hw", "stride", "kernel", "depthwise", "macs",
    "fp32_ms", "int8_ms", "reduced", "rest", "prev_value",
)

SETTINGS: dict[str, Setting] = {
    **COMMON_SETTINGS,
    "latency_budget": Setting("float", low=0, high=1, low_open=True, default=0.5,
                              doc="fraction of the dense fp32 model's latency (latency table) the candidate may take"),
    **{k: CHANNEL_SETTINGS[k] for k in ("min_keep", "channel_round", "selection", "reconstruct", "feature_images",
                                        "points_per_image")},
    **{k: QUANT_SETTINGS[k] for k in ("activation_type", "reduce_range", "per_channel", "threads", "latency_batch",
                                      "latency_runs", "measure_runs")},
    "calibration_images": Setting("int", low=1, default=256,
                                  doc="training images ORT's calibrator sees, per candidate"),
    "latency_widths": Setting("int", low=2, default=13,
                              doc="uniform widths (min_keep .. 1) the latency table is profiled at"),
    "latency_twin": Setting("bool", default=False,
                            doc="price latency on the zoo's ImageNet-shaped 224x224 twin (random weights)"),
    "latency_conv_grid": Setting("bool", default=True,
                                 doc="correct each convolution's interpolated time for its exact input and output "
                                     "channel counts, from the layer timed alone at every count pair of its "
                                     "groups' grids (ORT's kernels are faster at multiples of 8 / 16 channels)"),
}


# -- the latency model ------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerTerm:
    """One layer in :class:`PruneQuantLatency`: the units that set its input and output channels
    (None: not prunable), whether it is depthwise, its precision unit and its time (ms) in each
    precision at the MAC-equivalent widths ``xs`` (see :func:`effective_width`)."""

    keep_in: int | None
    keep_out: int | None
    depthwise: bool
    precision: int
    xs: tuple[float, ...]
    fp32_ms: tuple[float, ...]
    int8_ms: tuple[float, ...]
    #: the layer's full input and output channels (its counts are the kept fractions of them)
    channels: tuple[int, int] = (0, 0)
    #: ``{(cin, cout): (fp32 ms, int8 ms)}`` of the layer timed alone at every count pair of its
    #: groups' grids (:mod:`learners.conv_grid`); None: no channel-count correction
    grid: dict[tuple[int, int], tuple[float, float]] | None = field(default=None, hash=False, compare=False)
    #: the same timings at the uniform widths' counts, one per ``xs`` (fp32, int8)
    grid_ref: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def counts(self, r_in: float, r_out: float) -> tuple[int, int]:
        """The input and output channels at kept fractions ``r_in`` / ``r_out`` (a side that
        does not prune keeps all; a depthwise layer's input is its output)."""
        cout = int(round(r_out * self.channels[1])) if self.keep_out is not None else self.channels[1]
        if self.depthwise:
            return cout, cout
        cin = int(round(r_in * self.channels[0])) if self.keep_in is not None else self.channels[0]
        return cin, cout

    def grid_ms(self, cin: int, cout: int, int8: bool) -> float | None:
        """The isolated time at ``(cin, cout)``: measured, or interpolated (bilinear in the
        counts) between the nearest measured counts with the same remainder modulo
        :data:`ALIGNMENT` (a side with many counts is timed at a subset,
        :func:`grid_subset`); None without a grid."""
        if not self.grid:
            return None
        k = 1 if int8 else 0
        hit = self.grid.get((cin, cout))
        if hit is not None:
            return hit[k]
        ins, outs = self._grid_sides
        if self.depthwise:
            return sum(w * self.grid[(c, c)][k] for c, w in _bracket(ins, cin))
        return sum(wi * wo * self.grid[(ci, co)][k] for ci, wi in _bracket(ins, cin) for co, wo in _bracket(outs, cout))

    @functools.cached_property
    def _grid_sides(self) -> tuple[list[int], list[int]]:
        """The timed input and output counts, ascending (computed once: the clamp prices
        policies many times a step)."""
        assert self.grid is not None
        return sorted({a for a, _ in self.grid}), sorted({b for _, b in self.grid})

    @functools.cached_property
    def _xs_array(self) -> np.ndarray:
        return np.asarray(self.xs)

    @functools.cached_property
    def _grid_ref_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        assert self.grid_ref is not None
        return np.asarray(self.grid_ref[0]), np.asarray(self.grid_ref[1])

    def correction(self, r_in: float, r_out: float, x: float, int8: bool) -> float:
        """The factor the interpolated time is multiplied by: the layer's isolated time at its
        exact channel counts over the isolated time interpolated at its MAC-equivalent width
        ``x`` between the uniform widths' counts (1 where no grid was measured)."""
        if self.grid is None or self.grid_ref is None:
            return 1.0
        t = self.grid_ms(*self.counts(r_in, r_out), int8)
        ref = float(np.interp(x, self._xs_array, self._grid_ref_arrays[1 if int8 else 0]))
        return t / ref if t is not None and ref > 0 else 1.0


#: ORT's CPU kernels block channels by 8 (AVX2) or 16 (AVX512): counts with the same remainder
#: modulo this behave alike, so a side timed at a subset of its counts is interpolated within
#: its remainder class.
ALIGNMENT = 16
#: At most this many counts per side of a convolution are timed (:func:`grid_subset`).
GRID_SIDE = 13


def grid_subset(counts: Sequence[int], limit: int = GRID_SIDE) -> list[int]:
    """The counts of one side to time: all of them when there are at most ``limit``, else per
    remainder class modulo :data:`ALIGNMENT` an evenly spaced subset with both ends (at least
    two per class)."""
    counts = sorted(set(int(c) for c in counts))
    if len(counts) <= limit:
        return counts
    classes: dict[int, list[int]] = {}
    for c in counts:
        classes.setdefault(c % ALIGNMENT, []).append(c)
    per = max(2, limit // len(classes))
    out: set[int] = set()
    for members in classes.values():
        idx = np.unique(np.linspace(0, len(members) - 1, min(per, len(members))).round().astype(int))
        out.update(members[i] for i in idx)
    return sorted(out)


def _bracket(measured: Sequence[int], c: int) -> list[tuple[int, float]]:
    """Linear-interpolation weights for count ``c`` over the ``measured`` counts of its
    remainder class modulo :data:`ALIGNMENT` (all measured counts where the class has none),
    clamped at the ends."""
    same = [m for m in measured if m % ALIGNMENT == c % ALIGNMENT] or list(measured)
    if c <= same[0]:
        return [(same[0], 1.0)]
    if c >= same[-1]:
        return [(same[-1], 1.0)]
    hi = next(i for i, m in enumerate(same) if m >= c)
    lo_c, hi_c = same[hi - 1], same[hi]
    w = (c - lo_c) / (hi_c - lo_c)
    return [(lo_c, 1.0 - w), (hi_c, w)]


def effective_width(r_in: float, r_out: float, term_in: bool, term_out: bool, depthwise: bool) -> float:
    """The uniform width with the layer's MACs: the geometric mean of its kept input (unless
    depthwise, whose input is its output) and output fractions, over the sides that prune."""
    factors = ([r_in] if term_in and not depthwise else []) + ([r_out] if term_out else [])
    return float(np.prod(factors) ** (1.0 / len(factors))) if factors else 1.0


class PruneQuantLatency:
    """Predicted ONNX Runtime latency (ms) of a PruneQuant policy: a :class:`pf_envs.budget.Cost`.

    ``sum over layers of time(precision, width)`` (each layer interpolated in its measured
    widths) ``+ mixed_ms`` (once, if the policy has
    both precisions) ``+ sum over int8 <-> fp32 boundaries of (boundary_ms +
    boundary_ms_per_element x elements)``, a boundary being a
    tensor written by a block in one precision and read by a block in the other (once per
    tensor and direction, as ORT converts it once). Grows with every keep ratio; the reference
    is the dense fp32 model. Not monotone in a precision unit (int8 can be slower than fp32,
    a conversion can cost more than int8 saves): the env's clamp
    (:meth:`PruneQuantEnv._clamp`) counts on two completions, not on one cheapest value.
    """

    name = "latency_ms"
    increasing = True

    def __init__(self, terms: Sequence[LayerTerm], edges: Sequence[tuple[int, tuple[int, ...], int | None, int]],
                 units: int, boundary_ms: float = 0.0, boundary_ms_per_element: float = 0.0,
                 mixed_ms: float = 0.0) -> None:
        self.terms, self.edges, self.units = list(terms), list(edges), int(units)
        self.mixed_ms = float(mixed_ms)
        self.boundary_ms, self.boundary_ms_per_element = float(boundary_ms), float(boundary_ms_per_element)
        self._xs = [np.asarray(t.xs) for t in self.terms]
        self._ys = [(np.asarray(t.int8_ms), np.asarray(t.fp32_ms)) for t in self.terms]
        dense = [0.0] * self.units
        for t in self.terms:
            dense[t.precision] = FP32
            for u in (t.keep_in, t.keep_out):
                if u is not None:
                    dense[u] = 1.0
        self.reference = self(dense)

    def _check(self, values: Sequence[float]) -> np.ndarray:
        v = np.asarray(values, np.float64)
        if v.shape != (self.units,):
            raise ValueError(f"{self.name} takes {self.units} values (one per unit), got shape {v.shape}")
        return v

    def layer_ms(self, values: Sequence[float]) -> list[float]:
        """Each layer's predicted time under ``values`` (without the boundaries)."""
        v = self._check(values)
        out = []
        for t, xs, (y8, y32) in zip(self.terms, self._xs, self._ys):
            r_in = v[t.keep_in] if t.keep_in is not None else 1.0
            r_out = v[t.keep_out] if t.keep_out is not None else 1.0
            x = effective_width(r_in, r_out, t.keep_in is not None, t.keep_out is not None, t.depthwise)
            int8 = v[t.precision] == INT8
            out.append(float(np.interp(x, xs, y8 if int8 else y32)) * t.correction(r_in, r_out, x, int8))
        return out

    def boundaries(self, values: Sequence[float]) -> tuple[int, float]:
        """``(conversions, elements converted per image)`` under ``values``."""
        v = self._check(values)
        n, elements = 0, 0.0
        for producer, consumers, keep_unit, full in self.edges:
            p8 = v[self.terms[producer].precision] == INT8
            if any((v[self.terms[c].precision] == INT8) != p8 for c in consumers):
                n += 1
                elements += full * (float(v[keep_unit]) if keep_unit is not None else 1.0)
        return n, float(elements)

    def __call__(self, values: Sequence[float]) -> float:
        n, elements = self.boundaries(values)
        return float(sum(self.layer_ms(values)) + (self.mixed_ms if n else 0.0) + n * self.boundary_ms
                     + elements * self.boundary_ms_per_element)


# -- the environment -----------------------------------------------------------------------------------
#: The env's ``__init__`` signature, made from its settings table.
_SIGNATURE = table_signature(SETTINGS)


class PruneQuantEnv(ModelCompressionEnv):
    """Channel pruning and int8/fp32 per layer in ONNX Runtime, under a measured latency budget.

    Args:
        model: a zoo name or your own trained ``nn.Module`` (copied, never modified).
        dataset, checkpoint, data_root, input_size: as for every model env.
        latency_budget: fraction of the dense fp32 model's latency (latency table) the
            candidate may take, in (0, 1]; at least the floor (min_keep everywhere, all int8:
            the error says it).
        min_keep, channel_round, selection, reconstruct, feature_images, points_per_image:
            ChannelPrune's (the candidate is pruned exactly as ChannelPrune prunes it).
        ft_iters, ft_batch_size, ft_lr, bn_batches, bn_batch_size, bn_augment: the recovery of
            the pruned fp32 model before it is quantized (ChannelPrune's defaults).
        calibration_images: training images ORT's MinMax calibrator sees for each candidate
            (default 256; the pruned model's activations differ from the dense one's).
        activation_type, reduce_range, per_channel: QuantORT's quantizer settings.
        threads: ONNX Runtime intra-op threads (reward, latency; default 1).
        latency_batch / latency_runs: images per run and profiled runs per model for the table.
        latency_widths: uniform widths (``min_keep`` .. 1, evenly spaced) profiled for the
            table (default 13: every count of ResNet-20's grid); between them each layer is
            interpolated.
        latency_twin: price latency on the zoo's ImageNet-shaped twin of the model at 224x224
            (random weights, the candidate's channel counts; what ``benchmarks/deploy.py`` times
            as the deployment-size model): the table, the budget and the conversions are the
            twin's, the accuracy stays the CIFAR model's. Zoo models with an ImageNet variant
            only (MobileNet-V1 / V2). No ``latency_ms_measured`` then (the candidate itself
            runs at 32x32); ``write_latency_model`` writes a policy's twin.
        measure_runs: timed runs of each scored candidate (``latency_ms_measured``; 0: none).
        latency_conv_grid: correct each convolution's interpolated time for its exact channel
            counts (default True): every convolution shape is timed alone (``Conv`` + ``Relu``,
            :func:`learners.conv_grid.conv_grid_ms`) at every pair of input and output counts
            its groups can take, and a layer's time is the table's at its MAC-equivalent width
            times its isolated time at its counts over the isolated time at that width. ORT's
            kernels are not smooth in the counts (multiples of 8 / 16 channels run faster);
            on ResNet-20 this took the table's rank correlation with measured latency from
            0.84 to 0.93 (docs/prune_quant.md).
        reward, reward_split, reward_samples, device, cache, render_mode: as every model env.
    """

    SETTINGS: ClassVar[dict[str, Setting]] = SETTINGS
    METHOD: ClassVar[str] = "PruneQuant"
    STATIC_FEATURES: ClassVar[tuple[str, ...]] = OBSERVATION_FEATURES[:11]
    DYNAMIC_FEATURES: ClassVar[tuple[str, ...]] = OBSERVATION_FEATURES[11:]
    budget_kwarg: ClassVar[str] = "latency_budget"
    floor_kwarg: ClassVar[str] = "min_keep (all int8 or all fp32, whichever is faster)"
    ratio_key: ClassVar[str | None] = "latency_ratio"
    MEMO_SIZE: ClassVar[int] = 1024

    # ChannelPrune's per-group helpers, shared as they are (the pruning is ChannelPrune's)
    _min_count = ChannelPruneEnv._min_count
    _space = ChannelPruneEnv._space
    _stats = ChannelPruneEnv._stats
    _needs_stats = ChannelPruneEnv._needs_stats
    _make_pruner = ChannelPruneEnv._make_pruner

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = bind_settings(_SIGNATURE, (self, *args), kwargs)
        settings["__class__"] = PruneQuantEnv
        self._tmp = tempfile.TemporaryDirectory(prefix="pf-prunequant-")
        super().__init__(settings, settings["unknown"])

    __init__.__signature__ = _SIGNATURE  # made from SETTINGS: the keywords and their defaults

    # -- set-up --------------------------------------------------------------------------------------
    def _setup_method(self) -> None:
        import onnxruntime

        s = self.settings
        self._ort_version = onnxruntime.__version__
        self.latency_budget = float(s["latency_budget"])
        self.min_keep = float(s["min_keep"])
        self.threads, self.measure_runs = int(s["threads"]), int(s["measure_runs"])
        self.latency_twin = bool(s["latency_twin"])
        if self.latency_twin and (self.spec is None or "imagenet" not in self.spec.builders):
            raise ValueError(f"latency_twin=True needs a zoo model with an ImageNet-shaped variant (mobilenet_v1, "
                             f"mobilenet_v2); {self.model_name} has none: leave latency_twin False")
        self.latency_input_size = TWIN_INPUT_SIZE if self.latency_twin else self.input_size
        # the zoo name (gym.make later puts its own EnvSpec in self.spec)
        self._zoo_name = self.spec.name if self.spec is not None else None
        self.quant_options = {"activation_type": s["activation_type"], "reduce_range": bool(s["reduce_range"]),
                              "per_channel": bool(s["per_channel"])}
        round_default = self.spec.channel_round if self.spec is not None else 8
        self.channel_round = int(s["channel_round"] if s["channel_round"] is not None else round_default)
        self.table = channel_table(self.model, self.input_size)
        self.step_groups = [i for i, g in enumerate(self.table.groups) if g.channels > self.channel_round]
        self.min_counts = {g: self._min_count(g) for g in self.step_groups}

        # the layers in the exported graph's order, and their blocks
        t0 = time.perf_counter()
        folder = (cache_dir() / "prune_quant" / self.model_fingerprint) if self.cache_enabled else Path(self._tmp.name)
        folder.mkdir(parents=True, exist_ok=True)
        shared = folder / f"model-opset{ox.OPSET}.prep.onnx"
        if not (shared.is_file() and _preprocessed(shared)):
            fp32 = ox.export_onnx(self.model, Path(self._tmp.name) / "model.onnx", input_size=self.input_size)
            oq.preprocess(fp32, shared)
        self.prep_path = Path(self._tmp.name) / "dense.prep.onnx"  # a private copy (see QuantORT's notes)
        shutil.copyfile(shared, self.prep_path)
        node_of = layer_nodes(self.model, self.prep_path)
        graph = oq.load_onnx(self.prep_path)
        position = {n.name: i for i, n in enumerate(graph.graph.node)}
        self.layers = sorted(node_of, key=lambda name: position[node_of[name]])
        if self.latency_twin:  # the conversions' sizes are the twin's
            twin_model = self._latency_model({})
            twin_names = {n for n, m in twin_model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
            if not set(self.layers) <= twin_names:
                raise ValueError(f"latency_twin=True: {self.model_name}'s ImageNet variant names its layers "
                                 f"differently (e.g. {sorted(set(self.layers) - twin_names)[:3]}), so the table "
                                 "cannot price the candidate's layers on it; leave latency_twin False for this model")
            twin = ox.export_onnx(twin_model, Path(self._tmp.name) / "twin.onnx", input_size=self.latency_input_size)
            graph = oq.load_onnx(oq.preprocess(twin, Path(self._tmp.name) / "twin.prep.onnx"))
        self.edges: list[BlockEdge] = block_edges(graph, self.layers)

        # the units: a keep step where a layer opens a prunable group, then its precision step
        layer_pos = {n: i for i, n in enumerate(self.layers)}
        opener = {g: min(self.table.groups[g].producers, key=lambda n: layer_pos.get(n, math.inf))
                  for g in self.step_groups}
        self.units: list[tuple[str, int]] = []
        for li, name in enumerate(self.layers):
            self.units += [(KEEP, g) for g in self.step_groups if opener[g] == name]
            self.units.append((PRECISION, li))
        missing = [g for g in self.step_groups if (KEEP, g) not in self.units]
        if missing:
            raise ValueError(f"{self.model_name}: channel groups {missing} have no producer among the exported "
                             "layers; PruneQuant needs Conv2d / Linear producers")
        self.keep_unit = {g: u for u, (k, g) in enumerate(self.units) if k == KEEP}
        self.precision_unit = {li: u for u, (k, li) in enumerate(self.units) if k == PRECISION}
        spaces = [self._space(i) if k == KEEP else UnitSpace(INT8, FP32, (INT8, FP32)) for k, i in self.units]
        export_s = time.perf_counter() - t0

        # the latency table: once per model, settings, machine and ORT version (on disk)
        t0 = time.perf_counter()
        widths = [float(w) for w in np.linspace(self.min_keep, 1.0, int(s["latency_widths"]))]
        key = cache_key("prune-quant-latency", version=PRUNE_QUANT_VERSION, model=self.model_fingerprint,
                        layers=self.layers, groups=self.step_groups, round=self.channel_round, widths=widths,
                        options=self.quant_options, batch=int(s["latency_batch"]), runs=int(s["latency_runs"]),
                        threads=self.threads, size=self.latency_input_size, twin=self.latency_twin, cpu=cpu_name(),
                        ort=self._ort_version, conv_grid=bool(s["latency_conv_grid"]))
        self.latency_table: dict[str, Any] = cached(key, lambda: self._measure_table(widths),
                                                    enabled=self.cache_enabled)
        cost = self._cost(self.latency_table)
        latency_s = time.perf_counter() - t0

        static = [self._static_row(u, cost) for u in range(len(self.units))]
        self._setup_budget(spaces, cost, self.latency_budget, static)
        self.pruner = self._make_pruner()

        # reward and calibration images, decoded once
        xs, ys = zip(*self.reward_data.batches(256))
        self._reward_x = np.ascontiguousarray(torch.cat(xs).numpy(), dtype=np.float32)
        self._reward_y = torch.cat(ys).numpy()
        calib = self.data.train.subset(int(s["calibration_images"]), seed=3)
        self._calib_x = np.ascontiguousarray(torch.cat([x for x, _ in calib.batches(256)]).numpy(), np.float32)
        self._memo: OrderedDict[str, tuple[float, float, float | None, int]] = OrderedDict()
        self._built: tuple[str, nn.Module, Path] | None = None
        self._last_policy: list[float] | None = None
        self.setup_timing = {"export_s": export_s, "latency_table_s": latency_s}

    # -- the latency table ---------------------------------------------------------------------------
    def _group_ratios(self, width: float) -> dict[int, float]:
        """Each step group's kept fraction when every group keeps ``width`` (rounded as a step)."""
        return {g: self._round_group(g, width) for g in self.step_groups}

    def _layer_width(self, li: int, ratios: dict[int, float]) -> float:
        name = self.layers[li]
        g_in, g_out = self.table.in_group.get(name), self.table.out_group.get(name)
        t_in, t_out = g_in in self.keep_unit, g_out in self.keep_unit
        return effective_width(ratios.get(g_in, 1.0), ratios.get(g_out, 1.0), t_in, t_out,
                               self.table[name].kind == "depthwise")

    def _latency_model(self, counts: dict[int, int]) -> nn.Module:
        """The model whose latency the table prices, with ``counts`` channels kept per group:
        pruned structurally (L1 selection, no reconstruction: the weights do not change the
        time), or its ImageNet-shaped twin with ``latency_twin``."""
        pruned, _ = ChannelPruner(self.model, self.table.groups, None, selection="l1", reconstruct=False).prune(counts)
        if not self.latency_twin:
            return pruned
        assert self._zoo_name is not None
        return imagenet_twin_of(pruned, self._zoo_name)

    def _write_variant(self, ratios: dict[int, float], folder: Path) -> tuple[Path, Path, dict[str, list[str]]]:
        """The latency model at ``ratios`` (:meth:`_latency_model`), pre-processed, and its
        all-int8 version calibrated on random images (the ranges do not change the time)."""
        counts = {g: int(round(r * self.table.groups[g].channels)) for g, r in ratios.items()}
        size = self.latency_input_size
        fp32 = ox.export_onnx(self._latency_model(counts), folder / "model.onnx", input_size=size)
        prep = oq.preprocess(fp32, folder / "model.prep.onnx")
        rng = np.random.default_rng(0)
        batch = rng.standard_normal((8, 3, size, size)).astype(np.float32)
        ranges = oq.calibrate(prep, [batch])
        int8 = oq.quantize_int8(prep, folder / "model.int8.onnx", ranges, **self.quant_options)
        blocks = layer_blocks(prep, self.layers)
        self._variant_ranges = ranges
        return prep, int8, blocks

    #: Precision patterns of the mixed models the boundary cost is fitted on (layer index ->
    #: int8?): alternating (the most conversions), runs of three, and a seeded coin per layer.
    MIX_PATTERNS: ClassVar[dict[str, Any]] = {
        "alternate": lambda li: li % 2 == 0,
        "runs-of-3": lambda li: (li // 3) % 2 == 0,
        "coin": lambda li: bool(np.random.default_rng(1000 + li).random() < 0.5),
    }

    def _measure_table(self, widths: Sequence[float]) -> dict[str, Any]:
        """Profile the model at every uniform width, all-fp32 and all-int8 (ORT's profiler:
        each layer's share), time those models and mixed-precision ones at three widths in
        interleaved rounds (:func:`learners.ort_latency.interleaved_end_to_end`: the totals the
        shares are scaled to), and fit the cost of an int8 <-> fp32 boundary to what the mixed
        models take beyond the sum of their layers."""
        s = self.settings
        batch, runs = int(s["latency_batch"]), int(s["latency_runs"])
        shares: dict[str, dict[str, float]] = {}
        paths: dict[str, Path] = {}
        ratios_of: dict[int, dict[int, float]] = {}
        mixes: list[tuple[str, float, str]] = []
        mix_widths = {0, len(widths) // 2, len(widths) - 1}
        with tempfile.TemporaryDirectory(prefix="pf-pq-table-") as tmp:
            for i, w in enumerate(widths):
                ratios_of[i] = self._group_ratios(w)
                folder = Path(tmp) / f"w{i}"
                folder.mkdir()
                prep, int8, blocks = self._write_variant(ratios_of[i], folder)
                for prec, path in (("fp32", prep), ("int8", int8)):
                    kernels = profile_kernels(path, batch=batch, runs=runs, threads=self.threads)
                    shares[f"w{i}-{prec}"] = per_layer_ms(kernels, self.layers)
                    paths[f"w{i}-{prec}"] = path
                if i in mix_widths:
                    for name, pattern in self.MIX_PATTERNS.items():
                        exclude = [n for li, layer in enumerate(self.layers) if not pattern(li)
                                   for n in blocks[layer]]
                        key = f"w{i}-{name}"
                        paths[key] = oq.quantize_int8(prep, folder / f"{name}.onnx", self._variant_ranges,
                                                      exclude_nodes=exclude, **self.quant_options)
                        mixes.append((key, w, name))
            timed = interleaved_end_to_end(paths, batch=batch, runs=runs, rounds=10, threads=self.threads)
        variants = []
        for i, w in enumerate(widths):
            row: dict[str, Any] = {
                "width": float(w), "ratios": {str(g): r for g, r in ratios_of[i].items()},
                "layer_widths": [self._layer_width(li, ratios_of[i]) for li in range(len(self.layers))]}
            for prec in ("fp32", "int8"):
                per, total = shares[f"w{i}-{prec}"], timed[f"w{i}-{prec}"].min_ms
                profiled = sum(per.values())
                row[f"{prec}_ms"] = [float(per[n] * total / profiled) for n in self.layers]
                row[f"{prec}_total_ms"] = float(total)
                row[f"{prec}_profiled_ms"] = float(profiled)
            variants.append(row)
        table = {"layers": list(self.layers), "variants": variants, "mixed_ms": 0.0, "boundary_ms": 0.0,
                 "boundary_ms_per_element": 0.0, "batch": batch, "runs": runs, "threads": self.threads,
                 "cpu": cpu_name(), "onnxruntime": self._ort_version,
                 "conv_grid": self._measure_conv_grid() if s["latency_conv_grid"] else None}
        plain = self._cost(table)
        samples = []
        for key, w, name in mixes:
            pattern = self.MIX_PATTERNS[name]
            values = self.uniform_policy(w, lambda li, f=pattern: INT8 if f(li) else FP32)
            n, elements = plain.boundaries(values)
            samples.append({"model": key, "width": float(w), "measured_ms": float(timed[key].min_ms),
                            "layers_ms": float(plain(values)), "boundaries": int(n), "elements": float(elements)})
        c, a, b = fit_boundary_cost([x["boundaries"] for x in samples], [x["elements"] for x in samples],
                                    [x["measured_ms"] - x["layers_ms"] for x in samples])
        table.update(mixed_ms=c, boundary_ms=a, boundary_ms_per_element=b, boundary_samples=samples)
        return table

    def _conv_geometry(self) -> list[tuple[nn.Conv2d, int, int] | None]:
        """Each layer's convolution in the dense latency model (the twin with ``latency_twin``)
        and its input height and width there; None for other layers (the classifier)."""
        model = self._latency_model({}).eval()
        modules = dict(model.named_modules())
        seen: dict[str, tuple[int, int]] = {}

        def record(name: str):
            def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
                seen.setdefault(name, tuple(args[0].shape[-2:]))  # returns None: the input is unchanged
            return hook

        hooks = [modules[name].register_forward_pre_hook(record(name))
                 for name in self.layers if isinstance(modules.get(name), nn.Conv2d)]
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, self.latency_input_size, self.latency_input_size))
        finally:
            for h in hooks:
                h.remove()
        return [(modules[n], *seen[n]) if n in seen else None for n in self.layers]

    def _grid_counts(self, group: int | None, full: int) -> list[int]:
        """The channel counts a layer side can take: its step group's grid, else all channels."""
        if group is None or group not in self.keep_unit:
            return [full]
        c = self.table.groups[group].channels
        grid = self._space(group).grid or (1.0,)
        return sorted({int(round(r * c)) for r in grid})

    def _conv_shapes(self) -> list[list[ConvShape]]:
        """Every convolution shape each layer can take (one per count pair of its groups)."""
        out: list[list[ConvShape]] = []
        for name, geom in zip(self.layers, self._conv_geometry()):
            if geom is None:
                out.append([])
                continue
            conv, h, w = geom
            ins = grid_subset(self._grid_counts(self.table.in_group.get(name), conv.in_channels))
            outs = grid_subset(self._grid_counts(self.table.out_group.get(name), conv.out_channels))
            if conv.groups > 1:  # depthwise: its input is its output
                out.append([conv_of(conv, h, w, c, c) for c in outs])
            else:
                out.append([conv_of(conv, h, w, ci, co) for ci in ins for co in outs])
        return out

    def _measure_conv_grid(self) -> dict[str, list[float]]:
        """``{shape key: [fp32 ms, int8 ms]}`` of every convolution shape of :meth:`_conv_shapes`."""
        from tqdm.auto import tqdm

        shapes = sorted({sh for per in self._conv_shapes() for sh in per})
        runs = max(20, int(self.settings["latency_runs"]) // 6)
        with tqdm(total=len(shapes), desc="PruneQuant latency: convolutions alone", unit="shape",
                  leave=False) as bar:
            timed = conv_grid_ms(shapes, options=self.quant_options, runs=runs, rounds=5, threads=self.threads,
                                 progress=lambda done, _n: bar.update(done - bar.n))
        return {sh.key(): [float(a), float(b)] for sh, (a, b) in timed.items()}

    def uniform_policy(self, width: float, precision: float | Callable[[int], float]) -> list[float]:
        """The policy (unit values) that keeps every group at ``width`` (rounded as a keep step
        rounds it) with every layer at ``precision`` (``INT8`` / ``FP32``), or layer ``li`` at
        ``precision(li)``: uniform pruning + one precision, the baseline the searches face."""
        ratios = self._group_ratios(width)
        of = precision if callable(precision) else (lambda _li: float(precision))
        return [ratios[i] if k == KEEP else of(i) for k, i in self.units]

    def _cost(self, table: dict[str, Any]) -> PruneQuantLatency:
        grid_ms = table.get("conv_grid")
        shapes = self._conv_shapes() if grid_ms else [[] for _ in self.layers]
        terms = []
        for li, name in enumerate(self.layers):
            g_in, g_out = self.table.in_group.get(name), self.table.out_group.get(name)
            row = self.table[name]
            pts: dict[float, tuple[list[float], list[float]]] = {}
            for v in table["variants"]:
                a, b = pts.setdefault(round(v["layer_widths"][li], 9), ([], []))
                a.append(v["fp32_ms"][li])
                b.append(v["int8_ms"][li])
            xs = sorted(pts)
            term = LayerTerm(
                self.keep_unit.get(g_in) if g_in is not None else None,
                self.keep_unit.get(g_out) if g_out is not None else None,
                row.kind == "depthwise", self.precision_unit[li], tuple(xs),
                tuple(float(np.median(pts[x][0])) for x in xs),
                tuple(float(np.median(pts[x][1])) for x in xs),
                (int(row.in_channels), int(row.out_channels)),
            )
            if shapes[li]:
                assert grid_ms is not None
                grid = {(sh.cin, sh.cout): tuple(grid_ms[sh.key()]) for sh in shapes[li]}
                ref: dict[float, tuple[list[float], list[float]]] = {}
                for v in table["variants"]:
                    ratios = {int(g): r for g, r in v["ratios"].items()}
                    term = dataclasses.replace(term, grid=grid)
                    counts = term.counts(ratios.get(g_in, 1.0), ratios.get(g_out, 1.0))
                    a, b = ref.setdefault(round(v["layer_widths"][li], 9), ([], []))
                    a.append(term.grid_ms(*counts, False))
                    b.append(term.grid_ms(*counts, True))
                term = dataclasses.replace(term, grid_ref=(
                    tuple(float(np.median(ref[x][0])) for x in xs), tuple(float(np.median(ref[x][1])) for x in xs)))
            terms.append(term)
        index = {n: i for i, n in enumerate(self.layers)}
        edges = []
        for e in self.edges:
            g = self.table.out_group.get(e.producer)
            edges.append((index[e.producer], tuple(index[c] for c in e.consumers),
                          self.keep_unit.get(g) if g is not None else None, e.elements))
        return PruneQuantLatency(terms, edges, len(self.units), table["boundary_ms"], table["boundary_ms_per_element"],
                                 table["mixed_ms"])

    def _static_row(self, u: int, cost: PruneQuantLatency) -> list[float]:
        kind, i = self.units[u]
        if kind == PRECISION:
            names, macs = [self.layers[i]], self.table[self.layers[i]].macs
        else:
            grp = self.table.groups[i]
            names = [n for n in self.layers if i in (self.table.in_group.get(n), self.table.out_group.get(n))]
            macs = self.table.group_macs(i)
        row = self.table[names[0] if kind == PRECISION else self.table.groups[i].producers[0]]
        terms = [cost.terms[self.layers.index(n)] for n in names]
        fp32 = sum(t.fp32_ms[-1] for t in terms)
        int8 = sum(t.int8_ms[-1] for t in terms)
        channels = row.out_channels if kind == PRECISION else grp.channels
        return [u, float(kind == PRECISION), row.in_channels, channels, row.in_hw[0], row.stride[0], row.kernel[0],
                float(row.kind == "depthwise"), macs, fp32, int8]

    def _resolved_settings(self) -> dict[str, Any]:
        table = hashlib.sha1(json.dumps(self.latency_table, sort_keys=True).encode()).hexdigest()[:16]
        return {"channel_round": self.channel_round, "prune_quant_version": PRUNE_QUANT_VERSION,
                "onnxruntime": self._ort_version, "latency_table": table}

    # -- core hooks ------------------------------------------------------------------------------------
    def _round_group(self, gid: int, value: float) -> float:
        """ChannelPrune's rounding of a keep ratio of group ``gid``."""
        c, r = self.table.groups[gid].channels, self.channel_round
        count = int(round(value * c / r)) * r
        top, x = (c // r) * r, value * c
        if top < c and x > top:
            count = c if c - x < x - top else top
        return min(c, max(self.min_counts[gid], count)) / c

    def _round(self, t: int, value: float) -> float:
        kind, i = self.units[t]
        return self._round_group(i, value) if kind == KEEP else self.unit_spaces[t].round(value)

    def _later_cost(self, t: int) -> float:
        return CompressionEnv._later_cost(self, t)

    def _floor_ratio(self) -> float:
        """The cheaper of the clamp's two completions of the empty policy: every group at its
        smallest count, all layers int8 or all fp32 (int8 is the slower one on small models)."""
        assert self.cost is not None
        return min(self.cost(tail) for tail in self._completions(-1)) / self.cost.reference

    def _completions(self, t: int) -> list[list[float]]:
        """The completions after unit ``t`` the clamp may count on: every later group at its
        smallest count, every later layer in int8, or every later layer in fp32 (a prefix that
        ends in fp32 converts once more to go int8; the all-int8 completion alone would price
        the dense fp32 model above itself). Closed under the steps: each completion's next
        value leaves the same completion for the rest."""
        out = []
        for bits in (INT8, FP32):
            out.append([s.values[0] if self.units[u][0] == KEEP else bits
                        for u, s in enumerate(self.unit_spaces) if u > t])
        return out

    def _clamp(self, t: int, wanted: float) -> float:
        """AMC's clamp over :meth:`_completions`: ``wanted`` if one of them keeps the policy
        within the budget; else the dearest allowed value below ``wanted`` that does; else the
        cheapest above it that does (a precision step after fp32 layers may have to stay fp32
        when converting back would cost more than int8 saves). One always does: the completion
        that admitted the previous step."""
        assert self.cost is not None
        head = list(self.applied[:t])
        tails = self._completions(t)
        slack = self.budget_limit * (1 + 1e-9)

        def fits(v: float) -> bool:
            return min(self.cost(head + [v] + tail) for tail in tails) <= slack

        if fits(wanted):
            return wanted
        grid = list(self.unit_spaces[t].values)
        below = [g for g in grid if g < wanted]
        if below and fits(below[0]):  # cost grows with the keep ratio: bisect for the dearest that fits
            lo, hi = 0, len(below) - 1
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if fits(below[mid]) else (lo, mid - 1)
            return below[lo]
        above = [g for g in grid if g > wanted and fits(g)]
        return above[0] if above else grid[0]

    def _unit_info(self, t: int, applied: float) -> dict[str, Any]:
        kind, i = self.units[t]
        if kind == KEEP:
            c = self.table.groups[i].channels
            return {"kind": KEEP, "group": i, "keep_count": int(round(applied * c)), "channels": c}
        return {"kind": PRECISION, "layer": self.layers[i], "precision": "int8" if applied == INT8 else "fp32"}

    def keep_counts(self, values: Sequence[float]) -> dict[int, int]:
        """``{group: kept channels}`` of a policy (unit order)."""
        return {i: int(round(values[u] * self.table.groups[i].channels))
                for u, (k, i) in enumerate(self.units) if k == KEEP}

    def precisions(self, values: Sequence[float]) -> list[str]:
        """``int8`` / ``fp32`` per layer (execution order) of a policy (unit order)."""
        return ["int8" if values[self.precision_unit[li]] == INT8 else "fp32" for li in range(len(self.layers))]

    def _policy_info(self) -> dict[str, Any]:
        values = self.policy
        self._last_policy = list(values)
        assert isinstance(self.cost, PruneQuantLatency)
        n, elements = self.cost.boundaries(values)
        precisions = self.precisions(values)
        keep = self.keep_counts(values)
        return {
            "keep_counts": [keep[g] for g in self.step_groups],
            "keep_ratios": [values[self.keep_unit[g]] for g in self.step_groups],
            "precisions": precisions,
            "int8_layers": precisions.count("int8"),
            "boundaries": n,
            "latency_ms": float(self.cost(values)),
            "latency_budget": self.budget,
            "flops_ratio_table": self.table.macs_at({g: values[self.keep_unit[g]] for g in self.step_groups})
            / self.table.total_macs,
        }

    # -- the candidate -------------------------------------------------------------------------------------
    def _build_candidate(self) -> nn.Module:
        """The pruned fp32 model of the finished episode (before recovery): ChannelPrune's."""
        pruned, _ = self.pruner.prune(self.keep_counts(self.policy))
        return pruned

    def quantize_candidate(self, model: nn.Module, values: Sequence[float], path: str | Path) -> Path:
        """The ONNX model of the pruned ``model`` with the precisions of ``values``: exported,
        pre-processed, calibrated on the env's calibration images and quantized by ORT's static
        quantizer with the fp32 layers excluded (all fp32: the pre-processed fp32 graph)."""
        from learners.atomic import atomic_write

        work = Path(tempfile.mkdtemp(prefix="cand-", dir=self._tmp.name))
        try:
            fp32 = ox.export_onnx(model, work / "model.onnx", input_size=self.input_size)
            prep = oq.preprocess(fp32, work / "model.prep.onnx")
            precisions = self.precisions(values)
            if "int8" not in precisions:
                return atomic_write(path, lambda tmp: shutil.copyfile(prep, tmp))
            ranges = oq.calibrate(prep, (self._calib_x[i : i + 64] for i in range(0, len(self._calib_x), 64)))
            blocks = layer_blocks(prep, self.layers)
            exclude = [n for name, p in zip(self.layers, precisions) if p == "fp32" for n in blocks[name]]
            return oq.quantize_int8(prep, path, ranges, exclude_nodes=exclude, **self.quant_options)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def write_latency_model(self, values: Sequence[float], path: str | Path) -> Path:
        """The ONNX model whose latency the table predicts for the policy ``values`` (unit
        order): its channel counts and precisions on :meth:`_latency_model` (the candidate's
        architecture with other weights, or its 224x224 twin with ``latency_twin``). What
        ``benchmarks/prune_quant_latency.py --latency-models`` times."""
        from learners.atomic import atomic_write

        with tempfile.TemporaryDirectory(prefix="latmodel-", dir=self._tmp.name) as tmp:
            prep, int8, blocks = self._write_variant(
                {g: c / self.table.groups[g].channels for g, c in self.keep_counts(values).items()}, Path(tmp))
            precisions = self.precisions(values)
            if "int8" not in precisions:
                return atomic_write(path, lambda t: shutil.copyfile(prep, t))
            exclude = [n for name, p in zip(self.layers, precisions) if p == "fp32" for n in blocks[name]]
            return oq.quantize_int8(prep, path, self._variant_ranges, exclude_nodes=exclude, **self.quant_options)

    def _key(self, values: Sequence[float]) -> str:
        return policy_digest(list(values) + ([float(self._ft_seed)] if self.recipe.ft_iters else []))

    def _materialise(self, values: Sequence[float]) -> tuple[nn.Module, Path, float]:
        """The recovered pruned fp32 model, its ONNX candidate and the fp32 model's accuracy."""
        key = self._key(values)
        if self._built is not None and self._built[0] == key and self._built[2].is_file():
            return self._built[1], self._built[2], self._built_acc
        pruned, _ = self.pruner.prune(self.keep_counts(values))
        pruned = pruned.to(self.device)
        result = recover(pruned, recipe=self.recipe, train_data=self.data.train, bn_data=self.bn_data,
                         eval_data=self.reward_data, ft_seed=self._ft_seed, device=self.device,
                         bn_reference=(self.bn_reference if self.recipe.bn_mode == "shift" and len(self.bn_data)
                                       else None))
        pruned = pruned.cpu().eval()
        path = self.quantize_candidate(pruned, values, Path(self._tmp.name) / "candidate.onnx")
        self._built, self._built_acc = (key, pruned, path), result.accuracy
        self._recover_timing = result.timing
        return pruned, path, result.accuracy

    def _evaluate(self) -> tuple[Measurements, dict[str, Any]]:
        t0 = time.perf_counter()
        values = self.policy
        key = self._key(values)
        hit = self._memo.get(key)
        timing: dict[str, float] = {}
        if hit is None:
            model, path, acc_fp32 = self._materialise(values)
            timing.update(self._recover_timing, build_quantize_s=time.perf_counter() - t0)
            t1 = time.perf_counter()
            sess = ox.session(path, threads=self.threads)
            logits = ox.run_logits(sess, self._reward_x, batch_size=256)
            acc = float((logits.argmax(1) == self._reward_y).mean())
            timing["ort_eval_s"] = time.perf_counter() - t1
            t1 = time.perf_counter()
            measured = (end_to_end_ms(sess, batch=self.latency_table["batch"], runs=self.measure_runs).min_ms
                        if self.measure_runs and not self.latency_twin else None)
            timing["measure_s"] = time.perf_counter() - t1
            del sess
            self._memo[key] = (acc, acc_fp32, measured, count_params(model))
            while len(self._memo) > self.MEMO_SIZE:
                self._memo.popitem(last=False)
        else:
            self._memo.move_to_end(key)
        acc, acc_fp32, measured, params = self._memo[key]
        self._compressed = self._built[1] if self._built is not None and self._built[0] == key else None
        self.last_timing = {**timing, "memo_hit": float(hit is not None), "episode_eval_s": time.perf_counter() - t0}
        assert self.cost is not None
        macs = self.table.macs_at({g: values[self.keep_unit[g]] for g in self.step_groups})
        m = Measurements(accuracy=acc, accuracy_original=self.accuracy_original, macs=macs,
                         flops_ratio=macs / self.table.total_macs, params_ratio=params / self.total_params,
                         latency_ratio=float(self.cost(values)) / self.cost.reference)
        extra: dict[str, Any] = {"reward_samples": len(self._reward_y), "accuracy_fp32_pruned": acc_fp32}
        if measured is not None:
            extra["latency_ms_measured"] = measured
        return m, extra

    @property
    def total_macs(self) -> float:  # type: ignore[override]
        return float(self.table.total_macs)

    # -- public ----------------------------------------------------------------------------------------------
    def compressed_model(self) -> nn.Module:
        """The pruned and recovered fp32 torch model of the last finished episode (a copy); its
        deployable form is the int8 ONNX graph :meth:`export` writes."""
        if self._last_policy is None:
            raise RuntimeError("no episode has finished yet: play one to the end (or play_policy) first")
        model, _, _ = self._materialise(self._last_policy)
        return copy.deepcopy(model)

    def export(self, path: str | Path) -> Path:
        """Write the last finished episode's candidate (scored or dry run) to ``path`` as the
        mixed int8/fp32 ``.onnx`` model that runs with onnxruntime alone (as QuantORT's
        ``export``). Returns ``path``. The deploy bundle (this model, the pruned fp32 model,
        test images and the ``manifest.json`` the deploy benchmark reads) is the export stage's:
        :func:`pf_deploy.export.write_env_bundle` (``pf-export --run RUN``)."""
        if self._last_policy is None:
            raise RuntimeError("no episode has finished yet: play one to the end (or play_policy) before export()")
        from learners.atomic import atomic_write

        _, int8_path, _ = self._materialise(self._last_policy)
        return atomic_write(path, lambda tmp: shutil.copyfile(int8_path, tmp))

    def deploy_candidate(self) -> DeployCandidate:
        """What a deploy bundle of the last finished episode's candidate holds
        (:func:`pf_deploy.export.write_env_bundle` writes it)."""
        if self._last_policy is None:
            raise RuntimeError("no episode has finished yet: play one to the end (or play_policy) before exporting")
        model, int8_path, _ = self._materialise(self._last_policy)
        values = list(self._last_policy)
        assert self.cost is not None
        macs = int(self.table.macs_at({g: values[self.keep_unit[g]] for g in self.step_groups}))
        env_id = getattr(self.spec, "id", None)  # gym.make puts its EnvSpec here
        source = {"kind": "compressed", "env_id": env_id, "method": self.METHOD, "base_model": self.model_name,
                  "model_fingerprint": self.model_fingerprint, "policy": values, "structure": "pruned+mixed-int8"}
        quantization = {
            "tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", **self.quant_options,
            "weights": "int8 per-channel symmetric" + (" (7-bit range)" if self.quant_options["reduce_range"] else ""),
            "activations": f"{self.quant_options['activation_type']} (calibrated)", "calibration": "MinMax",
            "calibration_images": len(self._calib_x), "mixed": True,
            "precisions": dict(zip(self.layers, self.precisions(values))),
        }
        names = list(CIFAR10_CLASSES) if self.data.name == "cifar10" else [str(i) for i in range(self.data.num_classes)]
        return DeployCandidate(
            model=model, int8_path=Path(int8_path), input_size=self.input_size, mean=tuple(self.data.train.mean),
            std=tuple(self.data.train.std), class_names=names, macs=macs, params=int(count_params(model)),
            source=source, quantization=quantization, threads=self.threads,
            extra={"latency_ms_table": float(self.cost(values)),
                   "latency_ratio_table": float(self.cost(values)) / self.cost.reference})

    def close(self) -> None:
        super().close()
        self._tmp.cleanup()

    def observation_features(self) -> tuple[str, ...]:
        return OBSERVATION_FEATURES


def _preprocessed(path: Path) -> bool:
    try:
        return oq.is_preprocessed(path)
    except oq.QuantizationError:
        return False
