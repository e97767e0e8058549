"""One module per compression environment.

- :mod:`pf_envs.envs.channel_prune` - ``ChannelPrune-*``: He et al. channel pruning under a
  FLOPs budget, channels removed physically.
- :mod:`pf_envs.envs.uniform_quant` - ``UniformQuant-*``: mixed-precision uniform
  quantization (bits per layer) under an average-bits or bit-operations budget.
- :mod:`pf_envs.envs.nonuniform_quant` - ``NonUniformQuant-*``: the same with a k-means
  codebook per layer (Han et al.); both share :mod:`pf_envs.envs.quant_base`.

Environments are built through ``gym.make`` with the ids of ``pf_envs.ENV_IDS``; the shared
episode loop, clamping contract and reward registry live in :mod:`pf_envs.core` and
:mod:`pf_envs.rewards`.
"""
