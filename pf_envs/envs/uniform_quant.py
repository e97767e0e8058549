"""UniformQuant: mixed-precision uniform quantization (Jacob et al. 2018) as a Gymnasium environment
(PocketFlow's UniformQuantLearner with its RL bit allocation, HAQ's activation steps optional).

>>> import gymnasium as gym, pf_envs
>>> env = gym.make("UniformQuant-ResNet20-v0", avg_bits=4)
>>> obs, info = env.reset(seed=0)
>>> while True:
...     obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
...     if terminated:
...         break
>>> info["weight_bits"], info["avg_weight_bits"], info["accuracy"]  # doctest: +SKIP

One step per quantizable layer (convs, depthwise convs, the classifier), in execution order
(or a new order each episode with ``random_order=True``, PocketFlow); the action in
``[-1, 1]`` maps linearly to the layer's weight bits in ``[min_bits, max_bits]``, rounded to
whole bits and clamped so that the budget stays reachable with every later layer at
``min_bits`` (AMC's clamp). ``act_bits="search"`` adds a step per layer for its input bits.
After the last step every layer's weights are fake-quantized per output channel to their
bits (``2^bits`` uniform levels between the channel's min and max) and its input per tensor
to the activation bits, with straight-through gradients
(:mod:`learners.quantization`, PyTorch's FakeQuantize); the candidate is fine-tuned for
``ft_iters`` SGD steps with the quantizers in the loop, its BatchNorm statistics (and
activation ranges) re-estimated, and its accuracy on ``reward_samples`` held-out ``val``
images is the reward.

Observation (14 values in [0, 1], HAQ's layer embedding): step, layer index, whether the step
sets activations, layer kind (conv 0, depthwise 0.5, linear 1), input and output channels,
kernel, stride, input size, weights, MACs (min-max normalised over the steps), then the
budget spent so far, the budget later steps can still give up and the previous step's bits.

The last step's ``info`` adds ``weight_bits`` / ``act_bits`` (per layer), ``avg_weight_bits``,
``bitops_ratio`` (bit-operations against the 8/8-bit model), and after scoring
``model_size_bytes`` (weights at their bits + per-channel scales and zero points + every
other parameter at 32 bits) and ``size_ratio`` (against the float32 model).
"""

from __future__ import annotations

from typing import ClassVar

from pf_envs.envs.quant_base import QuantEnvBase


class UniformQuantEnv(QuantEnvBase):
    """Mixed-precision uniform quantization under an average-bits or bit-operations budget.

    Args:
        model / dataset / checkpoint / data_root / input_size: as for every model env
            (:class:`pf_envs.envs.channel_prune.ChannelPruneEnv`).
        avg_bits: the budget as PocketFlow's: ``sum_l bits_l * |W_l| <= avg_bits * sum_l
            |W_l|`` (default 4 when ``bitops_budget`` is not given); at least ``min_bits``.
        bitops_budget: the budget as bit-operations ``sum_l MACs_l * wbits_l * abits_l``, a
            fraction of the model's at 8-bit weights and 8-bit activations (give one budget).
        min_bits / max_bits: the bit-width range of every step (default 2..8; 1..8 allowed).
        act_bits: bits of every layer's input (default 8), 32 (activations not quantized), or
            ``"search"`` (a second step per layer, HAQ).
        random_order: visit the layers in a new order each episode, drawn from the env's seed
            (PocketFlow); default False (execution order).
        ft_iters: SGD steps of fine-tuning with the quantizers in the loop before scoring
            (default 0: BatchNorm re-estimation only; 100 steps at the zoo's lr lost accuracy
            at 8 bits, docs/quantization.md). ft_batch_size / ft_lr: its batch
            size and initial learning rate (cosine to 0; default: the zoo's for the model).
        bn_mode: ``"shift"`` (default): the original BatchNorm statistics moved by the change
            the quantizers make on the BatchNorm batches (the sampling error of re-estimating
            them, 0.3 points at 8 bits, cancels); ``"reestimate"``: estimated afresh, as the
            pruning envs do (docs/quantization.md).
        reward / reward_split / reward_samples / bn_batches / bn_batch_size / bn_augment /
            device / cache: as for every model env.
    """

    METHOD: ClassVar[str] = "UniformQuant"
    WEIGHT_MODE: ClassVar[str] = "uniform"
