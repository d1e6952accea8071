"""A Python recipe whose second stage fails while it runs, after the first stage has changed the model."""

import dataclasses

import pycompress
from pycompress.recipe import Recipe, Stage, register_stage


@dataclasses.dataclass(frozen=True)
class FailingStageConfig:
    message: str = "the stage broke"


def _run(model, stage, context):
    raise RuntimeError(stage.config.message)


register_stage(FailingStageConfig, _run)

RECIPE = Recipe(stages=(Stage(pycompress.Int8Config(), pattern="0"), Stage(FailingStageConfig())), name="fails-midway")
