"""NonUniformQuant: mixed-precision weight sharing (Han et al. 2016, "Deep Compression") as a
Gymnasium environment: the same steps, actions and budgets as
:mod:`pf_envs.envs.uniform_quant`, with a codebook per layer instead of uniform levels.

>>> import gymnasium as gym, pf_envs
>>> env = gym.make("NonUniformQuant-ResNet20-v0", avg_bits=3)

A layer at ``b`` bits keeps ``2^b`` shared values: k-means (scikit-learn, started from the
weights' quantiles, fitted on up to 20,000 of them) on its weights, each weight replaced by
its nearest value (:func:`learners.quantization.fit_codebook`). Fine-tuning trains the
shared values (each gets the summed gradient of its weights; the assignments stay fixed),
and, as in the uniform env, BatchNorm statistics and the (uniform, per-tensor) activation
quantizers. The codebooks of the original weights are fitted once per layer and bit-width and
kept on disk. ``model_size_bytes`` counts every index at its bits plus the codebooks' 32-bit
values (plus every other parameter at 32 bits).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from learners.quantization import LayerQuant, fit_codebook
from pf_envs.cache import cache_key, cached
from pf_envs.envs.quant_base import QuantEnvBase


class NonUniformQuantEnv(QuantEnvBase):
    """Mixed-precision codebook quantization under an average-bits or bit-operations budget.

    Args: as :class:`pf_envs.envs.uniform_quant.UniformQuantEnv` (``min_bits`` .. ``max_bits``
    are index bits: ``2^bits`` shared values per layer).
    """

    METHOD: ClassVar[str] = "NonUniformQuant"
    WEIGHT_MODE: ClassVar[str] = "codebook"

    def _setup_method(self) -> None:
        self._codebooks: dict[tuple[str, int], np.ndarray] = {}
        super()._setup_method()

    def codebook(self, layer: str, bits: int) -> np.ndarray:
        """The shared values of ``layer``'s original weights at ``bits`` (fitted once, cached)."""
        key = (layer, int(bits))
        if key not in self._codebooks:
            weight = dict(self.model.named_modules())[layer].weight
            disk_key = cache_key("codebook", model=self.model_fingerprint, layer=layer, bits=int(bits), seed=0)
            def decode(raw: Any) -> np.ndarray:
                if not isinstance(raw, torch.Tensor) or raw.ndim != 1 or not 0 < len(raw) <= 2 ** int(bits):
                    raise ValueError(f"expected a codebook of at most {2 ** int(bits)} values")
                return np.asarray(raw, np.float32)

            self._codebooks[key] = cached(
                disk_key, lambda: torch.from_numpy(fit_codebook(weight, int(bits), seed=0)),
                enabled=self.cache_enabled, decode=decode)
        return self._codebooks[key]

    def _codebook_values(self, specs: dict[str, LayerQuant]) -> dict[str, np.ndarray]:
        return {name: self.codebook(name, spec.weight_bits) for name, spec in specs.items()}
