"""Drop-in compressed modules."""

from pycompress.nn.base import PackedLinear
from pycompress.nn.int8 import Int8Linear
from pycompress.nn.lowbit import BinaryLinear, TernaryLinear, WeightOnlyInt8Linear

FORMATS = {m.format_name: m for m in (Int8Linear, WeightOnlyInt8Linear, BinaryLinear, TernaryLinear)}

__all__ = ["BinaryLinear", "FORMATS", "Int8Linear", "PackedLinear", "TernaryLinear", "WeightOnlyInt8Linear"]
