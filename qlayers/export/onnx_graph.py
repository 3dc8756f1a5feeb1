"""Finishing an exported ONNX graph: typed low-bit initializers, opset and IR version, names.

``torch.onnx.export`` writes the codes in the torch dtypes it knows (int8, uint8, float8) with a
``Cast`` to the ONNX element type (INT4, INT2, FLOAT4E2M1, FLOAT8E8M0, ...). :func:`fold_casts`
folds every ``Cast`` of an initializer into an initializer of the target type (the values are exact
in it, checked), so the file stores the low-bit codes themselves. :func:`name_constants` names
each dequantized constant after its owner (``fc1.weight``: the value ``DequantizeLinear`` gives,
what the float parameter was) and labels the value-table ``Gather`` nodes;
:func:`name_activations` names each quantized activation after its quantizer
(``attn.q_scaled_quant``).
"""
from __future__ import annotations

from typing import Dict, Set

import numpy as np

# the first IR version of each opset (onnx.helper.VERSION_TABLE)
IR_VERSION = {19: 9, 20: 9, 21: 10, 22: 10, 23: 11, 24: 12, 25: 13, 26: 13, 27: 13, 28: 14}


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return bool(np.all((a64 == b64) | (np.isnan(a64) & np.isnan(b64))))


def fold_casts(model) -> None:
    """Replace every narrowing ``Cast`` of an initializer by an initializer of the cast's type
    (exact: checked value by value)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    consumers: Dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    renames: Dict[str, str] = {}
    kept = []
    for node in graph.node:
        if node.op_type != "Cast" or node.input[0] not in initializers:
            kept.append(node)
            continue
        source = initializers[node.input[0]]
        to = next(a.i for a in node.attribute if a.name == "to")
        values = numpy_helper.to_array(source)
        cast = values.astype(helper.tensor_dtype_to_np_dtype(to))
        if cast.dtype.itemsize > values.dtype.itemsize:  # a widening cast (Gather indices) stays a node
            kept.append(node)
            continue
        if not _same(cast, values):
            raise AssertionError(f"Cast of initializer {source.name!r} to {helper.tensor_dtype_to_string(to)} is not exact")
        name = source.name if consumers[source.name] == 1 else node.output[0]
        if consumers[source.name] == 1:
            graph.initializer.remove(source)
            del initializers[source.name]
        folded = numpy_helper.from_array(cast, name)
        graph.initializer.append(folded)
        renames[node.output[0]] = name
    del graph.node[:]
    graph.node.extend(kept)
    stale = [info for info in graph.value_info if info.name in renames or info.name in renames.values()]
    for info in stale:
        graph.value_info.remove(info)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]


def set_opset(model, opset: int) -> None:
    """Declare ``opset`` for the default domain and the IR version it needs."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = opset
    model.ir_version = max(model.ir_version, IR_VERSION[opset])


OWN_OPS = ("DequantizeLinear", "Mul", "Reshape", "Slice")  # what OnnxDequantize emits last


def name_constants(model, owners: Set[str], notes: Dict[str, str]) -> None:
    """Rename the value each owner's constant subgraph produces (initializers ``<owner>.codes``,
    ``<owner>.scale``, ... -> DequantizeLinear, or Gather -> Mul) to ``<owner>``, and label the
    value-table Gathers (``notes[owner]`` is their description)."""
    graph = model.graph
    sources: Dict[str, Set[str]] = {init.name: {init.name.rpartition(".")[0]} for init in graph.initializer}
    last: Dict[str, str] = {}
    for node in graph.node:
        inputs = [name for name in node.input if name]
        if inputs and all(name in sources for name in inputs):
            owner = set().union(*(sources[name] for name in inputs))
            for name in node.output:
                sources[name] = owner
            if len(owner) == 1 and node.op_type in OWN_OPS and next(iter(owner)) in owners:
                last[next(iter(owner))] = node.output[0]
        if node.op_type == "Gather" and node.input[0].endswith(".value_table"):
            owner = node.input[0].rpartition(".")[0]
            node.name = f"{owner}.value_table_lookup"
            node.doc_string = f"qzoo value-table lowering: {notes.get(owner, '')}"
    taken = {value for node in graph.node for value in list(node.input) + list(node.output)}
    renames = {value: owner for owner, value in last.items() if owner not in taken}
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = renames.get(name, name)


def name_activations(model) -> None:
    """Rename the output of each activation's ``DequantizeLinear`` to the quantizer's module path
    (``fc1.input_quant``, ``layer.0.attn_quant.v_quant``), read from the exporter's node metadata
    (``pkg.torch.onnx.name_scopes``, so before :func:`strip_metadata`); a quantizer called twice
    (a QuantEltwiseAdd's inputs) gets ``#0``, ``#1``. Graph inputs and outputs keep their names."""
    import ast

    graph = model.graph
    paths: Dict[str, list] = {}
    for node in graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        if node.op_type == "DequantizeLinear" and node.name.startswith("node_quantize_dequantize") and scopes:
            scopes = ast.literal_eval(scopes)
            if len(scopes) >= 2:
                paths.setdefault(scopes[-2], []).append(node.output[0])
    kept = {value.name for value in list(graph.input) + list(graph.output)}
    taken = {value for node in graph.node for value in list(node.input) + list(node.output)}
    renames: Dict[str, str] = {}
    for path, values in paths.items():
        for i, value in enumerate(values):
            name = path if len(values) == 1 else f"{path}#{i}"
            if value not in kept and name not in taken:
                renames[value] = name
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for info in graph.value_info:
        info.name = renames.get(info.name, info.name)


def strip_metadata(model) -> None:
    """Drop the exporter's per-node metadata (stack traces, module paths: about 2 kB a node, a
    sixth of a 4-bit MiniLM file); node names and qzoo's labels stay."""
    for node in model.graph.node:
        del node.metadata_props[:]
