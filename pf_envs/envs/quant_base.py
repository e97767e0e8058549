"""What the quantization environments share: one step per layer (and per layer input), bit-width
actions, the avg-bits / bit-operations budgets, the quantized candidate and its size.

:class:`QuantEnvBase` is a :class:`pf_envs.model_env.ModelCompressionEnv`; a method only says
how a layer's weights are quantized (:attr:`QuantEnvBase.WEIGHT_MODE`: ``uniform`` levels or a
``codebook``) and may supply codebooks (:meth:`QuantEnvBase._codebook_values`). The
quantizers themselves are plain PyTorch in :mod:`learners.quantization`.

Steps: one per quantizable layer (every ``nn.Conv2d``, depthwise ones included, and the
classifier ``nn.Linear``), in execution order; with ``act_bits="search"`` each layer has a
second step right after it for its input activations (HAQ). The action in ``[-1, 1]`` maps
linearly to ``[min_bits, max_bits]`` and is rounded to whole bits.

Budgets (one kwarg): ``avg_bits`` (PocketFlow: ``sum_l bits_l * |W_l| <= avg_bits * sum_l
|W_l|``; the cost is :class:`pf_envs.budget.WeightBits` against 32-bit weights, so the budget is
``avg_bits / 32``) or ``bitops_budget`` (:class:`pf_envs.budget.BitOps`: ``sum_l macs_l *
wbits_l * abits_l`` as a fraction of the same model at 8-bit weights and 8-bit activations).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
from torch import nn

from learners.quantization import MAX_BITS, MIN_BITS, LayerQuant, activation_ranges, quantize_model, storage_bytes
from learners.recovery import BN_MODES
from pf_envs.budget import BitOps, UnitSpace, WeightBits
from pf_envs.cache import cache_key, cached, decode_names
from pf_envs.layers import CostTable, cost_table
from pf_envs.model_env import COMMON_SETTINGS, ModelCompressionEnv
from pf_envs.settings import Setting, bind_settings, table_signature

#: ``act_bits`` value that leaves activations in float32 (not quantized).
FLOAT_BITS = 32
#: Images of the BatchNorm set whose activation ranges start every activation quantizer.
RANGE_IMAGES = 256

STATIC_FEATURES: tuple[str, ...] = (
    "step", "layer", "is_activation", "kind", "in_channels", "out_channels", "kernel", "stride", "in_hw",
    "weights", "macs",
)
DYNAMIC_FEATURES: tuple[str, ...] = ("reduced", "rest", "prev_bits")

SETTINGS: dict[str, Setting] = {
    **COMMON_SETTINGS,
    "ft_iters": dataclasses.replace(COMMON_SETTINGS["ft_iters"], default=0),  # quantization: no fine-tuning
    "min_bits": Setting("int", default=2, low=MIN_BITS, high=MAX_BITS, doc="fewest bits of any layer"),
    "max_bits": Setting("int", default=8, low=MIN_BITS, high=MAX_BITS, doc="most bits of any layer"),
    "act_bits": Setting("any", default=8,
                        doc=f"bits of every layer's input ({MIN_BITS}..{MAX_BITS}), {FLOAT_BITS} (float), "
                                   "or 'search' (a step per layer)"),
    "avg_bits": Setting("float", default=None, low=0, high=32, low_open=True, optional=True,
                        doc="budget: average bits per weight (default 4 unless bitops_budget is given)"),
    "bitops_budget": Setting("float", default=None, low=0, high=16, low_open=True, optional=True,
                             doc="budget: bit-operations as a fraction of the 8-bit-weight, 8-bit-activation model's"),
    "random_order": Setting("bool", default=False, doc="visit the layers in a new order each episode (PocketFlow)"),
    "bn_mode": Setting("choice", default="shift", choices=BN_MODES,
                       doc="BatchNorm recovery: 'shift' moves the original statistics by the change the quantizers "
                           "make on the BatchNorm batches; 'reestimate' estimates them afresh"),
}


#: The env's ``__init__`` signature, made from its settings table.
_SIGNATURE = table_signature(SETTINGS)


class QuantEnvBase(ModelCompressionEnv):
    """Mixed-precision quantization under an average-bits or bit-operations budget (see the
    module docstring; :class:`pf_envs.envs.uniform_quant.UniformQuantEnv` documents the kwargs).

    Attributes (beyond :class:`pf_envs.model_env.ModelCompressionEnv`'s):
        table: the per-layer :class:`pf_envs.layers.CostTable` (the quantizable layers).
        layer_names: the quantized layers, in execution order.
        weight_unit / act_unit: the step (unit) of each layer's weights / input (None: fixed).
        act_bits: the fixed input bits (None when searched; 32: not quantized).
        budget_kind: ``avg_bits`` or ``bitops``.
    """

    SETTINGS: ClassVar[dict[str, Setting]] = SETTINGS
    STATIC_FEATURES: ClassVar[tuple[str, ...]] = STATIC_FEATURES
    DYNAMIC_FEATURES: ClassVar[tuple[str, ...]] = DYNAMIC_FEATURES
    budget_kwarg: ClassVar[str] = "avg_bits"
    floor_kwarg: ClassVar[str] = "min_bits"
    #: How weights are quantized (``learners.quantization.WEIGHT_MODES``).
    WEIGHT_MODE: ClassVar[str] = "uniform"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Keyword arguments: :class:`pf_envs.envs.uniform_quant.UniformQuantEnv` documents them."""
        settings = bind_settings(_SIGNATURE, (self, *args), kwargs)
        settings["__class__"] = type(self)  # what each env's own __init__ recorded: fingerprints unchanged
        super().__init__(settings, settings["unknown"])

    __init__.__signature__ = _SIGNATURE  # made from SETTINGS: the keywords and their defaults

    # -- set-up ------------------------------------------------------------------------------------
    def _setup_method(self) -> None:
        s = self.settings
        self.min_bits, self.max_bits = int(s["min_bits"]), int(s["max_bits"])
        if self.min_bits >= self.max_bits:
            raise ValueError(f"{type(self).__name__}: min_bits={self.min_bits} must be < max_bits={self.max_bits}")
        act = s["act_bits"]
        if act == "search":
            self.act_bits: int | None = None
        elif (isinstance(act, (int, np.integer)) and not isinstance(act, (bool, np.bool_))
              and (MIN_BITS <= act <= MAX_BITS or act == FLOAT_BITS)):
            self.act_bits = int(act)
        else:
            raise ValueError(f"{type(self).__name__}: act_bits must be an integer in [{MIN_BITS}, {MAX_BITS}], "
                             f"{FLOAT_BITS} (activations not quantized) or 'search', got {act!r}")
        self.random_order = bool(s["random_order"])

        self.table: CostTable = cost_table(self.model, self.input_size)
        self.layer_names = [r.name for r in self.table.rows]
        if not self.layer_names:
            raise ValueError(f"{self.model_name} has no nn.Conv2d or nn.Linear layer to quantize")
        modules = dict(self.model.named_modules())
        self.layer_weights = [int(modules[n].weight.numel()) for n in self.layer_names]
        self.weight_unit: list[int] = []
        self.act_unit: list[int | None] = []
        rows, unit_layer = [], []
        for i, r in enumerate(self.table.rows):
            for is_act in ((False, True) if self.act_bits is None else (False,)):
                (self.act_unit if is_act else self.weight_unit).append(len(unit_layer))
                unit_layer.append(i)
                kind = {"conv": 0.0, "depthwise": 0.5, "linear": 1.0}[r.kind]
                rows.append([len(rows), i, float(is_act), kind, r.in_channels, r.out_channels, r.kernel[0],
                             r.stride[0], r.in_hw[0], self.layer_weights[i], r.macs])
            if self.act_bits is not None:
                self.act_unit.append(None)
        self.unit_layer = unit_layer
        self.unit_is_act = [bool(row[2]) for row in rows]
        grid = tuple(float(b) for b in range(self.min_bits, self.max_bits + 1))
        spaces = [UnitSpace(float(self.min_bits), float(self.max_bits), grid)] * len(rows)

        avg, bitops = s.get("avg_bits"), s.get("bitops_budget")
        if avg is not None and bitops is not None:
            raise ValueError(f"{type(self).__name__}: give one budget, avg_bits or bitops_budget, not both")
        n_units = len(rows)
        fixed = float(self.act_bits if self.act_bits is not None else FLOAT_BITS)
        self._bitops = BitOps([r.macs for r in self.table.rows], self.weight_unit, self.act_unit, n_units,
                              fixed_bits=fixed, reference_bits=8.0)
        per_unit = np.zeros(n_units)
        per_unit[self.weight_unit] = self.layer_weights
        self._weight_bits = WeightBits(per_unit, reference_bits=32.0)
        if bitops is not None:
            self.budget_kind, cost, budget = "bitops", self._bitops, float(bitops)
            floor = self._bitops([float(self.min_bits)] * n_units) / self._bitops.reference
            acts = "min_bits" if self.act_bits is None else self.act_bits
            if budget < floor - 1e-12:
                raise ValueError(
                    f"bitops_budget={bitops} is unreachable for {self.model_name}: with every layer at "
                    f"min_bits={self.min_bits} (activations at {acts}) "
                    f"the model still has {floor:.4f} of the 8/8-bit model's bit-operations; choose "
                    f"bitops_budget >= {np.ceil(floor * 1e4) / 1e4} or lower min_bits")
        else:
            avg = 4.0 if avg is None else float(avg)
            if avg < self.min_bits:
                raise ValueError(
                    f"avg_bits={avg} is unreachable: every layer has at least min_bits={self.min_bits} bits; "
                    f"choose avg_bits >= {self.min_bits} or lower min_bits")
            self.budget_kind, cost, budget = "avg_bits", self._weight_bits, avg / 32.0
        self.avg_bits = avg if self.budget_kind == "avg_bits" else None
        self.bitops_budget = float(bitops) if bitops is not None else None
        self._setup_budget(spaces, cost, budget, rows)
        self._act_ranges = self._activation_ranges()
        self.fp32_bytes = storage_bytes(self.model)

    def _resolved_settings(self) -> dict[str, Any]:
        return {"budget_kind": self.budget_kind, "budget": self.budget, "weight_mode": self.WEIGHT_MODE}

    def _activation_ranges(self) -> dict[str, tuple[float, float]]:
        """Each layer's input range on the original model (cached): where every activation
        quantizer starts before fine-tuning and BatchNorm re-estimation refine it."""
        # the BatchNorm images (with bn_batches=0: RANGE_IMAGES training images, the same as 2 x 128 BN images)
        source = self.bn_data if len(self.bn_data) else self.data.train.subset(RANGE_IMAGES, seed=2)
        n = min(RANGE_IMAGES, len(source))
        key = cache_key("quant-act-ranges", model=self.model_fingerprint, layers=self.layer_names, images=n,
                        source_images=len(source),
                        data=self.data.source, size=self.input_size)

        def compute() -> dict[str, list[float]]:
            batches = source.subset(n, seed=0).batches(128)
            return {k: list(v) for k, v in activation_ranges(self.model, self.layer_names, batches).items()}

        return cached(key, compute, enabled=self.cache_enabled, decode=lambda raw: {
            k: (float(v[0]), float(v[1])) for k, v in decode_names(raw, self.layer_names).items()})

    # -- the policy ----------------------------------------------------------------------------------
    def layer_bits(self, values: list[float]) -> tuple[list[int], list[int | None]]:
        """(weight bits, input bits) of every layer under the policy ``values`` (unit order);
        input bits None: not quantized."""
        w = [int(round(values[u])) for u in self.weight_unit]
        if self.act_bits is None:
            a: list[int | None] = [int(round(values[u])) for u in self.act_unit]  # type: ignore[index]
        else:
            a = [None if self.act_bits == FLOAT_BITS else self.act_bits] * len(w)
        return w, a

    def layer_specs(self, values: list[float]) -> dict[str, LayerQuant]:
        """The :class:`learners.quantization.LayerQuant` of every layer under ``values``."""
        w, a = self.layer_bits(values)
        return {n: LayerQuant(wb, ab, self.WEIGHT_MODE) for n, wb, ab in zip(self.layer_names, w, a)}

    def _codebook_values(self, specs: dict[str, LayerQuant]) -> dict[str, np.ndarray] | None:
        """Codebooks already fitted for ``specs`` (codebook methods), or None."""
        return None

    def _policy_info(self) -> dict[str, Any]:
        values = self.policy
        w, a = self.layer_bits(values)
        info: dict[str, Any] = {
            "weight_bits": w, "act_bits": a,
            "avg_weight_bits": float(self._weight_bits(values) / sum(self.layer_weights)),
            "bitops_ratio": float(self._bitops(values) / self._bitops.reference),
            "budget_kind": self.budget_kind,
        }
        if self.avg_bits is not None:
            info["avg_bits"] = self.avg_bits
        else:
            info["bitops_budget"] = self.bitops_budget
        return info

    def _unit_info(self, t: int, applied: float) -> dict[str, Any]:
        return {"layer": self.layer_names[self.unit_layer[t]], "target": "act" if self.unit_is_act[t] else "weight"}

    def _build_candidate(self) -> nn.Module:
        specs = self.layer_specs(self.policy)
        return quantize_model(self.model, specs, act_ranges=self._act_ranges,
                              codebooks=self._codebook_values(specs), seed=0)

    def _candidate_macs(self, candidate: nn.Module) -> float:
        return self.total_macs  # quantization keeps every multiply-accumulate

    def _candidate_params(self, candidate: nn.Module) -> int:
        return self.total_params  # and every weight (at fewer bits: model_size_bytes)

    def _evaluate(self):
        measured, extra = super()._evaluate()
        size = storage_bytes(self.compressed_model())
        extra.update(model_size_bytes=size, size_ratio=size / self.fp32_bytes)
        return measured, extra

    @property
    def total_macs(self) -> float:
        return float(self.table.total_macs)

    def _normalise_value(self, t: int, value: float) -> float:
        return (float(value) - self.min_bits) / (self.max_bits - self.min_bits)

    def _subject(self) -> str:
        return self.model_name
