"""Reward functions, selectable by name (``reward="accuracy"``); one registry table.

Each takes the candidate's measurements and returns the reward and its components
(which the environment reports under ``info["reward_components"]``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Measurements:
    """What is known about a compressed candidate when its reward is computed.

    Attributes:
        accuracy: top-1 in [0, 1] on the reward split after recovery.
        accuracy_original: the uncompressed model's accuracy on the same images.
        macs: multiply-accumulates of the candidate for one input sample (FLOPs = 2 x MACs).
        flops_ratio: candidate MACs / original MACs (the same ratio as FLOPs).
        params_ratio: candidate parameters (nonzero ones, for sparse candidates) / original.
        latency_ratio: candidate latency / original latency, for envs that price latency
            (QuantORT: from its latency table); None elsewhere.
        params: candidate parameters (nonzero ones), where the env counts them (WeightSparse);
            None elsewhere.
    """

    accuracy: float
    accuracy_original: float
    macs: float
    flops_ratio: float
    params_ratio: float
    latency_ratio: float | None = None
    params: float | None = None


RewardFn = Callable[[Measurements], tuple[float, dict[str, float]]]


def accuracy(m: Measurements) -> tuple[float, dict[str, float]]:
    """Accuracy under the hard (clamped) budget: the default of AMC and PocketFlow."""
    return m.accuracy, {"accuracy": m.accuracy}


def acc_log_flops(m: Measurements) -> tuple[float, dict[str, float]]:
    """AMC's ``acc_flops`` reward: ``-(1 - acc) * log(FLOPs)``, FLOPs counted as AMC did, as the
    candidate's MACs (the component keeps AMC's name)."""
    log_flops = math.log(max(m.macs, 1.0))
    return -(1.0 - m.accuracy) * log_flops, {"error": 1.0 - m.accuracy, "log_flops": log_flops}


def pocketflow_flops(m: Measurements) -> tuple[float, dict[str, float]]:
    """PocketFlow's ``flops`` reward: ``-max(0.15, 1 - acc) * log(FLOPs)`` (FLOPs as MACs, as AMC)."""
    log_flops = math.log(max(m.macs, 1.0))
    err = max(0.15, 1.0 - m.accuracy)
    return -err * log_flops, {"error_floored": err, "log_flops": log_flops}


def accuracy_drop(m: Measurements) -> tuple[float, dict[str, float]]:
    """HAQ's reward: ``(acc - acc_original) * 0.1``."""
    drop = m.accuracy - m.accuracy_original
    return 0.1 * drop, {"accuracy_drop": drop}


#: MnasNet's exponent (Tan et al. 2019): -0.07 trades 5% of latency for about 0.36% of accuracy.
MNAS_W = -0.07


def mnas_latency(m: Measurements) -> tuple[float, dict[str, float]]:
    """MnasNet's latency-aware reward ``acc * latency_ratio ** -0.07`` (the latency as a
    fraction of the original model's; QuantORT's latency table). Envs without a latency
    measurement refuse it."""
    if m.latency_ratio is None:
        raise ValueError("reward 'mnas_latency' needs a latency: only envs with a latency cost (QuantORT) provide "
                         "one; choose another reward")
    factor = float(m.latency_ratio) ** MNAS_W
    return m.accuracy * factor, {"accuracy": m.accuracy, "latency_ratio": float(m.latency_ratio),
                                 "latency_factor": factor}


def acc_log_sparsity(m: Measurements) -> tuple[float, dict[str, float]]:
    """AMC's ``acc_flops`` form with nonzero parameters for FLOPs: ``-(1 - acc) * log(nonzero
    parameters)`` (sparsity envs; PocketFlow's WeightSparse search)."""
    if m.params is None:
        raise ValueError("reward 'acc_log_sparsity' needs the candidate's nonzero parameter count, which only "
                         "the sparsity envs (WeightSparse) measure; use 'accuracy' or 'acc_log_flops' here")
    log_params = math.log(max(m.params, 1.0))
    return -(1.0 - m.accuracy) * log_params, {"error": 1.0 - m.accuracy, "log_params": log_params}


REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy,
    "acc_log_flops": acc_log_flops,
    "pocketflow_flops": pocketflow_flops,
    "accuracy_drop": accuracy_drop,
    "mnas_latency": mnas_latency,
    "acc_log_sparsity": acc_log_sparsity,
}


def get_reward(name: str) -> RewardFn:
    """The reward function called ``name``."""
    try:
        return REWARDS[name]
    except KeyError:
        raise ValueError(f"unknown reward {name!r}; choose one of {sorted(REWARDS)}") from None
