"""Running from the repository root (``python -m ...``, ``python -m pytest``) puts the root on sys.path,
where the folder ``kernels/`` (the source of ``pycompress.kernels``) could shadow the installed package
named ``kernels`` that transformers imports. The folder hands the name over to that package."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def test_pycompress_kernels_is_this_folder():
    out = _run("import pycompress.kernels as k, pycompress.kernels.lowrank as l; print(k.__file__); print(l.__file__)")
    assert [Path(p) for p in out.splitlines()] == [ROOT / "kernels" / "__init__.py", ROOT / "kernels" / "lowrank.py"]


@pytest.mark.skipif(not _installed("kernels"), reason="no installed package named kernels to shadow")
def test_installed_kernels_package_is_not_shadowed_from_the_root():
    out = _run("import sys, kernels; assert sys.path[0] == ''; print(kernels.__file__)")
    assert Path(out) != ROOT / "kernels" / "__init__.py", out
    assert "site-packages" in out or "dist-packages" in out, out


@pytest.mark.skipif(not _installed("transformers"), reason="transformers is not installed")
def test_transformers_bert_imports_from_the_root():
    _run("import kernels, pycompress.kernels; from transformers.models.bert import modeling_bert")
