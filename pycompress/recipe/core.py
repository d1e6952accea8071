"""Recipes: an ordered list of stages, each a config applied to the modules a pattern selects."""

from __future__ import annotations

import dataclasses
from typing import Optional


class RecipeError(ValueError):
    """A recipe that cannot be read or cannot run on the model; the message names the stage (or the
    file, line and field) and the reason."""


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of a recipe: ``config`` applied to the modules whose qualified names match ``pattern``
    (an fnmatch glob, e.g. ``"encoder.layer.*.intermediate.dense"``; None: every module the config
    applies to). ``name`` labels the stage in reports and checkpoints."""

    config: object
    pattern: Optional[str] = None
    name: Optional[str] = None

    def __post_init__(self):
        if isinstance(self.config, type):
            raise TypeError(f"Stage: config must be a config instance, not the class {self.config.__name__} "
                            f"(write {self.config.__name__}(...))")
        if self.pattern is not None and (not isinstance(self.pattern, str) or not self.pattern):
            raise TypeError(f"Stage: pattern must be None or a non-empty fnmatch pattern string (got {self.pattern!r})")
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise TypeError(f"Stage: name must be None or a non-empty string (got {self.name!r})")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Stages applied in order by ``apply_recipe``. As data (``to_dict``/``from_dict``, ``to_yaml``/
    ``from_yaml``)::

        name: prune-distill-24-int8
        stages:
          - name: prune-ffn
            config: StructuredPruneConfig     # class name of a registered config or stage type
            args: {amount: 0.3, target: ffn}  # its fields; lists become tuples for tuple fields
          - config: Sparse24Config
            pattern: "encoder.layer.*.intermediate.dense"
          - config: Int8Config
    """

    stages: tuple
    name: str = "recipe"

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(self.stages))
        bad = [i for i, stage in enumerate(self.stages) if not isinstance(stage, Stage)]
        if bad:
            raise TypeError(f"Recipe: stages must be Stage instances (stage {bad[0]} is a "
                            f"{type(self.stages[bad[0]]).__name__})")
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"Recipe: name must be a non-empty string (got {self.name!r})")

    def to_dict(self) -> dict:
        """``{"name": ..., "stages": [{"name", "config": class name, "pattern", "args": fields that differ
        from their defaults}, ...]}`` in plain YAML/JSON types (tuples as lists)."""
        from pycompress.recipe.serialize import recipe_to_data

        return recipe_to_data(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        """The recipe ``to_dict`` describes; errors name the field (``stages[1].args.amount: ...``)."""
        from pycompress.recipe.serialize import recipe_from_data

        return recipe_from_data(data)

    def to_yaml(self) -> str:
        """``to_dict`` as YAML text (one block per stage, its args on one line)."""
        from pycompress.recipe.serialize import recipe_to_yaml

        return recipe_to_yaml(self)

    @classmethod
    def from_yaml(cls, text: str, *, label: str = "recipe") -> "Recipe":
        """The recipe in YAML ``text``; errors start with ``<label> line <n>: <field>:``."""
        from pycompress.recipe.serialize import recipe_from_yaml

        return recipe_from_yaml(text, label=label)


def stage_labels(recipe: Recipe) -> list:
    """One unique label per stage: its name, or its config's class name (``Int8Config``, then
    ``Int8Config-2``, ... when repeated). Two stages given the same name are an error."""
    named = [stage.name for stage in recipe.stages if stage.name is not None]
    repeated = sorted({name for name in named if named.count(name) > 1})
    if repeated:
        raise RecipeError(f"recipe {recipe.name!r}: stage names must be unique ({', '.join(map(repr, repeated))} "
                          "given to several stages)")
    taken, labels = set(named), []
    for stage in recipe.stages:
        label = stage.name
        if label is None:
            base = type(stage.config).__name__
            label, k = base, 1
            while label in taken:
                k += 1
                label = f"{base}-{k}"
            taken.add(label)
        labels.append(label)
    return labels
