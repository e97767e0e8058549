"""ONNX node <-> torch layer naming, in one place.

An exported graph names its nodes after the torch modules they come from: the TorchScript
exporter as a scope path (``/layers/layers.0/conv1/Conv``), the torch.export-based one in
node metadata (``pkg.torch.onnx.name_scopes``). Everything that asks which layer a node
belongs to reads it here:

* :func:`scope_module` - the module path of one scoped node name;
* :func:`node_scopes` - a node's candidate module paths (metadata, then the name);
* :func:`layer_nodes` - ``{torch layer: its weight node}`` of a graph exported from a model
  (what the QuantORT env keeps fp32 per layer);
* :func:`assign_nodes` - the owning layer of every node of a graph, or of the kernels an ORT
  profile names (what the per-layer latency table sums).

Plain ONNX / PyTorch (learners/ stays below the environments).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from learners.ort_int8 import WEIGHT_OPS, QuantizationError, load_onnx


def scope_module(node_name: str) -> str | None:
    """The torch module path in a TorchScript-exporter node name.

    ``/layers/layers.6/shortcut/shortcut.0/Conv`` -> ``layers.6.shortcut.0``: each scope
    segment names a child relative to an ancestor, so the path is the segments joined with the
    overlap between the path so far and each segment's leading parts removed.
    """
    parts = node_name.strip("/").split("/")
    if len(parts) < 2:
        return None
    path: list[str] = []
    for seg in parts[:-1]:
        pieces = seg.split(".")
        for k in range(min(len(path), len(pieces) - 1), 0, -1):
            if path[-k:] == pieces[:k]:
                pieces = pieces[k:]
                break
        path += pieces
    return ".".join(path)


def node_scopes(node: Any) -> list[str]:
    """Candidate torch module paths of an ONNX node: the torch.export exporter's name-scope
    metadata where present, else the TorchScript exporter's scoped node name."""
    out = []
    for p in node.metadata_props:
        if p.key in ("pkg.torch.onnx.name_scopes", "namespace"):
            try:
                scopes = json.loads(p.value)
            except json.JSONDecodeError:
                scopes = None
            if isinstance(scopes, list) and scopes:
                out.append(".".join(s for s in scopes if s))
    scoped = scope_module(node.name)
    if scoped:
        out.append(scoped)
    return out


def layer_nodes(model: Any, onnx_model: Any) -> dict[str, str]:
    """``{torch module name: ONNX node name}`` for every ``Conv2d`` / ``Linear`` of ``model``
    (a torch module) in the graph ``onnx_model`` exported from it (a path or ModelProto; the
    fp32 export or its :func:`preprocess` output).

    Raises:
        QuantizationError: a layer has no node, or two (the graph was not exported from this
            model, or by an exporter whose node names carry no module scope).
    """
    from torch import nn

    graph = load_onnx(onnx_model) if isinstance(onnx_model, (str, os.PathLike)) else onnx_model
    wanted = {name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    found: dict[str, list[str]] = {}
    for node in graph.graph.node:
        if node.op_type not in WEIGHT_OPS:
            continue
        for scope in node_scopes(node):
            if scope in wanted:
                found.setdefault(scope, []).append(node.name)
                break
    missing = sorted(wanted - set(found))
    double = {k: v for k, v in found.items() if len(v) > 1}
    if missing or double:
        raise QuantizationError(
            f"cannot map torch layers to ONNX nodes: no node for {missing[:5]}, "
            f"several for {dict(list(double.items())[:3])}; "
            "pass the graph exported from this very model (learners.onnx_export.export_onnx)"
        )
    return {name: found[name][0] for name, _ in model.named_modules() if name in wanted}


def assign_nodes(names: Sequence[str], layers: Sequence[str]) -> dict[str, str]:
    """``{node name: torch layer}`` for nodes in execution order: a node whose name carries a
    layer's module scope (``/layers/layers.0/conv1/Conv``, the fused ``..._token_4``, the
    ``..._QuantizeLinear`` of its output) is that layer's; any other node (ReLU, residual Add,
    pooling, a layout Transpose, a Q/DQ pair between layers) belongs to the layer that ran
    before it, and nodes before the first layer to the first.

    Raises:
        QuantizationError: no node names any of ``layers``.
    """
    wanted = set(layers)
    owners = [scope if (scope := scope_module(n)) in wanted else None for n in names]
    first = next((o for o in owners if o is not None), None)
    if first is None:
        raise QuantizationError(f"no node of the graph names a layer of {sorted(wanted)[:5]}...: "
                                "the graph was not exported from this model (learners.onnx_export)")
    out, current = {}, first
    for n, o in zip(names, owners):
        current = o or current
        out[n] = current
    return out
