"""Residual adds in ``forward``: found with torch.fx, replaced by :class:`~qlayers.QuantEltwiseAdd`.

Each user-defined module is traced on its own, with every submodule as a leaf, so only the code of
its own ``forward`` is rewritten; a module that cannot be traced (data-dependent control flow, ...)
keeps its forward, and its children are still visited. A module with an add of two tensors
(``a + b``, ``torch.add(a, b)``, ``a.add(b)``, ``a += b``) stays the same object (same class,
attributes, children, parameters and buffers) and gains a submodule ``eltwise_<node>`` (e.g.
``block.eltwise_add``) per add, and an instance ``forward`` that runs the traced graph calling it
in place of the add. The add's quantizers come from the config sections for that name: ``inputs``
quantizes both operands (one shared quantizer, so a static per-tensor scale puts them on one grid)
and ``outputs`` the sum.

A trace can silently compute something else (fx proxies take one branch of every ``if x is None``).
So the first call of a rewritten module is checked: in eval mode, without gradients, with every
quantizer of the module disabled and on copies of the arguments, the traced graph and the
module's own forward run on the call's inputs and must give equal outputs (bitwise, or within
``rtol=1e-5, atol=1e-6``). If they differ, or the graph fails, the module falls back to its own
forward for good (its adds removed) with one warning naming it; then the call proceeds.
"""
from __future__ import annotations

import copy
import operator
import sys
import warnings
from typing import Any, Dict, List, Optional, Set, Tuple

import torch
import torch.utils._pytree as pytree
from torch import fx, nn

from ..merge import QuantEltwiseAdd
from ..quant_layer import QuantLayer
from .config import QuantConfig
from .qat import quantization_disabled

_TRACED = "_qzoo_traced_adds"  # instance attribute: names of the eltwise adds of a rewritten module

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

    Warns once, in one line, when modules could not be traced."""
    failures: List[Tuple[str, str, BaseException]] = []
    _visit(model, "", cfg, (failures, set() if seen is None else seen))
    if failures:
        classes = sorted({cls for _, cls, _ in failures})
        shown = ", ".join(classes[:3]) + (f" and {len(classes) - 3} more" if len(classes) > 3 else "")
        warnings.warn(
            f"quantize_model: torch.fx could not trace {len(failures)} module(s) ({shown}); adds in their "
            "own forward stay float (their layers are quantized)", UserWarning, stacklevel=3,
        )
    return model


def untrace(module: nn.Module) -> None:
    """Undo the rewrite of ``module`` (if any): its own forward again, its eltwise adds removed."""
    for name in module.__dict__.pop(_TRACED, ()):
        delattr(module, name)
    module.__dict__.pop("forward", None)


def traced_adds(module: nn.Module) -> Tuple[str, ...]:
    """Names of the eltwise adds a rewrite gave ``module`` (empty if it has none)."""
    return module.__dict__.get(_TRACED, ())


def _visit(module: nn.Module, name: str, cfg: QuantConfig, log: tuple) -> None:
    if isinstance(module, QuantLayer) or (name and cfg.is_skipped(name)) or isinstance(module, nn.MultiheadAttention):
        return
    for child_name, child in list(module.named_children()):
        _visit(child, f"{name}.{child_name}" if name else child_name, cfg, log)
    if type(module).__module__.startswith("torch.") and not isinstance(module, fx.GraphModule):
        return  # nn containers and built-in layers have no residual adds of their own
    if _TRACED not in module.__dict__:
        _rewrite_adds(module, name, cfg, log)


def _rewrite_adds(module: nn.Module, name: str, cfg: QuantConfig, log: tuple) -> None:
    failures, seen = log
    try:
        graph = _ChildrenAsLeaves().trace(module)
    except Exception as error:  # any tracing failure: keep the module's own forward
        failures.append((name, type(module).__name__, error))
        return
    memo: Dict[fx.Node, bool] = {}
    adds = [node for node in graph.nodes if _is_tensor_add(node, memo)]
    if not adds:
        return
    device = next((t.device for t in (*module.parameters(), *module.buffers())), None)
    added: List[str] = []
    taken: Set[str] = set(dict(module.named_children())) | set(dict(module.named_parameters(recurse=False)))
    taken |= set(dict(module.named_buffers(recurse=False))) | set(vars(module))
    for node in adds:
        local = _unique(f"eltwise_{node.name}", taken)
        seen.add(f"{name}.{local}" if name else local)
        sections = cfg.for_layer(f"{name}.{local}" if name else local)
        if sections is None or (sections["inputs"] is None and sections["outputs"] is None):
            continue
        add = QuantEltwiseAdd(input_quant=sections["inputs"], output_quant=sections["outputs"])
        module.add_module(local, (add if device is None else add.to(device)).train(module.training))
        with graph.inserting_before(node):
            call = graph.call_module(local, tuple(node.args[:2]))
        node.replace_all_uses_with(call)
        graph.erase_node(node)
        added.append(local)
    if not added:
        return
    graph.lint()
    graph_module = fx.GraphModule(module, graph, class_name=type(module).__name__)
    module.__dict__[_TRACED] = tuple(added)
    module.__dict__["forward"] = _FirstCallCheck(module, graph_module, name)


class _TracedForward:
    """The traced graph's code run with the module as ``self``: children, parameters and buffers
    are looked up on the module at every call, so replacing one later (a LoRA wrapper, a
    re-quantized layer) takes effect as in the module's own forward."""

    def __init__(self, module: nn.Module, graph_module: fx.GraphModule):
        self.module, self.graph_module = module, graph_module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return type(self.graph_module).forward(self.module, *args, **kwargs)


class _FirstCallCheck:
    """A rewritten module's forward until its first call has compared the traced graph with the
    module's own forward (see the module docstring); then the module's ``forward`` is the graph's
    (or its own again)."""

    def __init__(self, module: nn.Module, graph_module: fx.GraphModule, name: str):
        self.module, self.graph_module, self.name = module, graph_module, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if "torch._dynamo" in sys.modules:  # torch.compile may be tracing: keep the check out of it
            return torch.compiler.disable(self._check)(*args, **kwargs)
        return self._check(*args, **kwargs)  # (a decorator would import torch._dynamo, ~2 s, with qlayers)

    def _check(self, *args: Any, **kwargs: Any) -> Any:
        module = self.module
        problem = _trace_problem(module, self.graph_module, args, kwargs)
        if problem is None:
            module.__dict__["forward"] = _TracedForward(module, self.graph_module)
        else:
            adds = module.__dict__.get(_TRACED, ())
            where = f" at {self.name!r}" if self.name else ""
            warnings.warn(
                f"quantize_model: the torch.fx trace of {type(module).__name__}{where} does not compute what its "
                f"forward computes ({problem}); it runs its own forward, and its {len(adds)} add(s) stay float",
                UserWarning, stacklevel=2,
            )
            untrace(module)
        return module.forward(*args, **kwargs)


def _trace_problem(module: nn.Module, graph_module: fx.GraphModule, args: tuple, kwargs: dict) -> Optional[str]:
    """None when the graph gives the module's own outputs on these inputs, else why not. Errors of
    the module's own forward propagate (the inputs are wrong, not the trace)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad(), quantization_disabled(module), torch.random.fork_rng(devices=[]):
            try:
                own_args, traced_args = _copied((args, kwargs)), _copied((args, kwargs))
            except Exception as error:  # arguments that cannot be copied cannot be checked
                return f"its arguments cannot be copied to check it: {type(error).__name__}"
            expected = type(module).forward(module, *own_args[0], **own_args[1])
            try:
                got = _TracedForward(module, graph_module)(*traced_args[0], **traced_args[1])
            except Exception as error:
                return f"the graph raised {type(error).__name__}: {_first_line(error)}"
    finally:
        for m, training in modes:
            m.training = training
    return _difference(expected, got, "output")


def _copied(tree: Any) -> Any:
    """Copies of the call's arguments, so the checks cannot change them (a cache updated in place):
    tensors detached and cloned (autograd graphs are not copied), other leaves deep-copied."""
    return pytree.tree_map(lambda leaf: leaf.detach().clone() if isinstance(leaf, torch.Tensor) else copy.deepcopy(leaf), tree)


def _difference(expected: Any, got: Any, where: str) -> Optional[str]:
    if isinstance(expected, torch.Tensor) or isinstance(got, torch.Tensor):
        if not (isinstance(expected, torch.Tensor) and isinstance(got, torch.Tensor)):
            return f"{where} is {type(got).__name__}, expected {type(expected).__name__}"
        if expected.shape != got.shape or expected.dtype != got.dtype:
            return f"{where} has shape {tuple(got.shape)} {got.dtype}, expected {tuple(expected.shape)} {expected.dtype}"
        if torch.equal(expected, got) or (expected.is_floating_point() and torch.allclose(expected, got, rtol=1e-5, atol=1e-6, equal_nan=True)):
            return None
        return f"{where} differs"
    if isinstance(expected, dict) and isinstance(got, dict):
        if list(expected) != list(got):
            return f"{where} has keys {list(got)}, expected {list(expected)}"
        return next((d for k in expected if (d := _difference(expected[k], got[k], f"{where}[{k!r}]"))), None)
    if isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple)):
        if len(expected) != len(got):
            return f"{where} has {len(got)} items, expected {len(expected)}"
        return next((d for i, (e, g) in enumerate(zip(expected, got)) if (d := _difference(e, g, f"{where}[{i}]"))), None)
    if type(expected) is not type(got):
        return f"{where} is {type(got).__name__}, expected {type(expected).__name__}"
    try:
        return None if expected is got or bool(expected == got) else f"{where} differs"
    except Exception:
        return f"{where} ({type(expected).__name__}) cannot be compared"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:120] if text else ""


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
