"""The torch-level API: ``compress_`` swaps layers for compressed ones, ``save``/``load`` persist them.

Each config type has one handler, registered with ``register_handler``. compress_ offers it every
submodule of the kinds it ``applies`` to (nn.Linear by default) that passes ``filter_fn``; configs that
need data first observe those modules' inputs over the calibration batches; then the handler returns
the replacement module or a string saying why the module is left as it is.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
import weakref
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import torch
from torch import nn

log = logging.getLogger("pycompress")

_HANDLERS: dict[type, "Handler"] = {}
_REPORTS: "weakref.WeakKeyDictionary[nn.Module, CompressReport]" = weakref.WeakKeyDictionary()
MANIFEST = "pycompress.json"
WEIGHTS = "model.safetensors"
MANIFEST_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Handler:
    """How compress_ applies one config type.

    ``convert(module, config, observer, name) -> nn.Module | str | None``: the replacement, why the module
    stays (reported), or None when the config says nothing about this module.
    ``applies(module) -> bool``: which modules are offered. ``observer(config)``: None for configs that
    need no data, else a factory of the Observer that watches each offered module's input.
    ``prepare(model, candidates, config, calibration)``: optional model-level work before any module is
    converted (e.g. pruning that calibrates layer after layer, or structural pruning that reshapes
    neighbouring layers), given the offered (name, module) pairs; it may return a dict with
    ``"changed"`` and ``"skipped"`` (name -> what / why) for the report.
    """

    convert: Callable
    applies: Callable[[nn.Module], bool]
    observer: Optional[Callable] = None
    prepare: Optional[Callable] = None


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear)


def register_handler(config_type: type, *, applies: Callable[[nn.Module], bool] = _is_linear,
                     observer: Optional[Callable] = None, prepare: Optional[Callable] = None):
    """Register ``convert(module, config, observer, name)`` as the handler of ``config_type``."""

    def wrap(fn):
        _HANDLERS[config_type] = Handler(convert=fn, applies=applies, observer=observer, prepare=prepare)
        return fn

    return wrap


@dataclasses.dataclass
class CompressReport:
    """What ``compress_`` did: the layers replaced (name -> format) and those left dense (name -> why)."""

    config: object
    replaced: dict = dataclasses.field(default_factory=dict)
    skipped: dict = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"{type(self.config).__name__}: {len(self.replaced)} layers replaced, {len(self.skipped)} left dense"]
        lines += [f"  left dense: {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def compress_(
    model: nn.Module,
    config,
    *,
    filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
    calibration: Optional[Iterable] = None,
) -> nn.Module:
    """Replace, in place, every submodule of ``model`` that ``config`` applies to; return the model.

    ``filter_fn(module, name)`` limits the swap to the modules it returns True for. ``calibration`` is
    an iterable of model inputs (tensors, or dicts of tensors as a Hugging Face model takes them) for
    the configs that need data; dynamic configs such as Int8Config do not use it. Layers the kernels
    cannot take are left dense and reported (a warning, and ``pycompress.report(model)``). When the
    model itself is replaced (a bare nn.Linear), the returned module is the replacement.
    """
    handler = _HANDLERS.get(type(config))
    if handler is None:
        known = ", ".join(sorted(t.__name__ for t in _HANDLERS))
        raise TypeError(f"compress_: config must be one of {known} (got {type(config).__name__})")
    if not isinstance(model, nn.Module):
        raise TypeError(f"compress_: model must be an nn.Module (got {type(model).__name__})")
    report = CompressReport(config=config)
    result = model
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if handler.applies(module) and (filter_fn is None or filter_fn(module, name))
    ]
    if handler.prepare is not None:
        outcome = handler.prepare(model, candidates, config, calibration) or {}
        report.replaced.update(outcome.get("changed", {}))
        report.skipped.update(outcome.get("skipped", {}))
    observers = {}
    make_observer = handler.observer(config) if handler.observer is not None else None
    if make_observer is not None:
        from pycompress.quant.observers import calibrate

        observers = calibrate(model, calibration, dict(candidates), make_observer,
                              desc=f"calibrating {type(config).__name__}")
    for name, module in candidates:
        outcome = handler.convert(module, config, observers.get(name), name)
        if outcome is None:
            continue
        label = name or "<model>"
        if isinstance(outcome, str):
            report.skipped[label] = outcome
            continue
        if name:
            _set_submodule(model, name, outcome)
        else:
            result = outcome
        report.replaced[label] = getattr(outcome, "format_name", type(outcome).__name__)
    _REPORTS[result] = report
    log.info("%s", report)
    if report.skipped:
        warnings.warn(f"pycompress.compress_: {report}", stacklevel=2)
    return result


def report(model: nn.Module) -> Optional[CompressReport]:
    """The report of the last ``compress_`` on ``model``, or None."""
    return _REPORTS.get(model)


def _compressed_modules(model: nn.Module):
    from pycompress.nn import FORMATS

    packed_types = tuple(FORMATS.values())
    for name, module in model.named_modules():
        if isinstance(module, packed_types):
            yield name, module


def _tie_groups(model: nn.Module) -> list:
    """The state-dict names under which one tensor object is registered more than once (tied parameters
    and buffers, e.g. shared layers or an output layer tied to the input embedding): one list per tensor."""
    persistent = set(model.state_dict(keep_vars=True))
    names: dict = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        if name in persistent:
            names.setdefault(id(tensor), []).append(name)
    return [group for group in names.values() if len(group) > 1]


def _kind(tensor: torch.Tensor) -> str:
    return "parameter" if isinstance(tensor, nn.Parameter) else "buffer"


def _retie(model: nn.Module, ties: list, manifest_path: Path) -> None:
    """Register the tensor of each group's first name under the group's other names, so that the model
    holds the one tensor the file stores for the group."""

    def tensor_at(name: str):
        owner_name, _, leaf = name.rpartition(".")
        try:
            owner = model.get_submodule(owner_name)
        except AttributeError as exc:
            raise ValueError(f"load: model has no submodule {owner_name!r} for the tied tensor {name!r} named in "
                             f"{manifest_path}") from exc
        own = {**dict(owner.named_parameters(recurse=False, remove_duplicate=False)),
               **dict(owner.named_buffers(recurse=False, remove_duplicate=False))}
        tensor = own.get(leaf)
        if tensor is None:
            raise ValueError(f"load: model has no parameter or buffer {name!r} named in the ties of {manifest_path}")
        return owner, leaf, tensor

    for group in ties:
        _, _, shared = tensor_at(group[0])
        for name in group[1:]:
            owner, leaf, tensor = tensor_at(name)
            if tensor.shape != shared.shape or isinstance(tensor, nn.Parameter) != isinstance(shared, nn.Parameter):
                raise ValueError(f"load: {name!r} ({_kind(tensor)} {list(tensor.shape)}) cannot be tied to "
                                 f"{group[0]!r} ({_kind(shared)} {list(shared.shape)}) as {manifest_path} says")
            setattr(owner, leaf, shared)


def _inside(name: str, roots: list) -> bool:
    return any(root == "" or name == root or name.startswith(root + ".") for root in roots)


def _size_attributes(module: nn.Module) -> dict:
    """The public int (or tuple of ints) attributes of ``module``: its sizes (in_features,
    num_attention_heads, normalized_shape, ...) and other integer settings."""
    sizes = {}
    for key, value in vars(module).items():
        if key.startswith("_") or isinstance(value, bool):
            continue
        if type(value) is int:
            sizes[key] = value
        elif isinstance(value, tuple) and value and all(type(v) is int for v in value):
            sizes[key] = list(value)
    return sizes


def _structure(model: nn.Module) -> Optional[dict]:
    """What a fresh instance of the original architecture needs to take this model's shape, for models
    whose structure compression may have changed (pruned channels, heads or FFN neurons, removed
    blocks): ``modules``, the size attributes of every plain module (not packed, not inside a packed
    one); ``stacks``, the length of every nn.ModuleList and nn.Sequential; ``config``, the int entries of
    a Hugging Face ``model.config``. None for a single layer without submodules: its tensors say all."""
    if next(model.children(), None) is None:
        return None
    packed = [name for name, _ in _compressed_modules(model)]
    modules, stacks = {}, {}
    for name, module in model.named_modules():
        if _inside(name, packed):
            continue
        if isinstance(module, (nn.ModuleList, nn.Sequential)):
            stacks[name] = len(module)
        sizes = _size_attributes(module)
        if sizes:
            modules[name] = sizes
    structure = {"modules": modules, "stacks": stacks}
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        ints = {k: v for k, v in vars(config).items() if not k.startswith("_") and type(v) is int}
        if ints:
            structure["config"] = ints
    return structure


def save(model: nn.Module, path: Union[str, Path], *, source: Optional[str] = None) -> Path:
    """Write ``model`` to the directory ``path``: ``model.safetensors`` (every tensor of the state
    dict, shared tensors once) and ``pycompress.json``: which layer has which packed format, under
    ``ties`` (when there are any) the names that share one tensor, under ``structure`` the sizes a
    fresh instance of the original architecture takes to hold the model (see ``load``), and under
    ``source`` (when given) how to build that instance (a Hugging Face folder or "module:factory")."""
    from safetensors.torch import save_model

    if source is not None and (not isinstance(source, str) or not source):
        raise TypeError(f"save: source must be None or a non-empty string naming the model (got {source!r})")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    layers = {name: module.manifest_entry() for name, module in _compressed_modules(model)}
    manifest = {"manifest_version": MANIFEST_VERSION, "layers": layers}
    ties = _tie_groups(model)
    if ties:
        manifest["ties"] = ties
    structure = _structure(model)
    if structure is not None:
        manifest["structure"] = structure
    if source is not None:
        manifest["source"] = source
    save_model(model, str(path / WEIGHTS))
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return path


def _resize_to_saved(model: nn.Module, weights: Path) -> None:
    """Replace every plain parameter or buffer whose shape differs from the one stored in ``weights`` by
    an uninitialised tensor of the stored shape (same dtype, device, requires_grad); names that share
    one tensor keep sharing the new one."""
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    persistent = set(model.state_dict(keep_vars=True))
    tensors: dict = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        if name in persistent:
            tensors.setdefault(id(tensor), (tensor, []))[1].append(name)
    for tensor, names in tensors.values():
        saved = next((shapes[name] for name in names if name in shapes), None)
        if saved is None or saved == tuple(tensor.shape):
            continue
        fresh = torch.empty(saved, dtype=tensor.dtype, device=tensor.device)
        if isinstance(tensor, nn.Parameter):
            fresh = nn.Parameter(fresh, requires_grad=tensor.requires_grad)
        for name in names:
            owner_name, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(owner_name), leaf, fresh)


def _submodule(model: nn.Module, name: str, where: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        raise ValueError(f"load: model has no submodule {name!r} {where}") from exc


def _restore_structure(model: nn.Module, structure: dict, weights: Path, manifest_path: Path) -> None:
    """Give ``model`` the saved structure: stacks cut to their saved lengths (the first blocks kept),
    tensors resized to the stored shapes, size attributes and config entries set to the saved values."""
    # Outer stacks first: cutting one removes the stacks inside the blocks it drops.
    for name in sorted(structure.get("stacks", {}), key=lambda n: (n.count(".") + bool(n), n)):
        length = structure["stacks"][name]
        stack = _submodule(model, name, f"(a stack saved in {manifest_path})")
        if not isinstance(stack, (nn.ModuleList, nn.Sequential)):
            raise ValueError(f"load: {name!r} is a {type(stack).__name__}, but {manifest_path} saved an nn.ModuleList "
                             f"or nn.Sequential of {length} there")
        if len(stack) < length:
            raise ValueError(f"load: {name!r} holds {len(stack)} modules, fewer than the {length} saved in "
                             f"{manifest_path}; load into the original (uncompressed) architecture")
        del stack[length:]
    _resize_to_saved(model, weights)
    for name, sizes in structure.get("modules", {}).items():
        module = _submodule(model, name, f"(its sizes saved in {manifest_path})")
        for key, value in sizes.items():
            setattr(module, key, tuple(value) if isinstance(value, list) else value)
    config = getattr(model, "config", None)
    if config is not None:
        for key, value in structure.get("config", {}).items():
            setattr(config, key, value)


def load(path: Union[str, Path], model: nn.Module, *, device: Union[str, torch.device] = "cpu") -> nn.Module:
    """Load a model written by ``save`` into ``model``, an instance of the original (uncompressed)
    architecture: the layers named in the manifest are swapped for their packed modules, the tensors the
    manifest lists as tied are tied again (one object under all their names), the saved structure is
    restored (stacks cut to their saved lengths, plain tensors resized to the stored shapes, the saved
    size attributes set: models whose channels, heads, FFN neurons or blocks were pruned), then every
    tensor is loaded (strictly). Returns the model, or its packed replacement when the saved model is a
    single packed layer."""
    from safetensors.torch import load_model

    from pycompress.nn import FORMATS

    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"load: path must be a directory written by pycompress.save ({manifest_path} is missing)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        raise ValueError(
            f"load: {manifest_path} has manifest_version {manifest.get('manifest_version')!r}, "
            f"this pycompress reads {MANIFEST_VERSION}"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"load: model must be an nn.Module, an instance of the original architecture "
                        f"(got {type(model).__name__})")
    for name, entry in manifest["layers"].items():
        module_type = FORMATS.get(entry.get("format"))
        if module_type is None:
            raise ValueError(f"load: layer {name!r} has unknown format {entry.get('format')!r} (known: {', '.join(FORMATS)})")
        _submodule(model, name, f"named in {manifest_path}")
        packed = module_type.from_manifest_entry(entry, device=device)
        if name:
            _set_submodule(model, name, packed)
        else:
            model = packed
    _retie(model, manifest.get("ties", []), manifest_path)
    if "structure" in manifest:
        _restore_structure(model, manifest["structure"], path / WEIGHTS, manifest_path)
    load_model(model, str(path / WEIGHTS), strict=True, device=str(device))
    return model
