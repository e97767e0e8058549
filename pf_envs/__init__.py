"""pocketflow-gym environments: model compression as Gymnasium environments.

>>> import gymnasium as gym, pf_envs
>>> sorted(pf_envs.ENV_IDS)[:2]
['ChannelPrune-MobileNetV1-v0', 'ChannelPrune-MobileNetV2-v0']
>>> env = gym.make("ChannelPrune-ResNet20-v0", flops_budget=0.5)  # doctest: +SKIP
>>> pf_envs.replay_run("runs/ChannelPrune-ResNet20-v0__ddpg__seed0").model  # doctest: +SKIP
"""

from pf_envs.compressed import load_compressed, save_compressed
from pf_envs.policy_replay import Replayed, replay, replay_run
from pf_envs.registry import ENV_IDS, METHODS, env_ids, register_all

register_all()

__all__ = ["ENV_IDS", "METHODS", "Replayed", "env_ids", "load_compressed", "register_all", "replay", "replay_run",
           "save_compressed"]
__version__ = "0.1.0"
