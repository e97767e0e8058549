"""QuantORT: per-layer int8 or fp32 in ONNX Runtime, under a measured latency budget.

PocketFlow's "framework API" quantization learner, with ONNX Runtime as the framework: the
candidate is the real deployable model, ORT static quantization in QDQ format, int8 weights
per output channel, activations calibrated once on training images, and the layers the
policy keeps in fp32 excluded from quantization.

>>> import gymnasium as gym, pf_envs
>>> env = gym.make("QuantORT-ResNet20-v0", latency_budget=0.8)                 # doctest: +SKIP
>>> obs, info = env.reset(seed=0)                                              # doctest: +SKIP

One step per quantizable layer (every ``Conv2d`` and ``Linear``, in execution order). The
action in ``[-1, 1]`` maps linearly to a bit-width in ``[8, 32]`` rounded to the nearer of 8
(int8) and 32 (fp32): ``a <= 0`` is int8, ``a > 0`` fp32. The cost is the model's latency
from a per-layer table (:class:`pf_envs.budget.LatencyTable`) measured once on this machine
(:func:`learners.ort_latency.measure_layer_latency`: ORT's profiler on the all-fp32 and the
all-int8 model, each layer's kernels plus the nodes that run after it, scaled to the
measured end-to-end latency of each model) and cached with the CPU's name; the budget
``latency_budget`` is a fraction of the fp32 model's table latency, kept by the core's clamp
(a layer is forced to int8 when fp32 would leave the budget unreachable). Rewards are
deterministic: the table, not a stopwatch, decides the budget.

After the last step the layers kept in fp32 (each with the nodes that follow it up to the
next layer: its ReLU, the residual Add, the pooling) are excluded from ORT's quantizer, the
int8 model is written from the calibration ranges computed once per env
(:func:`learners.ort_int8.quantize_int8`: no calibrator run per episode), and its top-1 on
``reward_samples`` images of ``reward_split`` is the reward (or a function of it:
``reward=``). A policy scored before is not quantized again (the candidate is a
deterministic function of the policy).

Final ``info`` (beyond the core's): ``precisions`` (``int8``/``fp32`` per layer),
``int8_layers``, ``latency_ms`` (the table's prediction), ``latency_ratio`` (= ``cost_ratio``),
``latency_budget`` and, unless ``measure_runs=0`` or the episode is a dry run,
``latency_ms_measured``: the candidate's end-to-end latency measured now (minimum of
``measure_runs`` runs). That one key is NOT deterministic (a wall clock on a shared
machine); everything else is.

``env.unwrapped.export(path)`` writes the last episode's candidate as an ``.onnx`` file that
runs with onnxruntime alone. ``compressed_model()`` / ``policy_model()`` return the fp32 torch
model (the graph is exported from it; quantization does not change it), so a saved
compressed model (``pf_envs.save_compressed``) is the fp32 weights plus the policy, and the
int8 graph is rebuilt from them exactly: ``env.play_policy(record["policy"]); env.export(p)``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from learners import onnx_export as ox
from learners import ort_int8 as oq
from learners.onnx_names import layer_nodes
from learners.ort_latency import LayerLatency, cpu_name, end_to_end_ms, layer_blocks, measure_layer_latency
from pf_envs.budget import LatencyTable, UnitSpace, floor_ratio
from pf_envs.cache import cache_key, cached, decode_fraction
from pf_envs.data import cache_dir
from pf_envs.layers import cost_table
from pf_envs.model_env import COMMON_SETTINGS, ModelCompressionEnv
from pf_envs.rewards import Measurements
from pf_envs.settings import Setting

#: Bumped whenever the candidate or its scoring changes (part of the recovery fingerprint).
QUANT_ORT_VERSION = 1
INT8, FP32 = 8.0, 32.0

OBSERVATION_FEATURES: tuple[str, ...] = (
    "step", "in_channels", "out_channels", "in_hw", "stride", "kernel", "depthwise", "params", "macs",
    "fp32_ms", "int8_ms", "reduced", "rest", "prev_bits",
)

#: Recovery kwargs of the other model envs that QuantORT has no use for (post-training
#: quantization: the candidate is never fine-tuned and has no BatchNorm left to re-estimate).
#: ``ft_iters=0`` is accepted (search scripts pass it to every env); anything else is refused.
_NO_RECOVERY = {"ft_iters": 0, "ft_batch_size": 1, "ft_lr": None, "bn_batches": 0, "bn_batch_size": 1,
                "bn_augment": False}

SETTINGS: dict[str, Setting] = {
    **{k: v for k, v in COMMON_SETTINGS.items() if k not in ("ft_bf16", "ft_capture")},  # no fine-tuning here
    "ft_iters": Setting("int", default=0, low=0, high=0, doc="no fine-tuning (post-training quantization): 0 only"),
    "latency_budget": Setting("float", default=0.8, low=0, high=1, low_open=True,
                              doc="fraction of the fp32 model's latency (latency table) the candidate may take"),
    "calibration_images": Setting("int", default=512, low=1,
                                  doc="training images ORT's calibrator sees (once per env)"),
    "activation_type": Setting("choice", default="uint8", choices=("uint8", "int8"),
                               doc="int8 activations' type (uint8: ORT's fast path on x86; int8: ARM)"),
    "reduce_range": Setting("bool", default=True,
                            doc="7-bit weights (ORT's advice on x86 without VNNI: avoids saturation)"),
    "per_channel": Setting("bool", default=True, doc="int8 weights per output channel (else per tensor)"),
    "threads": Setting("int", default=1, low=1, doc="ONNX Runtime intra-op threads (reward and latency)"),
    "latency_batch": Setting("int", default=1, low=1, doc="images per run when latency is measured"),
    "latency_runs": Setting("int", default=300, low=10, doc="profiled and timed runs per model for the latency table"),
    "measure_runs": Setting("int", default=50, low=0,
                            doc="timed runs of each candidate for latency_ms_measured (0: none)"),
}
for _k in ("ft_batch_size", "ft_lr", "bn_batches", "bn_batch_size", "bn_augment"):
    SETTINGS[_k] = Setting("any", optional=True, doc="not used by QuantORT (no recovery); internal")
_INTERNAL = ("ft_batch_size", "ft_lr", "bn_batches", "bn_batch_size", "bn_augment")


def policy_digest(values: Sequence[float]) -> str:
    return hashlib.sha1(json.dumps([float(v) for v in values]).encode()).hexdigest()[:12]


class QuantORTEnv(ModelCompressionEnv):
    """Mixed int8/fp32 ONNX Runtime model under a latency budget.

    Args:
        model: a zoo name or your own trained ``nn.Module`` (e.g. a re-trained pruned model
            from ``ChannelPrune``'s ``policy_model``); copied, never modified.
        dataset, checkpoint, data_root, input_size: as for every model env.
        latency_budget: fraction of the fp32 model's latency (from the latency table) the
            candidate may take, in (0, 1]; at least the all-int8 model's (the error says it).
        calibration_images: training images ORT's MinMax calibrator sees, once per env (the
            ranges are cached on disk with the model's fingerprint; default 512).
        activation_type: ``uint8`` (default; ORT's fast path on x86, int8 activations run
            2x slower than fp32 there) or ``int8`` (ARM).
        reduce_range: 7-bit weights (default True; ORT's advice for per-channel uint8 on x86
            without VNNI: ResNet-20 loses 1.5 points without it, none with it).
        per_channel: int8 weights per output channel (default True).
        threads: ONNX Runtime intra-op threads for the reward and the latency (default 1:
            stable times, no oversubscription).
        latency_batch: images per run for the latency table and ``latency_ms_measured`` (1).
        latency_runs: profiled and timed runs of each model for the table (default 300).
        measure_runs: timed runs of every scored candidate (default 50; 0: not measured).
        reward, reward_split, reward_samples, device, cache, render_mode: as for every model
            env (``device`` only decides where the fp32 baseline is scored in PyTorch).
        ft_iters: 0 only (search scripts pass it to every env).
    """

    SETTINGS: ClassVar[dict[str, Setting]] = SETTINGS
    METHOD: ClassVar[str] = "QuantORT"
    STATIC_FEATURES: ClassVar[tuple[str, ...]] = OBSERVATION_FEATURES[:11]
    DYNAMIC_FEATURES: ClassVar[tuple[str, ...]] = OBSERVATION_FEATURES[11:]
    budget_kwarg: ClassVar[str] = "latency_budget"
    floor_kwarg: ClassVar[str] = "int8 everywhere"
    ratio_key: ClassVar[str | None] = "latency_ratio"
    #: Scored policies remembered (accuracy, measured latency), most recent first.
    MEMO_SIZE: ClassVar[int] = 4096

    def __init__(
        self,
        model: str | nn.Module = "mobilenet_v1",
        dataset: str = "cifar10",
        *,
        checkpoint: str | None = None,
        data_root: str | None = None,
        input_size: int | None = None,
        latency_budget: float = 0.8,
        calibration_images: int = 512,
        activation_type: str = "uint8",
        reduce_range: bool = True,
        per_channel: bool = True,
        threads: int = 1,
        latency_batch: int = 1,
        latency_runs: int = 300,
        measure_runs: int = 50,
        ft_iters: int = 0,
        reward: str = "accuracy",
        reward_split: str = "val",
        reward_samples: int = 5000,
        device: str = "cpu",
        cache: bool = True,
        render_mode: str | None = None,
        **unknown: Any,
    ) -> None:
        given = dict(locals())
        given.pop("self")
        given.pop("unknown")
        given.pop("__class__", None)
        if isinstance(ft_iters, int) and not isinstance(ft_iters, bool) and ft_iters != 0:
            raise ValueError(f"QuantORT: ft_iters={ft_iters}, but QuantORT does no fine-tuning (post-training "
                             "quantization of the trained model); pass ft_iters=0 or leave it out")
        bad = sorted(set(unknown) & set(_INTERNAL))
        strange = sorted(set(unknown) - set(_INTERNAL))
        if strange:
            raise TypeError(f"QuantORT got unknown keyword argument(s) {strange}; valid ones are "
                            f"{sorted(self.valid_kwargs())} (see help(pf_envs.envs.quant_ort) or docs/quant_ort.md)")
        if bad:
            raise TypeError(
                f"QuantORT got {bad}: it has no recovery (post-training quantization: no fine-tuning, no "
                "BatchNorm re-estimation, BatchNorm is folded into the convolutions); drop them. Valid kwargs: "
                f"{sorted(self.valid_kwargs())}")
        self._tmp = tempfile.TemporaryDirectory(prefix="pf-quantort-")
        super().__init__({**given, **{k: v for k, v in _NO_RECOVERY.items() if k in _INTERNAL}}, unknown)
        # the baseline the reward is compared with is the fp32 ONNX model in ORT (PyTorch's
        # figure can differ by an image: float reassociation after BatchNorm folding)
        key = cache_key("ort-accuracy", prep=self.prep_sha1, split=self.reward_split, n=len(self.reward_data),
                        data=self.data.source, threads=self.threads, ort=self._ort_version)
        self.accuracy_torch = self.accuracy_original
        self.accuracy_original = cached(key, lambda: self._ort_accuracy(self.prep_path),
                                        enabled=self.cache_enabled, decode=decode_fraction)

    @classmethod
    def valid_kwargs(cls) -> tuple[str, ...]:
        return tuple(k for k in cls.SETTINGS if k not in _INTERNAL)

    # -- set-up --------------------------------------------------------------------------------
    def _setup_method(self) -> None:
        import onnxruntime

        s = self.settings
        self._ort_version = onnxruntime.__version__
        self.latency_budget = float(s["latency_budget"])
        self.threads = int(s["threads"])
        self.measure_runs = int(s["measure_runs"])
        self.quant_options = {"activation_type": s["activation_type"], "reduce_range": bool(s["reduce_range"]),
                              "per_channel": bool(s["per_channel"])}
        t0 = time.perf_counter()
        # the fp32 graph and ORT's pre-processing of it: once per model (on disk with the cache)
        folder = (cache_dir() / "quant_ort" / self.model_fingerprint) if self.cache_enabled else Path(self._tmp.name)
        folder.mkdir(parents=True, exist_ok=True)
        self.prep_path = folder / f"model-opset{ox.OPSET}.prep.onnx"
        if not self._usable(self.prep_path):
            fp32 = ox.export_onnx(self.model, Path(self._tmp.name) / "model.onnx", input_size=self.input_size)
            oq.preprocess(fp32, self.prep_path)
        # ORT's quantizer writes "<model>-inferred.onnx" beside its input and deletes it: two
        # processes quantizing one shared file collide, so every env quantizes its own copy
        shared = self.prep_path
        self.prep_path = Path(self._tmp.name) / f"own-{shared.name}"
        shutil.copyfile(shared, self.prep_path)
        self.prep_sha1 = oq.file_sha1(self.prep_path)
        export_s = time.perf_counter() - t0

        # units: the quantizable layers in execution order, and what stays fp32 with each
        node_of = layer_nodes(self.model, self.prep_path)
        graph = oq.load_onnx(self.prep_path)
        position = {n.name: i for i, n in enumerate(graph.graph.node)}
        self.layers = sorted(node_of, key=lambda name: position[node_of[name]])
        self.layer_nodes = {name: node_of[name] for name in self.layers}
        self.blocks = layer_blocks(graph, self.layers)

        # activation ranges: once per model and calibration set
        t0 = time.perf_counter()
        n_cal = int(s["calibration_images"])
        rkey = cache_key("ort-ranges", prep=self.prep_sha1, images=n_cal, data=self.data.source, seed=3,
                         ort=self._ort_version)
        calib = self.data.train.subset(n_cal, seed=3)
        self.ranges = cached(
            rkey, lambda: oq.calibrate(self.prep_path, (x for x, _ in calib.batches(64))).to_dict(),
            enabled=self.cache_enabled, decode=oq.CalibrationRanges.from_dict)
        calibrate_s = time.perf_counter() - t0

        # the all-int8 model, and the latency table: once per model, options and machine
        t0 = time.perf_counter()
        self.int8_path = Path(self._tmp.name) / "all-int8.onnx"
        oq.quantize_int8(self.prep_path, self.int8_path, self.ranges, **self.quant_options)
        lkey = cache_key(
            "ort-latency", prep=self.prep_sha1, ranges=hashlib.sha1(json.dumps(self.ranges.to_dict(), sort_keys=True)
                                                                    .encode()).hexdigest(),
            layers=self.layers, options=self.quant_options, batch=int(s["latency_batch"]),
            runs=int(s["latency_runs"]), threads=self.threads, cpu=cpu_name(), ort=self._ort_version,
        )
        def decode_latency(raw: Any) -> LayerLatency:
            latency = LayerLatency.from_dict(raw)
            if list(latency.layers) != list(self.layers) or not (
                    len(latency.fp32_ms) == len(latency.int8_ms) == len(self.layers)):
                raise ValueError("the latency table is for other layers")
            return latency

        self.latency = cached(
            lkey, lambda: measure_layer_latency(
                self.prep_path, self.int8_path, self.layers, batch=int(s["latency_batch"]),
                runs=int(s["latency_runs"]), threads=self.threads).to_dict(),
            enabled=self.cache_enabled, decode=decode_latency)
        latency_s = time.perf_counter() - t0

        # a layer whose int8 block is not faster than its fp32 block is priced at the slower of
        # the two either way: the table stays monotone and never under-prices a policy
        self.int8_slower = [n for n, a, b in zip(self.layers, self.latency.int8_ms, self.latency.fp32_ms) if a > b]
        tables = [{INT8: a, FP32: max(a, b)} for a, b in zip(self.latency.int8_ms, self.latency.fp32_ms)]
        cost = LatencyTable(tables)
        spaces = [UnitSpace(INT8, FP32, (INT8, FP32))] * len(self.layers)
        floor = floor_ratio(cost, spaces)
        if floor > self.latency_budget + 1e-9:
            raise ValueError(
                f"latency_budget={self.latency_budget} is below the all-int8 {self.model_name}'s latency: "
                f"{floor:.3f} of the fp32 model's ({self.latency.int8_total_ms:.3f} ms against "
                f"{self.latency.fp32_total_ms:.3f} ms, batch {self.latency.batch}, {self.threads} thread(s), "
                f"measured on {self.latency.cpu}); choose latency_budget >= {np.ceil(floor * 1000) / 1000}"
            )
        rows = cost_table(self.model, self.input_size)
        static = []
        for t, name in enumerate(self.layers):
            r = rows[name]
            static.append([t, r.in_channels, r.out_channels, r.in_hw[0], r.stride[0], r.kernel[0],
                           float(r.kind == "depthwise"), r.params, r.macs, self.latency.fp32_ms[t],
                           self.latency.int8_ms[t]])
        self._setup_budget(spaces, cost, self.latency_budget, static)

        # reward images, decoded once
        xs, ys = zip(*self.reward_data.batches(256))
        self._reward_x = np.ascontiguousarray(torch.cat(xs).numpy(), dtype=np.float32)
        self._reward_y = torch.cat(ys).numpy()
        self._memo: OrderedDict[str, tuple[float, float | None]] = OrderedDict()
        self._last_policy: list[float] | None = None
        self._candidate_path: Path | None = None
        self._candidate_policy: str | None = None
        self.setup_timing = {"export_s": export_s, "calibrate_s": calibrate_s, "latency_table_s": latency_s}

    def _usable(self, path: Path) -> bool:
        try:
            return path.is_file() and oq.is_preprocessed(path)
        except oq.QuantizationError:
            return False

    def _resolved_settings(self) -> dict[str, Any]:
        table = hashlib.sha1(json.dumps(self.latency.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
        return {"quant_ort_version": QUANT_ORT_VERSION, "onnxruntime": self._ort_version, "latency_table": table,
                "ranges": self.ranges.model_sha1}

    def _ort_accuracy(self, path: Path) -> float:
        sess = ox.session(path, threads=self.threads)
        logits = ox.run_logits(sess, self._reward_x, batch_size=256)
        return float((logits.argmax(1) == self._reward_y).mean())

    # -- the policy ----------------------------------------------------------------------------
    def precisions(self, values: Sequence[float]) -> list[str]:
        """``int8`` / ``fp32`` per layer of a policy (bit-widths 8 / 32)."""
        return ["int8" if v == INT8 else "fp32" for v in values]

    def exclude_nodes(self, values: Sequence[float]) -> list[str]:
        """The pre-processed graph's nodes kept in fp32 under ``values``."""
        return [n for name, v in zip(self.layers, values) if v != INT8 for n in self.blocks[name]]

    def _unit_info(self, t: int, applied: float) -> dict[str, Any]:
        return {"layer": self.layers[t], "precision": "int8" if applied == INT8 else "fp32"}

    def _policy_info(self) -> dict[str, Any]:
        self._last_policy = list(self.applied)
        assert self.cost is not None
        return {
            "precisions": self.precisions(self.applied),
            "int8_layers": sum(v == INT8 for v in self.applied),
            "latency_ms": float(self.cost(self.applied)),
            "latency_budget": self.budget,
        }

    def write_candidate(self, values: Sequence[float], path: str | Path) -> Path:
        """Write the ONNX model of policy ``values`` (bit-widths, one per layer) to ``path``."""
        values = [float(v) for v in values]
        if len(values) != self.num_steps or any(v not in (INT8, FP32) for v in values):
            raise ValueError(f"a QuantORT policy of {self.model_name} is {self.num_steps} bit-widths, each 8 or 32")
        from learners.atomic import atomic_write

        if all(v == FP32 for v in values):  # nothing quantized: the fp32 model itself
            return atomic_write(path, lambda tmp: shutil.copyfile(self.prep_path, tmp))
        if all(v == INT8 for v in values):  # quantized once at set-up
            return atomic_write(path, lambda tmp: shutil.copyfile(self.int8_path, tmp))
        return oq.quantize_int8(self.prep_path, path, self.ranges, exclude_nodes=self.exclude_nodes(values),
                                **self.quant_options)

    def _candidate(self, values: Sequence[float]) -> Path:
        digest = policy_digest(values)
        if self._candidate_policy != digest or self._candidate_path is None or not self._candidate_path.is_file():
            path = Path(self._tmp.name) / "candidate.onnx"
            self.write_candidate(values, path)
            self._candidate_path, self._candidate_policy = path, digest
        return self._candidate_path

    # -- scoring ---------------------------------------------------------------------------------
    def _evaluate(self) -> tuple[Measurements, dict[str, Any]]:
        t0 = time.perf_counter()
        digest = policy_digest(self.applied)
        hit = self._memo.get(digest)
        timing = {"quantize_s": 0.0, "eval_s": 0.0, "measure_s": 0.0}
        if hit is None:
            path = self._candidate(self.applied)
            timing["quantize_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            sess = ox.session(path, threads=self.threads)
            logits = ox.run_logits(sess, self._reward_x, batch_size=256)
            acc = float((logits.argmax(1) == self._reward_y).mean())
            timing["eval_s"] = time.perf_counter() - t1
            t1 = time.perf_counter()
            measured = (end_to_end_ms(sess, batch=self.latency.batch, runs=self.measure_runs).min_ms
                        if self.measure_runs else None)
            timing["measure_s"] = time.perf_counter() - t1
            del sess
            self._memo[digest] = (acc, measured)
            while len(self._memo) > self.MEMO_SIZE:
                self._memo.popitem(last=False)
        else:
            acc, measured = hit
            self._memo.move_to_end(digest)
        self._compressed = self.model
        self.last_timing = {**timing, "memo_hit": float(hit is not None), "episode_eval_s": time.perf_counter() - t0}
        assert self.cost is not None
        ratio = float(self.cost(self.applied)) / self.cost.reference
        m = Measurements(accuracy=acc, accuracy_original=self.accuracy_original, macs=self.total_macs,
                         flops_ratio=1.0, params_ratio=1.0, latency_ratio=ratio)
        extra: dict[str, Any] = {"reward_samples": len(self._reward_y)}
        if measured is not None:
            extra["latency_ms_measured"] = measured
        return m, extra

    # -- public ------------------------------------------------------------------------------------
    def _build_candidate(self) -> nn.Module:
        """The fp32 torch model (the ONNX candidate is exported from it; see :meth:`export`)."""
        return copy.deepcopy(self.model)

    def compressed_model(self) -> nn.Module:
        """The fp32 torch model the last scored candidate was quantized from (a copy); the
        candidate itself is an ONNX graph: :meth:`export`."""
        if self._compressed is None:
            raise RuntimeError("no episode has been scored yet: play one to the end first (or play_policy)")
        return copy.deepcopy(self.model)

    def export(self, path: str | Path) -> Path:
        """Write the last finished episode's candidate (scored or dry run) to ``path`` as an
        ``.onnx`` model that runs with onnxruntime alone. Returns ``path``."""
        if self._last_policy is None:
            raise RuntimeError("no episode has finished yet: play one to the end (or play_policy) before export()")
        from learners.atomic import atomic_write

        src = self._candidate(self._last_policy)
        return atomic_write(path, lambda tmp: shutil.copyfile(src, tmp))

    def close(self) -> None:
        super().close()
        self._tmp.cleanup()
