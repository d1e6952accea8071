"""The ``pycompress`` command: info, compress and eval on a small module:factory model, one-line errors
(exit status 2 for usage, 1 otherwise) against --debug tracebacks, and no partial output directory."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pycompress.cli import main
from pycompress.models import ModelSpecError, load_model_spec

HERE = Path(__file__).resolve().parent
TINY = HERE / "tiny_models.py"
FAILING_RECIPE = HERE / "failing_recipe.py"
INT8_RECIPE = """\
name: tiny-int8
stages:
  - name: first
    config: Int8Config
    pattern: "0"
  - config: Int8WeightOnlyConfig
"""


def recipe_api(name):
    """The pycompress.recipe function ``name``, or a skip while it does not exist."""
    recipe = pytest.importorskip("pycompress.recipe")
    if not hasattr(recipe, name):
        pytest.skip(f"pycompress.recipe.{name} does not exist yet")
    return getattr(recipe, name)


def run(capsys, *argv):
    status = main([*argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(err, *fragments):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pycompress: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in err


def test_info(capsys):
    status, out, _ = run(capsys, "info")
    assert status == 0 and "int8_mm" in out


def test_python_m_pycompress():
    done = subprocess.run([sys.executable, "-m", "pycompress", "info"], capture_output=True, text=True)
    assert done.returncode == 0 and "quantize_per_token" in done.stdout
    done = subprocess.run([sys.executable, "-m", "pycompress", "eval", "/no/such/dir"], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip() == ("pycompress: error: DIR: /no/such/dir is not a directory written by "
                                   "`pycompress compress`")


@pytest.mark.parametrize("argv, fragment", [
    ((), "the following arguments are required: COMMAND (see pycompress --help)"),
    (("compress", "minilm"), "the following arguments are required: --recipe, --out"),
    (("frobnicate",), "invalid choice: 'frobnicate'"),
    (("eval", "dir", "--rounds", "0"), "argument --rounds: expected a positive int (got '0')"),
    (("search", "minilm", "--strategy", "random"), "argument --strategy: invalid choice: 'random'"),
    (("search", "minilm", "--budget", "latency"), "--budget: expected KEY=VALUE[,KEY=VALUE...]"),
    (("search", "minilm", "--budget", "latency=fast"), "--budget: latency must be a number (got 'fast')"),
    (("bench", "--from-results"), "--from-results only draws the plot: give --plot PNG"),
    (("bench", "--from-results", "--plot", "x.png", "--quick"), "--from-results runs no benchmark"),
])
def test_usage_errors_are_one_line_with_status_2(capsys, argv, fragment):
    status, out, err = run(capsys, *argv)
    assert status == 2 and not out
    assert_one_line_error(err, fragment)


def test_errors_are_one_line_unless_debug(capsys, tmp_path):
    argv = ["demo", "--model", str(tmp_path), "--no-plot", "--no-search"]
    status, out, err = run(capsys, *argv)
    assert status == 1
    assert_one_line_error(err, f"MODEL: {tmp_path} is not a Hugging Face model folder (no config.json)")
    # --debug before or after the subcommand: the exception itself, with its traceback.
    for debug_argv in (["--debug", *argv], [*argv, "--debug"]):
        with pytest.raises(ModelSpecError, match="is not a Hugging Face model folder"):
            main(debug_argv)


def test_unexpected_errors_name_their_type(capsys, tmp_path, monkeypatch):
    import pycompress

    def crash(file=None):
        raise RuntimeError("the table broke\nsecond line")

    monkeypatch.setattr(pycompress, "info", crash)
    status, _, err = run(capsys, "info")
    assert status == 1
    assert_one_line_error(err, "RuntimeError: the table broke; second line (--debug shows the traceback)")


def test_compress_refuses_a_non_empty_out_dir_before_any_work(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    # The model would fail to load: the refusal comes first.
    status, _, err = run(capsys, "compress", f"{TINY}:broken", "--recipe", "x.yaml", "--out", str(out))
    assert status == 1
    assert_one_line_error(err, f"--out: {out} exists and is not empty (pass --force to replace it)")
    assert (out / "keep.txt").read_text() == "mine"
    (tmp_path / "file").write_text("")
    status, _, err = run(capsys, "compress", f"{TINY}:mlp", "--recipe", "x.yaml", "--out", str(tmp_path / "file"))
    assert status == 1
    assert_one_line_error(err, "exists and is not a directory")


def test_compress_never_replaces_the_working_directory_or_the_model(capsys, tmp_path, monkeypatch):
    recipe_api("load_recipe")
    (tmp_path / "recipe.yaml").write_text(INT8_RECIPE)
    monkeypatch.chdir(tmp_path)
    status, _, err = run(capsys, "compress", f"{TINY}:mlp", "--recipe", "recipe.yaml", "--out", ".", "--force")
    assert status == 1
    assert_one_line_error(err, "--out: . holds the working directory")
    status, _, err = run(capsys, "compress", f"{TINY}:mlp", "--recipe", "recipe.yaml", "--out", str(HERE), "--force")
    assert status == 1
    assert_one_line_error(err, f"--out: {HERE} holds the model it would be made from ({TINY}:mlp)")
    assert TINY.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


def test_compress_then_eval(capsys, tmp_path):
    load_compressed = recipe_api("load_compressed")
    (tmp_path / "recipe.yaml").write_text(INT8_RECIPE)
    out = tmp_path / "nested" / "out"
    status, stdout, _ = run(capsys, "compress", f"{TINY}:mlp", "--recipe", str(tmp_path / "recipe.yaml"),
                            "--out", str(out), "--no-progress")
    assert status == 0 and f"wrote {out}" in stdout and "stage 0 'first'" in stdout
    assert {"model.safetensors", "pycompress.json", "recipe.yaml"} <= {p.name for p in out.iterdir()}
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]
    # What was saved is what applying the recipe here gives, bit for bit.
    from pycompress.recipe import apply_recipe, load_recipe

    loaded = load_model_spec(f"{TINY}:mlp")
    expected = apply_recipe(load_model_spec(f"{TINY}:mlp").model, load_recipe(INT8_RECIPE),
                            calibration=loaded.calibration_batches(), progress=False).model
    saved = load_compressed(out)
    x = loaded.timing_batch(8)
    assert torch.equal(saved(x), expected(x))

    status, stdout, _ = run(capsys, "eval", str(out), "--rounds", "2", "--no-progress")
    assert status == 0 and f"(from {TINY}:mlp)" in stdout
    fidelity = float(stdout.split("output cosine on random inputs)")[1].split()[1])
    # Measured: 0.99998 (int8 W8A8 on the first layer, W8A16 on the others).
    assert 0.999 < fidelity <= 1.0 + 1e-6
    assert "x smaller" in stdout and ("x faster" in stdout or "x slower" in stdout)
    status, stdout, _ = run(capsys, "eval", str(out), "--model", f"{TINY}:mlp", "--rounds", "1", "--no-progress")
    assert status == 0


def test_compress_with_a_recipe_that_fails_midway_leaves_no_output(capsys, tmp_path):
    recipe_api("apply_recipe")
    out = tmp_path / "out"
    status, _, err = run(capsys, "compress", f"{TINY}:mlp", "--recipe", str(FAILING_RECIPE), "--out", str(out),
                         "--no-progress")
    assert status == 1
    assert_one_line_error(err, "RuntimeError: the stage broke (--debug shows the traceback)")
    assert list(tmp_path.iterdir()) == []
    # Over an existing directory with --force: a failure leaves the old directory as it was.
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    status, _, _ = run(capsys, "compress", f"{TINY}:mlp", "--recipe", str(FAILING_RECIPE), "--out", str(out),
                       "--force", "--no-progress")
    assert status == 1
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "keep.txt").read_text() == "mine"


def test_compress_with_a_bad_model_leaves_no_output(capsys, tmp_path):
    recipe_api("load_recipe")
    (tmp_path / "recipe.yaml").write_text(INT8_RECIPE)
    for spec, message in ((f"{TINY}:broken", "MODEL: "), (str(tmp_path), "is not a Hugging Face model folder"),
                          ("no_such_module_here:f", "cannot import module 'no_such_module_here'")):
        status, _, err = run(capsys, "compress", spec, "--recipe", str(tmp_path / "recipe.yaml"),
                             "--out", str(tmp_path / "out"))
        assert status == 1
        assert_one_line_error(err, message)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


def test_compress_force_replaces_a_directory(capsys, tmp_path):
    recipe_api("apply_recipe")
    (tmp_path / "recipe.yaml").write_text(INT8_RECIPE)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    status, _, _ = run(capsys, "compress", f"{TINY}:mlp", "--recipe", str(tmp_path / "recipe.yaml"), "--out", str(out),
                       "--force", "--no-progress")
    assert status == 0
    assert not (out / "old.txt").exists() and (out / "pycompress.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "recipe.yaml"]


def test_recipe_that_does_not_parse_names_line_and_field(capsys, tmp_path):
    recipe_api("load_recipe")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nstages:\n  - config: SparseConfig\n    args: {sparsity: 0.5, methd: wanda}\n")
    status, _, err = run(capsys, "compress", f"{TINY}:mlp", "--recipe", str(bad), "--out", str(tmp_path / "out"))
    assert status == 1
    assert_one_line_error(err, "line 4", "stages[0].args.methd", "SparseConfig has no field 'methd'")
    assert not (tmp_path / "out").exists()


def test_eval_of_a_directory_without_a_source_asks_for_the_model(capsys, tmp_path):
    recipe_api("saved_source")
    import pycompress

    loaded = load_model_spec(f"{TINY}:mlp")
    pycompress.save(loaded.model, tmp_path)
    status, _, err = run(capsys, "eval", str(tmp_path))
    assert status == 1
    assert_one_line_error(err, "records no source model")
