"""One module per compression environment.

- :mod:`pf_envs.envs.channel_prune` - ``ChannelPrune-*``: He et al. channel pruning under a
  FLOPs budget, channels removed physically.

Environments are built through ``gym.make`` with the ids of ``pf_envs.ENV_IDS``; the shared
episode loop, clamping contract and reward registry live in :mod:`pf_envs.core` and
:mod:`pf_envs.rewards`.
"""
