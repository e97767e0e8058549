"""One module per compression environment.

- :mod:`pf_envs.envs.channel_prune` - ``ChannelPrune-*``: He et al. channel pruning under a
  FLOPs budget, channels removed physically.
- :mod:`pf_envs.envs.dis_chn_prune` - ``DisChnPrune-*``: the same, with discrimination-aware
  channel selection (Zhuang et al. 2018; auxiliary classifiers + greedy gradient-norm order).
- :mod:`pf_envs.envs.weight_sparse` - ``WeightSparse-*``: magnitude weight sparsity per layer
  (Zhu & Gupta 2017) under an overall sparsity target.
- :mod:`pf_envs.envs.quant_ort` - ``QuantORT-*``: int8 or fp32 per layer in ONNX Runtime
  (static QDQ quantization), under a measured latency budget; the candidate is the
  deployable ``.onnx``.
- :mod:`pf_envs.envs.prune_quant` - ``PruneQuant-*``: kept channels and int8/fp32 per layer
  in one episode (two steps per layer), under a measured ONNX Runtime latency budget; the
  candidate is the pruned, quantized deployable ``.onnx``.
- :mod:`pf_envs.envs.uniform_quant` - ``UniformQuant-*``: mixed-precision uniform
  quantization (bits per layer) under an average-bits or bit-operations budget.
- :mod:`pf_envs.envs.nonuniform_quant` - ``NonUniformQuant-*``: the same with a k-means
  codebook per layer (Han et al.); both share :mod:`pf_envs.envs.quant_base`.

Environments are built through ``gym.make`` with the ids of ``pf_envs.ENV_IDS``; the shared
episode loop, clamping contract and reward registry live in :mod:`pf_envs.core` and
:mod:`pf_envs.rewards`.
"""
