"""Quantization methods and their configs."""

from pycompress.quant.configs import Int8Config

__all__ = ["Int8Config"]
