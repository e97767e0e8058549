"""Channel coupling from Torch-Pruning's dependency graph, compiled once and replayed cheaply.

Torch-Pruning traces the model and knows which layers share channel indices: a conv's output
channels, the BatchNorm and depthwise conv after it, the input channels of every consumer,
and every branch tied in by a residual add. :func:`coupled_groups` turns its groups into plain
records (module names, the pruning function to call on each, the index of every channel in
each member), so that removing channels from a fresh copy of the model needs no new trace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from learners.modules import COMPRESSIBLE, is_depthwise

__all__ = ["COMPRESSIBLE", "CoupledChannels", "GroupMember", "LeftOutChannels", "coupled_groups", "is_depthwise",
           "remove_channels"]


@dataclass(frozen=True)
class GroupMember:
    """One module touched when a group's channels are removed.

    ``idxs[j]`` is the index, inside this module's pruned dimension, of the group's channel
    ``root_idxs[j]``.
    """

    name: str
    handler: Callable[[nn.Module, Sequence[int]], nn.Module]
    idxs: tuple[int, ...]
    root_idxs: tuple[int, ...]


@dataclass(frozen=True)
class CoupledChannels:
    """Channels that must be removed together, with every module they touch."""

    channels: int
    producers: tuple[str, ...]
    followers: tuple[str, ...]
    consumers: tuple[str, ...]
    members: tuple[GroupMember, ...]


@dataclass(frozen=True)
class LeftOutChannels:
    """A group of coupled channels that cannot be pruned: the compressible ``layers`` it touches
    (producers and consumers, in execution order) keep those channels, and ``reason`` says why."""

    channels: int
    layers: tuple[str, ...]
    reason: str


def coupled_groups(
    model: nn.Module,
    example: torch.Tensor,
    ignored: Iterable[str] = (),
    order: Sequence[str] | None = None,
    left_out: list[LeftOutChannels] | None = None,
) -> list[CoupledChannels]:
    """All prunable channel groups of ``model``, ordered by their first producer.

    Args:
        model: the model (not modified).
        example: one example input for tracing.
        ignored: names of layers whose OUTPUT channels must stay (the classifier).
        order: layer names in execution order (defaults to ``named_modules`` order).
        left_out: if given, receives a :class:`LeftOutChannels` for every group of channels
            that is not prunable although a layer produces it (a grouped, non-depthwise
            convolution among its members), so that callers can say which layers keep all
            those channels and why.
    """
    import torch_pruning as tp
    from torch_pruning.pruner import function as tpf

    modules = dict(model.named_modules())
    name_of = {m: n for n, m in modules.items()}
    pos = {n: i for i, n in enumerate(order or list(modules))}
    out_fns = (tpf.prune_conv_out_channels, tpf.prune_linear_out_channels)
    in_fns = (tpf.prune_conv_in_channels, tpf.prune_linear_in_channels)
    # Tracing follows autograd: parameters must require grad while the graph is built.
    frozen = [p for p in model.parameters() if not p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(True)
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    finally:
        for p in frozen:
            p.requires_grad_(False)
    found: list[CoupledChannels] = []
    for group in dg.get_all_groups(
        ignored_layers=[modules[n] for n in ignored], root_module_types=COMPRESSIBLE
    ):
        producers: list[str] = []
        followers: list[str] = []
        consumers: list[str] = []
        members: list[GroupMember] = []
        touched: list[str] = []
        grouped: list[str] = []
        for item in group:
            module = item.dep.target.module
            if not isinstance(module, nn.Module) or module not in name_of:
                continue  # functional ops (add, relu, ...) carry channels but hold no weights
            name = name_of[module]
            handler = item.dep.handler
            members.append(GroupMember(name, handler, tuple(item.idxs), tuple(item.root_idxs)))
            if not isinstance(module, COMPRESSIBLE):
                continue
            if name not in touched:
                touched.append(name)
            if is_depthwise(module):
                if name not in followers:
                    followers.append(name)
            elif isinstance(module, nn.Conv2d) and module.groups > 1:
                # grouped (non-depthwise) convs: channel maps are not 1:1
                if f"{name} (groups={module.groups})" not in grouped:
                    grouped.append(f"{name} (groups={module.groups})")
            elif handler in out_fns:
                producers.append(name)
            elif handler in in_fns:
                consumers.append(name)
        key = lambda n: pos.get(n, len(pos))  # noqa: E731
        if grouped and left_out is not None:
            left_out.append(LeftOutChannels(
                channels=len(group[0].idxs), layers=tuple(sorted(touched, key=key)),
                reason=(f"their {len(group[0].idxs)} channels pass through the grouped convolution "
                        f"{', '.join(grouped)}, which is not depthwise: its input and output channels do not "
                        "map one to one, so they cannot be pruned together"),
            ))
        if grouped or not producers:
            continue
        found.append(
            CoupledChannels(
                channels=len(group[0].idxs),
                producers=tuple(sorted(set(producers), key=key)),
                followers=tuple(sorted(set(followers), key=key)),
                consumers=tuple(sorted(set(consumers), key=key)),
                members=tuple(members),
            )
        )
    found.sort(key=lambda g: pos.get(g.producers[0], len(pos)))
    return found


def remove_channels(
    model: nn.Module, removals: Iterable[tuple[CoupledChannels, Sequence[int]]]
) -> nn.Module:
    """Physically remove channels from ``model`` in place.

    ``removals`` pairs a group (from :func:`coupled_groups` on a model of the same
    architecture, before any removal) with the group channel indices to drop.
    """
    modules = dict(model.named_modules())
    for group, removed in removals:
        drop = set(int(i) for i in removed)
        if not drop:
            continue
        if len(drop) >= group.channels:
            raise ValueError(f"cannot remove all {group.channels} channels of {group.producers}")
        for member in group.members:
            idxs = sorted(i for i, r in zip(member.idxs, member.root_idxs) if r in drop)
            if idxs:
                member.handler(modules[member.name], idxs)
    return model
