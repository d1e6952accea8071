"""Drop-in compressed modules."""

from pycompress.nn.base import PackedLinear
from pycompress.nn.conv import BinaryConv2d, Int8Conv2d, PackedConv2d
from pycompress.nn.int8 import Int8Linear, Int8StaticLinear
from pycompress.nn.lowbit import BinaryLinear, TernaryLinear, WeightOnlyInt8Linear
from pycompress.nn.codebook import CodebookLinear
from pycompress.nn.lowrank import LowRankLinear, SeparableConv2d
from pycompress.nn.sparse import Sparse24Linear, SparseLinear

FORMATS = {
    module.format_name: module
    for module in (Int8Linear, Int8StaticLinear, WeightOnlyInt8Linear, BinaryLinear, TernaryLinear, Int8Conv2d,
                   BinaryConv2d, Sparse24Linear, SparseLinear, LowRankLinear, SeparableConv2d, CodebookLinear)
}

__all__ = [
    "BinaryConv2d",
    "BinaryLinear",
    "CodebookLinear",
    "FORMATS",
    "Int8Conv2d",
    "Int8Linear",
    "Int8StaticLinear",
    "LowRankLinear",
    "PackedConv2d",
    "PackedLinear",
    "SeparableConv2d",
    "Sparse24Linear",
    "SparseLinear",
    "TernaryLinear",
    "WeightOnlyInt8Linear",
]
