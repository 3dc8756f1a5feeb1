"""Draw the figures of the concept pages (docs/concepts/*.md) from the library itself.

Run from the repository root after changing a format or scale rule: ``python docs/figures/make_figures.py``.
It writes the PNG files next to this script (committed: the docs build never runs this). Every value
plotted comes from ``quantizers`` (format grids, MX scales), so a figure cannot drift from the code
without this script drawing something else.
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
import quantizers as qz  # noqa: E402

#: PNG metadata without the matplotlib version, so re-running on another install gives the same bytes
#: wherever the rendering is the same.
METADATA = {"Software": None}
DPI = 110


def save(fig, name: str) -> None:
    fig.tight_layout()
    fig.savefig(HERE / name, dpi=DPI, metadata=METADATA)
    plt.close(fig)
    print("wrote", HERE / name)


def value_grids() -> None:
    """Every positive value of FP4, FP6, FP8 (E4M3, E5M2) and HiFloat8 on a log2 axis."""
    formats = {
        "FP4 E2M1": "float4_e2m1fn",
        "FP6 E2M3": "float6_e2m3fn",
        "FP6 E3M2": "float6_e3m2fn",
        "FP8 E4M3 (OCP)": "float8_e4m3fn",
        "FP8 E5M2 (OCP)": "float8_e5m2",
        "HiFloat8": "hifloat8",
        "INT8 (integers)": "int8",
    }
    fig, ax = plt.subplots(figsize=(9, 3.4))
    for row, (label, name) in enumerate(formats.items()):
        values = qz.get_format(name).values()
        positive = values[values > 0]
        ax.scatter(positive, torch.full_like(positive, row), marker="|", s=140, linewidths=0.7)
        ax.annotate(f"{positive.numel()} values, max {positive.max().item():g}", (positive.max().item(), row),
                    xytext=(6, -3), textcoords="offset points", fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_xlim(2.0**-26, 2.0**24)
    ax.set_yticks(range(len(formats)), list(formats))
    ax.set_xlabel("positive representable values (log2 axis)")
    ax.set_title("Value grids: one tick per code")
    ax.grid(axis="x", alpha=0.3)
    save(fig, "value_grids.png")


def mx_block() -> None:
    """One MXFP4 block of 32: the shared E8M0 exponent from the block's amax, and each element's grid."""
    generator = torch.Generator().manual_seed(3)
    block = torch.randn(1, 32, generator=generator) * 0.7
    q = qz.quantize(block, qz.MXFloat4e2m1Weight)
    scale = q.scale.flatten()[0].item()
    amax = block.abs().max().item()
    fig, ax = plt.subplots(figsize=(9, 3.6))
    index = torch.arange(32)
    ax.bar(index - 0.2, block.flatten(), width=0.4, label="input $V_i$", color="C0")
    ax.bar(index + 0.2, q.value.flatten(), width=0.4, label=r"dequantized $X \cdot P_i$", color="C1")
    grid = qz.get_format("float4_e2m1fn").values() * scale
    for level in grid.unique().tolist():
        ax.axhline(level, color="grey", linewidth=0.5, alpha=0.5)
    ax.axhline(amax, color="C3", linestyle="--", linewidth=1)
    exponent = round(torch.log2(torch.tensor(scale)).item())
    ax.text(31.6, amax, f" amax = {amax:.3f}", color="C3", fontsize=8, va="bottom", ha="right")
    ax.set_title(f"One MXFP4 block: 32 elements share X = 2^(floor(log2 amax) - 2) = 2^{exponent}"
                 f" (E8M0 byte {exponent + 127}); grey lines: X times the E2M1 grid")
    ax.title.set_fontsize(9)
    ax.set_xlabel("element i of the block")
    ax.legend(fontsize=8, loc="lower left")
    save(fig, "mx_block.png")


def granularity() -> None:
    """Which elements of an 8x16 weight share a scale, for four granularities."""
    rows, cols = 8, 16
    layouts = {
        "per tensor: one scale": torch.zeros(rows, cols),
        "per channel: one scale per output row": torch.arange(rows).float()[:, None].expand(rows, cols),
        "per group of 4 along the input axis": (torch.arange(rows)[:, None] * (cols // 4) + torch.arange(cols)[None] // 4).float(),
        "2-D tiles of 4x4": ((torch.arange(rows)[:, None] // 4) * (cols // 4) + torch.arange(cols)[None] // 4).float(),
    }
    fig, axes = plt.subplots(1, 4, figsize=(11, 2.3))
    for ax, (title, ids) in zip(axes, layouts.items()):
        # A fixed permutation of the colour index so neighbouring groups get different colours.
        colours = (ids * 7) % 20
        ax.imshow(colours, cmap="tab20", vmin=0, vmax=19, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("input features", fontsize=7)
        ax.set_ylabel("outputs", fontsize=7)
    save(fig, "granularity.png")


def scaling() -> None:
    """A Gaussian weight against the INT8 and FP8 E4M3 grids after absmax scaling."""
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(4096, generator=generator)
    amax = w.abs().max().item()
    fig, axes = plt.subplots(2, 1, figsize=(9, 3.8), sharex=True)
    for ax, (label, name, top) in zip(axes, (("INT8, s = amax / 127", "int8", 127.0),
                                             ("FP8 E4M3, s = amax / 448", "float8_e4m3fn", 448.0))):
        grid = qz.get_format(name).values() * (amax / top)
        ax.hist(w, bins=120, color="C0", alpha=0.6)
        ax.vlines(grid[grid.abs() <= amax], 0, 12, color="C3", linewidth=0.4)
        ax.set_ylabel("count", fontsize=8)
        ax.set_title(f"{label}: red ticks are the representable values s*q", fontsize=9)
    axes[-1].set_xlabel("weight value (4096 samples of N(0, 1))")
    save(fig, "scaling.png")


def groupwise_layout() -> None:
    """A (4, 10) tensor in groups of 4 along dim 1: value_ is (4, 3, 4) with 2 padded columns,
    scale_ is (4, 3, 1); the shapes are read from the QuantTensor itself."""
    x = torch.randn(4, 10, generator=torch.Generator().manual_seed(1))
    q = qz.quantize(x, qz.Int4WeightPerGroupFloat, group_size=4)
    rows, groups, size = q.value_.shape
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 2.6), gridspec_kw={"width_ratios": [groups * size + 1, 3]})
    for r in range(rows):
        for g in range(groups):
            for k in range(size):
                col = g * size + k
                padded = col >= x.shape[1]
                left.add_patch(plt.Rectangle((col, rows - 1 - r), 0.95, 0.95, color=f"C{g}", alpha=0.25 if padded else 0.7,
                                             hatch="//" if padded else None, fill=True))
            right.add_patch(plt.Rectangle((g, rows - 1 - r), 0.95, 0.95, color=f"C{g}", alpha=0.7))
    left.set_xlim(0, groups * size)
    left.set_ylim(0, rows)
    right.set_xlim(0, groups)
    right.set_ylim(0, rows)
    left.set_title(f"value_: {tuple(q.value_.shape)} (x is {tuple(x.shape)}; hatched = zero padding)", fontsize=9)
    right.set_title(f"scale_: {tuple(q.scale_.shape)}", fontsize=9)
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")
    save(fig, "groupwise_layout.png")


if __name__ == "__main__":
    value_grids()
    mx_block()
    granularity()
    scaling()
    groupwise_layout()
