"""The quantizer catalogue page, generated from the attribute schema and the classes themselves.

``python -m quantizers.zoo.catalog`` prints the Markdown of ``docs/quantizers.md``'s tables: the
declared attributes (:func:`attributes_markdown`) and the predefined quantizers
(:func:`catalog_markdown`).
"""
from __future__ import annotations

import inspect
from typing import List, Type

from . import predefined
from .attributes import QuantizerAttributes, attribute_table, is_full_range_int
from .base import Quantizer, resolve_attributes
from .errors import QuantizerConfigError
from .modes import FullRangeDivisor, RangeMethod, Role, Scaling


def predefined_quantizers() -> List[Type[Quantizer]]:
    """Every predefined quantizer class, in definition order."""
    classes = [c for _, c in inspect.getmembers(predefined, inspect.isclass) if c.__module__ == predefined.__name__]
    return sorted(classes, key=lambda c: inspect.getsourcelines(c)[1])


def describe_scale_rule(a: QuantizerAttributes) -> str:
    """The scale rule of resolved attributes in words (``"E8M0 shared (floor)"``)."""
    if a.role is Role.BIAS:
        return "input scale x weight scale"
    if isinstance(a.scaling, type):
        rule = a.scaling.__name__
    elif not isinstance(a.scaling, Scaling):
        rule = type(a.scaling).__name__
    elif a.scaling is Scaling.FLOAT:
        rule = "amax / max" if a.symmetric else "(max - min) / levels, zero point"
    elif a.scaling is Scaling.PO2:
        rule = f"power of two ({a.scale_rounding or 'ceil'})"
    elif a.scaling is Scaling.E8M0:
        rule = f"E8M0 shared ({a.scale_rounding or 'floor'})"
    elif a.scaling is Scaling.NVFP4:
        rule = "E4M3 block x fp32 tensor"
    else:
        rule = "none (scale 1)"
    if isinstance(a.scaling, Scaling) and is_full_range_int(a):
        divided = "amax / 2^(b-1)" if a.full_range_divisor is FullRangeDivisor.MIN_INT else "amax / (2^(b-1) - 0.5)"
        rule = divided if a.scaling is Scaling.FLOAT else f"{rule} of {divided}"
    if a.range_method is not RangeMethod.MAX:
        rule += f", {a.range_method} range"
    return rule


def _row(quantizer: Type[Quantizer]) -> str:
    try:
        a = resolve_attributes(quantizer)
        fmt = a.number_format.name
    except QuantizerConfigError:  # a format-less base: resolve it with any format mixin
        a = resolve_attributes(quantizer, exponent_bit_width=4, mantissa_bit_width=3)
        fmt = "any (add a format mixin)"
    if a.role is Role.BIAS:
        granularity, source = "as the accumulator", "input x weight scales"
    else:
        granularity = str(a.granularity) + (f" ({a.group_size})" if a.group_size else "")
        source = "weight" if a.role is Role.WEIGHT else (f"static, {a.observer}" if a.observer else "dynamic")
    return f"| `{quantizer.__name__}` | {a.role} | {fmt} | {granularity} | {describe_scale_rule(a)} | {source} |"


def catalog_markdown() -> str:
    """A Markdown table: name, role, element format, granularity, scale rule, range source."""
    rows = ["| quantizer | role | format | granularity | scale rule | range source |", "| --- | --- | --- | --- | --- | --- |"]
    return "\n".join(rows + [_row(q) for q in predefined_quantizers()])


def attributes_markdown() -> str:
    """A Markdown table of every declared attribute: default, allowed values, where it applies, doc."""
    rows = ["| attribute | default | allowed values | applies to | meaning |", "| --- | --- | --- | --- | --- |"]
    for r in attribute_table():
        cells = [f"`{r['name']}`", f"`{r['default']}`", r["allowed"], r["applies"], r["doc"]]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(attributes_markdown())
    print()
    print(catalog_markdown())
