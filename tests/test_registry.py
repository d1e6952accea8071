"""Backend registry: selection, overrides, errors with reasons, and the info table."""

import subprocess
import sys
import warnings

import pytest
import torch

import pycompress
from pycompress import registry
from pycompress.cli import main


def test_default_cpu_backend_is_native():
    assert registry.select("int8_mm", "cpu").backend == "cpu"
    assert registry.select("quantize_per_token", "cpu").backend == "cpu"


def test_context_manager_overrides_and_nests():
    with pycompress.use_backend("reference"):
        assert registry.select("int8_mm", "cpu").backend == "reference"
        with pycompress.use_backend("int8_mm=cpu"):
            assert registry.select("int8_mm", "cpu").backend == "cpu"
            assert registry.select("quantize_per_token", "cpu").backend == "reference"
    assert registry.select("int8_mm", "cpu").backend == "cpu"


def test_env_override(monkeypatch):
    monkeypatch.setenv("PYCOMPRESS_BACKEND", "quantize_per_token=reference")
    assert registry.select("quantize_per_token", "cpu").backend == "reference"
    assert registry.select("int8_mm", "cpu").backend == "cpu"


def test_unavailable_backend_by_name_is_an_error_with_reason(monkeypatch):
    monkeypatch.setenv("PYCOMPRESS_BACKEND", "cuda")
    with pytest.raises(registry.BackendUnavailableError, match=r"int8_mm: backend 'cuda' was requested by PYCOMPRESS_BACKEND=cuda but cannot run on cpu: runs on cuda only"):
        pycompress.ops.int8_mm(torch.ones(2, 3, dtype=torch.int8), torch.ones(2, 3, dtype=torch.int8),
                               torch.ones(2), torch.ones(2))


def test_unknown_backend_names_rejected(monkeypatch):
    with pytest.raises(ValueError, match="use_backend: backend must be one of"):
        with pycompress.use_backend("fastest"):
            pass
    monkeypatch.setenv("PYCOMPRESS_BACKEND", "int8_mm=tensorrt")
    with pytest.raises(registry.BackendUnavailableError, match="'tensorrt' requested"):
        registry.select("int8_mm", "cpu")


def test_experimental_backends_not_chosen_by_default():
    # The CUDA kernels are registered experimental until they pass on a GPU: the default skips them.
    impl = registry.impls("int8_mm")["cuda"]
    assert "cuda" in impl.experimental
    state, reason = registry.status("int8_mm", "triton", "cpu")
    assert state == "experimental" and "interpreter" in reason


def test_fallback_to_reference_warns_with_reason(monkeypatch):
    fake = registry.BackendImpl(op="int8_mm", backend="cpu", fn=None, devices=("cpu",),
                                availability=lambda d: "not built for this test")
    monkeypatch.setitem(registry._IMPLS["int8_mm"], "cpu", fake)
    monkeypatch.setattr(registry, "_warned", set())
    with pytest.warns(UserWarning, match="int8_mm on cpu uses the reference backend because cpu: not built for this test"):
        assert registry.select("int8_mm", "cpu").backend == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        registry.select("int8_mm", "cpu")


def test_selection_follows_registry_changes(monkeypatch):
    """select() keeps its answers per op, device, use_backend stack and PYCOMPRESS_BACKEND: a backend
    replaced in the registry, then put back, is seen at once, and so is a change of the variable."""
    original = registry.select("int8_mm", "cpu")
    assert original.backend == "cpu" and registry.select("int8_mm", "cpu") is original
    fake = registry.BackendImpl(op="int8_mm", backend="cpu", fn=None, devices=("cpu",),
                                availability=lambda d: None)
    with monkeypatch.context() as m:
        m.setitem(registry._IMPLS["int8_mm"], "cpu", fake)
        assert registry.select("int8_mm", "cpu") is fake
        m.setenv("PYCOMPRESS_BACKEND", "int8_mm=reference")
        assert registry.select("int8_mm", "cpu").backend == "reference"
    assert registry.select("int8_mm", "cpu") is original
    with monkeypatch.context() as m:
        m.setitem(registry._IMPLS["int8_mm"], "cpu", registry.BackendImpl(
            op="int8_mm", backend="cpu", fn=None, devices=("cpu",), availability=lambda d: "gone"))
        m.setattr(registry, "_warned", set())
        with pytest.warns(UserWarning, match="cpu: gone"):
            assert registry.select("int8_mm", "cpu").backend == "reference"
    assert registry.select("int8_mm", "cpu") is original


def test_info_table(capsys):
    text = pycompress.info()
    assert "int8_mm" in text and "quantize_per_token" in text
    assert "yes*" in text
    for backend in registry.BACKENDS:
        assert backend in text
    assert main(["info"]) == 0
    assert "int8_mm" in capsys.readouterr().out


def test_cli_entry_point():
    out = subprocess.run([sys.executable, "-m", "pycompress.cli", "info"], capture_output=True, text=True, check=True)
    assert "quantize_per_token" in out.stdout
