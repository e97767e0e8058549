"""The model environment: what every method on a real model shares, written once.

:class:`ModelCompressionEnv` adds to the episode core (:class:`pf_envs.core.CompressionEnv`):
checked kwargs (:mod:`pf_envs.settings`), the model (a zoo name, a checkpoint, or your own
``nn.Module``), the dataset and its splits, the fixed reward subset and BatchNorm images, the
baseline accuracy (cached on disk), the fingerprints the search harness records, the
recovery of every candidate (:func:`learners.recovery.recover`), the measurements and
``compressed_model()``.

A method subclasses it, declares its own kwargs in ``SETTINGS`` and implements four hooks:
:meth:`_setup_method` (units, cost, budget, static features: ``self._setup_budget(...)``),
:meth:`_build_candidate` (the compressed model of ``self.applied``), and optionally
:meth:`_candidate_macs` / :meth:`_candidate_params` (what the measurements count) and
:meth:`_step_hook` (kept through fine-tuning, e.g. sparsity masks).
"""

from __future__ import annotations

import copy
import functools
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from learners.recovery import BN_SEED, BatchNormReference, RecoveryRecipe, batchnorm_reference, bn_batches, recover
from learners.training import evaluate
from pf_envs import zoo
from pf_envs.cache import cache_key, cached, decode_fraction, model_fingerprint
from pf_envs.core import CompressionEnv, resolve_device
from pf_envs.data import DATASETS, load_dataset
from pf_envs.layers import count_macs
from pf_envs.rewards import REWARDS, Measurements
from pf_envs.settings import Setting, check_settings, plain

#: The kwargs every model environment takes.
COMMON_SETTINGS: dict[str, Setting] = {
    "model": Setting("any", default="mobilenet_v1",
                     doc="a zoo name or your own trained nn.Module (copied, never modified)"),
    "dataset": Setting("choice", default="cifar10", choices=DATASETS, doc="the dataset the model was trained on"),
    "checkpoint": Setting("path", default=None, optional=True,
                          doc="state-dict file for a zoo model (default: shipped)"),
    "data_root": Setting("path", default=None, optional=True,
                         doc="dataset folder (default: $PF_DATA_DIR, then the cache)"),
    "input_size": Setting("int", default=None, low=1, optional=True, doc="input height and width; must be the data's"),
    "ft_iters": Setting("int", default=100, low=0, doc="SGD iterations of fast fine-tuning before scoring (0: none)"),
    "ft_batch_size": Setting("int", default=64, low=1, doc="fine-tuning batch size"),
    "ft_lr": Setting("float", default=None, low=0, low_open=True, optional=True,
                     doc="fine-tuning initial learning rate (None: the zoo's for the model, 0.01 otherwise)"),
    "reward": Setting("choice", default="accuracy", choices=tuple(REWARDS),
                      doc="reward function (pf_envs.rewards.REWARDS)"),
    "reward_split": Setting("choice", default="val", choices=("val", "test"), doc="split the reward is measured on"),
    "reward_samples": Setting("int", default=5000, low=1, doc="images of that split used (a fixed subset)"),
    "bn_batches": Setting("int", default=20, low=0, doc="training batches used to re-estimate BatchNorm statistics"),
    "bn_batch_size": Setting("int", default=128, low=1, doc="images per BatchNorm batch"),
    "bn_augment": Setting("bool", default=True, doc="re-estimate BatchNorm statistics on augmented images"),
    "ft_bf16": Setting("bool", default=False,
                       doc="fine-tune under bfloat16 autocast (BatchNorm re-estimation and scoring stay fp32); "
                           "for GPUs, see docs/gpu.md"),
    "ft_capture": Setting("bool", default=False,
                          doc="on CUDA, capture the fine-tuning step as a CUDA graph (ignored on the CPU; "
                              "benchmarks/gpu.py measures whether it pays when every candidate has new shapes)"),
    "device": Setting("any", default="cpu", doc="cpu, cuda, cuda:N or auto"),
    "cache": Setting("bool", default=True, doc="keep layer statistics and the baseline accuracy on disk"),
    "render_mode": Setting("any", default=None, optional=True, doc="no rendering: None only"),
}

#: Settings that do not change what a policy scores (where it runs, caching, rendering, and
#: the model, which enters the fingerprint through its weights).
NOT_RECOVERY: tuple[str, ...] = ("self", "model", "checkpoint", "data_root", "device", "cache", "render_mode",
                                 "unknown")


#: Settings left out of the recovery fingerprint at these values: how every run recorded before
#: they existed was scored, so those runs still resume and replay.
FINGERPRINT_DEFAULTS: dict[str, Any] = {"bn_mode": "reestimate", "ft_bf16": False, "ft_capture": False}


def _drop_defaults(settings: dict[str, Any]) -> None:
    for key, default in FINGERPRINT_DEFAULTS.items():
        if key in settings and settings[key] == default:
            del settings[key]


#: A base model whose accuracy is at most this many times chance (1 / classes) is warned about.
NEAR_CHANCE = 2.0


class NearChanceWarning(UserWarning):
    """The base model scores near chance on the reward images (untrained, or other data)."""


def count_params(model: nn.Module) -> int:
    """Parameters of ``model`` (every element, zeros included)."""
    return sum(p.numel() for p in model.parameters())


class ModelCompressionEnv(CompressionEnv):
    """A compression method on a trained model; see the module docstring for the hooks.

    Subclasses call ``super().__init__(settings)`` with the dict of every kwarg they were
    given (``locals()`` at the top of their ``__init__``, which keeps ``help()`` useful).

    Attributes:
        model: the original model (eval mode, frozen, on the CPU).
        data: the :class:`pf_envs.data.DatasetBundle`.
        reward_data / bn_data: the fixed reward images and BatchNorm re-estimation images.
        recipe: the :class:`learners.recovery.RecoveryRecipe` every candidate is recovered with.
        accuracy_original: the original model's accuracy on the reward images.
        total_macs / total_params: the original model's MACs (one sample) and parameters.
    """

    #: Bumped whenever the way a candidate is recovered and scored changes, so that the search
    #: harness never resumes a run recorded under another recipe (2: BatchNorm statistics
    #: re-estimated on augmented images).
    RECOVERY_VERSION: ClassVar[int] = 2
    SETTINGS: ClassVar[dict[str, Setting]] = COMMON_SETTINGS
    #: The method's name in messages.
    METHOD: ClassVar[str] = "ModelCompression"

    def __init__(self, settings: dict[str, Any], unknown: dict[str, Any] | None = None) -> None:
        name = type(self).__name__
        given = {k: v for k, v in settings.items() if k not in ("self", "unknown", "__class__")}
        check_settings(name, self.SETTINGS, {**given, **(unknown or {})})
        # the fingerprint's settings, as given (values that pass the checks are not converted);
        # "__class__" was part of it since recipes were recorded (a locals() of __init__), and
        # stays, so that runs recorded before this module existed still resume.
        self._fingerprint_settings = {k: plain(v) for k, v in settings.items() if k not in NOT_RECOVERY}
        _drop_defaults(self._fingerprint_settings)
        super().__init__(given["reward"])
        if given.get("render_mode") is not None:
            raise ValueError(f"render_mode={given['render_mode']!r}: {self.METHOD} has no rendering")
        self.settings = given
        self.device = resolve_device(given["device"])

        # Model and data -------------------------------------------------------------------
        self.data = load_dataset(given["dataset"], given.get("data_root"))
        model = given["model"]
        if isinstance(model, nn.Module):
            self.model_name = type(model).__name__
            self.model = copy.deepcopy(model).cpu().eval()
            self.spec: zoo.ModelSpec | None = None
        elif isinstance(model, str):
            self.spec = zoo.get_spec(model)
            self.model_name = self.spec.name
            self.model = zoo.load(self.spec.name, given["dataset"], given.get("checkpoint"),
                                  num_classes=self.data.num_classes)
        else:
            raise TypeError(f"{name}: model must be a zoo name or an nn.Module, got {type(model).__name__}")
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.input_size = self._check_input_size(given.get("input_size"))
        self._check_classes()
        ft_lr = given.get("ft_lr")
        self.ft_lr = float(ft_lr if ft_lr is not None else (self.spec.ft_lr if self.spec else 0.01))
        self.recipe = RecoveryRecipe(
            ft_iters=int(given["ft_iters"]), ft_batch_size=int(given["ft_batch_size"]), ft_lr=self.ft_lr,
            bn_batch_size=int(given["bn_batch_size"]), bn_augment=bool(given["bn_augment"]), bn_seed=BN_SEED,
            bn_mode=str(given.get("bn_mode", "reestimate")), ft_bf16=bool(given.get("ft_bf16", False)),
            ft_capture=bool(given.get("ft_capture", False)),
        )
        # the recipe's settings as attributes too (read by benchmarks and users)
        self.ft_iters, self.ft_batch_size = self.recipe.ft_iters, self.recipe.ft_batch_size
        self.bn_batches, self.bn_batch_size = int(given["bn_batches"]), self.recipe.bn_batch_size
        self.bn_augment = self.recipe.bn_augment
        self.reward_split = given["reward_split"]
        self.reward_data = self.data.split(self.reward_split).subset(int(given["reward_samples"]), seed=0)
        self.bn_data = self.data.train.subset(int(given["bn_batches"]) * int(given["bn_batch_size"]), seed=2)
        self.total_params = count_params(self.model)
        self.cache_enabled = bool(given["cache"])
        self.model_fingerprint = model_fingerprint(self.model)

        # The method: units, cost, budget, its own statistics ------------------------------
        self._setup_method()
        if self.cost is None:
            raise NotImplementedError(f"{name}._setup_method must call self._setup_budget(...)")
        self.recovery_fingerprint = self._recovery_key(self._fingerprint_settings)
        acc_key = cache_key(
            "accuracy", model=self.model_fingerprint, split=self.reward_split, n=len(self.reward_data),
            data=self.data.source, size=self.input_size,
        )
        self.accuracy_original = cached(
            acc_key, lambda: evaluate(self.model.to(self.device), self.reward_data, device=self.device),
            enabled=self.cache_enabled, decode=decode_fraction,
        )
        self.model.cpu()
        self._warn_near_chance()
        self._compressed: nn.Module | None = None
        self._ft_seed = 0

    # -- fingerprints --------------------------------------------------------------------------
    def _recovery_key(self, fingerprint_settings: dict[str, Any]) -> str:
        return cache_key("recovery", **{
            **fingerprint_settings, "version": self.RECOVERY_VERSION, "model": self.model_fingerprint,
            **self._resolved_settings(), "input_size": self.input_size, "ft_lr": self.ft_lr,
        })

    def recovery_fingerprint_with(self, settings: dict[str, Any]) -> str:
        """The recovery fingerprint this env would have with ``settings`` in place of its own
        (e.g. the recorded values of kwargs a replay overrides, such as ``reward_split``).
        Settings resolved from others (``ft_lr``, ``channel_round``, ...) keep this env's values."""
        changed = dict(self._fingerprint_settings)
        changed.update({k: plain(v) for k, v in settings.items() if k not in NOT_RECOVERY})
        _drop_defaults(changed)
        return self._recovery_key(changed)

    # -- checks --------------------------------------------------------------------------------
    def _warn_near_chance(self) -> None:
        """Warn when the base model scores near chance: an untrained model (or one trained on
        other data or labels) gives rewards that say nothing about the compression."""
        chance = 1.0 / self.data.num_classes
        if self.accuracy_original <= NEAR_CHANCE * chance:
            warnings.warn(
                f"{type(self).__name__}: the base model {self.model_name} scores {self.accuracy_original:.3f} on "
                f"{len(self.reward_data)} {self.reward_split} images, near chance ({chance:.3g} for "
                f"{self.data.num_classes} classes): it looks untrained or trained for other data, so a search on "
                "it finds nothing useful; pass a trained model (model=..., checkpoint=...)",
                NearChanceWarning, stacklevel=3,
            )

    def _subject(self) -> str:
        return self.model_name

    def _check_input_size(self, input_size: int | None) -> int:
        """The data's input size; an ``input_size`` that differs is refused (the MACs would be
        counted for images the data does not have)."""
        size = int(self.data.input_size)
        if input_size is not None and int(input_size) != size:
            raise ValueError(
                f"{type(self).__name__}: input_size={input_size} but the {self.data.name} images are "
                f"{size}x{size}; costs would be counted for a size the data does not have. Leave "
                "input_size unset (it follows the data)"
            )
        return size

    @torch.no_grad()
    def _check_classes(self) -> None:
        """The model must output one logit per class of the dataset."""
        example = torch.zeros(1, 3, self.data.input_size, self.data.input_size)
        try:
            out = self.model(example)
        except Exception as exc:
            raise ValueError(
                f"{type(self).__name__}: the model does not run on a {tuple(example.shape)} input "
                f"({type(exc).__name__}: {exc}); pass a model for {self.data.name} images"
            ) from exc
        if not isinstance(out, torch.Tensor) or out.shape != (1, self.data.num_classes):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"{type(self).__name__}: the model outputs {shape} for one image, but {self.data.name} has "
                f"{self.data.num_classes} classes: it would be scored against labels it does not predict. "
                f"Pass a model whose classifier has {self.data.num_classes} outputs"
            )

    # -- hooks ---------------------------------------------------------------------------------
    def _setup_method(self) -> None:
        """Build the method's units, cost and static features (call ``self._setup_budget``)."""
        raise NotImplementedError

    def _resolved_settings(self) -> dict[str, Any]:
        """Method settings resolved from defaults (recorded in the recovery fingerprint)."""
        return {}

    def _build_candidate(self) -> nn.Module:
        """The compressed model of the finished episode (``self.applied``), a new module."""
        raise NotImplementedError

    def _candidate_macs(self, candidate: nn.Module) -> float:
        """MACs of the candidate for one sample (default: counted on it)."""
        return float(count_macs(candidate, self.input_size))

    def _candidate_params(self, candidate: nn.Module) -> int:
        """Parameters of the candidate (default: every element)."""
        return count_params(candidate)

    def _step_hook(self, candidate: nn.Module):
        """A ``hook(model, step)`` run after every fine-tuning step, or None."""
        return None

    # -- episode ---------------------------------------------------------------------------------
    def _begin_episode(self) -> None:
        self._ft_seed = int(self.np_random.integers(2**31 - 1))

    def _evaluate(self) -> tuple[Measurements, dict[str, Any]]:
        t0 = time.perf_counter()
        candidate = self._build_candidate().to(self.device)
        build_s = time.perf_counter() - t0
        result = recover(
            candidate, recipe=self.recipe, train_data=self.data.train, bn_data=self.bn_data,
            eval_data=self.reward_data, ft_seed=self._ft_seed, device=self.device,
            step_hook=self._step_hook(candidate),
            bn_reference=self.bn_reference if self.recipe.bn_mode == "shift" and len(self.bn_data) else None,
        )
        self._compressed = candidate
        self.last_timing = {"build_s": build_s, **result.timing}
        macs = self._candidate_macs(candidate)
        measured = Measurements(
            accuracy=result.accuracy,
            accuracy_original=self.accuracy_original,
            macs=macs,
            flops_ratio=macs / self.total_macs,
            params_ratio=self._candidate_params(candidate) / self.total_params,
        )
        return measured, {"reward_samples": len(self.reward_data)}

    # -- public ----------------------------------------------------------------------------------
    @functools.cached_property
    def bn_reference(self) -> BatchNormReference:
        """The original model's BatchNorm statistics and their estimate on this env's BatchNorm
        batches (what ``bn_mode="shift"`` measures candidates against; cached on disk)."""
        key = cache_key("bn-reference", version=1, model=self.model_fingerprint, data=self.data.source,
                        n=len(self.bn_data), batch=self.recipe.bn_batch_size, augment=self.recipe.bn_augment,
                        seed=self.recipe.bn_seed, size=self.input_size, device=self.device.type,
                        workers=getattr(self.bn_data, "num_workers", 0))

        def compute() -> dict[str, Any]:
            ref = batchnorm_reference(self.model, bn_batches(self.bn_data, self.recipe), device=self.device)
            self.model.cpu()
            return ref.to_lists()

        def decode(raw: Any) -> BatchNormReference:
            ref = BatchNormReference.from_lists(raw)
            names = {n for n, m in self.model.named_modules()
                     if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None}
            if set(ref.original) != names or set(ref.estimated) != names:
                raise KeyError("the statistics name other BatchNorm layers than the model's")
            return ref

        return cached(key, compute, enabled=self.cache_enabled, decode=decode)

    @functools.cached_property
    def total_macs(self) -> float:
        """MACs of the original model for one sample."""
        return float(count_macs(self.model, self.input_size))

    def compressed_model(self) -> nn.Module:
        """The compressed (and recovered) model of the last scored episode."""
        if self._compressed is None:
            raise RuntimeError("no episode has been scored yet: play one to the end first (or play_policy)")
        return self._compressed

    def retrain_hook(self, model: nn.Module, total_steps: int) -> Callable[[nn.Module, int], None] | None:
        """What re-training (``scripts/retrain.py``) must do after every optimizer step of
        ``total_steps`` to keep this method's compression in ``model`` (a :meth:`policy_model`),
        called as ``hook(model, step)``: e.g. re-apply sparsity masks on a schedule. None (the
        default): nothing, the architecture itself holds the compression (pruned channels,
        fake quantizers inside the modules)."""
        return None

    def policy_model(self, values: Sequence[float]) -> nn.Module:
        """The candidate that the policy ``values`` builds, before any recovery (no
        fine-tuning, no BatchNorm re-estimation, no scoring): the architecture a saved
        compressed model is loaded into, and the starting point of re-training.

        Raises:
            ValueError: ``values`` is not a policy of this env (see :meth:`play_policy`).
        """
        self.play_policy(values, dry_run=True)
        return self._build_candidate().cpu().eval()

    @classmethod
    def valid_kwargs(cls) -> tuple[str, ...]:
        """Every keyword argument the env takes."""
        return tuple(cls.SETTINGS)
