"""Drop-in compressed modules."""

from pycompress.nn.int8 import Int8Linear

FORMATS = {Int8Linear.format_name: Int8Linear}

__all__ = ["Int8Linear", "FORMATS"]
