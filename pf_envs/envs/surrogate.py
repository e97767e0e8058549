"""Surrogate envs: the real env's episode (spaces, observation, budget clamp, info keys) with the
reward from a regressor fitted on real episodes: no images, no training, 2-4 ms of CPU an
episode (``docs/surrogate.md``).

>>> import gymnasium as gym, pf_envs
>>> env = gym.make("Surrogate-ChannelPrune-ResNet20-v0", flops_budget=0.3)      # doctest: +SKIP
>>> env = gym.make("Surrogate-ChannelPrune-ResNet20-v0", data="my_episodes.jsonl", surrogate="gp")  # doctest: +SKIP

A surrogate env is the real method's env class (here :class:`pf_envs.envs.channel_prune.ChannelPruneEnv`)
built from the model's architecture only (the zoo's, untrained): the same channel groups, cost
table, unit value grids, static features, clamp and per-step ``info``. The settings are those
the dataset was collected with (its header); only the budget (within the budgets the dataset
covers), the reward function, the regressor family and its seed can be chosen. At the last
step the regressor (:mod:`pf_envs.surrogate_model`) predicts the accuracy of the applied policy;
the reward is the env's reward function of it, as in the real env. The final ``info`` has the
real env's keys, plus ``surrogate_std`` (the prediction's uncertainty: the GP's posterior
standard deviation, or the spread of an ensemble's members),
``surrogate`` (the family) and ``surrogate_data`` (the dataset's sha256 prefix);
``params_ratio`` is computed from the cost table (weights of conv / linear layers scale with
their kept input and output channels; BatchNorm parameters are counted as kept).

The regressor is fitted when the env is made (on every episode of the dataset) and kept for the
life of the process (the GP's hyperparameters and the MLP's weights also on disk), so a league
that makes many envs fits it once per family and seed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from torch import nn

from pf_envs import zoo
from pf_envs.cache import cache_key
from pf_envs.core import CompressionEnv
from pf_envs.envs.channel_prune import ChannelPruneEnv
from pf_envs.envs.uniform_quant import UniformQuantEnv
from pf_envs.episode_data import DATASETS, EpisodeData, load_episodes
from pf_envs.model_env import count_params
from pf_envs.rewards import REWARDS, Measurements
from pf_envs.surrogate_model import FAMILIES, SurrogateRegressor, fit_on

#: Bumped when a surrogate env's reward recipe changes (part of its recovery fingerprint).
SURROGATE_VERSION = 1
#: The default regressor family of a dataset that is not shipped (a shipped one's is its
#: ``DATASETS`` entry's ``family``, chosen by held-out error on it: docs/surrogate.md).
DEFAULT_FAMILY = "gp_warped"
#: Input size of each dataset's images (what the cost table is counted at).
INPUT_SIZES: dict[str, int] = {"cifar10": 32, "imagenet": 224}
#: Slack on the dataset's budget range (budgets are drawn per block, rounded to 4 decimals).
BUDGET_SLACK = 1e-3

#: Bumped when a family's fitting recipe changes without a change of its settings (part of the
#: on-disk fit's key only: a stale fit is never reused).
FIT_VERSION = 2
#: Families whose fit is kept on disk (the MLP's weights; the GPs' kernel hyperparameters).
CACHED_FAMILIES = ("mlp", "gp", "gp_warped")

_FITTED: dict[tuple[str, str, int], SurrogateRegressor] = {}


def fitted_regressor(data: EpisodeData, family: str, seed: int = 0) -> SurrogateRegressor:
    """The regressor of ``family`` fitted on ``data`` (memoised per process by the dataset's
    sha256, the family and the seed)."""
    key = (data.sha256, family, int(seed))
    if key not in _FITTED:
        if family in CACHED_FAMILIES and data.sha256:  # slow fits: their result is kept on disk
            import sklearn

            from pf_envs.cache import cached

            cls = FAMILIES[family]
            # every resolved setting (the common ones too: warp, target), so a changed family never reuses a fit
            settings = cls(seed).settings
            disk = cache_key(f"surrogate-{family}", data=data.sha256, seed=int(seed), settings=settings,
                             sklearn=sklearn.__version__, version=SURROGATE_VERSION, fit=FIT_VERSION)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                state = cached(disk, lambda: fit_on(data, family, seed).state(), subdir="surrogates")  # type: ignore[attr-defined]
                _FITTED[key] = cls(seed).load_state(state, data)  # type: ignore[attr-defined]
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optimiser convergence chatter
                _FITTED[key] = fit_on(data, family, seed)
    return _FITTED[key]


class SurrogateMixin:
    """What a surrogate env adds to its method's env class: built from the dataset's header and
    the model's architecture; scored by the regressor. Subclasses set :attr:`METHOD_CLASS`."""

    METHOD_CLASS: ClassVar[type] = CompressionEnv
    #: The kwargs a surrogate env takes (besides its method's budget kwarg).
    OWN_KWARGS: ClassVar[tuple[str, ...]] = ("data", "surrogate", "surrogate_seed", "reward", "render_mode")

    data: EpisodeData
    regressor: SurrogateRegressor

    def _surrogate_init(self, data: str | EpisodeData, budget: float | None, surrogate: str | None, surrogate_seed: int,
                        reward: str, render_mode: str | None, unknown: dict[str, Any]) -> None:
        cls = type(self)
        bk = cls.budget_kwarg  # type: ignore[attr-defined]
        if unknown:
            raise TypeError(f"{cls.__name__} got unknown keyword argument(s) {sorted(unknown)}: a surrogate env has "
                            f"the settings its dataset was collected with; it takes only {bk} and "
                            f"{list(self.OWN_KWARGS)}")
        if render_mode is not None:
            raise ValueError(f"render_mode={render_mode!r}: a surrogate env has no rendering")
        if surrogate is not None and surrogate not in FAMILIES:
            raise ValueError(f"unknown surrogate {surrogate!r}; choose one of {sorted(FAMILIES)}")
        if reward not in REWARDS:
            raise ValueError(f"unknown reward {reward!r}; choose one of {sorted(REWARDS)}")
        self.data = data if isinstance(data, EpisodeData) else load_episodes(data)
        surrogate = surrogate or default_family(self.data)
        header = self.data.header
        method = _entry_class(header.get("env_id", ""))
        if method is None or not issubclass(method, self.METHOD_CLASS):
            raise ValueError(f"the dataset was collected on {header.get('env_id')!r}, not a "
                             f"{self.METHOD_CLASS.__name__} env: use the surrogate class of its method")
        lo, hi = float(np.min(self.data.budget)), float(np.max(self.data.budget))
        planned = (header.get("plan") or {}).get("budgets")
        if planned:  # the range the collection drew its budgets from (the data's own ends fall inside it)
            lo, hi = min(lo, float(planned[0])), max(hi, float(planned[1]))
        budget = float(header.get("reference_budget", 0.5) if budget is None else budget)
        if not lo - BUDGET_SLACK <= budget <= hi + BUDGET_SLACK:
            raise ValueError(f"{bk}={budget} is outside the budgets the surrogate's dataset covers "
                             f"[{lo:.3f}, {hi:.3f}]; choose one inside or collect episodes there")
        settings = {**header["env_settings"], bk: budget, "reward": reward}
        CompressionEnv.__init__(self, reward=reward)  # type: ignore[arg-type]
        model = settings.get("model")
        if not isinstance(model, str) or model not in zoo.MODELS:
            raise ValueError(f"the dataset's model {model!r} is not a zoo model: a surrogate env needs its "
                             "architecture")
        self.settings = settings
        self.spec = zoo.get_spec(model)
        self.model_name = self.spec.name
        self.model: nn.Module = zoo.create_model(model, settings["dataset"]).eval()
        self.input_size = INPUT_SIZES[settings["dataset"]]
        self._setup_method()  # type: ignore[attr-defined]
        self.model_spec, self.spec = self.spec, None  # `spec` is Gymnasium's (gym.make sets it), as in the real env
        if self.num_steps != self.data.num_units:  # type: ignore[attr-defined]
            raise ValueError(f"the dataset's policies have {self.data.num_units} values but this env has "
                             f"{self.num_steps} steps: the zoo's architecture differs from the one it was collected on")  # type: ignore[attr-defined]
        self.total_params = count_params(self.model)
        self.accuracy_original = float(header["accuracy_original"])
        self.model_fingerprint = header.get("model_fingerprint")
        self.family, self.surrogate_seed = surrogate, int(surrogate_seed)
        self.recovery_fingerprint = cache_key(
            "surrogate", version=SURROGATE_VERSION, data=self.data.sha256, family=surrogate, seed=int(surrogate_seed),
            budget=budget, reward=reward, env=header.get("recovery_fingerprint"))
        self.regressor = fitted_regressor(self.data, surrogate, surrogate_seed)
        self.last_std = float("nan")

    # -- scoring ------------------------------------------------------------------------------------
    def _surrogate_params_ratio(self, values: Sequence[float]) -> float:
        raise NotImplementedError

    def _evaluate(self) -> tuple[Measurements, dict[str, Any]]:
        values = self.policy  # type: ignore[attr-defined]
        ratio = self.policy_cost_ratio(values)  # type: ignore[attr-defined]
        mean, std = self.regressor.predict(np.asarray(values, np.float64)[None], ratio)
        self.last_std = float(std[0])
        acc = float(np.clip(mean[0], 0.0, 1.0))
        measured = Measurements(
            accuracy=acc, accuracy_original=self.accuracy_original, macs=ratio * self.cost.reference,  # type: ignore[attr-defined]
            flops_ratio=ratio, params_ratio=self._surrogate_params_ratio(values))
        return measured, {"reward_samples": int(self.settings.get("reward_samples", 0)), "surrogate_std": self.last_std,
                          "surrogate": self.family, "surrogate_data": self.data.sha256[:12]}

    def compressed_model(self) -> nn.Module:
        raise RuntimeError("a surrogate env builds no model: replay the policy on the real env "
                           f"({self.data.header.get('env_id')}) to get one")

    def policy_model(self, values: Sequence[float]) -> nn.Module:
        raise RuntimeError("a surrogate env builds no model: replay the policy on the real env "
                           f"({self.data.header.get('env_id')}) to get one")


def default_family(data: EpisodeData) -> str:
    """The regressor family a surrogate env uses when none is given: a shipped dataset's own
    (its :data:`~pf_envs.episode_data.DATASETS` entry, matched by sha256, also when loaded from
    a copy), else :data:`DEFAULT_FAMILY`."""
    for entry in DATASETS.values():
        if data.sha256 and entry["sha256"] == data.sha256:
            return str(entry.get("family", DEFAULT_FAMILY))
    return DEFAULT_FAMILY


def surrogate_class(data: EpisodeData) -> type[SurrogateMixin]:
    """The surrogate env class of the method ``data`` was collected on (its header's env id)."""
    method = _entry_class(str(data.header.get("env_id", "")))
    for cls in SurrogateMixin.__subclasses__():
        if method is not None and issubclass(method, cls.METHOD_CLASS):
            return cls
    raise ValueError(f"no surrogate env for datasets of {data.header.get('env_id')!r}; surrogate envs exist for "
                     f"{[c.METHOD_CLASS.__name__ for c in SurrogateMixin.__subclasses__()]}")


def _entry_class(env_id: str) -> type | None:
    import importlib

    import gymnasium as gym

    import pf_envs  # noqa: F401  (registers the ids)

    try:
        entry = gym.spec(env_id).entry_point
    except gym.error.Error:
        return None
    if isinstance(entry, str):
        module, name = entry.split(":")
        entry = getattr(importlib.import_module(module), name)
    return entry if isinstance(entry, type) else None


class SurrogateChannelPruneEnv(SurrogateMixin, ChannelPruneEnv):
    """:class:`~pf_envs.envs.channel_prune.ChannelPruneEnv` scored by a surrogate.

    Args:
        data: a shipped dataset name (:data:`pf_envs.episode_data.DATASETS`) or a dataset file
            (``.npz``, ``.jsonl``, ``.jsonl.gz``) collected on a ChannelPrune env.
        flops_budget: within the budgets the dataset covers (default: its reference budget, 0.5).
        surrogate: regressor family (:data:`pf_envs.surrogate_model.FAMILIES`; default: the
            dataset's, :func:`default_family`).
        surrogate_seed: seed of the regressor's fit (bootstrap samples, initial weights).
        reward: reward name (``pf_envs.rewards.REWARDS``), computed from the predicted accuracy.
    """

    METHOD_CLASS = ChannelPruneEnv

    def __init__(self, data: str | EpisodeData = "channelprune_resnet20", *, flops_budget: float | None = None,
                 surrogate: str | None = None, surrogate_seed: int = 0, reward: str = "accuracy",
                 render_mode: str | None = None, **unknown: Any) -> None:
        self._surrogate_init(data, flops_budget, surrogate, surrogate_seed, reward, render_mode, unknown)

    def _make_pruner(self) -> None:  # type: ignore[override]
        return None  # nothing is pruned: no layer statistics, no data

    def _setup_method(self) -> None:
        super()._setup_method()
        t = self.table
        self._param_terms = [(r.params, t.in_group.get(r.name), t.out_group.get(r.name), r.kind == "depthwise")
                             for r in t.rows]
        self._other_params = count_params(self.model) - sum(p for p, *_ in self._param_terms)

    def _surrogate_params_ratio(self, values: Sequence[float]) -> float:
        keep = dict(zip(self.step_groups, values))
        total = float(self._other_params)
        for params, g_in, g_out, depthwise in self._param_terms:
            r_out = keep.get(g_out, 1.0) if g_out is not None else 1.0
            r_in = 1.0 if depthwise or g_in is None else keep.get(g_in, 1.0)
            total += params * r_in * r_out
        return total / self.total_params if self.total_params else math.nan


class SurrogateUniformQuantEnv(SurrogateMixin, UniformQuantEnv):
    """:class:`~pf_envs.envs.uniform_quant.UniformQuantEnv` scored by a surrogate (an ``avg_bits``
    budget; the dataset's ``act_bits``, bit range and order).

    Args:
        data: a shipped dataset name or a dataset file collected on a UniformQuant env.
        avg_bits: within the budgets the dataset covers (default: its reference budget).
        surrogate / surrogate_seed / reward: as for :class:`SurrogateChannelPruneEnv`.

    ``model_size_bytes`` is the real env's storage (:func:`learners.quantization.storage_bytes`)
    without building the model: its weights at their bits plus what does not depend on them
    (per-channel scales and zero points, biases, BatchNorm), measured once on the architecture
    quantized at the smallest bits.
    """

    METHOD_CLASS = UniformQuantEnv

    def __init__(self, data: str | EpisodeData = "uniformquant_resnet20", *, avg_bits: float | None = None,
                 surrogate: str | None = None, surrogate_seed: int = 0, reward: str = "accuracy",
                 render_mode: str | None = None, **unknown: Any) -> None:
        self._surrogate_init(data, avg_bits, surrogate, surrogate_seed, reward, render_mode, unknown)

    def _activation_ranges(self) -> dict[str, tuple[float, float]]:
        return {n: (0.0, 1.0) for n in self.layer_names}  # no data: the ranges only start quantizers

    def _setup_method(self) -> None:
        if self.settings.get("bitops_budget") is not None:
            raise ValueError("a surrogate UniformQuant env takes an avg_bits budget; the dataset has bitops_budget")
        super()._setup_method()
        from learners.quantization import quantize_model, storage_bytes

        floor = [float(self.min_bits)] * self.num_steps
        specs = self.layer_specs(floor)
        quantized = quantize_model(self.model, specs, act_ranges=self._act_ranges, codebooks=None, seed=0)
        self._size_fixed_bits = 8 * storage_bytes(quantized) - self.min_bits * sum(self.layer_weights)

    def model_size_bytes(self, values: Sequence[float]) -> int:
        """The real env's ``model_size_bytes`` of the policy ``values`` (unit order)."""
        w, _ = self.layer_bits(list(values))
        return math.ceil((self._size_fixed_bits + sum(b * n for b, n in zip(w, self.layer_weights))) / 8)

    def _surrogate_params_ratio(self, values: Sequence[float]) -> float:
        return 1.0  # quantization keeps every weight (the real env's params_ratio)

    def _evaluate(self) -> tuple[Measurements, dict[str, Any]]:
        measured, extra = SurrogateMixin._evaluate(self)
        measured = Measurements(measured.accuracy, measured.accuracy_original, float(self.total_macs), 1.0, 1.0)
        size = self.model_size_bytes(self.policy)
        extra.update(model_size_bytes=size, size_ratio=size / self.fp32_bytes)
        return measured, extra


__all__ = ["DEFAULT_FAMILY", "default_family", "surrogate_class", "SurrogateChannelPruneEnv", "SurrogateMixin",
           "SurrogateUniformQuantEnv", "fitted_regressor"]
