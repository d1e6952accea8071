"""Stage types of a recipe that are not layer swaps (training, layer removal, ...).

``compress_`` configs (anything registered with ``pycompress.register_handler``) run as a stage through
``compress_``. Other stage configs register here how they run: ``register_stage(DistillConfig, run)``
where ``run(model, stage, context) -> dict | None`` changes ``model`` in place and may return a summary
for the recipe report.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Optional

from torch import nn

_STAGES: dict[type, "StageType"] = {}


@dataclasses.dataclass(frozen=True)
class StageType:
    """How a non-compress_ stage config runs. ``trains``: the stage updates weights by training (it needs
    ``context.train_data`` and, for distillation, ``context.teacher``); ``structural``: it changes module
    shapes or removes modules.

    For ``check_recipe``, a structural stage may say what it changes without running:
    ``reshapes(model, config) -> [module names]``, the subtrees whose shapes or numbering it changes
    (None: it may change any module, so it must come before every stage that packs layers), and
    ``names_after(model, config, names) -> [module names]``, the module names of the model after the
    stage, given those before it (None: the names stay).
    """

    run: Callable
    trains: bool = False
    structural: bool = False
    reshapes: Optional[Callable] = None
    names_after: Optional[Callable] = None


@dataclasses.dataclass
class StageContext:
    """What a stage may use besides the model.

    ``teacher``: the model as it was before the recipe (frozen, eval mode), or None when no stage asked
    for it. ``calibration``: model inputs (tensors or dicts of tensors) for calibration. ``train_data``:
    batches for training stages (same form; they may carry ``labels``). ``example_inputs``: one batch.
    ``checkpoint_dir``: where this stage may write its own periodic checkpoints (None: none).
    ``progress``: show progress bars.
    """

    teacher: Optional[nn.Module] = None
    calibration: Optional[list] = None
    train_data: Optional[Iterable] = None
    example_inputs: Any = None
    checkpoint_dir: Optional[str] = None
    progress: bool = True


def register_stage(config_type: type, run: Callable, *, trains: bool = False, structural: bool = False,
                   reshapes: Optional[Callable] = None, names_after: Optional[Callable] = None) -> None:
    """Register ``run(model, stage, context)`` as how stages with a ``config_type`` config run
    (``reshapes`` and ``names_after``: see StageType)."""
    if not isinstance(config_type, type):
        raise TypeError(f"register_stage: config_type must be a class (got {type(config_type).__name__})")
    if not callable(run):
        raise TypeError(f"register_stage: run must be callable (got {type(run).__name__})")
    _STAGES[config_type] = StageType(run=run, trains=trains, structural=structural, reshapes=reshapes,
                                     names_after=names_after)


def stage_type(config_type: type) -> Optional[StageType]:
    return _STAGES.get(config_type)


def stage_types() -> dict:
    return dict(_STAGES)
