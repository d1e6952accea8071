"""Save a compressed model once with its recipe and source, load it back bit for bit.

A directory written by ``save_compressed`` is a ``pycompress.save`` directory (``model.safetensors`` and
``pycompress.json``, whose ``structure`` lets a fresh original model take pruned or removed layers) plus
``recipe.yaml`` when the recipe is given; the manifest's ``source`` names the model the recipe started
from (a Hugging Face folder or "module:factory", as ``pycompress.models.load_model_spec`` takes it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from pycompress.api import MANIFEST, load, save
from pycompress.recipe.core import Recipe

RECIPE_FILE = "recipe.yaml"


def save_compressed(model: nn.Module, path: Union[str, Path], *, recipe: Optional[Recipe] = None,
                    source: Optional[str] = None) -> Path:
    """``pycompress.save(model, path)`` plus ``recipe.yaml`` (when ``recipe`` is given) and the
    ``source`` string in the manifest. Returns the directory."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"save_compressed: model must be an nn.Module (got {type(model).__name__})")
    if recipe is not None and not isinstance(recipe, Recipe):
        raise TypeError(f"save_compressed: recipe must be None or a pycompress.recipe.Recipe "
                        f"(got {type(recipe).__name__})")
    # Written before anything else, so that a recipe that cannot be written leaves no half directory.
    text = recipe.to_yaml() if recipe is not None else None
    path = save(model, path, source=source)
    recipe_path = path / RECIPE_FILE
    if text is not None:
        recipe_path.write_text(text)
    elif recipe_path.exists():
        # A recipe left from an earlier save would describe another model.
        recipe_path.unlink()
    return path


def _manifest(path: Path, fn: str) -> dict:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{fn}: path must be a directory written by save_compressed or pycompress.save "
                                f"({manifest_path} is missing)")
    return json.loads(manifest_path.read_text())


def saved_source(path: Union[str, Path]) -> str:
    """The model spec a directory written by ``save_compressed`` records as its source."""
    path = Path(path)
    source = _manifest(path, "saved_source").get("source")
    if source is None:
        raise ValueError(f"saved_source: {path / MANIFEST} records no source model (it was saved without "
                         "source=); name the original model instead")
    return source


def saved_recipe(path: Union[str, Path]) -> Optional[Recipe]:
    """The recipe saved with a directory written by ``save_compressed``, or None."""
    from pycompress.recipe.serialize import recipe_from_yaml

    recipe_path = Path(path) / RECIPE_FILE
    if not recipe_path.is_file():
        return None
    return recipe_from_yaml(recipe_path.read_text(), label=str(recipe_path))


def load_compressed(path: Union[str, Path], model: Optional[nn.Module] = None, *,
                    device: Union[str, torch.device] = "cpu") -> nn.Module:
    """Load a directory written by ``save_compressed``: into ``model`` (an instance of the original
    architecture), or, when None, into the model its recorded source builds
    (``pycompress.models.load_model_spec(source).model``). Returns the loaded model."""
    path = Path(path)
    if model is None:
        source = saved_source(path)
        try:
            from pycompress.models import load_model_spec
        except ImportError as exc:
            raise ImportError("load_compressed: building the model from its source needs "
                              "pycompress.models.load_model_spec, which this installation lacks; pass model=") from exc
        model = load_model_spec(source).model
    else:
        _manifest(path, "load_compressed")
    return load(path, model, device=device)
