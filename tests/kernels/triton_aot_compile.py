"""Compile the AOT_KERNELS of one Triton kernel module for one CUDA architecture, without a GPU.

    python triton_aot_compile.py KERNELS_DIR MODULE CAPABILITY

KERNELS_DIR is the directory of the pycompress.kernels package, MODULE a module name in it
("int8") and CAPABILITY a compute capability as an integer (80, 90). Prints a JSON list with,
per compiled kernel, its SASS opcode counts (from the cuobjdump that Triton ships) and the PTX
opcodes it was required not to contain but does; kernels of the module that follow the
``*_kernel`` naming convention but are missing from AOT_KERNELS are reported as well.

It must run with TRITON_INTERPRET unset: under the interpreter ``triton.jit`` produces functions
that cannot be compiled. The test suite sets that variable for itself, hence this separate process.
"""

import collections
import importlib
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

# "/*0170*/   @!P0 IMMA.16832.S8.S8 R24, ..." -> "IMMA"
_SASS_OPCODE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)")
# "    @%p1 mul.rn.f32 %r1, ..." -> "mul.rn.f32"
_PTX_OPCODE = re.compile(r"^\s*(?:@!?%\w+\s+)?([a-z][a-z0-9_.]*)\s", re.MULTILINE)

_PACKAGE = "_pycompress_aot_kernels"


def _load_module(kernels_dir, name):
    # The kernel modules use relative imports only, so the directory is loaded as a stand-alone
    # package: no need for pycompress itself to be importable here.
    init = Path(kernels_dir) / "__init__.py"
    spec = importlib.util.spec_from_file_location(_PACKAGE, init, submodule_search_locations=[str(kernels_dir)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[_PACKAGE] = package
    spec.loader.exec_module(package)
    return importlib.import_module(f"{_PACKAGE}.{name}")


def _sass_opcode_counts(cubin):
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run(
            [triton.knobs.nvidia.cuobjdump.path, "-sass", f.name],
            check=True, capture_output=True, text=True,
        ).stdout
    return collections.Counter(_SASS_OPCODE.findall(sass))


def compile_module(kernels_dir, name, capability):
    module = _load_module(kernels_dir, name)
    specs = getattr(module, "AOT_KERNELS", [])
    listed = {spec["fn"].__name__ for spec in specs}
    kernels = {
        obj.__name__ for obj in vars(module).values()
        if isinstance(obj, JITFunction) and obj.__name__.endswith("_kernel") and obj.__module__ == module.__name__
    }
    target = GPUTarget("cuda", capability, 32)
    compiled = []
    for spec in specs:
        src = ASTSource(fn=spec["fn"], signature=spec["signature"], constexprs=spec["constexprs"],
                        attrs=spec.get("attrs"))
        binary = triton.compile(src, target=target, options=spec.get("options"))
        ptx_opcodes = set(_PTX_OPCODE.findall(binary.asm["ptx"]))
        compiled.append({
            "name": spec["name"],
            "kernel": spec["fn"].__name__,
            "sass_counts": dict(_sass_opcode_counts(binary.asm["cubin"])),
            "sass_expected": list(spec.get("sass", {}).get(capability, ())),
            "ptx_present_but_absent_required": sorted(
                op for op in ptx_opcodes for prefix in spec.get("ptx_absent", ()) if op.startswith(prefix)
            ),
        })
    return {"kernels_not_listed": sorted(kernels - listed), "compiled": compiled}


def main(argv):
    kernels_dir, name, capability = argv
    json.dump(compile_module(kernels_dir, name, int(capability)), sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
