"""Search agents and the harness that runs them on pocketflow-gym environments.

>>> from pf_agents import search, AGENTS
>>> sorted(AGENTS)
['ddpg', 'gp', 'random', 'sac', 'td3', 'tpe', 'uniform']
"""

from pf_agents.registry import AGENTS, get_agent_class
from pf_agents.search import SearchResult, search

__all__ = ["AGENTS", "SearchResult", "get_agent_class", "search"]
