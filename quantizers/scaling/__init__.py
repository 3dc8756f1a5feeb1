"""Scaling: which elements share a scale (:mod:`.granularity`), range statistics
(:mod:`.statistics`), scale rules (:mod:`.rules`, :mod:`.block_scales`) and the scalers that bind a
rule to its element format (:mod:`.scalers`).

NaN and Inf policy
------------------
One rule for every scaling kind: **a NaN or ±Inf element costs only itself, and stays visible.**
A single NaN in a weight or in a calibration batch never moves the scale of any other element.

1. *Statistics see only finite values.* The absolute maximum, min/max, percentiles and the MSE
   search read NaN and ±Inf elements as 0, a value every range already holds (every rule widens
   its range to include 0), so absmax and min/max are exactly those of the finite elements and a
   percentile ranks the non-finite elements as zeros. This holds per tensor, channel, token, group
   and tile, for float scales (``amax / max``), power-of-two scales, integer symmetric, asymmetric
   (zero point) and MINVAL scales; observers of these kinds therefore only ever see finite
   statistics, so no aggregate (mean, EMA, running min/max) is poisoned by one batch. A granule
   with no finite element has statistic 0 and gets the all-zero scale 1.
2. *The element itself stays visible.* Fake quantization maps NaN to NaN; ±Inf follows the element
   format's overflow rule (saturating formats give ±max·s, formats with Inf and
   ``saturating=False`` give ±Inf, see :mod:`quantizers.formats`). Without scaling (``UnitScaler``)
   the same holds with ``s = 1``.
3. *Shared block scales mark the block.* OCP MX and NVFP4 (scalers with ``nan_blocks = True``)
   give a block holding NaN or ±Inf the NaN scale: the E8M0 NaN code 0xFF, as OCP MX v1.0 specifies,
   and E4M3's NaN (0x7F) for an NVFP4 block scale. Exactly that block dequantizes to NaN and packs
   as that scale byte (its element codes are 0). Other blocks are untouched; NVFP4's per-tensor
   scale comes from the blocks without NaN/Inf. (A static block-scaled quantizer, which the zoo
   does not define, would hand these NaN block statistics to its observer.)
4. *A non-finite statistic is never replaced.* A statistic that is NaN or ±Inf (one supplied through
   :meth:`~quantizers.TensorQuantizer.quantize_with`, a diverged learned range) gives a NaN or Inf
   scale, so the granule's output is NaN — never a silent scale of 1. Only a statistic of exactly 0
   gives scale 1.
5. *Calibration says so.* Calibration counts the NaN/Inf elements each static quantizer meets and
   warns once per calibration, naming those quantizers (:class:`quantizers.nonfinite.NonFiniteWatch`).
"""
