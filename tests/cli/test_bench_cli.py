"""``pycompress bench``: the bar chart of speedups from the committed benchmark results, the runner called
for the families asked for, and the errors of both paths."""

import json
import sys
from pathlib import Path

import pytest

from pycompress.cli import main, speedup_table

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
COMMITTED = sorted(RESULTS.glob("*/*.json"))


def run(capsys, *argv):
    status = main([*argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def no_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)


@pytest.mark.skipif(not COMMITTED, reason="no committed benchmark results")
def test_speedup_table_summarises_every_ratio_of_the_results():
    results = [json.loads(f.read_text()) for f in COMMITTED]
    table = speedup_table(results)
    keys = {(r["family"], r["case"], r["candidate"], r["baseline"]) for r in table}
    assert len(keys) == len(table)
    expected = {(result["family"], row["case"], row["candidate"], baseline): []
                for result in results for row in result["rows"] for baseline in row.get("speedup_vs", {})}
    assert keys == set(expected)
    for result in results:
        for row in result["rows"]:
            for baseline, ratio in row.get("speedup_vs", {}).items():
                expected[(result["family"], row["case"], row["candidate"], baseline)].append(ratio)
    for entry in table:
        ratios = expected[(entry["family"], entry["case"], entry["candidate"], entry["baseline"])]
        assert entry["shapes"] == len(ratios)
        assert entry["low"] == min(ratios) and entry["high"] == max(ratios)
        assert entry["low"] <= entry["median"] <= entry["high"]


@pytest.mark.skipif(not COMMITTED, reason="no committed benchmark results")
def test_plot_from_committed_results(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    folder = COMMITTED[0].parent
    png = tmp_path / "bench.png"
    status, out, _ = run(capsys, "bench", "--from-results", str(folder), "--plot", str(png))
    assert status == 0 and f"wrote {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not COMMITTED, reason="no committed benchmark results")
def test_plot_without_matplotlib_says_how_to_get_it(capsys, tmp_path, monkeypatch):
    no_matplotlib(monkeypatch)
    status, _, err = run(capsys, "bench", "--from-results", str(COMMITTED[0].parent), "--plot", str(tmp_path / "b.png"))
    assert status == 1 and err.strip() == "pycompress: error: plots need matplotlib: pip install matplotlib"
    assert not (tmp_path / "b.png").exists()


def test_from_results_errors(capsys, tmp_path):
    status, _, err = run(capsys, "bench", "--from-results", str(tmp_path / "none"), "--plot", "x.png")
    assert status == 1 and f"--from-results: {tmp_path / 'none'} is not a folder of benchmark results" in err
    status, _, err = run(capsys, "bench", "--from-results", str(tmp_path), "--family", "int8", "--plot", "x.png")
    assert status == 1 and f"--from-results: {tmp_path} holds no results for int8 (*.json)" in err


def test_unknown_family_is_a_usage_error(capsys):
    status, _, err = run(capsys, "bench", "--family", "int8", "int3")
    assert status == 2 and "--family: must be among int8, lowbit, sparse, lowrank (got int3)" in err


def test_bench_runs_the_runner_for_each_family(capsys, tmp_path, monkeypatch):
    import pycompress.cli as cli

    runner = cli._benchmark_runner()
    calls = []

    def run_family(family, device, quick, out_dir):
        calls.append((family, device, quick, out_dir))
        return out_dir / f"{family}.json"

    monkeypatch.setattr(runner, "run_family", run_family)
    monkeypatch.setattr(cli, "_benchmark_runner", lambda: runner)
    status, _, _ = run(capsys, "bench", "--family", "lowbit", "sparse", "--quick", "--device", "cpu",
                       "--out", str(tmp_path))
    assert status == 0
    assert calls == [("lowbit", "cpu", True, tmp_path), ("sparse", "cpu", True, tmp_path)]
    calls.clear()
    # The plot is asked for: matplotlib is checked before any benchmark runs.
    no_matplotlib(monkeypatch)
    status, _, err = run(capsys, "bench", "--family", "int8", "--plot", str(tmp_path / "b.png"))
    assert status == 1 and "pip install matplotlib" in err and calls == []


def test_runner_times_every_function_each_round_in_a_varying_order():
    import pycompress.cli as cli

    runner = cli._benchmark_runner()
    rounds = []

    def record(name):
        def fn():
            if not rounds or name in rounds[-1]:
                rounds.append([])
            rounds[-1].append(name)
        return fn

    names = ["a", "b", "c", "d"]
    times = runner.time_fns({n: record(n) for n in names}, "cpu", min_time=0.0, max_reps=5)
    assert sorted(times) == names and all(t >= 0 for t in times.values())
    # The warm-up call of each, then the timed rounds: each a permutation of all four, not all the same.
    warmup, timed = rounds[0], rounds[1:]
    assert warmup == names and len(timed) == 5
    assert all(sorted(r) == names for r in timed)
    assert len({tuple(r) for r in timed}) > 1
