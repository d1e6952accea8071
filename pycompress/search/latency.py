"""Latency cost model: times measured on this device with the package's real modules, cached as JSON.

Absolute times come from one measurement, the dense model on the example inputs: its median forward
time T_model and, in the same forwards (hooks), the time t_m spent in each searched layer and block.
Every other entry is a ratio from an interleaved measurement (the two sides run in turn, round after
round; the ratio is the median of the per-round ratios, so that it holds while the load of the
machine drifts):

    linear [N, K] at M input rows, option   r = t(option's module) / t(dense nn.Linear), the module
                                            built by compress_ on a copy of a layer of that shape;
                                            also both sizes in bytes
    block <signature>, heads or FFN part    rho = t(block with heads or FFN pruned) / t(dense block),
                                            on the block inputs of the example forward

The prediction for a structure (heads, FFN, removed blocks) and per-layer options (search.py):

    T = T_model + sum_kept_blocks t_b (rho_heads - 1 + rho_ffn - 1) - sum_removed_blocks t_b
          + sum_kept_sites t_j (N'K' / NK) (r(option, [N', K']) - 1)

with [N', K'] the site's shape under the structure (a dense layer's time taken as proportional to
N K at fixed M). Heads and FFN changes are taken as additive (they touch different parts of a block).

One JSON file per (device, torch version, pycompress version, threads):
``<cache_dir>/<key>.json``; cache_dir defaults to $PYCOMPRESS_CACHE_DIR/latency, else
~/.cache/pycompress/latency.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import nn

import pycompress
from pycompress.search.space import compress_layer, module_bytes

ROUNDS = 7
MODEL_ROUNDS = 5
WARMUP = 2


def resolve_cache_dir(path: Optional[Union[str, Path]] = None) -> Path:
    """Where latency tables live: ``path``, else $PYCOMPRESS_CACHE_DIR/latency, else
    ~/.cache/pycompress/latency."""
    if path is not None:
        return Path(path)
    root = os.environ.get("PYCOMPRESS_CACHE_DIR")
    return Path(root) / "latency" if root else Path.home() / ".cache" / "pycompress" / "latency"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def table_key(device: torch.device) -> str:
    """The cache key of this device and software: device name, torch and pycompress versions, threads."""
    parts = [device.type, device_name(device), f"torch-{torch.__version__}", f"pycompress-{pycompress.__version__}",
             f"threads-{torch.get_num_threads()}"]
    readable = re.sub(r"[^A-Za-z0-9.+-]+", "_", "_".join(parts))[:120]
    return f"{readable}-{hashlib.sha1('|'.join(parts).encode()).hexdigest()[:8]}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: list, *, device: torch.device, rounds: int = ROUNDS, warmup: int = WARMUP) -> list:
    """Seconds of each callable in ``fns`` in each round: [fn][round]. The callables run in turn, round
    after round (after ``warmup`` untimed rounds), so that the times of one round saw the same
    machine state."""
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns:
                fn()
        _sync(device)
        times = [[] for _ in fns]
        for _ in range(rounds):
            for i, fn in enumerate(fns):
                start = time.perf_counter()
                fn()
                _sync(device)
                times[i].append(time.perf_counter() - start)
    return times


def median_ratio(a: list, b: list) -> float:
    """The median over rounds of a[i] / b[i]: a ratio that holds while the machine's load drifts."""
    return statistics.median(x / y for x, y in zip(a, b))


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """An option's module against the dense one, from one interleaved measurement: ``ratio`` (median of
    the per-round time ratios), both median times and both sizes in bytes."""

    ratio: float
    seconds: float
    dense_seconds: float
    bytes: int
    dense_bytes: int

    @property
    def delta_bytes(self) -> int:
        return self.bytes - self.dense_bytes


@dataclasses.dataclass(frozen=True)
class ModelTime:
    """The dense model's median forward time and, measured in the same forwards (hooks), the median time
    spent in each module named when measuring."""

    seconds: float
    modules: dict


def _cost(entry: dict) -> LayerCost:
    return LayerCost(entry["ratio"], entry["seconds"], entry["dense_seconds"], entry["bytes"], entry["dense_bytes"])


def _pair_entry(times: list, module_bytes_: int, dense_bytes: int) -> dict:
    option, dense = times
    return {"ratio": median_ratio(option, dense), "seconds": statistics.median(option),
            "dense_seconds": statistics.median(dense), "bytes": module_bytes_, "dense_bytes": dense_bytes}


class LatencyTable:
    """Measured costs on ``device``, read from and written to the JSON cache (see the module
    docstring). ``measurements`` counts the timings this table ran (0 when everything was cached)."""

    def __init__(self, device: Union[str, torch.device] = "cpu", *, cache_dir: Optional[Union[str, Path]] = None,
                 rounds: int = ROUNDS, warmup: int = WARMUP):
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"LatencyTable: rounds must be a positive int (got {rounds!r})")
        self.device = torch.device(device)
        self.path = resolve_cache_dir(cache_dir) / f"{table_key(self.device)}.json"
        self.rounds, self.warmup = rounds, warmup
        self.measurements = 0
        self.entries = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True))
        tmp.replace(self.path)

    def _time(self, fns: list, rounds: Optional[int] = None) -> list:
        self.measurements += 1
        return time_interleaved(fns, device=self.device, rounds=rounds or self.rounds, warmup=self.warmup)

    @staticmethod
    def layer_key(out_features: int, in_features: int, bias: bool, dtype: torch.dtype, tokens: int, option) -> str:
        return f"linear [{out_features}, {in_features}] bias={bias} {dtype} tokens={tokens} | {option!r}"

    def has_layer(self, out_features, in_features, bias, dtype, tokens, option) -> bool:
        return self.layer_key(out_features, in_features, bias, dtype, tokens, option) in self.entries

    def layer(self, out_features: int, in_features: int, bias: bool, dtype: torch.dtype, tokens: int,
              option) -> Union[LayerCost, str]:
        """The cost of ``option`` on a [out_features, in_features] layer at ``tokens`` input rows, or why
        the option does not apply to it (what compress_'s handler said)."""
        key = self.layer_key(out_features, in_features, bias, dtype, tokens, option)
        if key not in self.entries:
            self.entries[key] = self._measure_layer(out_features, in_features, bias, dtype, tokens, option)
        entry = self.entries[key]
        return entry["skipped"] if "skipped" in entry else _cost(entry)

    def _measure_layer(self, N: int, K: int, bias: bool, dtype: torch.dtype, tokens: int, option) -> dict:
        g = torch.Generator().manual_seed(N * 1_000_003 + K)
        linear = nn.Linear(K, N, bias=bias)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(N, K, generator=g) / K**0.5)
            if bias:
                linear.bias.copy_(torch.randn(N, generator=g) * 0.1)
        linear = linear.to(device=self.device, dtype=dtype)
        x = torch.randn(tokens, K, generator=g).to(device=self.device, dtype=dtype)
        packed = compress_layer(linear, option, [x[:2048]])
        if isinstance(packed, str):
            return {"skipped": packed}
        packed.eval()
        return _pair_entry(self._time([lambda: packed(x), lambda: linear(x)]), module_bytes(packed),
                           module_bytes(linear))

    def block(self, block: nn.Module, block_inputs: tuple, block_signature: str, part: str,
              change: Callable[[nn.Module], None]) -> LayerCost:
        """A copy of ``block`` changed in place by ``change`` against the dense block, on
        ``block_inputs`` (positional, keyword)."""
        key = f"block {block_signature} | {part}"
        if key not in self.entries:
            args, kwargs = block_inputs
            dense = copy.deepcopy(block).eval()
            changed = copy.deepcopy(block).eval()
            change(changed)
            times = self._time([lambda: changed(*args, **kwargs), lambda: dense(*args, **kwargs)])
            self.entries[key] = _pair_entry(times, module_bytes(changed), module_bytes(dense))
        return _cost(self.entries[key])

    def model(self, run: Callable[[], object], model_signature: str, modules: dict) -> ModelTime:
        """The dense model's forward ``run()`` timed, with the time spent in each of ``modules`` (name ->
        module) measured by hooks in the same forwards."""
        key = f"model {model_signature} | " + ",".join(sorted(modules))
        if key not in self.entries:
            spent = {name: [] for name in modules}
            current, started = {}, {}

            def enter(name):
                def hook(module, args):
                    _sync(self.device)
                    started[name] = time.perf_counter()
                return hook

            def leave(name):
                def hook(module, args, output):
                    _sync(self.device)
                    current[name] = current.get(name, 0.0) + time.perf_counter() - started[name]
                return hook

            def forward():
                current.clear()
                run()
                for name in modules:
                    spent[name].append(current.get(name, 0.0))

            handles = [h for name, m in modules.items()
                       for h in (m.register_forward_pre_hook(enter(name)), m.register_forward_hook(leave(name)))]
            try:
                (times,) = self._time([forward], rounds=MODEL_ROUNDS)
            finally:
                for handle in handles:
                    handle.remove()
            # The warmup forwards also appended their module times: keep the timed rounds only.
            self.entries[key] = {"seconds": statistics.median(times),
                                 "modules": {name: statistics.median(t[-len(times):]) for name, t in spent.items()}}
        entry = self.entries[key]
        return ModelTime(entry["seconds"], dict(entry["modules"]))
