"""Every Triton kernel compiles ahead of time for sm_80 and sm_90, and its SASS has the matrix
instructions it is meant to use.

Each module of pycompress.kernels lists concrete specializations in ``AOT_KERNELS`` (dicts with
fn, signature, constexprs, attrs, options, and the expected SASS opcodes per capability). They are
compiled in a child process by tests/kernels/triton_aot_compile.py, because this process runs with
TRITON_INTERPRET=1 and interpreted kernels cannot be compiled. No GPU is needed: Triton ships
ptxas and cuobjdump.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pycompress.kernels

pytest.importorskip("triton")

KERNELS_DIR = Path(pycompress.kernels.__path__[0])
FAMILIES = sorted(p.stem for p in KERNELS_DIR.glob("*.py") if not p.stem.startswith("_"))
CAPABILITIES = [80, 90]
COMPILER = Path(__file__).with_name("triton_aot_compile.py")


def _compile(family, capability):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(COMPILER), str(KERNELS_DIR), family, str(capability)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, f"AOT compile of kernels/{family}.py for sm_{capability} failed:\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.mark.aot
@pytest.mark.parametrize("capability", CAPABILITIES)
@pytest.mark.parametrize("family", FAMILIES)
def test_kernels_compile_ahead_of_time(family, capability):
    report = _compile(family, capability)

    assert report["compiled"], f"kernels/{family}.py lists no AOT_KERNELS"
    assert not report["kernels_not_listed"], f"kernels/{family}.py: not in AOT_KERNELS: {report['kernels_not_listed']}"
    for kernel in report["compiled"]:
        counts = kernel["sass_counts"]
        expected = kernel["sass_expected"]
        if expected:
            found = {op: counts.get(op, 0) for op in expected}
            assert any(found.values()), f"{kernel['name']} on sm_{capability}: none of {expected} in SASS"
        assert not kernel["ptx_present_but_absent_required"], (
            f"{kernel['name']} on sm_{capability}: PTX has {kernel['ptx_present_but_absent_required']}"
        )


def test_families_found():
    assert "int8" in FAMILIES
