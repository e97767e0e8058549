"""The agent registry: one table, name -> "module:Class" (imported only when used)."""

from __future__ import annotations

import importlib

from pf_agents.base import Agent

AGENTS: dict[str, str] = {
    "ddpg": "pf_agents.ddpg:DDPGAgent",
    "td3": "pf_agents.ddpg:TD3Agent",
    "sac": "pf_agents.ddpg:SACAgent",
    "gp": "baselines.gp:GPAgent",
    "tpe": "baselines.tpe:TPEAgent",
    "random": "baselines.random_policy:RandomAgent",
    "uniform": "baselines.uniform:UniformAgent",
}


def get_agent_class(name: str) -> type[Agent]:
    """The agent class registered as ``name``."""
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; choose one of {sorted(AGENTS)}")
    module, cls = AGENTS[name].split(":")
    return getattr(importlib.import_module(module), cls)
