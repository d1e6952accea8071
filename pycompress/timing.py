"""Side-by-side timing used when a compression choice depends on measured speed on this device."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def speedup(baseline: Callable[[], object], candidate: Callable[[], object], *, device: torch.device,
            rounds: int = 7, warmup: int = 2) -> float:
    """Median time of ``baseline`` over median time of ``candidate``: > 1 when the candidate is faster.

    The two run alternately, round by round, so that both see the same machine state."""
    for _ in range(warmup):
        baseline()
        candidate()
    _sync(device)
    times = {"baseline": [], "candidate": []}
    with torch.inference_mode():
        for _ in range(rounds):
            for key, fn in (("baseline", baseline), ("candidate", candidate)):
                start = time.perf_counter()
                fn()
                _sync(device)
                times[key].append(time.perf_counter() - start)
    return statistics.median(times["baseline"]) / statistics.median(times["candidate"])
