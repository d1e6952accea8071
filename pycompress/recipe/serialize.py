"""Recipes as data: dicts and YAML text, with errors that name the file, the line and the field
(``recipe.yaml line 7: stages[1].args.amout: StructuredPruneConfig has no field 'amout' (fields: ...)``).

A stage's ``config`` is the class name of a registered compress_ config (``pycompress.register_handler``)
or stage type (``pycompress.recipe.register_stage``); ``args`` are its dataclass fields. Lines come from
the YAML node tree (``yaml.compose``), so that every value keeps where it was written.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional

import yaml

from pycompress.recipe.core import Recipe, RecipeError, Stage

RECIPE_KEYS = ("name", "stages")
STAGE_KEYS = ("name", "config", "pattern", "args")
# A field whose annotation names one of these takes YAML lists as tuples (frozen configs stay hashable).
_TUPLE_TYPES = re.compile(r"\b(tuple|Tuple|Sequence)\b")


# pycompress packages that register stage types when imported (DistillConfig, RemoveBlocksConfig): imported
# here, so that a recipe file names their configs without importing them first.
STAGE_PACKAGES = ("pycompress.distill", "pycompress.search")


def config_types() -> dict:
    """Class name -> the registered compress_ config and stage types of that name."""
    import importlib
    import importlib.util

    from pycompress.api import _HANDLERS
    from pycompress.recipe.stages import stage_types

    for package in STAGE_PACKAGES:
        if importlib.util.find_spec(package) is not None:
            importlib.import_module(package)
    found: dict = {}
    for cls in [*_HANDLERS, *stage_types()]:
        found.setdefault(cls.__name__, [])
        if cls not in found[cls.__name__]:
            found[cls.__name__].append(cls)
    return found


def _dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _what(value) -> str:
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    return f"{type(value).__name__} {value!r}"


class _Where:
    """Turns a field path into an error: ``<label> line <n>: <path>: <message>`` (label and line when
    known: the line of the path or of its nearest ancestor)."""

    def __init__(self, label: Optional[str] = None, lines: Optional[dict] = None):
        self.label, self.lines = label, lines or {}

    def error(self, path: tuple, message: str) -> RecipeError:
        head = self.label or ""
        at = path
        while at and at not in self.lines:
            at = at[:-1]
        if at in self.lines:
            head = f"{head} line {self.lines[at]}".strip()
        prefix = ": ".join(part for part in (head, _dotted(path)) if part)
        return RecipeError(f"{prefix}: {message}" if prefix else message)


def recipe_from_data(data, where: Optional[_Where] = None) -> Recipe:
    where = where or _Where()
    if not isinstance(data, dict):
        raise where.error((), f"a recipe must be a mapping with 'stages' (and optionally 'name') (got {_what(data)})")
    for key in data:
        if key not in RECIPE_KEYS:
            raise where.error((key,), f"unknown key (a recipe has: {', '.join(RECIPE_KEYS)})")
    name = data.get("name", "recipe")
    if not isinstance(name, str) or not name:
        raise where.error(("name",), f"must be a non-empty string (got {_what(name)})")
    if "stages" not in data:
        raise where.error((), "a recipe needs 'stages', a list of stages")
    stages = data["stages"]
    if not isinstance(stages, (list, tuple)) or not stages:
        raise where.error(("stages",), f"must be a non-empty list of stages (got {_what(stages)})")
    return Recipe(stages=tuple(_stage(item, ("stages", i), where) for i, item in enumerate(stages)), name=name)


def _stage(item, path: tuple, where: _Where) -> Stage:
    if not isinstance(item, dict):
        raise where.error(path, f"a stage must be a mapping with 'config' (and optionally name, pattern, args) "
                                f"(got {_what(item)})")
    for key in item:
        if key not in STAGE_KEYS:
            raise where.error(path + (key,), f"unknown key (a stage has: {', '.join(STAGE_KEYS)})")
    if "config" not in item:
        raise where.error(path, "a stage needs 'config', the class name of a registered config or stage type")
    cls = _config_type(item["config"], path + ("config",), where)
    for key in ("name", "pattern"):
        value = item.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise where.error(path + (key,), f"must be a non-empty string (got {_what(value)})")
    args = item.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise where.error(path + ("args",), f"must be a mapping of {cls.__name__}'s fields (got {_what(args)})")
    config = _build(cls, args, path + ("args",), where)
    return Stage(config=config, pattern=item.get("pattern"), name=item.get("name"))


def _config_type(name, path: tuple, where: _Where) -> type:
    known = config_types()
    if not isinstance(name, str):
        raise where.error(path, f"must be the class name of a registered config or stage type (got {_what(name)})")
    found = known.get(name)
    if not found:
        raise where.error(path, f"unknown config {name!r} (known: {', '.join(sorted(known))})")
    if len(found) > 1:
        raise where.error(path, f"{name!r} names several registered types "
                                f"({', '.join(f'{t.__module__}.{t.__qualname__}' for t in found)})")
    return found[0]


def _tuples(value):
    if isinstance(value, (list, tuple)):
        return tuple(_tuples(v) for v in value)
    return value


def _build(cls: type, args: dict, path: tuple, where: _Where):
    kwargs = dict(args)
    if dataclasses.is_dataclass(cls):
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        for key in args:
            if key not in fields:
                raise where.error(path + (key,), f"{cls.__name__} has no field {key!r} (fields: {', '.join(fields)})")
        missing = [name for name, f in fields.items() if name not in args and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise where.error(path, f"{cls.__name__} needs {', '.join(map(repr, missing))}")
        kwargs = {key: _tuples(value) if _TUPLE_TYPES.search(str(fields[key].type)) else value
                  for key, value in args.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        # The config's own check names the field it rejects; point at that field's line.
        blamed = next((key for key in args if re.search(rf"\b{re.escape(str(key))}\b", str(exc))), None)
        raise where.error(path + ((blamed,) if blamed is not None else ()), str(exc)) from exc


def _plain(value, what: str):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_plain(v, what) for v in value]
    if isinstance(value, dict) and all(isinstance(k, (str, int)) for k in value):
        return {k: _plain(v, what) for k, v in value.items()}
    raise TypeError(f"Recipe.to_dict: {what} = {value!r} ({type(value).__name__}) cannot be written as data "
                    "(None, bool, int, float, str, lists and mappings of them)")


def _args(config, index: int) -> dict:
    cls = type(config)
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"Recipe.to_dict: stage {index}: {cls.__name__} is not a dataclass; only dataclass configs "
                        "can be written as data")
    args = {}
    for f in dataclasses.fields(config):
        if not f.init:
            continue
        value = getattr(config, f.name)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if default is not dataclasses.MISSING and type(value) is type(default) and value == default:
            continue
        args[f.name] = _plain(value, f"stage {index}: {cls.__name__}.{f.name}")
    return args


def recipe_to_data(recipe: Recipe) -> dict:
    stages = []
    for i, stage in enumerate(recipe.stages):
        entry = {}
        if stage.name is not None:
            entry["name"] = stage.name
        entry["config"] = type(stage.config).__name__
        if stage.pattern is not None:
            entry["pattern"] = stage.pattern
        args = _args(stage.config, i)
        if args:
            entry["args"] = args
        stages.append(entry)
    return {"name": recipe.name, "stages": stages}


class _FlowMapping(dict):
    """A mapping written on one line ({amount: 0.3, target: ffn})."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_FlowMapping, lambda dumper, data: dumper.represent_mapping(
    "tag:yaml.org,2002:map", data.items(), flow_style=True))


def recipe_to_yaml(recipe: Recipe) -> str:
    data = recipe_to_data(recipe)
    for stage in data["stages"]:
        if "args" in stage:
            stage["args"] = _FlowMapping(stage["args"])
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def _compose(text: str, label: str) -> tuple:
    """(data, lines): the YAML document as Python values and the 1-based line of every field path."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{label}{line}: YAML syntax error: {exc.problem or exc.context}") from exc
    if node is None:
        raise RecipeError(f"{label}: the recipe is empty")
    lines: dict = {}
    constructor = yaml.constructor.SafeConstructor()
    return _value(node, (), lines, label, constructor), lines


def _value(node, path: tuple, lines: dict, label: str, constructor):
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise RecipeError(f"{label} line {line}: {_dotted(path) or 'recipe'}: keys must be plain names")
            key = constructor.construct_object(key_node)
            if key in out:
                raise RecipeError(f"{label} line {line}: {_dotted(path + (key,))}: duplicate key")
            out[key] = _value(value_node, path + (key,), lines, label, constructor)
            # Errors about a field point at its key, also when its value starts on a later line.
            lines[path + (key,)] = line
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_value(item, path + (i,), lines, label, constructor) for i, item in enumerate(node.value)]
    try:
        return constructor.construct_object(node)
    except yaml.constructor.ConstructorError as exc:
        raise RecipeError(f"{label} line {lines[path]}: {_dotted(path) or 'recipe'}: {exc.problem}") from exc


def recipe_from_yaml(text: str, *, label: str = "recipe") -> Recipe:
    if not isinstance(text, str):
        raise TypeError(f"Recipe.from_yaml: text must be a str (got {type(text).__name__})")
    data, lines = _compose(text, label)
    return recipe_from_data(data, _Where(label, lines))


_MODULE_ATTR = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_YAML_SUFFIXES = (".yaml", ".yml")


def _python_file(path) -> Recipe:
    import importlib.util
    import sys

    module_name = "pycompress_recipe_" + re.sub(r"\W", "_", path.stem)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    # Registered so that dataclasses and stage types defined in the file resolve their module.
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    if not hasattr(module, "RECIPE"):
        raise RecipeError(f"{path}: a Python recipe file must define RECIPE (a pycompress.recipe.Recipe)")
    return _checked(module.RECIPE, f"{path}: RECIPE")


def _checked(value, what: str) -> Recipe:
    if not isinstance(value, Recipe):
        raise TypeError(f"{what} must be a pycompress.recipe.Recipe (got {type(value).__name__})")
    return value


def load_recipe(source) -> Recipe:
    """A Recipe from ``source``: a path to a .yaml/.yml file or to a .py file defining ``RECIPE``;
    ``"module:attr"`` (an importable module and its Recipe attribute); YAML text; or a Recipe, returned
    as it is. Errors in YAML name the file, line and field."""
    from pathlib import Path

    if isinstance(source, Recipe):
        return source
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source
                                    and source.lower().endswith((*_YAML_SUFFIXES, ".py"))):
        path = Path(source)
        if path.suffix.lower() not in (*_YAML_SUFFIXES, ".py"):
            raise ValueError(f"load_recipe: a recipe file must end with .yaml, .yml or .py (got {str(path)!r})")
        if not path.is_file():
            raise FileNotFoundError(f"load_recipe: no recipe file {str(path)!r}")
        if path.suffix.lower() == ".py":
            return _python_file(path)
        return recipe_from_yaml(path.read_text(), label=str(source))
    if not isinstance(source, str):
        raise TypeError(f"load_recipe: source must be a path, YAML text, 'module:attr' or a Recipe "
                        f"(got {type(source).__name__})")
    if _MODULE_ATTR.match(source.strip()):
        import importlib

        module_name, _, attr = source.strip().partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ImportError(f"load_recipe: cannot import {module_name!r} named in {source!r}: {exc}") from exc
        if not hasattr(module, attr):
            raise RecipeError(f"load_recipe: module {module_name!r} has no attribute {attr!r}")
        return _checked(getattr(module, attr), f"load_recipe: {source}")
    return recipe_from_yaml(source, label="recipe")
