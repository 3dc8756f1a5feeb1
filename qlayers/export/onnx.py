"""``export_onnx``: a quantized model as an ONNX graph of standard QuantizeLinear/DequantizeLinear.

Steps (each in its own module):

1. checks: every quantized layer has an export twin and every static quantizer is calibrated
   (:mod:`qlayers.export.onnx_layers`, :mod:`qlayers.export.onnx_acts`), before anything runs;
2. one probe forward on ``example_inputs`` records the tensor each activation quantizer sees
   (axes, layouts);
3. the twins are built (weights as low-bit codes, :mod:`qlayers.export.onnx_weights`) and swapped
   in; ``torch.onnx.export(dynamo=True)`` traces the model with the custom ops of
   :mod:`qlayers.export.onnx_ops` and their ONNX translations;
4. the graph is finished (:mod:`qlayers.export.onnx_graph`): casts folded into typed initializers,
   the opset the element types need, names; checked with ``onnx.checker`` and only then written.

Why the dynamo exporter: the TorchScript exporter stops at opset 20, before INT4/blocked
quantization (21), FLOAT4E2M1 (23) and E8M0 scales (24); ``torch.export`` also traces models that
TorchScript cannot script, and ``custom_translation_table`` lets each custom op emit exactly the ONNX
nodes wanted. The exporter's optimizer is off so that no constant folding turns a ``DequantizeLinear``
of codes back into float weights.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

from quantizers import TensorQuantizer
from quantizers.compile import wait_for_compiles

from .onnx_types import ExportError, check_target

EXPORTER_OPSET = 23  # the newest opset torch.onnx.export writes; later ones are declared afterwards


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"export_onnx needs the packages onnx and onnxscript ({error.name} is missing): pip install onnx onnxscript"
        ) from None


def _probe(model: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Dict[int, torch.Tensor]:
    """The first tensor every TensorQuantizer of the quantized layers sees in one forward."""
    from .onnx_layers import quant_layers

    samples: Dict[int, torch.Tensor] = {}
    handles = []

    def record(quantizer, args, kwargs=None):
        if id(quantizer) not in samples and args and isinstance(args[0], torch.Tensor):
            samples[id(quantizer)] = args[0].detach()

    for _, layer in quant_layers(model):
        for module in layer.modules():
            if isinstance(module, TensorQuantizer):
                handles.append(module.register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return samples


def _check_model(model: nn.Module) -> None:
    from .onnx_acts import is_dynamic
    from .onnx_layers import quant_layers, twin_class

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    for name, parameter in model.named_parameters():
        if parameter.is_floating_point() and parameter.dtype != torch.float32:
            raise ExportError(f"export_onnx writes float32 models; parameter {name!r} is {parameter.dtype}: call model.float() first")
    for name, layer in quant_layers(model):
        twin_class(name, layer)
        for role in layer.quant_roles:
            quantizer = getattr(layer, f"{role}_quant", None)
            if isinstance(quantizer, TensorQuantizer) and role != "weight" and role != "bias":
                is_dynamic(quantizer, f"layer {name!r} ({type(layer).__name__}) {role}_quant")


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's progress lines and warnings about optional packages, silenced."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "torch.__trace")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextlib.contextmanager
def _twin_errors():
    """An ``ExportError`` a twin raises while traced (an argument only the call shows, e.g. an
    attention's ``dropout_p``), raised as itself rather than inside the exporter's error."""
    try:
        yield
    except Exception as error:
        cause: Optional[BaseException] = error
        while cause is not None and not isinstance(cause, ExportError):
            cause = cause.__cause__ or cause.__context__
        if cause is None or cause is error:
            raise
        raise ExportError(str(cause)) from None


def export_onnx(
    model: nn.Module,
    example_inputs: Union[torch.Tensor, Tuple[Any, ...], Dict[str, Any]],
    path: Optional[str],
    target: str = "ort",
    *,
    dynamic_shapes: Any = None,
) -> "onnx.ModelProto":  # noqa: F821
    """Export a quantized model to ONNX with standard QuantizeLinear/DequantizeLinear; returns the
    ``onnx.ModelProto`` (also written to ``path`` unless it is None).

    - Weights (and quantized biases) are pre-quantized: their low-bit codes and scales are
      initializers and a ``DequantizeLinear`` rebuilds them, ``(q - z) * s`` in float32, per
      tensor, per channel or blocked (``block_size`` = the group size); NVFP4 chains two.
    - Activations are ``QuantizeLinear -> DequantizeLinear`` (static scales as constants; dynamic
      per-tensor/per-token scales computed in the graph).
    - ``target="ort"`` (default) runs on onnxruntime's CPU provider (opset 23, or 25 for INT2):
      INT2/4/8 and FP8 natively, FP4/FP6 elements carried exactly in FLOAT8E4M3FN bytes with
      float32 power-of-two MX scales. ``target="spec"`` uses FLOAT4E2M1 elements and FLOAT8E8M0
      MX scales (opset 24) and FLOAT6E2M3/E3M2 (opset 28) for runtimes that implement them.
    - Formats with no ONNX type (HiFloat8, FP8 without special codes, ...) are stored as uint8
      codes and a ``Gather`` from the format's value table (labelled in the graph).
    - ``QuantScaledDotProductAttention`` (also the ``attn_quant`` that ``quantize_model``'s
      ``"attention"`` section gives Hugging Face attention modules): Q (pre-scaled), K, V, scores,
      softmax output and output as ``QuantizeLinear -> DequantizeLinear`` like any activation,
      ``MatMul`` and ``Softmax`` written out, causal/boolean/float masks as ``Where``/``Add``,
      grouped-query attention; ``dropout_p > 0`` raises. Each quantized activation's value is
      named after its quantizer (``attn.q_scaled_quant``).

    Every dequantized weight equals qzoo's bit for bit, and so does every quantized activation
    whose input is the same float32 value; the layer outputs differ from the fake-quant model only
    by the order of float additions inside the runtime's matmul/conv kernels (and attention's by
    onnxruntime's ``Softmax`` in the last bits, which can move a quantized softmax value at a
    rounding boundary by one step). (onnxruntime's graph optimizations rewrite Q/DQ graphs into
    integer kernels with their own rounding: run with ``graph_optimization_level =
    ORT_DISABLE_ALL`` to execute the graph as written.)

    ``example_inputs`` is a tensor, a tuple of positional arguments or a dict of keyword arguments
    (a tokenizer's output for a Hugging Face model). Shapes are those of ``example_inputs`` unless ``dynamic_shapes`` (passed to
    ``torch.onnx.export``, e.g. ``({0: "batch"},)``) makes some dimensions symbolic.

    Raises ``ExportError`` (a ``ValueError``) naming the layer before anything is written: an
    unsupported layer, an uncalibrated static quantizer, a quantizer in calibration mode, a format
    or scale rule ONNX cannot express exactly (e.g. dynamic MX activations).

    Example::

        qlayers.calibrate(model, batches)
        qlayers.export_onnx(model, (x,), "model.onnx")          # onnxruntime.InferenceSession("model.onnx")
    """
    target = check_target(target)
    _require_onnx()
    import onnx

    from . import onnx_graph
    from .onnx_layers import build_twins, swapped
    from .onnx_ops import translation_table
    from .onnx_weights import OnnxDequantize

    if isinstance(example_inputs, dict):
        args, kwargs = (), dict(example_inputs)
    else:
        args, kwargs = (example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)), {}
    _check_model(model)
    training = model.training
    model.eval()
    try:
        samples = _probe(model, args, kwargs)
        twins = build_twins(model, samples, target)
        constants = {
            f"{name}.{child}" if name else child: module
            for name, twin in twins.items() for child, module in twin.named_children() if isinstance(module, OnnxDequantize)
        }
        opset = max([EXPORTER_OPSET] + [c.opset for c in constants.values()])
        # torch.export patches module calls process-wide while it traces: a kernel the background
        # compiler compiles meanwhile would fail (and fall back to eager for good), so let it finish
        wait_for_compiles()
        with swapped(model, twins) as export_model, _quiet_exporter(), _twin_errors():
            program = torch.onnx.export(
                export_model, args, kwargs=kwargs, dynamo=True, opset_version=EXPORTER_OPSET, optimize=False,
                custom_translation_table=translation_table(), verbose=False, dynamic_shapes=dynamic_shapes,
            )
    finally:
        model.train(training)
    proto = program.model_proto
    onnx_graph.fold_casts(proto)
    onnx_graph.name_activations(proto)
    onnx_graph.strip_metadata(proto)
    onnx_graph.set_opset(proto, opset)
    onnx_graph.name_constants(proto, set(constants), {name: c.describe() for name, c in constants.items()})
    onnx.helper.set_model_props(proto, {
        "qzoo.target": target,
        **{f"qzoo.storage.{name}": c.describe() for name, c in constants.items()},
    })
    onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        onnx.save(proto, str(path))
    return proto
