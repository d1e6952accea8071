"""Quantization methods. Their configs for ``pycompress.compress_`` live in pycompress.quant.configs."""

from pycompress.quant.quantizer import Quantizer

__all__ = ["Quantizer"]
