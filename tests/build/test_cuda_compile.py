"""Compile check of the CUDA sources without a GPU.

Every csrc/cuda/*.cu file is compiled by nvcc, with the flags setup.py uses, for sm_80 and sm_90a (one
compile per file and arch, shared by the tests). The SASS is then checked per kernel family against
what each design promises, on both archs:
  int8.cu: the int8 GEMM uses the integer tensor cores (IMMA), stages its tiles with cp.async (LDGSTS)
    and ldmatrix (LDSM), and keeps its accumulators in registers (no local-memory spills).
  lowbit.cu: binary_mm uses the 1-bit tensor cores (BMMA: the XOR form on sm_80; on sm_90, which has
    only the AND form, two AND BMMAs per XOR product) fed by cp.async and ldmatrix; the weight-only
    GEMV kernels stream with 16-byte loads (LDG.E.128); pack_bits packs with a warp ballot (VOTE); no
    kernel of the file spills to local memory (LDL/STL).
  sparse24.cu: the float16 / bfloat16 2:4 GEMM uses the sparse tensor cores (HMMA.SP.16832, the same
    mma.sp form on sm_80 and sm_90a) fed by cp.async and ldmatrix; the float32 GEMM runs on FFMA;
    compress moves whole 16-byte vectors when aligned; no kernel spills.
  sparse.cu: the float16 / bfloat16 BSR GEMM uses the dense tensor cores (HMMA.16816) fed by cp.async
    and ldmatrix; the CSR GEMM walks rows with warp ballots (VOTE) and shuffles; no kernel spills.
  lowrank.cu: the float16 / bfloat16 fused low-rank GEMM runs both products on the dense tensor cores
    (HMMA.16816) fed by cp.async and ldmatrix, the CUDA-core kernels on FFMA; every kernel adds the
    partial products of a split rank with float32 atomics (RED, or ATOMG on sm_90a); no kernel spills.
  codebook.cu: the decode kernels stream the indices with 16-byte loads (LDG.E.128), multiply on FFMA
    and reduce with shuffles; the float16 / bfloat16 tile kernels use the dense tensor cores
    (HMMA.16816) fed by cp.async and ldmatrix; no kernel spills.
The torch registration files (csrc/cuda/*.cpp) are syntax-checked by the host compiler against torch's
headers, which works with a CPU-only torch because it ships the c10/cuda headers (its generated
cuda_cmake_macros.h is replaced by -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE).
"""

from __future__ import annotations

import collections
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import pytest

pytestmark = pytest.mark.nvcc

ROOT = Path(__file__).resolve().parents[2]
CUDA_SOURCES = ROOT / "csrc" / "cuda"
INCLUDE_DIR = ROOT / "csrc" / "include"
CU_FILES = sorted(CUDA_SOURCES.glob("*.cu"))
REGISTRATION_FILES = sorted(CUDA_SOURCES.glob("*.cpp"))

ARCHS = {
    "sm_80": "arch=compute_80,code=sm_80",
    "sm_90a": "arch=compute_90a,code=sm_90a",
}
# The nvcc flags of setup.py (cpp_extension adds the -gencode flags from TORCH_CUDA_ARCH_LIST).
NVCC_FLAGS = ["-O3", "-std=c++17", "--use_fast_math"]
COMPILE_TIMEOUT_S = 900
NVCC_MISSING = "nvcc not found: CUDA compile check skipped"


def _cuda_homes() -> list[Path]:
    homes = [os.environ.get(var) for var in ("CUDA_HOME", "CUDA_PATH")]
    return [Path(h) for h in homes if h] + [Path("/usr/local/cuda")]


def _find_cuda_tool(name: str) -> Optional[Path]:
    on_path = shutil.which(name)
    candidates = ([Path(on_path)] if on_path else []) + [home / "bin" / name for home in _cuda_homes()]
    return next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)


def _find_cuda_include(nvcc: Path) -> Optional[Path]:
    # nvcc may be a wrapper script outside the toolkit (e.g. /usr/local/bin/nvcc), so look at the
    # toolkit homes too.
    homes = [nvcc.resolve().parent.parent, *_cuda_homes()]
    return next((h / "include" for h in homes if (h / "include" / "cuda_runtime.h").is_file()), None)


def _find_cuobjdump(nvcc: Path) -> Optional[Path]:
    beside_nvcc = nvcc.parent / "cuobjdump"
    if beside_nvcc.is_file():
        return beside_nvcc
    found = _find_cuda_tool("cuobjdump")
    if found is not None:
        return found
    # Triton wheels bundle cuobjdump; its location is found without importing triton.
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(list(spec.submodule_search_locations)[0]) / "backends" / "nvidia" / "bin" / "cuobjdump"
        if bundled.is_file():
            return bundled
    return None


@pytest.fixture(scope="session")
def nvcc() -> Path:
    path = _find_cuda_tool("nvcc")
    if path is None:
        pytest.skip(NVCC_MISSING)
    return path


@pytest.fixture(scope="session")
def compile_cu(nvcc, tmp_path_factory):
    """compile_cu(source, arch) -> (returncode, stderr, object path).

    Each (source, arch) is compiled once per session; the first request for a source starts its
    compiles for every arch at once, so that they run side by side.
    """
    out_dir = tmp_path_factory.mktemp("nvcc")
    running: dict[tuple[str, str], tuple[subprocess.Popen, Path]] = {}
    results: dict[tuple[str, str], tuple[int, str, Path]] = {}

    def start(source: Path, arch: str) -> None:
        obj = out_dir / f"{source.stem}.{arch}.o"
        cmd = [str(nvcc), "-c", *NVCC_FLAGS, "-gencode", ARCHS[arch], f"-I{INCLUDE_DIR}", str(source), "-o", str(obj)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        running[(source.name, arch)] = (proc, obj)

    def compile_one(source: Path, arch: str):
        key = (source.name, arch)
        if key not in results:
            if key not in running:
                for other in ARCHS:
                    if (source.name, other) not in results:
                        start(source, other)
            proc, obj = running.pop(key)
            try:
                output, _ = proc.communicate(timeout=COMPILE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
                output += f"\n(killed after {COMPILE_TIMEOUT_S} s)"
            results[key] = (proc.returncode, output, obj)
        return results[key]

    yield compile_one
    for proc, _ in running.values():
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="session")
def cuobjdump(nvcc) -> Path:
    path = _find_cuobjdump(nvcc)
    if path is None:
        pytest.skip("cuobjdump not found (neither beside nvcc nor bundled with triton): SASS check skipped")
    return path


def _assert_compiled(returncode: int, output: str, obj: Path, what: str) -> None:
    assert returncode == 0, f"nvcc failed on {what}:\n{output}"
    assert obj.is_file() and obj.stat().st_size > 0, f"nvcc wrote no object for {what}"


def _sass_opcodes(sass: str) -> dict[str, collections.Counter]:
    """Opcode counts (with their modifiers, e.g. IMMA.16832.S8.S8) of each function in `cuobjdump -sass`."""
    functions: dict[str, collections.Counter] = {}
    current: Optional[collections.Counter] = None
    instruction = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[0-9T]\s+)?([A-Z][A-Z0-9_.]*)")
    for line in sass.splitlines():
        header = re.search(r"Function : (\S+)", line)
        if header:
            current = functions.setdefault(header.group(1), collections.Counter())
            continue
        match = instruction.search(line)
        if match and current is not None:
            current[match.group(1)] += 1
    return functions


def _count(opcodes: collections.Counter, prefix: str) -> int:
    return sum(n for op, n in opcodes.items() if op == prefix or op.startswith(prefix + "."))


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_cu_compiles(compile_cu, source, arch):
    returncode, output, obj = compile_cu(source, arch)
    _assert_compiled(returncode, output, obj, f"{source.name} for {arch}")


@pytest.mark.parametrize("arch", list(ARCHS))
def test_int8_mm_uses_integer_tensor_cores(compile_cu, cuobjdump, arch):
    returncode, output, obj = compile_cu(CUDA_SOURCES / "int8.cu", arch)
    _assert_compiled(returncode, output, obj, f"int8.cu for {arch}")
    dump = subprocess.run([str(cuobjdump), "-sass", str(obj)], capture_output=True, text=True, timeout=120)
    assert dump.returncode == 0, dump.stderr
    assert f"arch = {arch}" in dump.stdout, f"the object holds no {arch} SASS"
    gemms = {name: ops for name, ops in _sass_opcodes(dump.stdout).items() if "int8_mm_kernel" in name}
    # One instantiation per output dtype (float32, float16, bfloat16) and load path (cp.async, bytewise).
    assert len(gemms) == 6, f"expected 6 int8_mm_kernel instantiations, found {sorted(gemms)}"
    for name, ops in gemms.items():
        assert _count(ops, "IMMA") > 0, f"{name} ({arch}) has no IMMA instruction"
        assert ops["IMMA.16832.S8.S8"] == _count(ops, "IMMA"), f"{name} ({arch}): unexpected IMMA forms {ops}"
        assert _count(ops, "LDSM") > 0, f"{name} ({arch}) does not read fragments with ldmatrix"
        spills = _count(ops, "LDL") + _count(ops, "STL")
        assert spills == 0, f"{name} ({arch}) spills to local memory ({spills} LDL/STL)"
    assert any(_count(ops, "LDGSTS") > 0 for ops in gemms.values()), f"no int8_mm_kernel uses cp.async on {arch}"


@pytest.fixture(scope="session")
def torch_include_dirs() -> list[str]:
    pytest.importorskip("torch")
    from torch.utils import cpp_extension

    return list(cpp_extension.include_paths())


@pytest.mark.parametrize("source", REGISTRATION_FILES, ids=lambda p: p.name)
def test_registration_syntax(nvcc, torch_include_dirs, source):
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        pytest.skip("no host C++ compiler (g++ or $CXX) found")
    cuda_include = _find_cuda_include(nvcc)
    if cuda_include is None:
        pytest.skip(f"no CUDA include directory (with cuda_runtime.h) found for {nvcc}")
    system_includes = [*torch_include_dirs, str(cuda_include)]
    cmd = [
        cxx,
        "-fsyntax-only",
        "-std=c++17",
        "-Wall",
        "-Werror",
        "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
        *[arg for d in system_includes for arg in ("-isystem", d)],
        f"-I{INCLUDE_DIR}",
        str(source),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    assert proc.returncode == 0, f"{source.name} does not compile against torch's headers:\n{proc.stderr}"


@pytest.fixture(scope="session")
def sass(compile_cu, cuobjdump):
    """sass(source name, arch) -> {function: opcode counts}, dumped once per session."""
    dumps: dict[tuple[str, str], dict[str, collections.Counter]] = {}

    def dump_one(name: str, arch: str) -> dict[str, collections.Counter]:
        if (name, arch) not in dumps:
            returncode, output, obj = compile_cu(CUDA_SOURCES / name, arch)
            _assert_compiled(returncode, output, obj, f"{name} for {arch}")
            proc = subprocess.run([str(cuobjdump), "-sass", str(obj)], capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr
            assert f"arch = {arch}" in proc.stdout, f"the object of {name} holds no {arch} SASS"
            dumps[(name, arch)] = _sass_opcodes(proc.stdout)
        return dumps[(name, arch)]

    return dump_one


@pytest.mark.parametrize("arch", list(ARCHS))
def test_lowbit_kernels_do_not_spill(sass, arch):
    functions = sass("lowbit.cu", arch)
    assert functions, f"lowbit.cu ({arch}) holds no kernels"
    for name, ops in functions.items():
        spills = _count(ops, "LDL") + _count(ops, "STL")
        assert spills == 0, f"{name} ({arch}) uses local memory ({spills} LDL/STL)"


# BMMA forms binary_mm must compile to: sm_90 has no XOR BMMA, so the kernel issues
# popc(a & ~b) + popc(~a & b) as two AND BMMAs there.
BINARY_MM_BMMA = {"sm_80": "BMMA.168256.XOR.POPC", "sm_90a": "BMMA.168256.AND.POPC"}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_binary_mm_uses_1bit_tensor_cores(sass, arch):
    gemms = {name: ops for name, ops in sass("lowbit.cu", arch).items() if "binary_mm_kernel" in name}
    # One instantiation per output dtype (float32, float16, bfloat16) and load path (cp.async, wordwise).
    assert len(gemms) == 6, f"expected 6 binary_mm_kernel instantiations, found {sorted(gemms)}"
    form = BINARY_MM_BMMA[arch]
    for name, ops in gemms.items():
        assert _count(ops, "BMMA") > 0, f"{name} ({arch}) has no BMMA instruction"
        assert ops[form] == _count(ops, "BMMA"), f"{name} ({arch}): expected only {form}, found {ops}"
        assert _count(ops, "LDSM") > 0, f"{name} ({arch}) does not read fragments with ldmatrix"
    assert any(_count(ops, "LDGSTS") > 0 for ops in gemms.values()), f"no binary_mm_kernel uses cp.async on {arch}"


# Rows of x per block of the weight-only kernels: 1, 2, 4, 8 for float32 x; up to 16 for (b)float16 x.
GEMV_INSTANTIATIONS = {"Int8Weights": 2 * (4 + 5 + 5), "BinaryWeights": 4 + 5 + 5, "TernaryWeights": 4 + 5 + 5}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_weight_only_kernels_stream_with_wide_loads(sass, arch):
    functions = sass("lowbit.cu", arch)
    for weights, expected in GEMV_INSTANTIATIONS.items():
        kernels = {name: ops for name, ops in functions.items() if "weight_gemv_kernel" in name and weights in name}
        assert len(kernels) == expected, f"expected {expected} {weights} kernels, found {sorted(kernels)}"
        for name, ops in kernels.items():
            assert _count(ops, "LDG.E.128") > 0, f"{name} ({arch}) has no 16-byte loads"
            assert _count(ops, "FFMA") > 0, f"{name} ({arch}) has no FFMA"


@pytest.mark.parametrize("arch", list(ARCHS))
def test_pack_bits_uses_warp_ballot(sass, arch):
    kernels = {name: ops for name, ops in sass("lowbit.cu", arch).items() if "pack_bits_kernel" in name}
    # One instantiation per input dtype: float32, float16, bfloat16, int8.
    assert len(kernels) == 4, f"expected 4 pack_bits_kernel instantiations, found {sorted(kernels)}"
    for name, ops in kernels.items():
        assert _count(ops, "VOTE") > 0, f"{name} ({arch}) does not pack with a warp ballot"


def _spills(ops: collections.Counter) -> int:
    return _count(ops, "LDL") + _count(ops, "STL")


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("source", ["sparse24.cu", "sparse.cu"])
def test_sparse_kernels_do_not_spill(sass, source, arch):
    functions = sass(source, arch)
    assert functions, f"{source} ({arch}) holds no kernels"
    for name, ops in functions.items():
        assert _spills(ops) == 0, f"{name} ({arch}) uses local memory ({_spills(ops)} LDL/STL)"


# The MMA forms per operand type (float32 accumulate); the 2:4 GEMM's mma.sp::ordered_metadata
# m16n8k32 is HMMA.SP.16832 on both archs.
SPARSE_HMMA = {"bfloat16": "HMMA.SP.16832.F32.BF16", "half": "HMMA.SP.16832.F32"}
DENSE_HMMA = {"bfloat16": "HMMA.16816.F32.BF16", "half": "HMMA.16816.F32"}


def _operand_type(kernel_name: str) -> str:
    return "bfloat16" if "__nv_bfloat16" in kernel_name else "half"


@pytest.mark.parametrize("arch", list(ARCHS))
def test_sparse24_mm_uses_sparse_tensor_cores(sass, arch):
    functions = sass("sparse24.cu", arch)
    gemms = {name: ops for name, ops in functions.items() if "sparse24_mm_kernel" in name}
    # 3 tile shapes (large, medium, decode) x 2 operand types x 2 load paths (cp.async, elementwise).
    assert len(gemms) == 12, f"expected 12 sparse24_mm_kernel instantiations, found {sorted(gemms)}"
    assert {_operand_type(name) for name in gemms} == {"bfloat16", "half"}
    for name, ops in gemms.items():
        form = SPARSE_HMMA[_operand_type(name)]
        assert ops[form] > 0, f"{name} ({arch}) has no {form}: {ops}"
        assert ops[form] == _count(ops, "HMMA"), f"{name} ({arch}): unexpected HMMA forms {ops}"
        assert _count(ops, "LDSM") > 0, f"{name} ({arch}) does not read fragments with ldmatrix"
    assert sum(_count(ops, "LDGSTS") > 0 for ops in gemms.values()) == 6, f"cp.async path missing on {arch}"
    simt = {name: ops for name, ops in functions.items() if "sparse24_mm_simt_kernel" in name}
    assert len(simt) == 2, f"expected 2 float32 sparse24_mm kernels, found {sorted(simt)}"
    for name, ops in simt.items():
        assert _count(ops, "FFMA") > 0 and _count(ops, "HMMA") == 0, f"{name} ({arch}): {ops}"
    compress = {name: ops for name, ops in functions.items() if "sparse24_compress_kernel" in name}
    # One instantiation per element width (16, 32 bits) and load path (16-byte vectors, elementwise).
    assert len(compress) == 4, f"expected 4 sparse24_compress_kernel instantiations, found {sorted(compress)}"
    assert sum(_count(ops, "LDG.E.128") > 0 for ops in compress.values()) == 2, f"vector path missing on {arch}"


@pytest.mark.parametrize("arch", list(ARCHS))
def test_bsr_mm_uses_tensor_cores(sass, arch):
    functions = sass("sparse.cu", arch)
    gemms = {name: ops for name, ops in functions.items() if "bsr_mm_kernel" in name}
    # 3 block sizes x 2 tile shapes (decode, wide) x 2 operand types.
    assert len(gemms) == 12, f"expected 12 bsr_mm_kernel instantiations, found {sorted(gemms)}"
    for name, ops in gemms.items():
        form = DENSE_HMMA[_operand_type(name)]
        assert ops[form] > 0, f"{name} ({arch}) has no {form}: {ops}"
        assert ops[form] == _count(ops, "HMMA"), f"{name} ({arch}): unexpected HMMA forms {ops}"
        assert _count(ops, "LDSM") > 0, f"{name} ({arch}) does not read fragments with ldmatrix"
        assert _count(ops, "LDGSTS") > 0, f"{name} ({arch}) does not stage tiles with cp.async"
    simt = {name: ops for name, ops in functions.items() if "bsr_mm_simt_kernel" in name}
    assert len(simt) == 6, f"expected 6 float32 bsr_mm kernels, found {sorted(simt)}"
    for name, ops in simt.items():
        assert _count(ops, "FFMA") > 0 and _count(ops, "HMMA") == 0, f"{name} ({arch}): {ops}"


@pytest.mark.parametrize("arch", list(ARCHS))
def test_csr_mm_walks_rows_with_warp_collectives(sass, arch):
    kernels = {name: ops for name, ops in sass("sparse.cu", arch).items() if "csr_mm_kernel" in name}
    # 6 tile heights of x (1, 2, 4, 8, 16, 32 rows) x 3 dtypes.
    assert len(kernels) == 18, f"expected 18 csr_mm_kernel instantiations, found {sorted(kernels)}"
    for name, ops in kernels.items():
        assert _count(ops, "VOTE") > 0, f"{name} ({arch}) does not count entries with a warp ballot"
        assert _count(ops, "SHFL") > 0, f"{name} ({arch}) does not broadcast entries with shuffles"
        assert _count(ops, "FFMA") > 0, f"{name} ({arch}) has no FFMA"


def _float_atomic_adds(ops: collections.Counter) -> int:
    """float32 atomic adds to global memory: RED on sm_80; ptxas emits ATOMG for them on sm_90a."""
    return sum(n for op, n in ops.items() if op.split(".")[0] in ("RED", "REDG", "ATOMG") and ".ADD.F32" in op)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_lowrank_mm_uses_tensor_cores(sass, arch):
    functions = sass("lowrank.cu", arch)
    assert functions, f"lowrank.cu ({arch}) holds no kernels"
    for name, ops in functions.items():
        assert _spills(ops) == 0, f"{name} ({arch}) uses local memory ({_spills(ops)} LDL/STL)"
        assert _float_atomic_adds(ops) > 0, f"{name} ({arch}) cannot add split-rank partial sums: {ops}"
    gemms = {name: ops for name, ops in functions.items() if "lowrank_mm_kernel" in name}
    # 2 row tiles (16, 64 rows of x) x 2 operand types.
    assert len(gemms) == 4, f"expected 4 lowrank_mm_kernel instantiations, found {sorted(gemms)}"
    assert {_operand_type(name) for name in gemms} == {"bfloat16", "half"}
    for name, ops in gemms.items():
        form = DENSE_HMMA[_operand_type(name)]
        assert ops[form] > 0, f"{name} ({arch}) has no {form}: {ops}"
        assert ops[form] == _count(ops, "HMMA"), f"{name} ({arch}): unexpected HMMA forms {ops}"
        assert _count(ops, "LDSM") > 0, f"{name} ({arch}) does not read fragments with ldmatrix"
        assert _count(ops, "LDGSTS") > 0, f"{name} ({arch}) does not stage tiles with cp.async"
    simt = {name: ops for name, ops in functions.items() if "lowrank_mm_simt_kernel" in name}
    # 3 dtypes x 2 row tiles.
    assert len(simt) == 6, f"expected 6 CUDA-core lowrank_mm kernels, found {sorted(simt)}"
    for name, ops in simt.items():
        assert _count(ops, "FFMA") > 0 and _count(ops, "HMMA") == 0, f"{name} ({arch}): {ops}"


@pytest.mark.parametrize("arch", list(ARCHS))
def test_codebook_mm_streams_indices_and_uses_tensor_cores(sass, arch):
    functions = sass("codebook.cu", arch)
    assert functions, f"codebook.cu ({arch}) holds no kernels"
    for name, ops in functions.items():
        assert _spills(ops) == 0, f"{name} ({arch}) uses local memory ({_spills(ops)} LDL/STL)"
    decode = {name: ops for name, ops in functions.items() if "codebook_decode_kernel" in name}
    # 2 index widths x (rows of x per block: 1, 2, 4, 8 for float32; 1, 2, 4, 8, 16 for (b)float16).
    assert len(decode) == 2 * (4 + 5 + 5), f"expected 28 codebook_decode_kernel instantiations, found {sorted(decode)}"
    for name, ops in decode.items():
        assert _count(ops, "LDG.E.128") > 0, f"{name} ({arch}) has no 16-byte loads"
        assert _count(ops, "FFMA") > 0 and _count(ops, "HMMA") == 0, f"{name} ({arch}): {ops}"
        assert _count(ops, "SHFL") > 0, f"{name} ({arch}) does not reduce with shuffles"
    tiles = {name: ops for name, ops in functions.items() if "codebook_mm_tile_kernel" in name}
    # 2 index widths x 2 operand types.
    assert len(tiles) == 4, f"expected 4 codebook_mm_tile_kernel instantiations, found {sorted(tiles)}"
    assert {_operand_type(name) for name in tiles} == {"bfloat16", "half"}
    for name, ops in tiles.items():
        form = DENSE_HMMA[_operand_type(name)]
        assert ops[form] > 0, f"{name} ({arch}) has no {form}: {ops}"
        assert ops[form] == _count(ops, "HMMA"), f"{name} ({arch}): unexpected HMMA forms {ops}"
        assert _count(ops, "LDSM") > 0, f"{name} ({arch}) does not read fragments with ldmatrix"
        assert _count(ops, "LDGSTS") > 0, f"{name} ({arch}) does not stage x with cp.async"
