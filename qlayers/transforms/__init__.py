"""Float-function-preserving model transforms: QuaRot-style Hadamard rotations.

- :func:`rotate` (:mod:`.rotation`): fuse a randomized Hadamard rotation of the residual stream,
  RMSNorm scale folding and an online Hadamard before ``down_proj`` into a Llama/Mistral/Qwen2/Qwen3 causal LM.
- :class:`HadamardTransform` (:mod:`.hadamard`): ``x -> (x * s) @ H / sqrt(n)`` by a fast
  Walsh-Hadamard transform, any ``n`` (:mod:`.hadamard_matrices`); :class:`HadamardInput` applies it
  at a layer's input.
"""
from .hadamard import HadamardInput, HadamardTransform, fwht
from .rotation import rotate

__all__ = ["rotate", "HadamardTransform", "HadamardInput", "fwht"]
