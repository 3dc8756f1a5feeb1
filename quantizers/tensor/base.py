"""QuantTensor: a dequantized tensor plus the scale, zero point and element format that produced it.

A QuantTensor is a plain Python class (not a ``torch.Tensor`` subclass, not a NamedTuple) that
defines ``__torch_function__``: torch functions called on it are routed to the handlers registered
in :mod:`quantizers.tensor.ops` (which keep the quantization where that is exact) and otherwise run
on the dequantized ``value``. Being a plain object with tensor attributes, it passes through
``torch.compile(fullgraph=True)`` as input, intermediate and output, and pickles with the default
``torch.load(weights_only=True)``.

Canonical formulas (``scale_eff = scale_ * outer_scale_``, or ``scale_`` without an outer scale)::

    integer kinds:  value_ = (q - zero_point_) * scale_eff      q integer in fmt's range
    float kinds:    value_ = e * scale_eff                      e a value of fmt (minifloat)

computed in float32 (float64 for a float64 ``value_``) and cast to ``value_``'s dtype once, as the
quantizers do. Producers that compute ``value_`` this way get a bit-identical ``value_`` back from
:meth:`QuantTensor.pack` / :meth:`PackedQuantTensor.unpack`, also after widening it with
``.to(torch.float64)``. (Products of float16/bfloat16 operands are the same in float16/bfloat16
arithmetic, which rounds the exact float32 product once.)
"""
from __future__ import annotations

import copy
import operator
from typing import Any, Callable, ClassVar, Dict, Optional, Tuple, Union

import torch

from ..formats import NumberFormat
from ..formats.carrier import widen
from .checks import as_format, check_broadcastable, check_tensor, storable

AUX_FIELDS = ("scale_", "zero_point_", "outer_scale_")
"""Tensor fields broadcast against ``value_`` (``outer_scale_`` may be None)."""


class _Plain:
    """Sentinel a handler returns to ask for the dequantized fallback ``func(*values)``."""

    def __repr__(self) -> str:
        return "PLAIN"


PLAIN = _Plain()
_HANDLERS: Dict[Callable, Callable] = {}


def implements(*funcs: Callable) -> Callable:
    """Register a handler for torch functions/methods called with a QuantTensor.

    The handler receives the call's ``*args, **kwargs`` and returns the result, or :data:`PLAIN` to
    fall back to running the function on dequantized arguments.
    """
    def register(handler: Callable) -> Callable:
        for func in funcs:
            _HANDLERS[func] = handler
        return handler
    return register


def dequantize_args(obj: Any) -> Any:
    """Replace every QuantTensor in ``obj`` (nested lists, tuples, dicts) by its ``value``."""
    if isinstance(obj, QuantTensor):
        return obj.value
    if type(obj) is list or type(obj) is tuple:
        return type(obj)(dequantize_args(item) for item in obj)
    if type(obj) is dict:
        return {key: dequantize_args(item) for key, item in obj.items()}
    return obj


def dispatch(func: Callable, args: tuple, kwargs: Optional[dict] = None) -> Any:
    """Run ``func`` on QuantTensor arguments: its handler if it has one, else on dequantized values."""
    kwargs = {} if kwargs is None else kwargs
    handler = _HANDLERS.get(func)
    if handler is not None:
        result = handler(*args, **kwargs)
        if result is not PLAIN:
            return result
    return func(*dequantize_args(args), **dequantize_args(kwargs))


def _binary(op: Callable) -> Callable:
    def method(self, other):
        return op(dequantize_args(self), dequantize_args(other))
    return method


def _reflected(op: Callable) -> Callable:
    def method(self, other):
        return op(dequantize_args(other), dequantize_args(self))
    return method


def _method(func: Callable) -> Callable:
    def method(self, *args, **kwargs):
        return dispatch(func, (self,) + args, kwargs)
    method.__name__ = getattr(func, "__name__", "method")
    method.__doc__ = f"``{method.__name__}`` with QuantTensor semantics (see :mod:`quantizers.tensor.ops`)."
    return method


_TENSOR_ATTRIBUTES = frozenset(name for name in dir(torch.Tensor) if not name.startswith("_"))


class QuantTensor:
    """Abstract base of :class:`IntQuantTensor`, :class:`FloatQuantTensor` and their groupwise twins.

    Args (keyword-only):
        value_: dequantized (fake-quantized) floating tensor, in the compressed layout.
        scale_: floating tensor broadcastable to ``value_`` (0-d per tensor, ``(C, 1)`` per channel,
            ``(..., n_groups, 1, ...)`` per group).
        zero_point_: real tensor broadcastable to ``value_``; ``None`` means 0 (symmetric). For
            integer kinds ``value = (q - zero_point) * scale``; it may be fractional (MINVAL form).
        fmt: the element :class:`NumberFormat` (or a name for :func:`get_format`).
        outer_scale_: optional second-level scale (NVFP4's fp32 tensor scale); the effective scale
            is ``scale_ * outer_scale_``.
        scale_format: the format ``scale_`` is known to fit (``E8M0()`` for MX,
            ``float8_e4m3fn`` for NVFP4 block scales); :meth:`pack` stores scale codes in it.
    """

    is_groupwise: ClassVar[bool] = False
    _element_formats: ClassVar[Tuple[type, ...]] = ()

    def __init__(
        self,
        *,
        value_: torch.Tensor,
        scale_: torch.Tensor,
        zero_point_: Optional[torch.Tensor] = None,
        fmt: Union[NumberFormat, str],
        outer_scale_: Optional[torch.Tensor] = None,
        scale_format: Union[NumberFormat, str, None] = None,
    ) -> None:
        if not self._element_formats:
            raise TypeError(
                f"{type(self).__name__} is abstract; build an IntQuantTensor, FloatQuantTensor, "
                "GroupwiseIntQuantTensor or GroupwiseFloatQuantTensor"
            )
        self.fmt = self._check_fmt(fmt)
        self.scale_format = None if scale_format is None else as_format(scale_format, "scale_format")
        check_tensor("value_", value_, floating=True)
        check_tensor("scale_", scale_, floating=True)
        if zero_point_ is not None:
            check_tensor("zero_point_", zero_point_, floating=False)
        if outer_scale_ is not None:
            check_tensor("outer_scale_", outer_scale_, floating=True)
        self.value_ = value_
        self.scale_ = scale_
        self._zero_point = zero_point_  # None: symmetric (kept as None so layout ops stay static)
        self.outer_scale_ = outer_scale_
        self._check_layout()

    # ---- construction helpers ------------------------------------------------------------------
    def _check_fmt(self, fmt: Union[NumberFormat, str]) -> NumberFormat:
        fmt = as_format(fmt, "fmt")
        if not isinstance(fmt, self._element_formats):
            allowed = " or ".join(kind.__name__ for kind in self._element_formats)
            raise TypeError(f"{type(self).__name__} needs fmt of type {allowed}, got {fmt!r}")
        return fmt

    def _check_layout(self) -> None:
        for name, tensor in self._aux().items():
            check_broadcastable(name, tensor, self.value_.shape)

    def _aux(self) -> Dict[str, Optional[torch.Tensor]]:
        """The tensor fields broadcast against ``value_``, as stored (``zero_point_`` None if symmetric)."""
        return {"scale_": self.scale_, "zero_point_": self._zero_point, "outer_scale_": self.outer_scale_}

    def _fields(self) -> Dict[str, Any]:
        """Constructor keyword arguments that rebuild this tensor."""
        return {"value_": self.value_, **self._aux(), "fmt": self.fmt, "scale_format": self.scale_format}

    @property
    def zero_point_(self) -> torch.Tensor:
        """Zero point in the stored layout (a 0-d zero of ``scale_``'s dtype when symmetric)."""
        if self._zero_point is None:
            return torch.zeros((), dtype=self.scale_.dtype, device=self.scale_.device)
        return self._zero_point

    def replace(self, **changes: Any) -> "QuantTensor":
        """A new QuantTensor of the same kind with some constructor fields replaced."""
        fields = self._fields()
        fields.update(changes)
        return type(self)(**fields)

    # ---- layout: stored (compressed) vs original -----------------------------------------------
    def _ungroup(self, stored: torch.Tensor) -> torch.Tensor:
        """A tensor in the stored layout (or broadcastable to it) in the original shape."""
        return stored

    @property
    def _scale_eff_(self) -> torch.Tensor:
        """Effective scale in the stored layout: ``scale_ * outer_scale_``."""
        return self.scale_ if self.outer_scale_ is None else self.scale_ * self.outer_scale_

    @property
    def value(self) -> torch.Tensor:
        """Dequantized tensor in the original shape; carries autograd from ``value_``."""
        return self._ungroup(self.value_)

    @property
    def scale(self) -> torch.Tensor:
        """Effective scale (``scale_ * outer_scale_``), broadcastable to ``value``."""
        return self._scale_eff_

    @property
    def zero_point(self) -> torch.Tensor:
        """Zero point, broadcastable to ``value``."""
        return self.zero_point_

    def dequantize(self) -> torch.Tensor:
        """The dequantized tensor, same as :attr:`value`."""
        return self.value

    def _unscaled_(self) -> torch.Tensor:
        """``value_ / scale_eff`` (+ ``zero_point_`` for integers): the elements up to float rounding."""
        raise NotImplementedError

    def _elements_(self) -> torch.Tensor:
        """Unscaled element values (integers or format values) in the stored layout, as floats."""
        raise NotImplementedError

    def _ratio_(self) -> torch.Tensor:
        """``value_ / scale_eff`` (0 where the scale is 0), without autograd, divided in float32
        (float64 for float64): a bfloat16 quotient would add its own rounding error."""
        scale = widen(self._scale_eff_.detach())
        ratio = widen(self.value_.detach()) / scale
        return torch.where(scale == 0, torch.zeros_like(ratio), ratio)

    # ---- metadata ----------------------------------------------------------------------------
    @property
    def bit_width(self) -> int:
        """Bits per element code (a Python int; Brevitas returns a tensor)."""
        return self.fmt.bits

    @property
    def signed(self) -> bool:
        return self.fmt.signed

    @property
    def is_signed(self) -> bool:
        return self.fmt.signed

    @property
    def shape(self) -> torch.Size:
        return self.value_.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.value_.dtype

    @property
    def device(self) -> torch.device:
        return self.value_.device

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def requires_grad(self) -> bool:
        return self.value_.requires_grad

    def requires_grad_(self, requires_grad: bool = True) -> "QuantTensor":
        """Set ``requires_grad`` on ``value_`` (a leaf) in place; returns self."""
        self.value_.requires_grad_(requires_grad)
        return self

    def size(self, dim: Optional[int] = None) -> Union[torch.Size, int]:
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return self.ndim

    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d QuantTensor")
        return self.shape[0]

    # ---- packing -----------------------------------------------------------------------------
    def pack(self, packed_fp6: bool = False, check: bool = True) -> "PackedQuantTensor":  # noqa: F821
        """Real low-bit storage of this tensor; see :func:`quantizers.tensor.packed.pack`."""
        from .packed import pack
        return pack(self, packed_fp6=packed_fp6, check=check)

    @classmethod
    def from_packed(cls, packed: "PackedQuantTensor") -> "QuantTensor":  # noqa: F821
        """Rebuild the QuantTensor that :meth:`pack` stored (bit-identical fields)."""
        from .packed import PackedQuantTensor
        if not isinstance(packed, PackedQuantTensor):
            raise TypeError(f"packed must be a PackedQuantTensor, got {type(packed).__name__}")
        result = packed.unpack()
        if not isinstance(result, cls):
            raise TypeError(f"packed holds a {type(result).__name__}, not a {cls.__name__}")
        return result

    # ---- torch integration -------------------------------------------------------------------
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return dispatch(func, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        # Other torch.Tensor attributes (sum, abs, max, numpy, ...) act on the dequantized value.
        if name in _TENSOR_ATTRIBUTES and "value_" in self.__dict__:
            return getattr(self.value, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    view = _method(torch.Tensor.view)
    reshape = _method(torch.Tensor.reshape)
    flatten = _method(torch.Tensor.flatten)
    unflatten = _method(torch.Tensor.unflatten)
    transpose = _method(torch.Tensor.transpose)
    permute = _method(torch.Tensor.permute)
    t = _method(torch.Tensor.t)
    squeeze = _method(torch.Tensor.squeeze)
    unsqueeze = _method(torch.Tensor.unsqueeze)
    relu = _method(torch.Tensor.relu)
    detach = _method(torch.Tensor.detach)
    clone = _method(torch.Tensor.clone)
    contiguous = _method(torch.Tensor.contiguous)
    to = _method(torch.Tensor.to)
    cpu = _method(torch.Tensor.cpu)
    cuda = _method(torch.Tensor.cuda)
    float = _method(torch.Tensor.float)
    double = _method(torch.Tensor.double)
    half = _method(torch.Tensor.half)
    bfloat16 = _method(torch.Tensor.bfloat16)
    __getitem__ = _method(torch.Tensor.__getitem__)

    @property
    def T(self) -> Any:
        return self.permute(*reversed(range(self.ndim)))

    __add__, __radd__ = _binary(operator.add), _reflected(operator.add)
    __sub__, __rsub__ = _binary(operator.sub), _reflected(operator.sub)
    __mul__, __rmul__ = _binary(operator.mul), _reflected(operator.mul)
    __truediv__, __rtruediv__ = _binary(operator.truediv), _reflected(operator.truediv)
    __floordiv__, __rfloordiv__ = _binary(operator.floordiv), _reflected(operator.floordiv)
    __mod__, __rmod__ = _binary(operator.mod), _reflected(operator.mod)
    __pow__, __rpow__ = _binary(operator.pow), _reflected(operator.pow)
    __matmul__, __rmatmul__ = _binary(operator.matmul), _reflected(operator.matmul)
    __lt__, __le__ = _binary(operator.lt), _binary(operator.le)
    __gt__, __ge__ = _binary(operator.gt), _binary(operator.ge)
    __eq__, __ne__ = _binary(operator.eq), _binary(operator.ne)
    __hash__ = object.__hash__

    def __neg__(self) -> torch.Tensor:
        return -self.value

    def __pos__(self) -> torch.Tensor:
        return self.value

    def __abs__(self) -> torch.Tensor:
        return self.value.abs()

    def __bool__(self) -> bool:
        return bool(self.value)

    def __float__(self) -> float:
        return float(self.value)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    # ---- copying and pickling ----------------------------------------------------------------
    def __getstate__(self) -> Dict[str, Any]:
        # Non-leaf tensors (QAT graphs) cannot be pickled or deep-copied: store them detached.
        return {key: storable(item) for key, item in self.__dict__.items()}

    def __copy__(self) -> "QuantTensor":
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo: dict) -> "QuantTensor":
        new = object.__new__(type(self))
        memo[id(self)] = new
        for key, item in self.__dict__.items():
            new.__dict__[key] = copy.deepcopy(storable(item), memo)
        return new

    # ---- display -----------------------------------------------------------------------------
    def _repr_fields(self) -> Dict[str, Any]:
        fields = {"shape": tuple(self.shape), "fmt": self.fmt.name, "scale_shape": tuple(self.scale_.shape)}
        if self._zero_point is not None and self._zero_point.numel() > 1:
            fields["zero_point_shape"] = tuple(self._zero_point.shape)
        if self.outer_scale_ is not None:
            fields["outer_scale_shape"] = tuple(self.outer_scale_.shape)
        if self.scale_format is not None:
            fields["scale_format"] = self.scale_format.name
        fields["dtype"] = str(self.dtype).removeprefix("torch.")
        return fields

    def __repr__(self) -> str:
        body = ", ".join(f"{key}={value}" for key, value in self._repr_fields().items())
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"{type(self).__name__}({body}{grad})"
