"""ChannelPrune: He et al. channel pruning as a Gymnasium environment (AMC / PocketFlow).

>>> import gymnasium as gym, pf_envs
>>> env = gym.make("ChannelPrune-ResNet20-v0", flops_budget=0.5, ft_iters=0)
>>> obs, info = env.reset(seed=0)
>>> while True:
...     obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
...     if terminated:
...         break
>>> info["accuracy"], info["flops_ratio"]  # doctest: +SKIP

One step per prunable channel group (a layer's output channels with everything coupled to
them). The action in ``[-1, 1]`` maps linearly to a keep ratio in ``[min_keep, 1]``; the
ratio is capped so that the FLOPs budget stays reachable with every later group at its
minimum (AMC's clamp), rounded to a multiple of ``channel_round`` channels, and applied.
After the last step the candidate is pruned physically (LASSO selection + least-squares
reconstruction), fine-tuned for ``ft_iters`` SGD steps, its BatchNorm statistics are
re-estimated, and its accuracy on ``reward_samples`` images of the held-out ``val`` split is
the reward (or a function of it: ``reward=``).

Observation (11 values in [0, 1], AMC's layer embedding): step index, output channels of the
layer that reads the group, the group's channels, input height and width, stride, kernel
size, MACs touched by the group (all min-max normalised over the steps), MACs removed so far
and MACs of later groups (fractions of the total), and the previous applied keep ratio.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from learners.channel_pruning import SELECTIONS, ChannelPruner, ConsumerStats, collect_stats
from learners.training import evaluate, finetune, recalibrate_batchnorm
from pf_envs import zoo
from pf_envs.cache import cache_key, cached, model_fingerprint
from pf_envs.core import CompressionEnv, check_kwargs, minmax, resolve_device
from pf_envs.data import DATASETS, load_dataset
from pf_envs.layers import CostTable, cost_table
from pf_envs.rewards import Measurements

#: Bumped whenever the way a candidate is recovered and scored changes, so that the search
#: harness never resumes a run recorded under another recipe (2: BatchNorm statistics
#: re-estimated on augmented images).
RECOVERY_VERSION = 2
#: Seed of the augmentation of the BatchNorm re-estimation batches (the same every episode).
BN_SEED = 3
#: Settings that do not change what a policy scores (where it runs, caching, rendering).
_NOT_RECOVERY = ("self", "model", "checkpoint", "data_root", "device", "cache", "render_mode", "unknown")

OBSERVATION_FEATURES: tuple[str, ...] = (
    "step", "out_channels", "channels", "in_h", "in_w", "stride", "kernel", "group_macs",
    "reduced", "rest", "prev_keep_ratio",
)


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class ChannelPruneEnv(CompressionEnv):
    """Channel pruning under a FLOPs budget.

    Args:
        model: a zoo name (``mobilenet_v1``, ``resnet20``, ...) or your own ``nn.Module``
            (trained; conv/linear layers; it is copied, never modified).
        dataset: ``cifar10`` or ``imagenet``.
        checkpoint: state-dict file for a zoo model (default: the shipped checkpoint).
        data_root: dataset folder (default: ``$PF_DATA_DIR``, then the cache folder).
        input_size: input height/width (default: the dataset's, 32 or 224).
        flops_budget: fraction of the original MACs the compressed model may keep, in (0, 1].
        min_keep: smallest keep ratio of any group, in (0, 1] (AMC: 0.2).
        channel_round: kept channel counts are multiples of this (default: the zoo's, 8 for
            MobileNets, 4 for CIFAR ResNets; 8 for custom models).
        selection: ``lasso`` (He et al.) or ``l1`` (L1 norm of the reading layer's weights).
        reconstruct: refit the reading layers by least squares (He et al.); ``False`` keeps
            the original weights of the kept channels.
        ft_iters: SGD iterations of fast fine-tuning before scoring (0 = AMC-style,
            reconstruction and BN re-estimation only).
        ft_batch_size / ft_lr: fine-tuning batch size and initial learning rate (cosine to 0;
            default: the zoo's for the model, 0.001 for MobileNet-V1, 0.01 for the others and
            for custom models).
        reward: reward name (see ``pf_envs.rewards.REWARDS``): ``accuracy`` (default),
            ``acc_log_flops`` (AMC), ``pocketflow_flops``, ``accuracy_drop`` (HAQ).
        reward_split: split the reward is measured on: ``val`` (held out from training;
            default) or ``test`` (final reports only).
        reward_samples: images of that split used (a fixed subset; default 5,000).
        bn_batches / bn_batch_size: training batches used to re-estimate BatchNorm statistics.
        bn_augment: re-estimate them on augmented training images (default), the images the
            base model's own statistics were collected on during training; on plain images the
            statistics no longer match what the trained layers expect (the shipped CIFAR-10
            MobileNet-V1 loses 2.9 points of test accuracy that way with nothing pruned; once
            pruned and reconstructed the difference is small: 0.0-0.4 under uniform 30-50%).
        feature_images / points_per_image: training images and spatial points per image
            sampled for channel selection and reconstruction.
        device: ``cpu`` (default), ``cuda`` (falls back to CPU when unavailable) or ``auto``.
        cache: keep layer statistics and the baseline accuracy on disk (``PF_CACHE_DIR``).

    Attributes:
        model_fingerprint: SHA-1 prefix of the original model's weights; the search harness
            records it so that a run is never resumed against other weights.
        recovery_fingerprint: SHA-1 prefix of every setting that decides the reward (all
            kwargs as resolved, defaults included, and :data:`RECOVERY_VERSION`); the harness
            records it so that a run is never resumed with another recovery, e.g. after a
            default changed.
        accuracy_original: the original model's accuracy on the reward split.
    """

    def __init__(
        self,
        model: str | nn.Module = "mobilenet_v1",
        dataset: str = "cifar10",
        *,
        checkpoint: str | None = None,
        data_root: str | None = None,
        input_size: int | None = None,
        flops_budget: float = 0.5,
        min_keep: float = 0.2,
        channel_round: int | None = None,
        selection: str = "lasso",
        reconstruct: bool = True,
        ft_iters: int = 100,
        ft_batch_size: int = 64,
        ft_lr: float | None = None,
        reward: str = "accuracy",
        reward_split: str = "val",
        reward_samples: int = 5000,
        bn_batches: int = 20,
        bn_batch_size: int = 128,
        bn_augment: bool = True,
        feature_images: int = 1000,
        points_per_image: int = 10,
        device: str = "cpu",
        cache: bool = True,
        render_mode: str | None = None,
        **unknown: Any,
    ) -> None:
        settings = {k: v for k, v in locals().items() if k not in _NOT_RECOVERY}
        check_kwargs(type(self).__name__, unknown, list(self._valid_kwargs()))
        super().__init__(reward)
        if render_mode is not None:
            raise ValueError(f"render_mode={render_mode!r}: ChannelPrune has no rendering")
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; choose one of {list(DATASETS)}")
        if not 0.0 < flops_budget <= 1.0:
            raise ValueError(f"flops_budget must be in (0, 1], got {flops_budget}")
        if not 0.0 < min_keep <= 1.0:
            raise ValueError(f"min_keep must be in (0, 1], got {min_keep}")
        if selection not in SELECTIONS:
            raise ValueError(f"unknown selection {selection!r}; choose one of {list(SELECTIONS)}")
        if reward_split not in ("val", "test"):
            raise ValueError(f"reward_split must be 'val' or 'test', got {reward_split!r}")
        if ft_lr is not None and not (isinstance(ft_lr, (int, float)) and math.isfinite(ft_lr) and ft_lr > 0):
            raise ValueError(f"ft_lr must be a positive number (or None: the zoo's default), got {ft_lr!r}")
        for name, value in (("ft_iters", ft_iters), ("bn_batches", bn_batches)):
            if int(value) != value or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        for name, value in (
            ("reward_samples", reward_samples), ("feature_images", feature_images),
            ("points_per_image", points_per_image), ("ft_batch_size", ft_batch_size),
            ("bn_batch_size", bn_batch_size),
        ):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        self.device = resolve_device(device)
        self.flops_budget = float(flops_budget)
        self.min_keep = float(min_keep)
        self.ft_iters, self.ft_batch_size = int(ft_iters), int(ft_batch_size)
        self.bn_batches, self.bn_batch_size = int(bn_batches), int(bn_batch_size)
        self.bn_augment = bool(bn_augment)

        # Model and data -------------------------------------------------------------------
        self.data = load_dataset(dataset, data_root)
        if isinstance(model, nn.Module):
            self.model_name = type(model).__name__
            self.model = copy.deepcopy(model).cpu().eval()
            self.channel_round = int(channel_round or 8)
            self.ft_lr = float(0.01 if ft_lr is None else ft_lr)
        elif isinstance(model, str):
            spec = zoo.get_spec(model)
            self.model_name = spec.name
            self.model = zoo.load(spec.name, dataset, checkpoint, num_classes=self.data.num_classes)
            self.channel_round = int(channel_round or spec.channel_round)
            self.ft_lr = float(spec.ft_lr if ft_lr is None else ft_lr)
        else:
            raise TypeError(f"model must be a zoo name or an nn.Module, got {type(model).__name__}")
        if self.channel_round < 1:
            raise ValueError(f"channel_round must be >= 1, got {channel_round}")
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.input_size = int(input_size or self.data.input_size)
        self.reward_data = self.data.split(reward_split).subset(int(reward_samples), seed=0)
        self.bn_data = self.data.train.subset(self.bn_batches * self.bn_batch_size, seed=2)

        # Layer table, groups, budget geometry --------------------------------------------
        self.table: CostTable = cost_table(self.model, self.input_size)
        self.total_macs = self.table.total_macs
        self.total_params = _count_params(self.model)
        self.step_groups = [g.id for g in self.table.groups if g.channels > self.channel_round]
        if not self.step_groups:
            raise ValueError(f"{self.model_name} has no prunable channel group")
        self.min_counts = {g: self._min_count(g) for g in self.step_groups}
        floor = self.table.macs_at(self._fractions({}, self.min_counts)) / self.total_macs
        if floor > self.flops_budget + 1e-9:
            raise ValueError(
                f"flops_budget={self.flops_budget} is unreachable for {self.model_name}: with every "
                f"group at min_keep={self.min_keep} the model still keeps {floor:.3f} of its MACs; "
                f"choose flops_budget >= {math.ceil(floor * 1000) / 1000} or a smaller min_keep"
            )
        self._static = minmax(np.asarray([self._static_row(i, g) for i, g in enumerate(self.step_groups)], np.float64))
        self._init_spaces()

        # Statistics for selection/reconstruction, baseline accuracy (cached on disk) ------
        fingerprint = self.model_fingerprint = model_fingerprint(self.model)
        self.recovery_fingerprint = cache_key("recovery", **{
            **settings, "version": RECOVERY_VERSION, "model": fingerprint,
            "channel_round": self.channel_round, "input_size": self.input_size, "ft_lr": self.ft_lr,
        })
        direct = [  # groups whose readers see the channels one-to-one (no flatten in between)
            g for g in self.table.groups
            if all(self.table[c].in_channels == g.channels for c in g.consumers)
        ]
        consumers = sorted({c for g in direct for c in g.consumers})
        needs_stats = (selection == "lasso" or reconstruct) and bool(consumers)
        stats: dict[str, ConsumerStats] | None = None
        if needs_stats:
            key = cache_key(
                "chnprune-stats", model=fingerprint, consumers=consumers, images=int(feature_images),
                points=int(points_per_image), data=self.data.source, size=self.input_size,
            )
            feature_split = self.data.train.subset(int(feature_images), seed=1)
            raw = cached(
                key,
                lambda: {
                    n: s.__dict__ for n, s in collect_stats(
                        self.model, consumers, (x for x, _ in feature_split.batches(100)),
                        points_per_image=int(points_per_image), seed=0,
                    ).items()
                },
                enabled=cache,
            )
            stats = {n: ConsumerStats(**d) for n, d in raw.items()}
        self.pruner = ChannelPruner(
            self.model, [self.table.coupling[g] for g in range(len(self.table.groups))], stats,
            selection=selection, reconstruct=reconstruct,
        )
        acc_key = cache_key(
            "accuracy", model=fingerprint, split=reward_split, n=len(self.reward_data),
            data=self.data.source, size=self.input_size,
        )
        self.accuracy_original = float(
            cached(acc_key, lambda: evaluate(self.model.to(self.device), self.reward_data, device=self.device),
                   enabled=cache)
        )
        self.model.cpu()
        self._counts: dict[int, int] = {}
        self._compressed: nn.Module | None = None
        self.last_timing: dict[str, float] = {}
        self._ft_seed = 0

    @classmethod
    def _valid_kwargs(cls) -> tuple[str, ...]:
        import inspect

        params = inspect.signature(cls.__init__).parameters
        return tuple(n for n, p in params.items() if n != "self" and p.kind != p.VAR_KEYWORD)

    # -- budget geometry ----------------------------------------------------------------------
    def _min_count(self, gid: int) -> int:
        c, r = self.table.groups[gid].channels, self.channel_round
        return min(c, max(r, math.ceil(self.min_keep * c / r) * r))

    def _fractions(self, counts: dict[int, int], rest: dict[int, int] | None = None) -> dict[int, float]:
        out = {g: k / self.table.groups[g].channels for g, k in (rest or {}).items()}
        out.update({g: k / self.table.groups[g].channels for g, k in counts.items()})
        return out

    def _max_fraction(self, t: int) -> float:
        """Largest keep fraction of step ``t``'s group that keeps the budget reachable."""
        gid = self.step_groups[t]
        later = {g: self.min_counts[g] for g in self.step_groups[t + 1 :]}
        base = self._fractions(self._counts, later)

        def f(x: float) -> float:
            return self.table.macs_at({**base, gid: x})

        target = self.flops_budget * self.total_macs
        f0, fh, f1 = f(0.0), f(0.5), f(1.0)
        a = 2 * (f1 - 2 * fh + f0)
        b = f1 - f0 - a
        if f1 <= target:
            return 1.0
        if abs(a) < 1e-9 * max(1.0, abs(b)):
            return (target - f0) / b if b > 0 else 1.0
        disc = b * b - 4 * a * (f0 - target)
        return (-b + math.sqrt(max(disc, 0.0))) / (2 * a)

    def _static_row(self, t: int, gid: int) -> list[float]:
        group = self.table.groups[gid]
        reader = self.table[group.consumers[0] if group.consumers else group.producers[0]]
        return [
            t, reader.out_channels, group.channels, reader.in_hw[0], reader.in_hw[1],
            reader.stride[0], reader.kernel[0], self.table.group_macs(gid),
        ]

    # -- CompressionEnv hooks -------------------------------------------------------------------
    def _begin_episode(self) -> None:
        self._counts = {}
        self._ft_seed = int(self.np_random.integers(2**31 - 1))

    def _action_to_value(self, action: float) -> float:
        return self.min_keep + (action + 1.0) / 2.0 * (1.0 - self.min_keep)

    def _value_to_action(self, value: float) -> float:
        return 2.0 * (value - self.min_keep) / max(1.0 - self.min_keep, 1e-12) - 1.0

    def _apply(self, t: int, value: float) -> tuple[float, dict[str, Any]]:
        gid = self.step_groups[t]
        c, r = self.table.groups[gid].channels, self.channel_round
        lo = self.min_counts[gid]
        cap_frac = self._max_fraction(t)
        cap = c if cap_frac >= 1.0 - 1e-12 else int(math.floor(cap_frac * c / r + 1e-9)) * r
        cap = max(lo, min(c, cap))
        wanted = min(c, max(lo, int(round(value * c / r)) * r))
        count = min(wanted, cap)
        self._counts[gid] = count
        return count / c, {"group": gid, "keep_count": count, "channels": c, "clamped": wanted > cap}

    def _dynamic_features(self, t: int) -> list[float]:
        visited = self._fractions(self._counts)
        reduced = 1.0 - self.table.macs_at(visited) / self.total_macs
        later = set(self.step_groups[t + 1 :]) if self._t < self.num_steps else set()
        rest = sum(r.macs for r in self.table.rows if {r.in_group, r.out_group} & later) / self.total_macs
        prev = self.applied[-1] if self.applied else 1.0
        return [reduced, rest, prev]

    def _policy_info(self) -> dict[str, Any]:
        macs = self.table.macs_at(self._fractions(self._counts))
        return {
            "keep_ratios": list(self.applied),
            "keep_counts": [self._counts[g] for g in self.step_groups],
            "flops_ratio": macs / self.total_macs,
            "flops_budget": self.flops_budget,
        }

    def _evaluate(self) -> tuple[Measurements, dict[str, Any]]:
        timing: dict[str, float] = {}
        t0 = time.perf_counter()
        pruned, _ = self.pruner.prune(dict(self._counts))
        pruned.to(self.device)
        timing["prune_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if self.ft_iters:
            for p in pruned.parameters():
                p.requires_grad_(True)
            finetune(
                pruned, self.data.train, self.ft_iters, batch_size=self.ft_batch_size, lr=self.ft_lr,
                generator=torch.Generator().manual_seed(self._ft_seed), device=self.device,
            )
        timing["finetune_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # The same augmented images every episode (a fixed generator): with ft_iters=0 a policy's
        # reward does not depend on the episode it is played in.
        bn_batches = self.bn_data.batches(
            self.bn_batch_size, augment=self.bn_augment, generator=torch.Generator().manual_seed(BN_SEED)
        )
        recalibrate_batchnorm(pruned, bn_batches, device=self.device)
        timing["bn_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        acc = evaluate(pruned, self.reward_data, device=self.device)
        timing["eval_s"] = time.perf_counter() - t0
        for p in pruned.parameters():
            p.requires_grad_(False)
        self._compressed = pruned
        self.last_timing = timing
        macs = self.table.macs_at(self._fractions(self._counts))
        measured = Measurements(
            accuracy=acc,
            accuracy_original=self.accuracy_original,
            flops=macs,
            flops_ratio=macs / self.total_macs,
            params_ratio=_count_params(pruned) / self.total_params,
        )
        return measured, {"reward_samples": len(self.reward_data)}

    # -- public helpers -------------------------------------------------------------------------
    def compressed_model(self) -> nn.Module:
        """The pruned (and fine-tuned) model of the last scored episode."""
        if self._compressed is None:
            raise RuntimeError("no episode has been scored yet: play one to the end first")
        return self._compressed

    def observation_features(self) -> tuple[str, ...]:
        """Names of the observation's entries, in order."""
        return OBSERVATION_FEATURES
