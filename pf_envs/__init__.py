"""pocketflow-gym environments: model compression as Gymnasium environments.

>>> import gymnasium as gym, pf_envs
>>> sorted(pf_envs.ENV_IDS)[:2]
['ChannelPrune-MobileNetV1-v0', 'ChannelPrune-MobileNetV2-v0']
>>> env = gym.make("ChannelPrune-ResNet20-v0", flops_budget=0.5)  # doctest: +SKIP
>>> pf_envs.replay("ChannelPrune-ResNet20-v0", {"ft_iters": 0}, [0.5] * 10).model  # doctest: +SKIP

Replaying a search's run folder (``replay_run``), re-training, export and the deploy
benchmark are the stages after the search: :mod:`pf_deploy`.
"""

from pf_envs.compressed import load_compressed, save_compressed
from pf_envs.policy_replay import Replayed, episode_policy, replay
from pf_envs.registry import ENV_IDS, METHODS, check_env_id, env_ids, register_all

register_all()

__all__ = ["ENV_IDS", "METHODS", "Replayed", "check_env_id", "env_ids", "episode_policy", "load_compressed",
           "register_all", "replay", "save_compressed"]
__version__ = "0.1.0"

