"""The zoo's ImageNet-shaped latency twins: a zoo architecture's 224x224, 1000-class variant
pruned physically to the channel counts of a (compressed) CIFAR model, with random weights.

A twin is for latency only: it prices what a pruned model would cost at ImageNet resolution.
The export stage (:mod:`pf_deploy.export_source`) and the PruneQuant env's ``latency_twin``
both build it here.

>>> from pf_envs.zoo.twin import imagenet_twin_of                  # doctest: +SKIP
>>> twin = imagenet_twin_of(pruned_model, "mobilenet_v1")          # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import nn

from pf_envs import zoo
from pf_envs.data import IMAGENET_MEAN, IMAGENET_STD

#: Input side of the ImageNet-shaped latency twins.
TWIN_INPUT_SIZE = 224
#: Normalisation of the twins (what an ImageNet model of the zoo expects).
TWIN_MEAN, TWIN_STD = IMAGENET_MEAN, IMAGENET_STD


def imagenet_twin_of(model: nn.Module, arch: str, *, seed: int = 0) -> nn.Module:
    """The zoo's ImageNet-shaped variant of ``arch`` (1000 classes, 224x224 input) pruned
    physically to ``model``'s channel counts; weights are random (``seed``).

    Raises:
        ValueError: ``arch`` has no ImageNet variant in the zoo, or its layers do not match
            ``model``'s.
    """
    from learners.channel_match import channel_counts, match_channels

    try:
        spec = zoo.get_spec(arch)
    except KeyError:
        raise ValueError(f"{arch} is not a zoo architecture: no ImageNet-shaped variant to build; "
                         "drop --imagenet-twin for this model") from None
    if "imagenet" not in spec.builders:
        raise ValueError(f"{spec.name} has no ImageNet-shaped variant in the zoo (variants: {sorted(spec.builders)}); "
                         "drop --imagenet-twin for this model")
    torch.manual_seed(seed)
    twin = zoo.create_model(spec.name, "imagenet").eval()
    head = [n for n, m in twin.named_modules() if isinstance(m, nn.Linear)][-1:]
    # the zoo's CIFAR MobileNet-V2 and torchvision's ImageNet one are the same network under
    # other module names: their layers are paired in order then
    same_names = set(channel_counts(twin)) == set(channel_counts(model))
    twin = match_channels(twin, model, example=torch.zeros(1, 3, 64, 64), keep_outputs=tuple(head),
                          by_position=not same_names)
    # He init on the pruned widths keeps activations at unit scale through the depth (PyTorch's
    # default init shrinks them to ~1e-11 by the last layer), so the twin's int8 ranges are not
    # degenerate.
    with torch.no_grad():
        for m in twin.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    return twin
