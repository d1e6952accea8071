"""apply_recipe: stages in order on a small MLP, the report, the teacher of training stages, a checkpoint
after each stage, and a resumed run that ends bit-identical to an uninterrupted one."""

import json
import textwrap
import warnings

import pytest
import torch
from torch import nn

import pycompress
from pycompress import Int8Config, StructuredPruneConfig
from pycompress.recipe import (Recipe, RecipeError, Stage, apply_recipe, load_compressed, load_recipe,
                               save_compressed, saved_recipe)
from pycompress.recipe.apply import stage_dir

from _recipe_case import CONTROL, FakeTrainConfig, Interrupted, mlp, mlp_batches

PYTHON_RECIPE = textwrap.dedent("""\
    from pycompress import Int8Config, StructuredPruneConfig
    from pycompress.recipe import Recipe, Stage

    RECIPE = Recipe(name="mlp-channels-int8", stages=[
        Stage(StructuredPruneConfig(amount=0.5, target="channels"), pattern="[02]", name="channels"),
        Stage(Int8Config(), name="int8"),
    ])
    """)


def _recipe() -> Recipe:
    return Recipe(name="prune-train-int8", stages=[
        Stage(StructuredPruneConfig(amount=0.5, target="channels"), pattern="[02]", name="channels"),
        Stage(FakeTrainConfig(steps=4), name="train"),
        Stage(Int8Config(), name="int8"),
    ])


def _apply(recipe, **kwargs):
    batches = mlp_batches()
    with warnings.catch_warnings():
        # The output layer's channels cannot be pruned: compress_ reports it as left dense.
        warnings.simplefilter("ignore")
        return apply_recipe(mlp(), recipe, calibration=batches, train_data=batches, progress=False, **kwargs)


def test_a_python_recipe_end_to_end_on_an_mlp(tmp_path):
    (tmp_path / "channels_int8.py").write_text(PYTHON_RECIPE)
    recipe = load_recipe(tmp_path / "channels_int8.py")
    model, batches = mlp(), mlp_batches()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = apply_recipe(mlp(), Recipe(recipe.stages[:1]), calibration=batches, progress=False).model
        report = apply_recipe(model, recipe, calibration=batches, progress=False)
    result = report.model
    assert result is model
    assert report["channels"].replaced == {"0": "[64, 32] -> [32, 32]", "2": "[64, 64] -> [32, 32]",
                                           "4": "[16, 64] -> [16, 32]"}
    assert report["int8"].replaced == {"0": "int8", "2": "int8", "4": "int8"}
    assert [type(m).__name__ for m in result] == ["Int8Linear", "ReLU", "Int8Linear", "ReLU", "Int8Linear"]
    outputs = [result(x) for x in batches]
    # The int8 stage against the pruned float model: measured max relative error 0.0064.
    error = max(((o - pruned(x)).norm() / pruned(x).norm()).item() for o, x in zip(outputs, batches))
    assert error < 0.01, error
    saved = save_compressed(result, tmp_path / "out", recipe=recipe, source="tests:mlp")
    assert saved_recipe(saved) == recipe
    assert json.loads((saved / "pycompress.json").read_text())["source"] == "tests:mlp"
    loaded = load_compressed(saved, mlp(seed=5))
    assert all(torch.equal(loaded(x), o) for x, o in zip(batches, outputs))


def test_the_report_and_the_teacher_of_training_stages():
    CONTROL["runs"] = 0
    report = _apply(_recipe())
    assert [s.name for s in report.stages] == ["channels", "train", "int8"] and CONTROL["runs"] == 1
    summary = report["train"].summary
    # The teacher is the model before the recipe: after pruning the student's output differs from it, and
    # training pulls it back.
    assert summary["steps"] == 4 and 0 < summary["last_loss"] < summary["first_loss"]
    assert report["train"].replaced == {} and all(s.seconds >= 0 and not s.resumed for s in report.stages)
    assert "stage 1 'train' (FakeTrainConfig)" in str(report)
    with pytest.raises(KeyError, match="no stage named 'nope'"):
        report["nope"]


def test_a_given_teacher_is_used_and_training_needs_data():
    teacher = mlp(seed=3)
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RecipeError, match=r"stage 1 'train': FakeTrainConfig trains and needs train_data="):
        apply_recipe(model, _recipe(), calibration=mlp_batches(), progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    seen = {}

    def spy(m, stage, context):
        seen["teacher"] = context.teacher
        return None

    from pycompress.recipe import register_stage
    from pycompress.recipe.stages import stage_type

    original = stage_type(FakeTrainConfig)
    register_stage(FakeTrainConfig, spy, trains=True)
    try:
        apply_recipe(model, Recipe([Stage(FakeTrainConfig())]), train_data=[], teacher=teacher, progress=False)
    finally:
        register_stage(FakeTrainConfig, original.run, trains=True)
    assert seen["teacher"] is teacher
    with pytest.raises(TypeError, match="teacher must be None or an nn.Module"):
        apply_recipe(model, Recipe([Stage(FakeTrainConfig())]), train_data=[], teacher="t", progress=False)


def test_checkpoints_resume_bit_identical(tmp_path):
    recipe = _recipe()
    batches = mlp_batches()
    uninterrupted = _apply(recipe).model

    CONTROL["interrupt"], CONTROL["runs"] = True, 0
    with pytest.raises(Interrupted):
        _apply(recipe, checkpoint_dir=tmp_path)
    first = stage_dir(tmp_path, 0, "channels")
    assert (first / "stage.json").is_file() and (first / "recipe.yaml").read_text() == recipe.to_yaml()
    assert not (stage_dir(tmp_path, 1, "train") / "stage.json").exists()

    resumed = _apply(recipe, checkpoint_dir=tmp_path)
    # The interrupted stage finds the directory of its own periodic checkpoints again.
    assert CONTROL["runs"] == 1 and CONTROL["found_state"] is True
    assert [s.resumed for s in resumed.stages] == [True, False, False]
    assert resumed.stages[0].replaced["0"] == "[64, 32] -> [32, 32]"
    assert all(torch.equal(resumed.model(x), uninterrupted(x)) for x in batches)
    for index, label in enumerate(["channels", "train", "int8"]):
        assert (stage_dir(tmp_path, index, label) / "stage.json").is_file()

    # Everything done: a third call loads the last checkpoint and runs nothing.
    again = _apply(recipe, checkpoint_dir=tmp_path)
    assert CONTROL["runs"] == 1 and all(s.resumed for s in again.stages)
    assert all(torch.equal(again.model(x), uninterrupted(x)) for x in batches)


def test_checkpoints_of_another_recipe_are_not_resumed(tmp_path):
    _apply(_recipe(), checkpoint_dir=tmp_path)
    other = Recipe(name="other", stages=[Stage(Int8Config(), name="int8")])
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RecipeError, match=r"holds the checkpoints of another recipe .*use another checkpoint_dir, or "
                                          r"resume=False"):
        apply_recipe(model, other, checkpoint_dir=tmp_path, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    CONTROL["runs"] = 0
    report = _apply(_recipe(), checkpoint_dir=tmp_path, resume=False)
    assert CONTROL["runs"] == 1 and not any(s.resumed for s in report.stages)
    # Starting afresh, a stage does not find the periodic checkpoints of an earlier run.
    assert CONTROL["found_state"] is False


def test_a_bare_layer_is_replaced():
    layer = nn.Linear(32, 16)
    x = torch.randn(4, 32)
    report = apply_recipe(layer, Recipe([Stage(Int8Config())]), progress=False)
    assert isinstance(report.model, pycompress.Int8Linear) and report.stages[0].replaced == {"<model>": "int8"}
    assert torch.allclose(report.model(x), layer(x), atol=0.05)
