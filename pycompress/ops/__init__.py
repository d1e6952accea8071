"""The ops of pycompress, each a torch.library custom op in the ``pycompress`` namespace.

Call them as ``pycompress.ops.<name>(...)`` or ``torch.ops.pycompress.<name>(...)``.
"""

from pycompress.ops.int8 import int8_mm, quantize_per_token
from pycompress.ops.lowbit import (
    binary_mm,
    binary_weight_mm,
    int8_weight_only_mm,
    pack_bits,
    ternary_weight_mm,
)

__all__ = [
    "binary_mm",
    "binary_weight_mm",
    "int8_mm",
    "int8_weight_only_mm",
    "pack_bits",
    "quantize_per_token",
    "ternary_weight_mm",
]
