"""``pycompress.info()``: the ops x backends table for this machine, with reasons."""

from __future__ import annotations

import platform
import sys

import torch

from pycompress import registry
from pycompress._native import _C, native_unavailable_reason

_MARK = {"ok": "yes", "experimental": "exp", "unavailable": "no", "missing": "-"}


def info(file=None) -> str:
    """Print (to ``file``, default stdout) and return the backend table of this machine.

    Each cell: ``yes`` (validated, runs here), ``exp`` (runs here but experimental: used only when asked
    for), ``no`` (cannot run here, reason below) or ``-`` (not implemented); ``*`` marks the default.
    """
    import pycompress

    lines = [
        f"pycompress {pycompress.__version__}  torch {torch.__version__}  python {platform.python_version()}",
        f"native extension: {'loaded' if _C is not None else native_unavailable_reason()}",
    ]
    if _C is not None:
        flags = " ".join(name for name, present in _C.cpu_feature_flags() if present)
        lines.append(f"cpu: {platform.processor() or platform.machine()}  features: {flags}  "
                     f"int8_mm path: {_C.int8_mm_cpu_path()}  threads: {torch.get_num_threads()}")
        lines.append(f"built with CUDA: {_C.built_with_cuda()}")
    if torch.cuda.is_available():
        lines.append(f"gpu: {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))})")
    else:
        lines.append("gpu: none")
    rows = registry.table()
    devices = sorted({r["device"] for r in rows})
    header = f"{'op':<22}{'device':<8}" + "".join(f"{b:<11}" for b in registry.BACKENDS)
    lines += ["", header, "-" * len(header)]
    reasons = []
    for op in registry.ops():
        for device in devices:
            cells = []
            for r in rows:
                if r["op"] != op or r["device"] != device:
                    continue
                cell = _MARK[r["state"]] + ("*" if r["default"] else "")
                cells.append(f"{cell:<11}")
                if r["state"] in ("unavailable", "experimental"):
                    reasons.append(f"  {op} [{device}] {r['backend']}: {r['reason']}")
            lines.append(f"{op:<22}{device:<8}" + "".join(cells))
    lines += ["", "yes: validated  exp: experimental (only when asked for)  no: unavailable  *: default", ""]
    lines += ["reasons:"] + (reasons or ["  none"])
    text = "\n".join(lines)
    print(text, file=file or sys.stdout)
    return text
