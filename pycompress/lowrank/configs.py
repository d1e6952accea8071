"""LowRankConfig for ``pycompress.compress_``: each nn.Linear becomes a LowRankLinear of the chosen rank."""

from __future__ import annotations

import dataclasses
import weakref
from typing import Optional

import torch
from torch import Tensor, nn

from pycompress.api import register_handler
from pycompress.lowrank.allocate import allocate_ranks
from pycompress.lowrank.factorize import METHODS, factorize, rank_for_budget, rank_for_energy, spectrum
from pycompress.nn.lowrank import LowRankLinear
from pycompress.quant.configs import linear_skip_reason
from pycompress.quant.observers import calibrate


@dataclasses.dataclass(frozen=True)
class LowRankConfig:
    """Exactly one of ``rank`` (an int, or a float in (0, 1) read as that fraction of min(N, K)),
    ``energy`` (keep that fraction of the sum of squared singular values) or ``budget`` (the factors
    hold at most that fraction of the layer's parameters). ``method``: svd, data_aware (DRONE),
    whitened or activation_scaled (ASVD); all but svd need calibration data
    (``pycompress.lowrank.factorize``). A layer whose factors would not be smaller than the dense
    weight is left dense and reported, unless ``skip_unprofitable`` is False.

    ``allocation``: "layer" applies the rank, energy or budget to each layer on its own; "global"
    (with ``budget`` only) spends one budget, that fraction of the offered layers' dense weight
    parameters, across all of them, choosing per-layer ranks that minimise the sum of the layers'
    relative errors in the method's measure (``pycompress.lowrank.allocate``). With
    ``skip_unprofitable`` no layer gets a rank at which its factors are not smaller than its weight."""

    rank: Optional[float] = None
    energy: Optional[float] = None
    budget: Optional[float] = None
    method: str = "svd"
    skip_unprofitable: bool = True
    allocation: str = "layer"

    def __post_init__(self):
        given = [f for f in ("rank", "energy", "budget") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError(f"LowRankConfig: give exactly one of rank, energy, budget (got {given or 'none'})")
        if self.method not in METHODS:
            raise ValueError(f"LowRankConfig: method must be one of {', '.join(METHODS)} (got {self.method!r})")
        rank = self.rank
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, (int, float))
                                 or (isinstance(rank, int) and rank < 1)
                                 or (isinstance(rank, float) and not 0.0 < rank < 1.0)):
            raise ValueError(f"LowRankConfig: rank must be an int >= 1 or a fraction in (0, 1) of min(N, K) "
                             f"(got {rank!r})")
        for field in ("energy", "budget"):
            value = getattr(self, field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0.0 < value <= 1.0):
                raise ValueError(f"LowRankConfig: {field} must be a number in (0, 1] (got {value!r})")
        if self.allocation not in ("layer", "global"):
            raise ValueError(f"LowRankConfig: allocation must be 'layer' or 'global' (got {self.allocation!r})")
        if self.allocation == "global" and self.budget is None:
            raise ValueError(f"LowRankConfig: allocation='global' needs budget (got {given[0]})")


def _rows(x: Tensor, name: str) -> Tensor:
    rows = x.detach().reshape(-1, x.shape[-1]).double()
    if not torch.isfinite(rows).all():
        raise ValueError(f"calibration: the input of {name} holds NaN or Inf")
    return rows


class GramObserver:
    """Accumulates X^T X (float64) and the row count of a layer's inputs."""

    def __init__(self):
        self.gram: Optional[Tensor] = None
        self.rows = 0

    def update(self, x: Tensor, name: str = "activation") -> None:
        rows = _rows(x, name)
        product = rows.T @ rows
        self.gram = product if self.gram is None else self.gram + product
        self.rows += rows.shape[0]

    def mean_gram(self) -> Tensor:
        return self.gram / max(self.rows, 1)


class GramDiagonalObserver:
    """Accumulates only the diagonal of X^T X, the per-input sums of squares (float64): all that
    activation_scaled reads, at a fraction of the cost of the full matrix."""

    def __init__(self):
        self.squares: Optional[Tensor] = None
        self.rows = 0

    def update(self, x: Tensor, name: str = "activation") -> None:
        rows = _rows(x, name)
        squares = rows.pow(2).sum(0)
        self.squares = squares if self.squares is None else self.squares + squares
        self.rows += rows.shape[0]

    def mean_gram(self) -> Tensor:
        """The diagonal of X^T X / n as a [K, K] matrix (zero off the diagonal)."""
        return torch.diag(self.squares / max(self.rows, 1))


def _rank(config: LowRankConfig, weight: Tensor) -> int:
    N, K = weight.shape
    if config.rank is not None:
        if isinstance(config.rank, float):
            return max(1, round(config.rank * min(N, K)))
        if config.rank > min(N, K):
            raise ValueError(f"LowRankConfig: rank {config.rank} is above min(N, K) = {min(N, K)} of a weight [{N}, {K}]")
        return config.rank
    if config.budget is not None:
        return rank_for_budget(N, K, config.budget)
    return rank_for_energy(torch.linalg.svdvals(weight.detach().double()), config.energy)


def _observer_type(method: str):
    return {"svd": None, "activation_scaled": GramDiagonalObserver}.get(method, GramObserver)


def _observer(config: LowRankConfig):
    # Global allocation observes the inputs itself, in the prepare step, before any layer is converted.
    return None if config.allocation == "global" else _observer_type(config.method)


@dataclasses.dataclass(frozen=True)
class _Plan:
    rank: int
    gram: Optional[Tensor]


# The prepare step's choice for each offered layer (a _Plan, or why it stays dense), taken by convert.
_PLANS: "weakref.WeakKeyDictionary[nn.Module, object]" = weakref.WeakKeyDictionary()


def _max_profitable_rank(N: int, K: int) -> int:
    """The largest r with r (N + K) < N K, capped at min(N, K)."""
    return min((N * K - 1) // (N + K), N, K)


def _prepare(model: nn.Module, candidates: list, config: LowRankConfig, calibration) -> None:
    """Global allocation: per-layer ranks from one budget over all offered layers."""
    if config.allocation != "global":
        return
    layers = {}
    for name, module in candidates:
        reason = linear_skip_reason(module)
        if reason:
            continue
        N, K = module.weight.shape
        if config.skip_unprofitable and _max_profitable_rank(N, K) < 1:
            _PLANS[module] = f"no rank of a [{N}, {K}] weight has factors smaller than the weight"
            continue
        layers[name] = module
    if not layers:
        return
    grams = {}
    if config.method != "svd":
        observers = calibrate(model, calibration, layers, _observer_type(config.method),
                              desc=f"calibrating {type(config).__name__}")
        grams = {name: observer.mean_gram() for name, observer in observers.items()}
    shapes = [tuple(module.weight.shape) for module in layers.values()]
    spectra = [spectrum(module.weight, config.method, grams.get(name)) for name, module in layers.items()]
    caps = [_max_profitable_rank(N, K) if config.skip_unprofitable else min(N, K) for N, K in shapes]
    try:
        ranks = allocate_ranks(spectra, shapes, config.budget, caps)
    except ValueError as exc:
        raise ValueError(f"LowRankConfig(allocation='global'): {exc}") from exc
    for (name, module), rank in zip(layers.items(), ranks):
        _PLANS[module] = _Plan(rank, grams.get(name))


@register_handler(LowRankConfig, observer=_observer, prepare=_prepare)
def _lowrank(module: nn.Linear, config: LowRankConfig, observer, name: str):
    reason = linear_skip_reason(module)
    if reason:
        return reason
    if config.allocation == "global":
        plan = _PLANS.pop(module)
        if isinstance(plan, str):
            return plan
        u, v = factorize(module.weight, plan.rank, config.method, plan.gram)
        return LowRankLinear.from_factors(module, u, v)
    N, K = module.weight.shape
    rank = _rank(config, module.weight)
    if config.skip_unprofitable and rank * (N + K) >= N * K:
        return f"rank {rank} factors ({rank * (N + K)} parameters) are not smaller than the weight ({N * K})"
    gram = observer.mean_gram() if observer is not None else None
    u, v = factorize(module.weight, rank, config.method, gram)
    return LowRankLinear.from_factors(module, u, v)
