"""GroupwiseQuantTensor: the grouped storage layout shared by the groupwise integer and float kinds."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import torch

from ..formats import NumberFormat
from .base import QuantTensor
from .grouping import from_groups, grouped_shape


class GroupwiseQuantTensor(QuantTensor):
    """Base of :class:`GroupwiseIntQuantTensor` and :class:`GroupwiseFloatQuantTensor`.

    ``value_`` holds the zero-padded original tensor with axis ``group_dim`` split in place into
    ``(n_groups, group_size)`` (see :mod:`quantizers.tensor.grouping`); ``scale_`` and
    ``zero_point_`` broadcast to it, typically ``shape[:d] + (n_groups, 1) + shape[d+1:]``.
    ``value``, ``scale`` and ``zero_point`` are expanded, un-padded views in ``original_shape``.

    Extra keyword args:
        group_size: elements per group (32 for MX, 16 for NVFP4).
        group_dim: the grouped axis of the original tensor (a negative value counts from the end).
        original_shape: shape before padding and grouping.
    """

    is_groupwise = True

    def __init__(
        self,
        *,
        value_: torch.Tensor,
        scale_: torch.Tensor,
        zero_point_: Optional[torch.Tensor] = None,
        fmt: Union[NumberFormat, str],
        group_size: int,
        group_dim: int,
        original_shape: Sequence[int],
        outer_scale_: Optional[torch.Tensor] = None,
        scale_format: Union[NumberFormat, str, None] = None,
    ) -> None:
        if isinstance(group_size, bool) or not isinstance(group_size, int):
            raise TypeError(f"group_size must be an int, got {group_size!r}")
        if group_size < 1:
            raise ValueError(f"group_size must be a positive int, got {group_size}")
        if not isinstance(original_shape, (tuple, list, torch.Size)) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in original_shape
        ):
            raise TypeError(f"original_shape must be a torch.Size or a sequence of non-negative ints, got {original_shape!r}")
        ndim = len(original_shape)
        if isinstance(group_dim, bool) or not isinstance(group_dim, int):
            raise TypeError(f"group_dim must be an int, got {group_dim!r}")
        if not -ndim <= group_dim < ndim:
            raise ValueError(
                f"group_dim={group_dim} is out of range for original_shape {tuple(original_shape)}; "
                f"allowed: 0..{ndim - 1} (or {-ndim}..-1)"
            )
        self.group_size = group_size
        self.group_dim = group_dim % ndim
        self.original_shape = torch.Size(original_shape)
        super().__init__(
            value_=value_, scale_=scale_, zero_point_=zero_point_, fmt=fmt, outer_scale_=outer_scale_,
            scale_format=scale_format,
        )

    def _check_layout(self) -> None:
        expected = grouped_shape(self.original_shape, self.group_dim, self.group_size)
        if self.value_.shape != expected:
            raise ValueError(
                f"value_ has shape {tuple(self.value_.shape)}; original_shape {tuple(self.original_shape)} "
                f"grouped along group_dim={self.group_dim} in groups of {self.group_size} is stored as "
                f"{tuple(expected)} (use quantizers.tensor.to_groups)"
            )
        super()._check_layout()

    def _fields(self) -> Dict[str, Any]:
        fields = super()._fields()
        fields.update(group_size=self.group_size, group_dim=self.group_dim, original_shape=self.original_shape)
        return fields

    def _ungroup(self, stored: torch.Tensor) -> torch.Tensor:
        if stored.shape != self.value_.shape:
            stored = stored.expand(self.value_.shape)
        return from_groups(stored, self.group_dim, self.original_shape)

    @property
    def shape(self) -> torch.Size:
        return self.original_shape

    @property
    def scale(self) -> torch.Tensor:
        """Effective scale (``scale_ * outer_scale_``) expanded over each group, in the original shape."""
        return self._ungroup(self._scale_eff_)

    @property
    def zero_point(self) -> torch.Tensor:
        """Zero point expanded over each group, in the original shape."""
        return self._ungroup(self.zero_point_)

    def _repr_fields(self) -> Dict[str, Any]:
        fields = super()._repr_fields()
        grouped = {"group_size": self.group_size, "group_dim": self.group_dim, "value_shape": tuple(self.value_.shape)}
        return {**{k: fields[k] for k in ("shape", "fmt")}, **grouped, **fields}
