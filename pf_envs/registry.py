"""The environment registry: one table of ids, generated from methods x zoo models.

``ChannelPrune-MobileNetV1-v0`` = method ``ChannelPrune`` on the zoo's CIFAR-10 MobileNet-V1;
``ChannelPrune-v0`` is the same environment with the model left to the caller
(``gym.make("ChannelPrune-v0", model=my_module)``). Every kwarg passes through ``gym.make``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import gymnasium as gym

from pf_envs import zoo

# method name -> entry point ("module:Class"); one row per implemented compression method.
METHODS: dict[str, str] = {
    "ChannelPrune": "pf_envs.envs.channel_prune:ChannelPruneEnv",
    "QuantORT": "pf_envs.envs.quant_ort:QuantORTEnv",
    "PruneQuant": "pf_envs.envs.prune_quant:PruneQuantEnv",
    "WeightSparse": "pf_envs.envs.weight_sparse:WeightSparseEnv",
    "DisChnPrune": "pf_envs.envs.dis_chn_prune:DisChnPruneEnv",
    "UniformQuant": "pf_envs.envs.uniform_quant:UniformQuantEnv",
    "NonUniformQuant": "pf_envs.envs.nonuniform_quant:NonUniformQuantEnv",
}


#: Envs that are not a method x model pair (synthetic, for tests and examples).
EXTRA_IDS: dict[str, str] = {
    "Toy-v0": "pf_envs.envs.toy:ToyEnv",
}


#: Surrogate envs (``pf_envs/envs/surrogate.py``): id -> (entry point, shipped episode dataset);
#: the real env's episode with the reward from a regressor fitted on real episodes.
SURROGATE_IDS: dict[str, tuple[str, str]] = {
    "Surrogate-ChannelPrune-ResNet20-v0": ("pf_envs.envs.surrogate:SurrogateChannelPruneEnv", "channelprune_resnet20"),
    "Surrogate-UniformQuant-ResNet20-v0": ("pf_envs.envs.surrogate:SurrogateUniformQuantEnv", "uniformquant_resnet20"),
}


def _build_ids() -> dict[str, dict[str, Any]]:
    ids: dict[str, dict[str, Any]] = {i: {"entry_point": e, "kwargs": {}} for i, e in EXTRA_IDS.items()}
    ids.update({i: {"entry_point": e, "kwargs": {"data": d}} for i, (e, d) in SURROGATE_IDS.items()})
    for method, entry_point in METHODS.items():
        ids[f"{method}-v0"] = {"entry_point": entry_point, "kwargs": {}}
        for name in zoo.list_models("cifar10"):
            spec = zoo.MODELS[name]
            ids[f"{method}-{spec.env_name}-v0"] = {"entry_point": entry_point, "kwargs": {"model": name}}
    return ids


ENV_IDS: dict[str, dict[str, Any]] = _build_ids()


def register_all() -> None:
    """Register every id of :data:`ENV_IDS` with Gymnasium (idempotent)."""
    for env_id, spec in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=spec["entry_point"], kwargs=dict(spec["kwargs"]),
                         disable_env_checker=False)


def check_env_id(env_id: str) -> None:
    """Refuse an id Gymnasium does not know (registering pocketflow-gym's first).

    Raises:
        ValueError: naming the id and the ids pocketflow-gym registers.
    """
    if env_id not in gym.registry:
        register_all()
    if env_id not in gym.registry:
        raise ValueError(f"unknown env {env_id!r}; pocketflow-gym registers {sorted(ENV_IDS)}")


def env_ids(method: str | None = None) -> list[str]:
    """Registered ids, optionally of one method."""
    return sorted(i for i in ENV_IDS if method is None or i.startswith(f"{method}-"))


def env_kwargs_with_defaults(env_id: str, env_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The kwargs ``gym.make(env_id, **env_kwargs)`` builds the env with: the defaults of its
    entry point's signature, under the id's registered kwargs, under ``env_kwargs`` (what
    the env's ``settings`` hold; what a resume compares).

    Raises:
        KeyError / ValueError: ``env_id`` is not registered.
    """
    from gymnasium.envs.registration import load_env_creator

    register_all()
    spec = gym.spec(env_id)
    creator = load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) else spec.entry_point
    defaults = {
        name: p.default for name, p in inspect.signature(creator).parameters.items()
        if p.default is not inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    return {**defaults, **dict(spec.kwargs), **dict(env_kwargs)}
