"""Benchmark runner: times each backend of an op family and its baselines side by side, in one run.

    python -m benchmarks.run --family int8|lowbit|sparse [--device cpu|cuda] [--quick]

writes benchmarks/results/<device>/<family>.json: device, versions, commit, command, the measured
peak, then one row per (case, shape) with the median time of every candidate, its GOP/s, and the ratio
of each baseline's time to it (> 1 means faster than that baseline).

A candidate ``op[backend]`` is a plain call of the public op where the default selection runs that backend
(what a user's call runs), else the call inside ``pycompress.use_backend(backend)``.

Timing: on CPU, wall-clock medians after warm-up; on CUDA, triton.testing.do_bench (CUDA events,
L2 flushed between runs) medians. Absolute times hold only for the device they were taken on.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import re
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

import pycompress
from pycompress import registry
from pycompress.ops.int8 import quantize_per_token_reference

RESULTS = Path(__file__).resolve().parent / "results"

MINILM = [(384, 384), (1536, 384), (384, 1536)]  # (N, K) of the MiniLM linear layers
LLAMA = [(4096, 4096), (11008, 4096), (4096, 11008)]  # (N, K) of the LLaMA-7B linear layers


def device_name(device: str) -> str:
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = platform.processor() or ""
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1]
                    break
        except OSError:
            pass
        name = "cpu-" + name
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug.replace("nvidia-", "cuda-")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def time_fn(fn, device: str, min_time: float = 0.2, max_reps: int = 50) -> float:
    """Median seconds of one call of ``fn``."""
    return time_fns({"fn": fn}, device, min_time, max_reps)["fn"]


def time_fns(fns: dict, device: str, min_time: float = 0.5, max_reps: int = 200) -> dict:
    """Median seconds of one call of each of ``fns``. On CPU the calls are interleaved round by round,
    so that a change of load on the machine affects every candidate and baseline alike, each round in a
    fresh order (seeded): a call's time depends on the call before it (its caches and threads), and a
    fixed order would give every candidate the same predecessor in every round (seen: in the order
    lowrank_mm, dense, two matmuls, the two matmuls' time over lowrank_mm's came out 1-11% higher at
    M = 64 and 256 than in shuffled rounds of the same process)."""
    if device == "cuda":
        import triton.testing

        return {name: triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3
                for name, fn in fns.items()}
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    order = list(fns)
    rng = random.Random(0)
    start = time.perf_counter()
    rounds = 0
    while rounds < 5 or (time.perf_counter() - start < min_time * len(fns) and rounds < max_reps):
        rng.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return {name: statistics.median(t) for name, t in times.items()}


def _backend_fn(backend: str, fn, op: str, device: str):
    """``fn`` run by ``backend``: as it is where a plain call of ``op`` on ``device`` selects ``backend``
    already (what a user's call runs), else inside ``use_backend(backend)``."""
    if registry.select_quietly(op, device) == backend:
        return fn

    def run():
        with pycompress.use_backend(backend):
            return fn()

    return run


def int8_cases(device: str, quick: bool):
    """(case, M, N, K, candidates, baselines): candidates and baselines map a name to a callable."""
    if device == "cuda":
        token_counts = [16, 1024, 4096] if quick else [1, 16, 128, 1024, 4096, 8192]
        shapes = [(M, N, K) for M in token_counts for N, K in MINILM + LLAMA] + [(8192, 8192, 8192)]
        backends = ["cuda", "triton"]
        float_dtype = torch.bfloat16
    else:
        shapes = [(4096, 1536, 384), (64, 4096, 4096)]
        if not quick:
            shapes += [(M, N, K) for M in (1, 32, 512, 4096) for N, K in MINILM]
            shapes += [(M, N, K) for M in (1, 16) for N, K in LLAMA]
        backends = ["cpu"]
        float_dtype = torch.float32
    seen = set()
    for M, N, K in shapes:
        if (M, N, K) in seen:
            continue
        seen.add((M, N, K))
        g = torch.Generator().manual_seed(M * 31 + N * 7 + K)
        x = torch.randn(M, K, generator=g).to(device=device, dtype=float_dtype)
        linear = nn.Linear(K, N, bias=True).to(device=device, dtype=torch.float32)
        w = linear.weight.detach().to(float_dtype)
        bias = linear.bias.detach()
        qx, sx = quantize_per_token_reference(x)
        qw, sw = quantize_per_token_reference(w)
        qw_kn = qw.T.contiguous()

        # int8_mm: pre-quantized operands, dequantization and bias fused.
        candidates = {
            f"int8_mm[{b}]": _backend_fn(b, lambda b=b: pycompress.ops.int8_mm(qx, qw, sx, sw, bias, float_dtype),
                                         "int8_mm", device)
            for b in backends
        }
        baselines = {f"torch.matmul[{str(float_dtype).replace('torch.', '')}]": lambda: torch.nn.functional.linear(x, w)}
        int_mm_ok = device == "cpu" or (M > 16 and K % 8 == 0 and N % 8 == 0)
        if int_mm_ok and (device == "cuda" or M * N * K <= 64 * 4096 * 4096):
            baselines["torch._int_mm+rescale"] = (
                lambda: (torch._int_mm(qx, qw_kn).float() * sx[:, None] * sw[None, :] + bias).to(float_dtype)
            )
        yield "int8_mm", M, N, K, candidates, baselines

        # W8A8 linear: per-token activation quantization + int8_mm, against the float layer and,
        # on CPU, torch.ao dynamic quantization (fbgemm) of the same layer.
        int8_linear = pycompress.Int8Linear.from_linear(linear)
        candidates = {
            f"Int8Linear[{b}]": _backend_fn(b, lambda m=int8_linear: m(x), "int8_mm", device) for b in backends
        }
        layer = copy.deepcopy(linear).to(float_dtype)
        baselines = {f"nn.Linear[{str(float_dtype).replace('torch.', '')}]": lambda: layer(x)}
        if device == "cpu":
            dynamic = torch.ao.quantization.quantize_dynamic(nn.Sequential(copy.deepcopy(linear)), {nn.Linear},
                                                             dtype=torch.qint8)
            baselines["torch.ao quantize_dynamic"] = lambda: dynamic(x)
        yield "w8a8_linear", M, N, K, candidates, baselines


def lowbit_cases(device: str, quick: bool):
    """Weight-only int8 (W8A16), binary (W1A1, W1A16) and ternary GEMMs against the float matmul."""
    from pycompress.ops import lowbit as L

    float_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    fname = str(float_dtype).replace("torch.", "")
    backends = ["cuda", "triton"] if device == "cuda" else ["cpu"]
    if device == "cuda":
        decode = [(1, 4096, 4096), (1, 8192, 8192), (16, 4096, 4096)] + ([] if quick else [(1, 11008, 4096)])
        binary = [(8192, 8192, 8192), (64, 4096, 4096)]
    else:
        decode = [(1, 4096, 4096), (16, 4096, 4096)] + ([] if quick else [(1, 1536, 384), (1, 11008, 4096)])
        binary = [(64, 4096, 4096)] + ([] if quick else [(4096, 1536, 384)])
    for M, N, K in decode:
        g = torch.Generator().manual_seed(M + N + K)
        x = torch.randn(M, K, generator=g).to(device=device, dtype=float_dtype)
        w = torch.randn(N, K, generator=g).to(device)
        q, scale = quantize_per_token_reference(w)
        signs = torch.where(w < 0, -1.0, 1.0)
        w_bits = L.pack_bits_reference(signs)
        w_2bit = L.pack_ternary(torch.sign(w) * (w.abs() > 0.7 * w.abs().mean()))
        alpha = w.abs().mean(1)
        w_f = w.to(float_dtype)
        baselines = {f"torch.matmul[{fname}]": lambda x=x, w_f=w_f: torch.nn.functional.linear(x, w_f)}
        for op, args in (
            ("int8_weight_only_mm", (x, q, scale, None)),
            ("binary_weight_mm", (x, w_bits, alpha, None)),
            ("ternary_weight_mm", (x, w_2bit, alpha, None)),
        ):
            candidates = {f"{op}[{b}]": _backend_fn(b, lambda op=op, args=args: getattr(pycompress.ops, op)(*args),
                                                    op, device)
                          for b in backends}
            yield op, M, N, K, candidates, baselines
    for M, N, K in binary:
        g = torch.Generator().manual_seed(M * 3 + N + K)
        x = torch.randn(M, K, generator=g).to(device=device, dtype=float_dtype)
        w = torch.randn(N, K, generator=g).to(device=device, dtype=float_dtype)
        a_bits, b_bits = L.pack_bits_reference(x.float()), L.pack_bits_reference(w.float())
        sa, sb = x.float().abs().mean(1), w.float().abs().mean(1)
        candidates = {
            f"binary_mm[{b}]": _backend_fn(
                b, lambda: pycompress.ops.binary_mm(a_bits, b_bits, K, sa, sb, None, float_dtype), "binary_mm", device)
            for b in backends
        }
        candidates.update({
            f"pack_bits+binary_mm[{b}]": _backend_fn(b, lambda: pycompress.ops.binary_mm(
                pycompress.ops.pack_bits(x), b_bits, K, sa, sb, None, float_dtype), "binary_mm", device)
            for b in backends
        })
        baselines = {f"torch.matmul[{fname}]": lambda: torch.nn.functional.linear(x, w)}
        yield "binary_mm", M, N, K, candidates, baselines


def _random_sparse_weight(N, K, sparsity, device, dtype, seed, block=None):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g)
    if block is None:
        w = w * (torch.rand(N, K, generator=g) >= sparsity)
    else:
        keep = torch.rand(N // block, K // block, generator=g) >= sparsity
        w = w * keep.repeat_interleave(block, 0).repeat_interleave(block, 1)
    return w.to(device=device, dtype=dtype)


def sparse_cases(device: str, quick: bool):
    """2:4 (sparse24_mm), CSR (csr_mm) and BSR (bsr_mm) GEMMs against the dense float matmul and
    torch's own sparse formats (semi-structured 2:4 on CUDA, CSR and BSR)."""
    from pycompress.formats.sparse import pack_bsr, pack_csr
    from pycompress.ops.sparse24 import sparse24_compress_reference
    from pycompress.prune.masks import nm_mask

    float_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    fname = str(float_dtype).replace("torch.", "")
    backends = ["cuda", "triton"] if device == "cuda" else ["cpu"]
    if device == "cuda":
        s24 = [(M, 4096, 4096) for M in (1, 16, 4096)] + [(8192, 8192, 8192), (4096, 11008, 4096)]
        unstructured = [(M, N, K) for M in (1, 16, 256) for N, K in LLAMA[:2]]
    else:
        s24 = [(M, 4096, 4096) for M in (1, 2, 4, 8, 16)]
        s24 += [] if quick else [(64, 4096, 4096), (64, 1536, 384), (4096, 1536, 384)]
        unstructured = [(64, 4096, 4096)] + ([] if quick else [(1, 4096, 4096), (256, 1536, 384)])
    dense = lambda x, w: (lambda: torch.nn.functional.linear(x, w))  # noqa: E731
    for M, N, K in s24:
        g = torch.Generator().manual_seed(M + N + K)
        x = torch.randn(M, K, generator=g).to(device=device, dtype=float_dtype)
        w = torch.randn(N, K, generator=g)
        w = (w * nm_mask(w.abs())).to(device=device, dtype=float_dtype)
        values, meta = sparse24_compress_reference(w)
        candidates = {f"sparse24_mm[{b}]": _backend_fn(b, lambda x=x, v=values, m=meta: pycompress.ops.sparse24_mm(x, v, m),
                                                       "sparse24_mm", device)
                      for b in backends}
        baselines = {f"torch.matmul[{fname}]": dense(x, w)}
        if device == "cuda":
            try:
                from torch.sparse import to_sparse_semi_structured

                w_semi = to_sparse_semi_structured(w)
                baselines["torch to_sparse_semi_structured"] = lambda x=x, w_semi=w_semi: torch.mm(w_semi, x.T).T
            except (RuntimeError, ImportError) as exc:
                print(f"torch to_sparse_semi_structured baseline unavailable at {(M, N, K)}: {exc}")
        yield "sparse24_mm", M, N, K, candidates, baselines
    for M, N, K in unstructured:
        for sparsity in (0.7, 0.9, 0.99) if not quick else (0.9,):
            x = torch.randn(M, K, device=device).to(float_dtype)
            w = _random_sparse_weight(N, K, sparsity, device, float_dtype, seed=M + N + K)
            crow, col, values = pack_csr(w)
            candidates = {f"csr_mm[{b}]": _backend_fn(b, lambda x=x, a=(crow, col, values): pycompress.ops.csr_mm(x, *a),
                                                      "csr_mm", device)
                          for b in backends}
            baselines = {f"torch.matmul[{fname}]": dense(x, w)}
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                w_csr = w.to_sparse_csr()
            baselines["torch.sparse CSR"] = lambda x=x, w_csr=w_csr: torch.sparse.mm(w_csr, x.T).T
            yield f"csr_mm@{sparsity:.0%}", M, N, K, candidates, baselines
            block = 32
            wb = _random_sparse_weight(N, K, sparsity, device, float_dtype, seed=M + N + K + 1, block=block)
            packed = pack_bsr(wb, block)
            candidates = {f"bsr_mm[{b}]": _backend_fn(b, lambda x=x, a=packed: pycompress.ops.bsr_mm(x, *a),
                                                      "bsr_mm", device)
                          for b in backends}
            baselines = {f"torch.matmul[{fname}]": dense(x, wb)}
            try:
                w_bsr = wb.to_sparse_bsr((block, block))
                torch.mm(w_bsr, x.T[:, :1])
                baselines["torch.sparse BSR"] = lambda x=x, w_bsr=w_bsr: torch.mm(w_bsr, x.T).T
            except (RuntimeError, NotImplementedError) as exc:
                print(f"torch.sparse BSR baseline unavailable on {device}: {str(exc).splitlines()[0]}")
            yield f"bsr{block}_mm@{sparsity:.0%}", M, N, K, candidates, baselines


def lowrank_cases(device: str, quick: bool):
    """The fused low-rank GEMM (lowrank_mm) against the dense float matmul of the same layer and two
    separate torch matmuls; the codebook GEMM (codebook_mm, 4- and 8-bit indices, a codebook per output
    channel) against the dense float matmul. Each lowrank row carries the ideal FLOP ratio
    N K / (r (N + K))."""
    from pycompress.ops.codebook import pack_indices

    float_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    fname = str(float_dtype).replace("torch.", "")
    backends = ["cuda", "triton"] if device == "cuda" else ["cpu"]
    if device == "cuda":
        lowrank = [(M, 4096, 4096, 1024) for M in (1, 16, 64, 4096)] + [(M, 1536, 384, 96) for M in (64, 4096)]
        lowrank += [(16, 8192, 8192, 2048)]
        codebook = [(M, n, n) for M in (1, 16) for n in (4096, 8192)]
    else:
        lowrank = [(M, 1536, 384, 96) for M in (64, 256, 1024, 4096)] + [(64, 4096, 4096, 1024)]
        lowrank += [] if quick else [(M, 4096, 4096, 1024) for M in (1, 16, 128, 1024)]
        codebook = [(M, 4096, 4096) for M in (1, 4, 16)]
    for M, N, K, r in lowrank:
        g = torch.Generator().manual_seed(M + N + K + r)
        x, v, u = (t.to(device=device, dtype=float_dtype) for t in
                   (torch.randn(M, K, generator=g), torch.randn(r, K, generator=g) / K**0.5,
                    torch.randn(N, r, generator=g) / r**0.5))
        w = u @ v
        candidates = {f"lowrank_mm[{b}]": _backend_fn(b, lambda x=x, v=v, u=u: pycompress.ops.lowrank_mm(x, v, u),
                                                      "lowrank_mm", device)
                      for b in backends}
        baselines = {f"torch.matmul[{fname}]": lambda x=x, w=w: torch.nn.functional.linear(x, w),
                     f"two torch matmuls[{fname}]": lambda x=x, v=v, u=u: torch.nn.functional.linear(
                         torch.nn.functional.linear(x, v), u)}
        yield f"lowrank_mm@r{r}", M, N, K, candidates, baselines, {"rank": r, "ideal_flop_ratio": N * K / (r * (N + K))}
    for M, N, K in codebook:
        for bits in (4, 8):
            g = torch.Generator().manual_seed(M + N + K + bits)
            indices = torch.randint(0, 2**bits, (N, K), generator=g)
            table = torch.randn(N, 2**bits, generator=g).to(device=device, dtype=float_dtype)
            idx = pack_indices(indices, bits).to(device)
            x = torch.randn(M, K, generator=g).to(device=device, dtype=float_dtype)
            w = torch.gather(table, 1, indices.to(device))
            candidates = {f"codebook_mm[{b}]": _backend_fn(
                b, lambda x=x, i=idx, c=table: pycompress.ops.codebook_mm(x, i, c), "codebook_mm", device)
                          for b in backends}
            baselines = {f"torch.matmul[{fname}]": lambda x=x, w=w: torch.nn.functional.linear(x, w)}
            yield f"codebook_mm@{bits}bit", M, N, K, candidates, baselines, {"bits": bits, "per_channel": True}


FAMILIES = {"int8": int8_cases, "lowbit": lowbit_cases, "sparse": sparse_cases, "lowrank": lowrank_cases}


def minilm_case(device: str):
    """MiniLM end to end (batch 32, sequence 128): Int8Config against the float model and, on CPU,
    torch.ao dynamic quantization of the same model; with the embedding fidelity of each."""
    try:
        from pycompress.data import sentences
        from pycompress.models import embed, load_minilm, mean_cosine, synthetic_batch
        model, tokenizer = load_minilm()
    except ImportError as exc:
        print(f"minilm_e2e skipped: {exc}")
        return None
    model = model.to(device)
    float_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = model.to(float_dtype)
    int8_model = pycompress.compress_(copy.deepcopy(model), pycompress.Int8Config())
    batch = {k: v.to(device) for k, v in synthetic_batch(tokenizer, 32, 128).items()}
    candidates = {"Int8Config": lambda: int8_model(**batch)}
    baselines = {f"float model [{str(float_dtype).replace('torch.', '')}]": lambda: model(**batch)}
    models = {"Int8Config": int8_model}
    if device == "cpu":
        dynamic = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
        baselines["torch.ao quantize_dynamic"] = lambda: dynamic(**batch)
        models["torch.ao quantize_dynamic"] = dynamic
    texts = sentences("heldout")
    ref = embed(model, tokenizer, texts, device=device)
    fidelity = {name: mean_cosine(ref, embed(m, tokenizer, texts, device=device)) for name, m in models.items()}
    return candidates, baselines, fidelity


def _calibration_batches(tokenizer, texts, device, batch_size=32):
    return [tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=128,
                      return_tensors="pt").to(device) for i in range(0, len(texts), batch_size)]


def minilm_sparse_case(device: str):
    """MiniLM end to end (batch 32, sequence 128): physical head + FFN pruning and 2:4 sparsity
    against the float model, with the embedding fidelity of each (calibrated on the calibration
    sentences, measured on the held-out ones)."""
    try:
        from pycompress.data import sentences
        from pycompress.models import embed, load_minilm, mean_cosine, synthetic_batch
        model, tokenizer = load_minilm()
    except ImportError as exc:
        print(f"minilm_e2e skipped: {exc}")
        return None
    from pycompress.prune import prune_ffn_, prune_heads_

    float_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = model.to(device=device, dtype=float_dtype)
    calibration = _calibration_batches(tokenizer, sentences("calibration"), device)
    structured = prune_ffn_(prune_heads_(copy.deepcopy(model), 1 / 3, data=calibration), 0.5, data=calibration)
    batch = {k: v.to(device) for k, v in synthetic_batch(tokenizer, 32, 128).items()}
    sparse24 = pycompress.compress_(copy.deepcopy(model), pycompress.Sparse24Config(method="wanda", tokens=32 * 128),
                                    calibration=calibration, filter_fn=lambda m, name: name.startswith("encoder."))
    packed = len(pycompress.report(sparse24).replaced)
    models = {"heads 1/3 + FFN 1/2 removed": structured,
              f"Sparse24Config(wanda) ({packed} of 36 layers packed)": sparse24}
    candidates = {name: (lambda m=m: m(**batch)) for name, m in models.items()}
    baselines = {f"float model [{str(float_dtype).replace('torch.', '')}]": lambda: model(**batch)}
    texts = sentences("heldout")
    ref = embed(model, tokenizer, texts, device=device)
    fidelity = {name: mean_cosine(ref, embed(m, tokenizer, texts, device=device)) for name, m in models.items()}
    return candidates, baselines, fidelity


def minilm_lowrank_case(device: str):
    """MiniLM end to end (batch 32, sequence 128): every encoder Linear low-rank (data-aware, factors
    at half the parameters: the fused lowrank_mm) and 4-bit clustered with a codebook per output
    channel (codebook_mm), against the float model, with the embedding fidelity of each."""
    try:
        from pycompress.data import sentences
        from pycompress.models import embed, load_minilm, mean_cosine, synthetic_batch
        model, tokenizer = load_minilm()
    except ImportError as exc:
        print(f"minilm_e2e skipped: {exc}")
        return None
    float_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = model.to(device=device, dtype=float_dtype)
    calibration = _calibration_batches(tokenizer, sentences("calibration"), device)
    encoder = lambda m, name: name.startswith("encoder.")  # noqa: E731
    models = {
        "LowRankConfig(budget=0.5, data_aware)": pycompress.compress_(
            copy.deepcopy(model), pycompress.LowRankConfig(budget=0.5, method="data_aware"),
            calibration=calibration, filter_fn=encoder),
        "ClusterConfig(bits=4, per channel)": pycompress.compress_(
            copy.deepcopy(model), pycompress.ClusterConfig(bits=4), filter_fn=encoder),
    }
    batch = {k: v.to(device) for k, v in synthetic_batch(tokenizer, 32, 128).items()}
    candidates = {name: (lambda m=m: m(**batch)) for name, m in models.items()}
    baselines = {f"float model [{str(float_dtype).replace('torch.', '')}]": lambda: model(**batch)}
    texts = sentences("heldout")
    ref = embed(model, tokenizer, texts, device=device)
    fidelity = {name: mean_cosine(ref, embed(m, tokenizer, texts, device=device)) for name, m in models.items()}
    return candidates, baselines, fidelity


E2E = {"int8": minilm_case, "sparse": minilm_sparse_case, "lowrank": minilm_lowrank_case}


def measured_peak(device: str) -> dict:
    """The float matmul throughput this device reaches on a large square GEMM (its working peak)."""
    n = 8192 if device == "cuda" else 2048
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = time_fn(lambda: a @ b, device)
    return {"what": f"torch.matmul {str(dtype).replace('torch.', '')} {n}^3", "gflops": 2 * n**3 / seconds / 1e9}


@torch.inference_mode()
def run_family(family: str, device: str, quick: bool, out_dir: Path) -> Path:
    if family not in FAMILIES:
        raise SystemExit(f"benchmarks.run: --family must be one of: {', '.join(FAMILIES)} (got {family!r})")
    peak = measured_peak(device)
    rows = []
    for case, M, N, K, candidates, baselines, *extra in FAMILIES[family](device, quick):
        ops = 2 * M * N * K
        times = time_fns({**candidates, **baselines}, device)
        for name in candidates:
            t = times[name]
            rows.append({
                "case": case,
                "shape": {"M": M, "N": N, "K": K},
                "candidate": name,
                "median_ms": t * 1e3,
                "gops": ops / t / 1e9,
                "share_of_float_peak": ops / t / 1e9 / peak["gflops"],
                "baselines_ms": {b: times[b] * 1e3 for b in baselines},
                "speedup_vs": {b: times[b] / t for b in baselines},
                **(extra[0] if extra else {}),
            })
            ratios = "  ".join(f"{rows[-1]['speedup_vs'][b]:.2f}x vs {b}" for b in baselines)
            print(f"{case:<12} M={M:<5} N={N:<6} K={K:<6} {name:<22} {t * 1e3:9.3f} ms  {ratios}", flush=True)
    e2e = E2E[family](device) if family in E2E else None
    if e2e is not None:
        candidates, baselines, fidelity = e2e
        times = time_fns({**candidates, **baselines}, device, min_time=2.0, max_reps=10)
        for name in candidates:
            rows.append({
                "case": "minilm_e2e",
                "shape": {"batch": 32, "seq": 128},
                "candidate": name,
                "median_ms": times[name] * 1e3,
                "baselines_ms": {b: times[b] * 1e3 for b in baselines},
                "speedup_vs": {b: times[b] / times[name] for b in baselines},
                "heldout_mean_cosine": fidelity[name],
                "baselines_heldout_mean_cosine": {b: fidelity[b] for b in baselines if b in fidelity},
            })
            ratios = "  ".join(f"{rows[-1]['speedup_vs'][b]:.2f}x vs {b}" for b in baselines)
            print(f"minilm_e2e batch 32 seq 128 {name:<22} {times[name] * 1e3:9.3f} ms  {ratios}  "
                  f"cosine {fidelity[name]:.4f}", flush=True)
    result = {
        "family": family,
        "device": device_name(device),
        "torch": torch.__version__,
        "pycompress": pycompress.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "commit": _commit(),
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:]),
        "measured_peak": peak,
        "rows": rows,
    }
    if device == "cuda":
        import triton

        result["triton"] = triton.__version__
        result["cuda"] = torch.version.cuda
    target = out_dir / device_name(device) / f"{family}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=1))
    print(f"wrote {target}")
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="int8")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="the target shapes only")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    run_family(args.family, args.device, args.quick, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
