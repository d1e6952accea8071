"""The ops of pycompress, each a torch.library custom op in the ``pycompress`` namespace.

Call them as ``pycompress.ops.<name>(...)`` or ``torch.ops.pycompress.<name>(...)``.
"""

from pycompress.ops.int8 import int8_mm, quantize_per_token

__all__ = ["int8_mm", "quantize_per_token"]
