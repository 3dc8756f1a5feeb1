"""The table of predefined quantizers, generated from the classes themselves.

``python -m quantizers.zoo.catalog`` prints it as Markdown (the README's table comes from here).
"""
from __future__ import annotations

import inspect
from typing import List, Type

from . import predefined
from .base import Quantizer, QuantizerConfigError
from .build import build_tensor_quantizer


def predefined_quantizers() -> List[Type[Quantizer]]:
    """Every predefined quantizer class, in definition order."""
    classes = [c for _, c in inspect.getmembers(predefined, inspect.isclass) if c.__module__ == predefined.__name__]
    return sorted(classes, key=lambda c: inspect.getsourcelines(c)[1])


def _scale_rule(quantizer: Type[Quantizer]) -> str:
    if quantizer.role == "bias":
        return "input scale x weight scale"
    rule = {
        "float": "amax / max" if quantizer.quant_type == "float" or quantizer.symmetric else "(max - min) / levels, zero point",
        "po2": f"power of two ({quantizer.scale_rounding})",
        "e8m0": f"E8M0 shared ({quantizer.scale_rounding})",
        "nvfp4": "E4M3 block x fp32 tensor",
        "none": "none (scale 1)",
    }[quantizer.scaling]
    if quantizer.quant_type == "int" and quantizer.signed and not quantizer.narrow_range and quantizer.symmetric:
        divided = "amax / 2^(b-1)" if quantizer.full_range_divisor == "min_int" else "amax / (2^(b-1) - 0.5)"
        rule = {"float": divided, "po2": f"{rule} of {divided}"}.get(quantizer.scaling, rule)
    if quantizer.range_method != "max":
        rule += f", {quantizer.range_method} range"
    return rule


def catalog_markdown() -> str:
    """A Markdown table: name, role, element format, granularity, scale rule, static/dynamic."""
    rows = ["| quantizer | role | format | granularity | scale rule | range source |", "| --- | --- | --- | --- | --- | --- |"]
    for quantizer in predefined_quantizers():
        if quantizer.role == "bias":
            fmt, granularity = f"int{quantizer.bit_width}", "as the accumulator"
        else:
            try:
                fmt = build_tensor_quantizer(quantizer).fmt.name
            except QuantizerConfigError:
                fmt = "any (add a format mixin)"
            granularity = quantizer.granularity + (f" ({quantizer.group_size})" if quantizer.group_size else "")
        source = "weight" if quantizer.role in ("weight", "bias") else ("static, " + quantizer.observer if quantizer.observer else "dynamic")
        rows.append(f"| `{quantizer.__name__}` | {quantizer.role} | {fmt} | {granularity} | {_scale_rule(quantizer)} | {source} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(catalog_markdown())
