"""The main job: compress the bundled MiniLM with Int8Config and compare it with the original."""

from __future__ import annotations

import copy
import statistics
import time
import warnings

import torch
from tqdm import tqdm

import pycompress
from pycompress.data import sentences
from pycompress.models import embed, load_minilm, mean_cosine, synthetic_batch


def _param_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(number of weight elements, bytes) over parameters and persistent buffers, shared ones once."""
    seen, count, nbytes = set(), 0, 0
    for t in list(model.parameters()) + [b for _, b in model.named_buffers() if b is not None]:
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        count += t.numel()
        nbytes += t.numel() * t.element_size()
    return count, nbytes


@torch.inference_mode()
def _latency(model, batch, repeats: int, progress) -> float:
    model(**batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(**batch)
        times.append(time.perf_counter() - start)
        progress.update(1)
    return statistics.median(times)


def run_demo(batch: int = 32, seq: int = 128, repeats: int = 5) -> dict:
    texts = sentences("all")
    steps = 6 + 3 * repeats
    with tqdm(total=steps, desc="pycompress demo", unit="step") as progress:
        progress.set_postfix_str("loading MiniLM")
        model, tokenizer = load_minilm()
        progress.update(1)
        progress.set_postfix_str("compressing")
        compressed = pycompress.compress_(copy.deepcopy(model), pycompress.Int8Config())
        progress.update(1)
        progress.set_postfix_str(f"embedding {len(texts)} sentences")
        reference = embed(model, tokenizer, texts)
        candidate = embed(compressed, tokenizer, texts)
        progress.update(2)
        progress.set_postfix_str("torch.ao quantize_dynamic, for comparison")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peer = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
            peer_embeddings = embed(peer, tokenizer, texts)
        progress.update(2)
        progress.set_postfix_str(f"timing batch {batch} x seq {seq}")
        inputs = synthetic_batch(tokenizer, batch, seq)
        t_dense = _latency(model, inputs, repeats, progress)
        t_int8 = _latency(compressed, inputs, repeats, progress)
        t_peer = _latency(peer, inputs, repeats, progress)
    n0, b0 = _param_bytes(model)
    n1, b1 = _param_bytes(compressed)
    cosine = mean_cosine(reference, candidate)
    peer_cosine = mean_cosine(reference, peer_embeddings)
    report = pycompress.report(compressed)
    device = "cpu"
    rows = [
        ("", "fp32 (original)", "Int8Config (W8A8)", "torch.ao quantize_dynamic"),
        ("parameters", f"{n0:,}", f"{n1:,}", "-"),
        ("bytes", f"{b0 / 2**20:.1f} MiB", f"{b1 / 2**20:.1f} MiB ({b0 / b1:.2f}x smaller)", "-"),
        (f"latency ({device}, batch {batch}, seq {seq})", f"{t_dense * 1e3:.1f} ms",
         f"{t_int8 * 1e3:.1f} ms ({t_dense / t_int8:.2f}x faster)",
         f"{t_peer * 1e3:.1f} ms ({t_dense / t_peer:.2f}x faster)"),
        (f"mean embedding cosine ({len(texts)} sentences)", "1.0000", f"{cosine:.4f}", f"{peer_cosine:.4f}"),
        ("layers replaced", "", f"{len(report.replaced)} Linear -> Int8Linear, {len(report.skipped)} left dense",
         "per-tensor activations"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print()
    print(f"all-MiniLM-L6-v2 on {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    return dict(params=(n0, n1), bytes=(b0, b1), latency_s=(t_dense, t_int8, t_peer), cosine=(cosine, peer_cosine))
