"""The tour (``make demo``, ``pycompress demo``): a recipe searched for this device and each compression
method on the bundled all-MiniLM-L6-v2, side by side: size, latency, speedup and held-out fidelity, with
a latency-fidelity plot."""

from __future__ import annotations

import copy
import dataclasses
import sys
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from tqdm import tqdm

import pycompress
from pycompress.models import load_model_spec, model_bytes, time_models

ORIGINAL = "fp32 (original)"
SEARCH_BUDGET = "latency=0.5"


def methods(quick: bool = False) -> list:
    """(label, config) of the methods the tour compares; ``quick``: the cheapest few."""
    chosen = [
        ("Int8Config (W8A8)", pycompress.Int8Config()),
        ("Int8WeightOnlyConfig (W8A16)", pycompress.Int8WeightOnlyConfig()),
    ]
    if quick:
        return chosen
    return chosen + [
        ("Sparse24Config (2:4, wanda)", pycompress.Sparse24Config(method="wanda")),
        ("SparseConfig (50%, wanda)", pycompress.SparseConfig(0.5, method="wanda")),
        ("LowRankConfig (budget 0.5, data-aware)", pycompress.LowRankConfig(budget=0.5, method="data_aware")),
        ("ClusterConfig (4-bit)", pycompress.ClusterConfig(bits=4)),
    ]


@dataclasses.dataclass(frozen=True)
class DemoRow:
    """One line of the tour's table. ``speedup``: the original's latency over this one's; ``packed``: layers
    in a packed format out of the original's nn.Linear layers."""

    method: str
    size_bytes: int
    latency_s: float
    speedup: float
    fidelity: float
    packed: int
    linears: int


def require_matplotlib():
    """matplotlib's Figure class (figures are drawn without pyplot: no global backend is chosen)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("plots need matplotlib: pip install matplotlib") from exc
    return Figure


def _packed(model: nn.Module) -> int:
    from pycompress.nn import FORMATS

    packed_types = tuple(FORMATS.values())
    return sum(isinstance(m, packed_types) for m in model.modules())


def plot_demo(rows: list, path, title: str) -> Path:
    """Latency against fidelity of the tour's rows, written to the PNG ``path``; the legend gives each
    point's method, size, speedup and fidelity (points of similar methods lie close together)."""
    fig = require_matplotlib()(figsize=(12, 5.5))
    ax = fig.subplots()
    markers = "*osD^v<>PXh"
    for i, row in enumerate(rows):
        ax.scatter(row.latency_s * 1e3, row.fidelity, marker=markers[i % len(markers)], s=110 if i == 0 else 50,
                   label=f"{row.method}: {row.size_bytes / 2**20:.1f} MiB, {row.speedup:.2f}x, {row.fidelity:.4f}")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fidelity to the original")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, title="method: weights, speedup, fidelity",
              title_fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def run_demo(model: str = "minilm", *, quick: bool = False, search: bool = True, budget: str = SEARCH_BUDGET,
             plot: Optional[str] = "pycompress-demo.png", batch: int = 32, seq: int = 128,
             rounds: Optional[int] = None, device="cpu", progress: bool = True, file=None) -> list:
    """Compress ``model`` (a model spec, default the bundled MiniLM) with a recipe searched (greedy) under
    ``budget`` (``pycompress search --budget`` syntax; default half the dense latency) and with each of
    ``methods(quick)``; time all of them on one batch (``batch`` x ``seq``; medians of ``rounds``
    interleaved rounds, default 5, 2 when ``quick``), measure their fidelity, print the table to ``file``
    (default stdout) and write the plot to ``plot`` (None: no plot). Returns the table's rows (DemoRow)."""
    from pycompress.cli import apply_recipe_to, format_table, make_budget, run_search

    file = file or sys.stdout
    rounds = rounds if rounds is not None else 2 if quick else 5
    if plot is not None:
        require_matplotlib()
    searched = f"searched recipe (greedy, {budget})"
    search_budget = make_budget(budget) if search else None
    loaded = load_model_spec(model, device=device)
    calibration = loaded.calibration_batches()
    linears = sum(isinstance(m, nn.Linear) for m in loaded.model.modules())
    models = {ORIGINAL: loaded.model}
    if search:
        result = run_search(copy.deepcopy(loaded.model), loaded, budget=search_budget,
                            strategy="greedy", batch=batch, seq=seq, progress=progress)
        models[searched] = apply_recipe_to(copy.deepcopy(loaded.model), result.recipe, loaded, checkpoint_dir=None,
                                           progress=progress).model
    chosen = methods(quick)
    for label, config in tqdm(chosen, desc="compressing", unit="method", disable=not progress):
        # Layers a method leaves dense are counted in the table's "packed" column instead of warned about.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models[label] = pycompress.compress_(copy.deepcopy(loaded.model), config, calibration=calibration)
    latency = time_models(models, loaded.timing_batch(batch, seq), rounds=rounds, progress=progress)
    fidelity = {name: loaded.fidelity(m) for name, m in tqdm(models.items(), desc="fidelity", unit="model",
                                                                disable=not progress)}
    order = [ORIGINAL] + [label for label, _ in chosen] + ([searched] if search else [])
    rows = [DemoRow(method=name, size_bytes=model_bytes(models[name]), latency_s=latency[name],
                    speedup=latency[ORIGINAL] / latency[name], fidelity=fidelity[name], packed=_packed(models[name]),
                    linears=linears) for name in order]
    shape = f"batch {batch} x seq {seq}" if loaded.kind == "hf" else f"batch {batch}"
    what = ("mean cosine of held-out sentence embeddings" if loaded.kind == "hf"
            else "mean cosine of outputs on fixed random inputs")
    title = (f"{loaded.spec} on {loaded.device.type}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
             f"{shape}")
    table = [("method", "weights", "latency", "speedup", "fidelity", "packed")]
    table += [(r.method, f"{r.size_bytes / 2**20:.1f} MiB", f"{r.latency_s * 1e3:.1f} ms", f"{r.speedup:.2f}x",
               f"{r.fidelity:.4f}", f"{r.packed}/{r.linears}") for r in rows]
    print(file=file)
    print(title, file=file)
    print(f"latency: median of {rounds} interleaved rounds; fidelity: {what}", file=file)
    if search:
        # The search's own prediction, timed while it ran: the table's latencies are measured now.
        print(f"search: {result}", file=file)
    print(format_table(table), file=file)
    if plot is not None:
        where = plot_demo(rows, plot, f"{title}\nlatency vs fidelity ({what})")
        print(f"plot: {where.resolve()}", file=file)
    return rows
