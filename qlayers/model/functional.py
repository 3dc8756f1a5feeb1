"""Residual adds in ``forward``: found with torch.fx, replaced by :class:`~qlayers.QuantEltwiseAdd`.

Each user-defined module is traced on its own, with every submodule as a leaf, so only the code of
its own ``forward`` is rewritten; a module that cannot be traced (data-dependent control flow, ...)
keeps its forward, and its children are still visited. A module with an add of two tensors
(``a + b``, ``torch.add(a, b)``, ``a.add(b)``, ``a += b``) becomes a ``torch.fx.GraphModule`` with
the same class name, children, parameters and buffers, calling ``eltwise_<node>`` (e.g.
``block.eltwise_add``) in place of the add. The add's quantizers come from the config sections
for that name: ``inputs`` quantizes both operands (one shared quantizer, so a static per-tensor
scale puts them on one grid) and ``outputs`` the sum.
"""
from __future__ import annotations

import operator
import warnings
from typing import Dict, List, Optional, Set, Tuple

import torch
from torch import fx, nn

from ..merge import QuantEltwiseAdd
from ..quant_layer import QuantLayer
from .config import QuantConfig
from .control import configure_quantizers

ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_SHAPE_METHODS = {"size", "dim", "numel", "nelement", "item", "tolist", "stride", "element_size", "__len__", "data_ptr", "get_device"}
_SHAPE_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "layout"}


class _ChildrenAsLeaves(fx.Tracer):
    """Traces only the root's own forward: every submodule call stays a ``call_module``.
    (Constructed without arguments, as ``torch.fx`` does when it unpickles a GraphModule.)"""

    _root: Optional[nn.Module] = None

    def trace(self, root, concrete_args=None):
        self._root = root
        return super().trace(root, concrete_args)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return m is not self._root


def quantize_functional_adds(model: nn.Module, cfg: QuantConfig, seen: Optional[Set[str]] = None) -> nn.Module:
    """``model`` with its quantizable residual adds replaced (see the module docstring); the
    names of all adds found (quantized or not) are added to ``seen``.

    Warns once, naming the first module class that could not be traced and the fx error."""
    failures: List[Tuple[str, str, BaseException]] = []
    model = _visit(model, "", cfg, (failures, set() if seen is None else seen))
    if failures:
        name, cls, error = failures[0]
        where = f" at {name!r}" if name else ""
        more = f" ({len(failures) - 1} more modules could not be traced either)" if len(failures) > 1 else ""
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        warnings.warn(
            f"quantize_model: torch.fx could not trace {cls}{where} ({type(error).__name__}: {first_line}); "
            f"functional ops in its forward (residual adds) stay unquantized, its layers are still "
            f"swapped{more}. Wrap the add in qlayers.QuantEltwiseAdd by hand to quantize it.",
            UserWarning, stacklevel=3,
        )
    return model


def _visit(module: nn.Module, name: str, cfg: QuantConfig, log: tuple) -> nn.Module:
    if isinstance(module, QuantLayer) or (name and cfg.is_skipped(name)) or isinstance(module, nn.MultiheadAttention):
        return module
    for child_name, child in list(module.named_children()):
        new = _visit(child, f"{name}.{child_name}" if name else child_name, cfg, log)
        if new is not child:
            setattr(module, child_name, new)
    if type(module).__module__.startswith("torch.") and not isinstance(module, fx.GraphModule):
        return module  # nn containers and built-in layers have no residual adds of their own
    return _rewrite_adds(module, name, cfg, log) or module


def _rewrite_adds(module: nn.Module, name: str, cfg: QuantConfig, log: tuple) -> Optional[fx.GraphModule]:
    failures, seen = log
    try:
        graph = _ChildrenAsLeaves().trace(module)
    except Exception as error:  # any tracing failure: keep the module's own forward
        failures.append((name, type(module).__name__, error))
        return None
    memo: Dict[fx.Node, bool] = {}
    adds = [node for node in graph.nodes if _is_tensor_add(node, memo)]
    if not adds:
        return None
    graph_module = fx.GraphModule(module, graph, class_name=type(module).__name__)
    device = next((t.device for t in (*module.parameters(), *module.buffers())), None)
    replaced = 0
    taken: Set[str] = set(dict(module.named_children())) | set(dict(module.named_parameters(recurse=False)))
    for node in adds:
        local = _unique(f"eltwise_{node.name}", taken)
        seen.add(f"{name}.{local}" if name else local)
        sections = cfg.for_layer(f"{name}.{local}" if name else local)
        if sections is None or (sections["inputs"] is None and sections["outputs"] is None):
            continue
        add = QuantEltwiseAdd(input_quant=sections["inputs"], output_quant=sections["outputs"])
        configure_quantizers(add, {"input": sections["inputs"], "output": sections["outputs"]})
        graph_module.add_submodule(local, add if device is None else add.to(device))
        with graph.inserting_before(node):
            call = graph.call_module(local, tuple(node.args[:2]))
        node.replace_all_uses_with(call)
        graph.erase_node(node)
        replaced += 1
    if not replaced:
        return None
    graph.lint()
    graph_module.recompile()
    _keep_members(module, graph_module)
    return graph_module.train(module.training)


def _keep_members(module: nn.Module, graph_module: fx.GraphModule) -> None:
    """Children, parameters and buffers the trace did not reference stay (same state_dict keys)."""
    for child_name, child in module.named_children():
        if graph_module._modules.get(child_name) is not child:
            graph_module.add_module(child_name, child)
    for pname, param in module.named_parameters(recurse=False):
        if graph_module._parameters.get(pname) is not param:
            graph_module.register_parameter(pname, param)
    for bname, buffer in module.named_buffers(recurse=False):
        if graph_module._buffers.get(bname) is not buffer:
            persistent = bname not in module._non_persistent_buffers_set
            graph_module.register_buffer(bname, buffer, persistent=persistent)


def _unique(base: str, taken: Set[str]) -> str:
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def _is_tensor_add(node: fx.Node, memo: Dict[fx.Node, bool]) -> bool:
    if node.op == "call_function" and node.target in ADD_FUNCTIONS:
        if any(k != "alpha" for k in node.kwargs) or node.kwargs.get("alpha", 1) != 1:
            return False
    elif not (node.op == "call_method" and node.target == "add" and not node.kwargs):
        return False
    return len(node.args) == 2 and all(_is_tensor(arg, memo) for arg in node.args)


def _is_tensor(node, memo: Dict[fx.Node, bool]) -> bool:
    """Whether ``node`` produces a tensor (not a shape, size or other Python value)."""
    if not isinstance(node, fx.Node):
        return False
    if node not in memo:
        memo[node] = False  # guards against cycles; replaced below
        memo[node] = _produces_tensor(node, memo)
    return memo[node]


def _produces_tensor(node: fx.Node, memo: Dict[fx.Node, bool]) -> bool:
    if node.op in ("placeholder", "call_module", "get_attr"):
        return True
    if node.op == "call_method":
        return node.target not in _SHAPE_METHODS and _is_tensor(node.args[0], memo)
    if node.op == "call_function":
        if node.target is getattr:
            return node.args[1] not in _SHAPE_ATTRIBUTES and _is_tensor(node.args[0], memo)
        if node.target is len:
            return False
        if node.target is operator.getitem:
            return _is_tensor(node.args[0], memo)
        return any(_is_tensor(arg, memo) for arg in node.all_input_nodes)
    return False
