"""WeightSparse: per-layer weight sparsity (Zhu & Gupta 2017) as a Gymnasium environment
(PocketFlow's WeightSparseLearner with its RL hyper-parameter search).

>>> import gymnasium as gym, pf_envs
>>> env = gym.make("WeightSparse-ResNet20-v0", sparsity=0.75, ft_iters=0)
>>> obs, info = env.reset(seed=0)
>>> while True:
...     obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
...     if terminated:
...         break
>>> info["accuracy"], info["sparsity"]  # doctest: +SKIP

One step per prunable weight tensor: every convolution and the classifier, in module order;
depthwise kernels stay dense (as in PocketFlow). The action ``a`` in ``[-1, 1]`` maps to the
layer's sparsity with PocketFlow's piecewise-linear rule around the overall target ``s``
(PocketFlow's action ``u = (a + 1) / 2`` in ``[0, 1]``): ``a = -1`` -> ``max(0, 1 - 3 (1 - s))``,
``a = 0`` -> ``s``, ``a = +1`` -> ``1 - (1 - s) / 3``, linear on each half
(:class:`SparsitySpace`). The core's clamp then raises a layer's sparsity where needed so that
the overall target (nonzero weights of the pruned layers <= ``(1 - s)`` x theirs) stays
reachable with every later layer at its sparsest.

After the last step the candidate is built from the original weights: each layer's weights of
smallest magnitude are zeroed (``ceil(s_l n_l)`` of them), then ``reg_iters`` steps of
layer-wise regression per layer move the kept weights towards the original layer outputs on
``reg_images`` training images, then the core's recovery: ``ft_iters`` steps of global
fine-tuning with the masks held after every step (:meth:`WeightSparseEnv._step_hook`),
BatchNorm re-estimation, and accuracy on ``reward_samples`` held-out images.

Observation (10 values in [0, 1]): step index, input channels, output channels, kernel height,
kernel width, stride, weights of the layer (these 7 min-max normalised over the steps),
weights removed so far and weights of later layers (fractions of all prunable weights), and
the previous applied sparsity.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from learners.sparsity import (
    GradualPruning,
    MaskKeeper,
    apply_masks,
    layerwise_regression,
    magnitude_ranks,
    mask_from_ranks,
    prunable_layers,
    pruned_count,
    sparse_size_bytes,
)
from pf_envs.budget import NonzeroWeights, UnitSpace
from pf_envs.model_env import COMMON_SETTINGS, ModelCompressionEnv
from pf_envs.rewards import Measurements
from pf_envs.settings import Setting, bind_settings, table_signature

OBSERVATION_FEATURES: tuple[str, ...] = (
    "step", "in_channels", "out_channels", "kernel_h", "kernel_w", "stride", "params",
    "reduced", "rest", "prev_sparsity",
)

SETTINGS: dict[str, Setting] = {
    **COMMON_SETTINGS,
    "sparsity": Setting("float", default=0.75, low=0, high=1, high_open=True,
                        doc="overall target sparsity over the prunable weights (fraction zeroed)"),
    "reg_iters": Setting("int", default=0, low=0, doc="layer-wise regression steps per layer (0: none)"),
    "reg_images": Setting("int", default=128, low=1, doc="training images the layer-wise regression fits on"),
    "reg_lr": Setting("float", default=0.001, low=0, low_open=True,
                      doc="Adam learning rate of the layer-wise regression"),
}

#: Seed of the fixed training subset of the layer-wise regression.
REGRESSION_SEED = 4


@dataclass(frozen=True)
class SparsitySpace(UnitSpace):
    """A layer's sparsities under PocketFlow's piecewise-linear action rule: action -1 ->
    ``low``, 0 -> ``mid`` (the overall target), +1 -> ``high``, linear on each half.

    Attributes:
        mid: the sparsity at action 0 (``low <= mid < high``).
    """

    mid: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.low <= self.mid < self.high:
            raise ValueError(f"need low <= mid < high, got {self.low}, {self.mid}, {self.high}")

    @classmethod
    def around(cls, target: float) -> SparsitySpace:
        """PocketFlow's range around the overall target ``s``: ``[max(0, 1 - 3 (1 - s)), 1 - (1 - s) / 3]``."""
        return cls(max(0.0, 1.0 - 3.0 * (1.0 - target)), 1.0 - (1.0 - target) / 3.0, None, float(target))

    def to_value(self, action: float) -> float:
        a = float(action)
        if a <= 0.0:
            return self.mid + a * (self.mid - self.low)
        return self.mid + a * (self.high - self.mid)

    def to_action(self, value: float) -> float:
        v = float(value)
        if v <= self.mid:
            return (v - self.mid) / (self.mid - self.low) if self.mid > self.low else 0.0
        return (v - self.mid) / (self.high - self.mid)


#: The env's ``__init__`` signature, made from its settings table.
_SIGNATURE = table_signature(SETTINGS)


class WeightSparseEnv(ModelCompressionEnv):
    """Per-layer weight sparsity under an overall sparsity target.

    Args:
        model: a zoo name (``mobilenet_v1``, ``resnet20``, ...) or your own trained ``nn.Module``
            (copied, never modified).
        dataset: ``cifar10`` or ``imagenet``.
        checkpoint / data_root / input_size: as every model env (see ``docs/environments.md``).
        sparsity: overall target, the fraction of the prunable weights zeroed, in [0, 1)
            (default 0.75). The policy's nonzero prunable weights never exceed ``1 - sparsity``
            of them.
        reg_iters: layer-wise regression steps per pruned layer (Adam; PocketFlow: 20; default 0:
            measured to buy nothing here at a large cost, see docs/sparsity.md).
        reg_images: training images (a fixed subset) the regression fits on.
        reg_lr: the regression's Adam learning rate.
        ft_iters: global fine-tuning SGD steps with the masks held (PocketFlow: 400; default 100,
            an episode then costs about one default ChannelPrune episode).
        ft_batch_size / ft_lr: fine-tuning batch size and initial learning rate (cosine to 0;
            default: the zoo's for the model).
        reward: ``accuracy`` (default), ``acc_log_sparsity`` (``-(1 - acc) log(nonzero
            parameters)``) or any other of ``pf_envs.rewards.REWARDS`` that needs no MACs change.
        reward_split / reward_samples / bn_batches / bn_batch_size / bn_augment / device / cache:
            as every model env.

    Attributes (beyond :class:`pf_envs.model_env.ModelCompressionEnv`'s):
        layers: the pruned layers' names, one per step.
        layer_params: their weight counts.
        masks: the masks of the last candidate built (layer name -> 0/1 tensor).
    """

    SETTINGS: ClassVar[dict[str, Setting]] = SETTINGS
    METHOD: ClassVar[str] = "WeightSparse"
    STATIC_FEATURES: ClassVar[tuple[str, ...]] = OBSERVATION_FEATURES[:7]
    DYNAMIC_FEATURES: ClassVar[tuple[str, ...]] = OBSERVATION_FEATURES[7:]
    budget_kwarg: ClassVar[str] = "sparsity"
    floor_kwarg: ClassVar[str] = "the sparsest layers"
    ratio_key: ClassVar[str | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = bind_settings(_SIGNATURE, (self, *args), kwargs)
        settings["__class__"] = WeightSparseEnv  # what this signature's locals() held: fingerprints unchanged
        super().__init__(settings, settings["unknown"])

    __init__.__signature__ = _SIGNATURE  # made from SETTINGS: the keywords and their defaults

    # -- the method ------------------------------------------------------------------------------
    def _setup_method(self) -> None:
        s = self.settings
        self.sparsity_target = float(s["sparsity"])
        self.reg_iters, self.reg_lr = int(s["reg_iters"]), float(s["reg_lr"])
        self.layers = prunable_layers(self.model)
        if not self.layers:
            raise ValueError(f"{self.model_name} has no prunable layer (no convolution but depthwise ones, no linear)")
        modules = dict(self.model.named_modules())
        self.layer_params = [modules[n].weight.numel() for n in self.layers]
        space = SparsitySpace.around(self.sparsity_target)
        rows = [self._static_row(t, modules[n]) for t, n in enumerate(self.layers)]
        self._setup_budget([space] * len(self.layers), NonzeroWeights(self.layer_params),
                           1.0 - self.sparsity_target, rows)
        self.reg_data = self.data.train.subset(int(s["reg_images"]), seed=REGRESSION_SEED)
        self._reg_batch: torch.Tensor | None = None
        self.masks: dict[str, torch.Tensor] = {}
        self._ranks = {n: magnitude_ranks(modules[n].weight) for n in self.layers}  # the weights never change

    def _static_row(self, t: int, module: nn.Module) -> list[float]:
        if isinstance(module, nn.Conv2d):
            return [t, module.in_channels, module.out_channels, module.kernel_size[0], module.kernel_size[1],
                    module.stride[0], module.weight.numel()]
        return [t, module.in_features, module.out_features, 1, 1, 1, module.weight.numel()]

    def _regression_images(self) -> torch.Tensor:
        """The fixed regression images (plain, not augmented), loaded once."""
        if self._reg_batch is None:
            self._reg_batch = torch.cat([x for x, _ in self.reg_data.batches(256)])
        return self._reg_batch

    # -- core hooks --------------------------------------------------------------------------------
    def _later_cost(self, t: int) -> float:
        """The weights of the layers after ``t`` (PocketFlow's "params remaining")."""
        return float(sum(self.layer_params[t + 1:]))

    def pruned_counts(self, values: list[float] | None = None) -> list[int]:
        """Weights each layer zeroes under ``values`` (default: this episode's applied sparsities)."""
        values = self.applied if values is None else values
        return [pruned_count(n, v) for n, v in zip(self.layer_params, values)]

    def _unit_info(self, t: int, applied: float) -> dict[str, Any]:
        n = self.layer_params[t]
        return {"layer": self.layers[t], "params": n, "kept_params": n - pruned_count(n, applied)}

    def _policy_info(self) -> dict[str, Any]:
        zeros = self.pruned_counts()
        total = sum(self.layer_params)
        return {
            "sparsities": [k / n for k, n in zip(zeros, self.layer_params)],
            "sparsity": sum(zeros) / total,
            "sparsity_target": self.sparsity_target,
            "kept_prunable_params": total - sum(zeros),
        }

    def _build_candidate(self) -> nn.Module:
        """The original weights with each layer's smallest-magnitude weights zeroed, then the
        layer-wise regression (``reg_iters`` steps per layer; deterministic: fixed images)."""
        model = copy.deepcopy(self.model)
        self.masks = {n: mask_from_ranks(self._ranks[n], s) for n, s in zip(self.layers, self.applied)}
        apply_masks(model, self.masks)
        if self.reg_iters:
            model.to(self.device)
            layerwise_regression(model, self.model.to(self.device), self.masks,
                                 self._regression_images().to(self.device), steps=self.reg_iters, lr=self.reg_lr)
            self.model.cpu()
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def _step_hook(self, candidate: nn.Module):
        return MaskKeeper(self.masks)

    def _candidate_params(self, candidate: nn.Module) -> int:
        return sum(int(torch.count_nonzero(p)) for p in candidate.parameters())

    def _evaluate(self) -> tuple[Measurements, dict[str, Any]]:
        measured, extra = super()._evaluate()
        candidate = self.compressed_model()
        nonzero = self._candidate_params(candidate)
        extra.update(
            nonzero_params=nonzero,
            sparse_bytes=sparse_size_bytes(candidate, self.layers),
            dense_bytes=4 * sum(p.numel() for k, p in candidate.state_dict().items() if p.is_floating_point()),
        )
        return dataclasses.replace(measured, params=float(nonzero)), extra

    def _resolved_settings(self) -> dict[str, Any]:
        return {"layers": list(self.layers)}

    # -- re-training -------------------------------------------------------------------------------
    def retrain_hook(self, model: nn.Module, total_steps: int) -> GradualPruning:
        """Zhu & Gupta's gradual pruning to this episode's (or the last played policy's)
        per-layer sparsities: :class:`learners.sparsity.GradualPruning` (cubic ramp from 10% to
        50% of ``total_steps``, masks refreshed from the magnitudes with regrowth until then,
        frozen after, applied after every step). Play the policy first (``policy_model``)."""
        if len(self.applied) != self.num_steps:
            raise RuntimeError("no policy has been played: call policy_model(values) (or play an episode) first")
        return GradualPruning(dict(zip(self.layers, self.applied)), total_steps)

    def layer_sparsities(self, model: nn.Module) -> dict[str, float]:
        """The measured sparsity (fraction of exact zeros) of every pruned layer of ``model``."""
        modules = dict(model.named_modules())
        return {n: 1.0 - int(torch.count_nonzero(modules[n].weight)) / modules[n].weight.numel()
                for n in self.layers}

