"""Composed recipes: ordered stages (pattern -> config), in Python or YAML, checked against the model
before anything runs, applied with a checkpoint after each stage, and saved once with the recipe."""

from pycompress.recipe.core import Recipe, RecipeError, Stage, stage_labels
from pycompress.recipe.stages import StageContext, StageType, register_stage
from pycompress.recipe.builtin import PruneLayersConfig
from pycompress.recipe.check import TRAINABLE_FORMATS, check_recipe, register_output
from pycompress.recipe.serialize import load_recipe
from pycompress.recipe.saving import load_compressed, save_compressed, saved_recipe, saved_source
from pycompress.recipe.apply import RecipeReport, StageReport, apply_recipe

__all__ = [
    "PruneLayersConfig",
    "Recipe",
    "RecipeError",
    "RecipeReport",
    "Stage",
    "StageContext",
    "StageReport",
    "StageType",
    "TRAINABLE_FORMATS",
    "apply_recipe",
    "check_recipe",
    "load_compressed",
    "load_recipe",
    "register_output",
    "register_stage",
    "save_compressed",
    "saved_recipe",
    "saved_source",
    "stage_labels",
]
