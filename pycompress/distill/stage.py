"""Distillation as a recipe stage: ``Stage(DistillConfig(...), pattern=None)`` trains the model being
compressed against ``context.teacher`` (the model as it was before the recipe) on ``context.train_data``.

``pattern`` (an fnmatch glob over module names, e.g. ``"encoder.*"``) restricts training to the parameters
of the matching modules (and their submodules); the others are frozen for the stage and unfrozen after it.
"""

from __future__ import annotations

from torch import nn

from pycompress.distill.trainer import DistillConfig, Distiller, trainable_only
from pycompress.recipe.stages import register_stage


def run(model: nn.Module, stage, context) -> dict:
    """Distil ``model`` in place; returns the steps run and the last logged mean losses."""
    name = f"distillation stage {stage.name!r}" if stage.name else "distillation stage"
    if context.teacher is None:
        raise ValueError(f"{name}: needs a teacher (context.teacher is None)")
    if context.train_data is None:
        raise ValueError(f"{name}: needs training batches (context.train_data is None)")
    distiller = Distiller(model, context.teacher, stage.config)
    with trainable_only(model, stage.pattern, name):
        distiller.fit(context.train_data, checkpoint_dir=context.checkpoint_dir, progress=context.progress)
    last = distiller.history[-1] if distiller.history else {}
    return {"steps": stage.config.steps, **{f"final_{k}": v for k, v in last.items() if k != "step"}}


register_stage(DistillConfig, run, trains=True)
