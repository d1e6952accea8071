"""Triton kernels of pycompress, one module per op family (installed as ``pycompress.kernels``)."""

import sys as _sys

if __name__ == "kernels":
    # This folder is imported under the top-level name ``kernels`` only when the repository root is on
    # sys.path (``python -m ...`` or ``python -m pytest`` run from the root). That name belongs to the
    # installed distribution ``kernels`` (Hugging Face kernels), which transformers imports whenever it is
    # installed; left here, this folder would shadow it and break transformers. Where such a package is
    # installed, the name is handed over to it; otherwise the import finds this folder as before.
    def _hand_over_the_name() -> None:
        import importlib.machinery
        import importlib.util
        import os

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = [p for p in _sys.path if os.path.abspath(p or os.curdir) != root]
        spec = importlib.machinery.PathFinder.find_spec("kernels", path)
        if spec is None or spec.loader is None or spec.origin is None:
            return
        module = importlib.util.module_from_spec(spec)
        this = _sys.modules["kernels"]
        _sys.modules["kernels"] = module  # the import statement returns what is here once this file ends
        try:
            spec.loader.exec_module(module)
        except BaseException:
            _sys.modules["kernels"] = this
            raise

    _hand_over_the_name()
