"""The ops of pycompress, each a torch.library custom op in the ``pycompress`` namespace.

Call them as ``pycompress.ops.<name>(...)`` or ``torch.ops.pycompress.<name>(...)``. The first form
skips the custom-op dispatch for eager calls that need no autograd graph, tracing or mode
(``pycompress.ops._backends.direct_call_ok``): same implementation, same checks, tens of
microseconds less per call.
"""

from pycompress.ops.codebook import codebook_mm, pack_indices
from pycompress.ops.int8 import int8_mm, quantize_per_token
from pycompress.ops.lowbit import (
    binary_mm,
    binary_weight_mm,
    int8_weight_only_mm,
    pack_bits,
    ternary_weight_mm,
)
from pycompress.ops.lowrank import lowrank_mm
from pycompress.ops.sparse import bsr_mm, csr_mm
from pycompress.ops.sparse24 import sparse24_compress, sparse24_mm

__all__ = [
    "binary_mm",
    "binary_weight_mm",
    "bsr_mm",
    "codebook_mm",
    "csr_mm",
    "int8_mm",
    "int8_weight_only_mm",
    "lowrank_mm",
    "pack_bits",
    "pack_indices",
    "quantize_per_token",
    "sparse24_compress",
    "sparse24_mm",
    "ternary_weight_mm",
]
