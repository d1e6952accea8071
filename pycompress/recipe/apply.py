"""apply_recipe: run a recipe's stages in order, with a checkpoint after each and resume."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import re
import shutil
import time
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from torch import nn
from tqdm.auto import tqdm

from pycompress.recipe.check import check_recipe
from pycompress.recipe.core import Recipe, RecipeError, stage_labels
from pycompress.recipe.saving import save_compressed
from pycompress.recipe.stages import StageContext, stage_type

log = logging.getLogger("pycompress")

CHECKPOINT_RECIPE = "recipe.json"
STAGE_DONE = "stage.json"
STAGE_STATE = "stage-state"


@dataclasses.dataclass
class StageReport:
    """One stage's outcome: for compress_ configs the layers replaced (name -> format or change) and
    those left as they were (name -> why); for other stage types the summary their ``run`` returned.
    ``resumed``: loaded from a checkpoint rather than run (``seconds`` is then that of the earlier run)."""

    index: int
    name: str
    config: object
    seconds: float
    replaced: dict = dataclasses.field(default_factory=dict)
    skipped: dict = dataclasses.field(default_factory=dict)
    summary: Optional[dict] = None
    resumed: bool = False

    def __str__(self) -> str:
        head = f"stage {self.index} {self.name!r} ({type(self.config).__name__}): {self.seconds:.1f} s"
        if self.resumed:
            head += ", resumed from its checkpoint"
        if self.summary is not None:
            return f"{head}; {self.summary}"
        return f"{head}; {len(self.replaced)} layers changed, {len(self.skipped)} left as they were"


@dataclasses.dataclass
class RecipeReport:
    """What ``apply_recipe`` did, stage by stage (``report[name]`` or ``report.stages``), and ``model``,
    the result (compress_ may return a replacement when the model is a single layer)."""

    recipe: Recipe
    stages: list
    model: nn.Module

    def __getitem__(self, name: str) -> StageReport:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"RecipeReport: no stage named {name!r} (stages: {', '.join(s.name for s in self.stages)})")

    @property
    def seconds(self) -> float:
        return sum(stage.seconds for stage in self.stages)

    def __str__(self) -> str:
        return "\n".join([f"recipe {self.recipe.name!r}: {len(self.stages)} stages, {self.seconds:.1f} s",
                          *(f"  {stage}" for stage in self.stages)])


def recipe_digest(recipe: Recipe) -> str:
    """sha256 of ``recipe.to_yaml()``: checkpoints resume only the recipe that wrote them."""
    try:
        text = recipe.to_yaml()
    except TypeError as exc:
        raise RecipeError(f"apply_recipe: checkpoints need a recipe that can be written as YAML: {exc}") from exc
    return hashlib.sha256(text.encode()).hexdigest()


def stage_dir(checkpoint_dir: Union[str, Path], index: int, label: str) -> Path:
    """``<checkpoint_dir>/stage-<index>-<label>`` (characters other than letters, digits, '.', '_' and
    '-' in the label become '-')."""
    return Path(checkpoint_dir) / f"stage-{index}-{re.sub(r'[^A-Za-z0-9._-]', '-', label)}"


def _json_safe(value):
    return json.loads(json.dumps(value, default=str))


def _resume_point(root: Path, recipe: Recipe, labels: list, digest: str, resume: bool) -> list:
    """The markers of the stages completed by an earlier run of the same recipe (stages 0..k), after
    checking that ``root`` holds checkpoints of this recipe; [] when starting afresh."""
    recipe_file = root / CHECKPOINT_RECIPE
    if resume and recipe_file.is_file():
        earlier = json.loads(recipe_file.read_text()).get("recipe_sha256")
        if earlier != digest:
            raise RecipeError(f"apply_recipe: {root} holds the checkpoints of another recipe ({recipe_file} records "
                              "a different recipe hash); use another checkpoint_dir, or resume=False to start afresh")
    done = []
    if resume:
        for index, label in enumerate(labels):
            marker = stage_dir(root, index, label) / STAGE_DONE
            if not marker.is_file():
                break
            data = json.loads(marker.read_text())
            if data.get("recipe_sha256") != digest:
                break
            done.append(data)
    recipe_file.write_text(json.dumps({"recipe_sha256": digest, "name": recipe.name}, indent=2))
    # Checkpoints of the stages still to run would not follow from what this run writes. The first of them
    # keeps its own periodic checkpoints when resuming: they continue from the stage checkpoint loaded.
    for index, label in enumerate(labels[len(done):], start=len(done)):
        directory = stage_dir(root, index, label)
        (directory / STAGE_DONE).unlink(missing_ok=True)
        if (not resume or index > len(done)) and (directory / STAGE_STATE).exists():
            shutil.rmtree(directory / STAGE_STATE)
    return done


def _run_stage(model: nn.Module, stage, context: StageContext) -> tuple:
    """(model, replaced, skipped, summary) after one stage."""
    from pycompress.api import _HANDLERS, compress_, report

    if type(stage.config) in _HANDLERS:
        pattern = stage.pattern
        filter_fn = None if pattern is None else (lambda module, name: fnmatchcase(name, pattern))
        model = compress_(model, stage.config, filter_fn=filter_fn, calibration=context.calibration)
        done = report(model)
        return model, dict(done.replaced), dict(done.skipped), None
    summary = stage_type(type(stage.config)).run(model, stage, context)
    return model, {}, {}, summary


def apply_recipe(model: nn.Module, recipe: Recipe, *, calibration: Optional[Iterable] = None,
                 train_data: Optional[Iterable] = None, example_inputs: Any = None,
                 teacher: Optional[nn.Module] = None, checkpoint_dir: Union[str, Path, None] = None,
                 resume: bool = True, progress: bool = True) -> RecipeReport:
    """Apply ``recipe``'s stages to ``model`` in order and report them; the result is ``report.model``.

    ``check_recipe`` runs first: nothing runs when it fails. compress_ configs run as
    ``compress_(model, config, filter_fn=<stage.pattern matched with fnmatch on module names>,
    calibration=calibration)``; registered stage types as ``run(model, stage, StageContext(...))``.
    Training stages get ``train_data`` and a teacher: ``teacher``, or a frozen deep copy of ``model``
    taken before the first stage. With ``checkpoint_dir`` each completed stage is saved to
    ``<checkpoint_dir>/stage-<i>-<label>/`` (``save_compressed``), and a stage may keep its own periodic
    checkpoints in ``<that directory>/stage-state`` (``context.checkpoint_dir``); with ``resume`` a later
    call with the same recipe (same YAML) and directory, on a fresh original model, loads the last
    completed stage and runs only the rest (the interrupted stage finds its own checkpoints again).
    """
    check_recipe(model, recipe)
    labels = stage_labels(recipe)
    kinds = [stage_type(type(stage.config)) for stage in recipe.stages]
    training = [i for i, kind in enumerate(kinds) if kind is not None and kind.trains]
    if training and train_data is None:
        i = training[0]
        raise RecipeError(f"apply_recipe: stage {i} {labels[i]!r}: {type(recipe.stages[i].config).__name__} trains "
                          "and needs train_data=")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise TypeError(f"apply_recipe: teacher must be None or an nn.Module (got {type(teacher).__name__})")
    # Materialised once: each stage that calibrates reads all of it.
    calibration = list(calibration) if calibration is not None else None
    if teacher is None and training:
        teacher = copy.deepcopy(model).eval().requires_grad_(False)

    reports, start, root = [], 0, None
    if checkpoint_dir is not None:
        root = Path(checkpoint_dir)
        root.mkdir(parents=True, exist_ok=True)
        digest = recipe_digest(recipe)
        done = _resume_point(root, recipe, labels, digest, resume)
        if done:
            from pycompress.api import load

            start = len(done)
            model = load(stage_dir(root, start - 1, labels[start - 1]), model)
            reports = [StageReport(index=i, name=labels[i], config=recipe.stages[i].config, seconds=data["seconds"],
                                   replaced=data["replaced"], skipped=data["skipped"], summary=data["summary"],
                                   resumed=True) for i, data in enumerate(done)]
            log.info("apply_recipe: resumed %r after stage %d %r from %s", recipe.name, start - 1, labels[start - 1],
                     root)

    with tqdm(total=len(recipe.stages), initial=start, desc=f"recipe {recipe.name}", unit="stage",
              disable=not progress) as bar:
        for index in range(start, len(recipe.stages)):
            stage, label = recipe.stages[index], labels[index]
            bar.set_postfix_str(label)
            directory = stage_dir(root, index, label) if root is not None else None
            context = StageContext(teacher=teacher, calibration=calibration,
                                   train_data=train_data, example_inputs=example_inputs,
                                   checkpoint_dir=str(directory / STAGE_STATE) if directory is not None else None,
                                   progress=progress)
            began = time.perf_counter()
            model, replaced, skipped, summary = _run_stage(model, stage, context)
            stage_report = StageReport(index=index, name=label, config=stage.config,
                                       seconds=time.perf_counter() - began, replaced=replaced, skipped=skipped,
                                       summary=summary)
            reports.append(stage_report)
            log.info("apply_recipe: %s", stage_report)
            if directory is not None:
                save_compressed(model, directory, recipe=recipe)
                marker = {"recipe_sha256": digest, "index": index, "name": label, "seconds": stage_report.seconds,
                          "replaced": replaced, "skipped": skipped, "summary": summary}
                (directory / STAGE_DONE).write_text(json.dumps(_json_safe(marker), indent=2))
            bar.update(1)
    return RecipeReport(recipe=recipe, stages=reports, model=model)
