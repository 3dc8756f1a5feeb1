"""qzoo layers: quantized nn.Modules built on :mod:`quantizers`."""
