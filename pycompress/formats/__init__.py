"""Packed weight formats and their pack/unpack functions."""

from pycompress.formats.int8 import Int8Weight, pack_int8_per_channel

__all__ = ["Int8Weight", "pack_int8_per_channel"]
