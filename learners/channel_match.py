"""Give a model the per-layer channel counts of a pruned model of the same architecture.

Used for latency twins: a compressed CIFAR model's widths transferred onto the ImageNet-shaped
variant of its architecture (stride-2 stem, 1000 classes, 224x224 input), whose weights do not
matter (latency only). Channels are removed physically with the project's own channel-removal
code (:func:`learners.coupling.coupled_groups` / :func:`learners.coupling.remove_channels`,
Torch-Pruning's dependency graph underneath), so coupled layers (BatchNorm, depthwise
followers, consumers, residual branches) stay consistent.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from learners.coupling import coupled_groups, remove_channels
from learners.modules import COMPRESSIBLE


def channel_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{layer name: (in channels, out channels)}`` of every Conv2d / Linear."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = (m.in_channels, m.out_channels)
        elif isinstance(m, nn.Linear):
            out[name] = (m.in_features, m.out_features)
    return out


def _kind(m: nn.Module) -> tuple:
    if isinstance(m, nn.Conv2d):
        return ("conv", tuple(m.kernel_size), m.groups > 1 and m.groups == m.in_channels)
    return ("linear",)


def positional_counts(model: nn.Module, reference: nn.Module) -> dict[str, tuple[int, int]]:
    """``reference``'s channel counts under ``model``'s layer names, pairing their Conv2d /
    Linear layers in definition order: for two implementations of one architecture whose
    modules are named differently (the zoo's CIFAR MobileNet-V2 and torchvision's).

    Raises:
        ValueError: the two have different numbers of layers, or a pair differs in kind
            (convolution / linear), kernel size or depthwise-ness.
    """
    own = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    ref = [(n, m) for n, m in reference.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if len(own) != len(ref):
        raise ValueError(f"the reference has {len(ref)} convolution / linear layers, the model {len(own)}: "
                         "it is not the same architecture")
    counts = channel_counts(reference)
    out = {}
    for (name, m), (rname, r) in zip(own, ref):
        if _kind(m) != _kind(r):
            raise ValueError(f"layer {name} ({_kind(m)}) pairs with the reference's {rname} ({_kind(r)}): "
                             "it is not the same architecture")
        out[name] = counts[rname]
    return out


def match_channels(
    model: nn.Module,
    reference: nn.Module,
    *,
    example: torch.Tensor | None = None,
    keep_outputs: tuple[str, ...] = (),
    by_position: bool = False,
) -> nn.Module:
    """A copy of ``model`` pruned physically to ``reference``'s channel counts.

    ``model`` and ``reference`` must share layer names (the same architecture, e.g. the CIFAR
    and ImageNet variants of a zoo model); every prunable channel group of ``model`` is cut to
    the output width its first producer has in ``reference`` (the first channels are kept:
    the weights are not the point). ``keep_outputs`` names layers whose output width stays
    (the classifier, whose class count may differ). ``by_position``: pair the layers in
    definition order instead of by name (:func:`positional_counts`).

    Raises:
        ValueError: a layer of ``model`` is missing in ``reference``, a reference layer is wider
            than ``model``'s, or the result does not reproduce ``reference``'s widths.
    """
    ref = positional_counts(model, reference) if by_position else channel_counts(reference)
    own = channel_counts(model)
    missing = sorted(set(own) - set(ref))
    if missing:
        raise ValueError(f"the reference has no layers {missing[:5]}: it is not the same architecture")
    out = copy.deepcopy(model).eval()
    if example is None:
        example = torch.zeros(1, 3, 64, 64)
    groups = coupled_groups(out, example, ignored=keep_outputs)
    removals = []
    for g in groups:
        target = ref[g.producers[0]][1]
        if target > g.channels:
            raise ValueError(f"{g.producers[0]} has {target} channels in the reference but only {g.channels} here")
        if target < g.channels:
            removals.append((g, range(target, g.channels)))
    with torch.no_grad():
        remove_channels(out, removals)
    got = channel_counts(out)
    wrong = [n for n in got if got[n][0] != ref[n][0]
             or (got[n][1] != ref[n][1] and n not in keep_outputs)]
    if wrong:
        raise ValueError(f"channel transfer left {wrong[:5]} with widths {[got[n] for n in wrong[:5]]}, "
                         f"the reference has {[ref[n] for n in wrong[:5]]}")
    return out


__all__ = ["COMPRESSIBLE", "channel_counts", "match_channels", "positional_counts"]
