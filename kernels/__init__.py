"""Triton kernels of pycompress, one module per op family."""
