"""Drop-in compressed modules."""

from pycompress.nn.base import PackedLinear
from pycompress.nn.int8 import Int8Linear, Int8StaticLinear
from pycompress.nn.lowbit import BinaryLinear, TernaryLinear, WeightOnlyInt8Linear

FORMATS = {m.format_name: m for m in (Int8Linear, Int8StaticLinear, WeightOnlyInt8Linear, BinaryLinear, TernaryLinear)}

__all__ = ["BinaryLinear", "FORMATS", "Int8Linear", "Int8StaticLinear", "PackedLinear", "TernaryLinear", "WeightOnlyInt8Linear"]
