"""Drop-in compressed modules."""

from pycompress.nn.base import PackedLinear
from pycompress.nn.conv import BinaryConv2d, Int8Conv2d, PackedConv2d
from pycompress.nn.int8 import Int8Linear, Int8StaticLinear
from pycompress.nn.lowbit import BinaryLinear, TernaryLinear, WeightOnlyInt8Linear

FORMATS = {
    module.format_name: module
    for module in (Int8Linear, Int8StaticLinear, WeightOnlyInt8Linear, BinaryLinear, TernaryLinear, Int8Conv2d,
                   BinaryConv2d)
}

__all__ = [
    "BinaryConv2d",
    "BinaryLinear",
    "FORMATS",
    "Int8Conv2d",
    "Int8Linear",
    "Int8StaticLinear",
    "PackedConv2d",
    "PackedLinear",
    "TernaryLinear",
    "WeightOnlyInt8Linear",
]
