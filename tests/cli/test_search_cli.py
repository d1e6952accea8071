"""``pycompress search``: a recipe for a small module:factory model under a budget, written as YAML that
``compress`` takes; budgets that cannot be met or do not parse."""

from pathlib import Path

import pytest

from pycompress.cli import main

HERE = Path(__file__).resolve().parent
TINY = HERE / "tiny_models.py"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("latency-cache")


@pytest.fixture(autouse=True)
def _search_api(cache_dir, monkeypatch):
    search = pytest.importorskip("pycompress.search")
    for name in ("search", "Budget"):
        if not hasattr(search, name):
            pytest.skip(f"pycompress.search.{name} does not exist yet")
    # The search's latency table is cached for this file's tests only, not in the user's cache.
    monkeypatch.setenv("PYCOMPRESS_CACHE_DIR", str(cache_dir))


def run(capsys, *argv):
    status = main([*argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_search_writes_a_recipe_that_compress_applies(capsys, tmp_path):
    from pycompress.recipe import load_recipe

    # A size budget: met or not the same way on a loaded machine, unlike a latency budget on a tiny model.
    status, out, _ = run(capsys, "search", f"{TINY}:mlp", "--budget", "size=0.5", "--out", str(tmp_path / "s"),
                         "--no-progress")
    assert status == 0, out
    assert "greedy search" in out and f"wrote {tmp_path / 's' / 'recipe.yaml'}" in out
    recipe = load_recipe(str(tmp_path / "s" / "recipe.yaml"))
    assert recipe.stages
    status, out, _ = run(capsys, "search", f"{TINY}:mlp", "--budget", "size=0.5", "--out", str(tmp_path / "s"))
    assert status == 1
    status, out, _ = run(capsys, "compress", f"{TINY}:mlp", "--recipe", str(tmp_path / "s" / "recipe.yaml"),
                         "--out", str(tmp_path / "c"), "--no-progress")
    assert status == 0 and (tmp_path / "c" / "pycompress.json").is_file()


def test_search_prints_the_recipe_without_out(capsys):
    status, out, _ = run(capsys, "search", f"{TINY}:mlp", "--budget", "size=0.5", "--strategy", "evolutionary",
                         "--no-progress")
    assert status == 0 and "evolutionary search" in out and "stages:" in out


def test_unmeetable_budget_is_one_line(capsys):
    status, out, err = run(capsys, "search", f"{TINY}:mlp", "--budget", "size=0.01", "--no-progress")
    assert status == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith("pycompress: error: ") and "size=0.01" in line and "minimum reachable" in line


def test_budget_keys_and_values_are_checked(capsys):
    for budget, message in (("latncy=0.5", "--budget: unknown key 'latncy' (known: latency"),
                            ("latency=2", "--budget: Budget: latency must be a fraction")):
        status, _, err = run(capsys, "search", f"{TINY}:mlp", "--budget", budget)
        assert status == 2 and err.startswith(f"pycompress: error: {message}"), err


def test_search_plot_needs_matplotlib(capsys, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    status, _, err = run(capsys, "search", f"{TINY}:mlp", "--budget", "size=0.5", "--plot", str(tmp_path / "p.png"))
    assert status == 1 and err.strip() == "pycompress: error: plots need matplotlib: pip install matplotlib"
