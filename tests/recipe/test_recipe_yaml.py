"""Recipes as YAML, dicts and Python: parsing, round trips, and errors that name the file, line and field."""

import math
import textwrap

import pytest

from pycompress import Int8Config, ShareLayersConfig, Sparse24Config, StructuredPruneConfig
from pycompress.recipe import PruneLayersConfig, Recipe, RecipeError, Stage, load_recipe

from _recipe_case import FakeTrainConfig

SPEC = textwrap.dedent("""\
    name: prune-distill-24-int8
    stages:
      - name: prune-ffn
        config: StructuredPruneConfig      # class name of any registered config or stage type
        args: {amount: 0.3, target: ffn}
      - config: FakeTrainConfig
        args: {steps: 200}
      - config: Sparse24Config
        pattern: "encoder.layer.*.intermediate.dense"
      - config: Int8Config
    """)


def test_yaml_gives_the_stages_in_order():
    recipe = Recipe.from_yaml(SPEC)
    assert recipe == Recipe(name="prune-distill-24-int8", stages=(
        Stage(StructuredPruneConfig(amount=0.3, target="ffn"), name="prune-ffn"),
        Stage(FakeTrainConfig(steps=200)),
        Stage(Sparse24Config(), pattern="encoder.layer.*.intermediate.dense"),
        Stage(Int8Config()),
    ))


def test_round_trips_through_yaml_and_dict():
    recipe = Recipe(name="mixed", stages=(
        Stage(StructuredPruneConfig(amount=0.25, target="heads", norm=math.inf), name="heads"),
        Stage(PruneLayersConfig(remove=[1, 3]), name="drop"),
        Stage(ShareLayersConfig(groups=[[0, 1], [2, 3]], part=["attention", "intermediate"])),
        Stage(Sparse24Config(method="wanda", min_speedup=None), pattern="encoder.layer.*.output.dense"),
        Stage(Int8Config(smoothquant_alpha=0.5)),
    ))
    assert Recipe.from_yaml(recipe.to_yaml()) == recipe
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    data = recipe.to_dict()
    # Only fields that differ from their defaults are written; tuples as lists.
    assert data["stages"][1] == {"name": "drop", "config": "PruneLayersConfig", "args": {"remove": [1, 3]}}
    assert data["stages"][4] == {"config": "Int8Config", "args": {"smoothquant_alpha": 0.5}}
    # Lists come back as tuples for tuple-typed fields, so the configs stay hashable.
    back = Recipe.from_yaml(recipe.to_yaml())
    assert back.stages[1].config.remove == (1, 3) and hash(back.stages[1].config)
    shared = back.stages[2].config
    assert shared.groups == ((0, 1), (2, 3)) and shared.part == ("attention", "intermediate")


def test_load_recipe_reads_files_text_python_and_module_attributes(tmp_path, monkeypatch):
    expected = Recipe.from_yaml(SPEC)
    (tmp_path / "r.yaml").write_text(SPEC)
    assert load_recipe(tmp_path / "r.yaml") == expected
    assert load_recipe(str(tmp_path / "r.yaml")) == expected
    assert load_recipe(SPEC) == expected
    assert load_recipe(expected) is expected
    (tmp_path / "my_recipe.py").write_text(textwrap.dedent("""\
        from pycompress import Int8Config
        from pycompress.recipe import Recipe, Stage

        RECIPE = Recipe([Stage(Int8Config(), pattern="fc*")], name="from-python")
        OTHER = 3
        """))
    from_file = load_recipe(tmp_path / "my_recipe.py")
    assert from_file == Recipe([Stage(Int8Config(), pattern="fc*")], name="from-python")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_recipe("my_recipe:RECIPE") == from_file
    with pytest.raises(TypeError, match=r"load_recipe: my_recipe:OTHER must be a pycompress.recipe.Recipe \(got int\)"):
        load_recipe("my_recipe:OTHER")
    with pytest.raises(RecipeError, match="module 'my_recipe' has no attribute 'MISSING'"):
        load_recipe("my_recipe:MISSING")
    with pytest.raises(ImportError, match="cannot import 'no_such_module_here'"):
        load_recipe("no_such_module_here:RECIPE")
    (tmp_path / "empty.py").write_text("X = 1\n")
    with pytest.raises(RecipeError, match="must define RECIPE"):
        load_recipe(tmp_path / "empty.py")
    with pytest.raises(FileNotFoundError, match="no recipe file"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match=r"must end with .yaml, .yml or .py"):
        load_recipe(tmp_path / "r.txt")
    with pytest.raises(TypeError, match="source must be a path"):
        load_recipe(3)


def _error(text: str, label="recipe.yaml") -> str:
    with pytest.raises(RecipeError) as info:
        Recipe.from_yaml(textwrap.dedent(text), label=label)
    return str(info.value)


def test_a_misspelt_field_names_the_file_line_and_field(tmp_path):
    text = SPEC.replace("args: {amount: 0.3, target: ffn}", "args:\n      amout: 0.3\n      target: ffn")
    (tmp_path / "recipe.yaml").write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(str(tmp_path / "recipe.yaml"))
    line = text.splitlines().index("      amout: 0.3") + 1
    assert str(info.value).startswith(
        f"{tmp_path / 'recipe.yaml'} line {line}: stages[0].args.amout: StructuredPruneConfig has no field 'amout' "
        "(fields: amount, norm, target, round_to, importance)")


def test_an_unknown_config_lists_the_known_ones():
    message = _error("""\
        stages:
          - config: Int8Config
          - config: Int9Config
        """)
    assert message.startswith("recipe.yaml line 3: stages[1].config: unknown config 'Int9Config' (known: ")
    assert "Int8Config" in message and "PruneLayersConfig" in message and "FakeTrainConfig" in message


def test_a_bad_value_is_reported_at_its_field_with_the_configs_reason():
    message = _error("""\
        name: r
        stages:
          - config: Int8Config
          - config: StructuredPruneConfig
            args:
              target: ffn
              amount: 1.5
        """)
    assert message == ("recipe.yaml line 7: stages[1].args.amount: StructuredPruneConfig: amount must be a number in "
                       "[0, 1), the fraction of units removed per layer (got 1.5)")
    message = _error("""\
        stages:
          - config: PruneLayersConfig
            args: {n: 2, remove: [1]}
        """)
    assert message.startswith("recipe.yaml line 3: stages[0].args.n: PruneLayersConfig: give exactly one of n")


def test_yaml_syntax_errors_give_their_line():
    message = _error("""\
        stages:
          - config: Int8Config
            args: {smoothquant_alpha: 0.5
          - config: Sparse24Config
        """)
    assert message.startswith("recipe.yaml line 4: YAML syntax error: ")


@pytest.mark.parametrize("text, expected", [
    ("stages: []\n", "recipe.yaml line 1: stages: must be a non-empty list of stages (got a list)"),
    ("- config: Int8Config\n", "recipe.yaml line 1: a recipe must be a mapping with 'stages'"),
    ("name: r\n", "recipe.yaml line 1: a recipe needs 'stages'"),
    ("stages:\n  - config: Int8Config\nsteps: 3\n",
     "recipe.yaml line 3: steps: unknown key (a recipe has: name, stages)"),
    ("stages:\n  - config: Int8Config\n    patern: 'fc*'\n",
     "recipe.yaml line 3: stages[0].patern: unknown key (a stage has: name, config, pattern, args)"),
    ("stages:\n  - pattern: 'fc*'\n", "recipe.yaml line 2: stages[0]: a stage needs 'config'"),
    ("stages:\n  - config: Int8Config\n    pattern: 3\n",
     "recipe.yaml line 3: stages[0].pattern: must be a non-empty string"),
    ("stages:\n  - config: Int8Config\n    args: [1]\n",
     "recipe.yaml line 3: stages[0].args: must be a mapping of Int8Config's"),
    ("stages:\n  - config: StructuredPruneConfig\n",
     "recipe.yaml line 2: stages[0].args: StructuredPruneConfig needs 'amount'"),
    ("stages:\n  - config: Int8Config\n    config: Int8Config\n",
     "recipe.yaml line 3: stages[0].config: duplicate key"),
    ("stages:\n  - config: !!python/name:os.system\n",
     "recipe.yaml line 2: stages[0].config: could not determine a constructor"),
    ("", "recipe.yaml: the recipe is empty"),
])
def test_malformed_recipes(text, expected):
    assert _error(text).startswith(expected)


def test_from_dict_errors_name_the_field():
    with pytest.raises(RecipeError, match=r"^stages\[0\]\.args\.amout: StructuredPruneConfig has no field 'amout'"):
        Recipe.from_dict({"stages": [{"config": "StructuredPruneConfig", "args": {"amout": 0.3}}]})


def test_configs_that_are_not_data_cannot_be_written():
    class Opaque:
        pass

    with pytest.raises(TypeError, match="stage 0: Opaque is not a dataclass"):
        Recipe([Stage(Opaque())]).to_yaml()
    config = PruneLayersConfig(n=1)
    object.__setattr__(config, "blocks", object())
    with pytest.raises(TypeError, match=r"stage 0: PruneLayersConfig.blocks = <object .*> \(object\) cannot be "
                                         r"written"):
        Recipe([Stage(config)]).to_dict()


def test_stage_and_recipe_check_their_arguments():
    with pytest.raises(TypeError, match=r"config must be a config instance, not the class Int8Config"):
        Stage(Int8Config)
    with pytest.raises(TypeError, match="pattern must be None or a non-empty fnmatch pattern string"):
        Stage(Int8Config(), pattern="")
    with pytest.raises(TypeError, match=r"stages must be Stage instances \(stage 1 is a Int8Config\)"):
        Recipe([Stage(Int8Config()), Int8Config()])
    with pytest.raises(TypeError, match="name must be a non-empty string"):
        Recipe([Stage(Int8Config())], name="")
