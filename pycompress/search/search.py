"""Hardware-aware compression search: per-layer options and encoder structure chosen under a latency
or size budget, from latencies measured on this device and errors measured on calibration data.

A candidate is a structure s (space.py) and one option (or dense) per site. Its predicted cost and
error (latency.py, quality.py):

    latency(s, o) = T_model + B_lat(s) + sum_{kept sites j} t_j (N'K' / NK) (r(o_j, [N', K']) - 1)
    size(s, o)    = S_model + B_size(s) + sum_{kept sites j} (bytes(o_j) - bytes(dense))([N', K'])
    error(s, o)   = E(s) + sum_{kept sites j} E(j, o_j)

with B what the structure changes, [N', K'] the site's shape under s and E squared relative output
errors of the model. Strategies:

greedy
    From the dense model, repeatedly take the change (one site's option, or one step of the
    structure: more heads or FFN neurons removed, one more block removed) with the least error
    increase per unit of budget excess removed; a change that meets the budget is taken instead when
    it costs less error than closing the remaining excess at the best rate would. Once within budget,
    changes that lower the error and stay within budget are taken while there are any. This runs once
    with the structure free and once for each fixed structure of the grid, so that every structure
    has its best candidate.
evolutionary
    A population of candidates seeded from the greedy results (and mutations of them): tournament
    selection, uniform crossover of the site options, mutation of options and structure steps;
    candidates within budget rank by error, the others by their excess. Deterministic for a seed.

The error ranks candidates; ``fidelity`` (model -> float, higher is better), where given, is measured
on the best candidate of each of the ``evaluations`` best structures, and the best fidelity wins.
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import math
import random
import warnings
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import nn
from tqdm import tqdm

from pycompress.prune.physical import StructuredPruneConfig, prune_ffn_, prune_heads_
from pycompress.recipe import PruneLayersConfig, Recipe, Stage, apply_recipe
from pycompress.search.latency import LatencyTable, ModelTime
from pycompress.search.quality import MAX_ROWS, QualityModel
from pycompress.search.space import (ModelSpace, SearchSpace, Structure, analyze, call_model, module_bytes,
                                     option_label, signature)

STRATEGIES = ("greedy", "evolutionary")
POPULATION = 40
GENERATIONS = 60
ELITES = 4
TOURNAMENT = 3


def _positive(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@dataclasses.dataclass(frozen=True)
class Budget:
    """The limit a search must meet: ``latency`` (a fraction of the dense model's latency, in (0, 1])
    or ``latency_s`` (seconds), and/or ``size`` (a fraction of the dense model's bytes, in (0, 1]) or
    ``size_bytes``."""

    latency: Optional[float] = None
    latency_s: Optional[float] = None
    size: Optional[float] = None
    size_bytes: Optional[int] = None

    def __post_init__(self):
        for field in ("latency", "size"):
            value = getattr(self, field)
            if value is not None and not (_positive(value) and value <= 1.0):
                raise ValueError(f"Budget: {field} must be a fraction of the dense model's in (0, 1] (got {value!r}); "
                                 f"give an absolute limit as {field}_{'s' if field == 'latency' else 'bytes'}")
        if self.latency_s is not None and not _positive(self.latency_s):
            raise ValueError(f"Budget: latency_s must be a positive number of seconds (got {self.latency_s!r})")
        if self.size_bytes is not None and (isinstance(self.size_bytes, bool) or not isinstance(self.size_bytes, int)
                                            or self.size_bytes < 1):
            raise ValueError(f"Budget: size_bytes must be a positive int (got {self.size_bytes!r})")
        if self.latency is not None and self.latency_s is not None:
            raise ValueError("Budget: give latency (relative) or latency_s (seconds), not both")
        if self.size is not None and self.size_bytes is not None:
            raise ValueError("Budget: give size (relative) or size_bytes, not both")
        if all(getattr(self, f) is None for f in ("latency", "latency_s", "size", "size_bytes")):
            raise ValueError("Budget: give at least one of latency, latency_s, size, size_bytes")

    def limits(self, dense_latency_s: float, dense_size_bytes: int) -> dict:
        """{"latency": seconds, "size": bytes} for the limits given."""
        limits = {}
        if self.latency is not None or self.latency_s is not None:
            limits["latency"] = self.latency_s if self.latency_s is not None else self.latency * dense_latency_s
        if self.size is not None or self.size_bytes is not None:
            limits["size"] = self.size_bytes if self.size_bytes is not None else self.size * dense_size_bytes
        return limits

    def __str__(self) -> str:
        fields = [f"{f}={getattr(self, f)!r}" for f in ("latency", "latency_s", "size", "size_bytes")
                  if getattr(self, f) is not None]
        return f"Budget({', '.join(fields)})"


def heads_config(amount: float) -> StructuredPruneConfig:
    """The config of the searched head pruning."""
    return StructuredPruneConfig(amount=amount, target="heads", importance="data")


def ffn_config(amount: float, round_to: int) -> StructuredPruneConfig:
    """The config of the searched FFN pruning."""
    return StructuredPruneConfig(amount=amount, target="ffn", importance="data", round_to=round_to)


def renamed_after_removal(name: str, stack: Optional[str], removed: tuple) -> str:
    """The name of module ``name`` once the blocks ``removed`` of ``stack`` are gone and the others
    renumbered (a module of a removed block has no name after; it is never asked for)."""
    if not removed or not name.startswith(stack + "."):
        return name
    index, _, rest = name[len(stack) + 1:].partition(".")
    if not index.isdigit():
        return name
    new = int(index) - sum(r < int(index) for r in removed)
    return f"{stack}.{new}" + (f".{rest}" if rest else "")


@dataclasses.dataclass(frozen=True)
class Assignment:
    """A searched model: ``structure``, the indices of the removed blocks of the stack ``stack``, and
    ``options``: (site name, config) for the sites that are not left dense (names of the original
    model)."""

    structure: Structure
    removed_blocks: tuple
    options: tuple
    stack: Optional[str] = None
    ffn_round_to: int = 1

    def structure_stages(self) -> list:
        """The recipe stages of the structure: heads, then FFN pruning, then the block removal."""
        stages = []
        if self.structure.heads:
            stages.append(Stage(heads_config(self.structure.heads), name="prune heads"))
        if self.structure.ffn:
            stages.append(Stage(ffn_config(self.structure.ffn, self.ffn_round_to), name="prune ffn"))
        if self.removed_blocks:
            stages.append(Stage(PruneLayersConfig(remove=self.removed_blocks, blocks=self.stack), name="remove blocks"))
        return stages

    def recipe(self, name: str = "searched") -> Recipe:
        """The structure stages, then one stage per compressed site, its pattern the site's exact name
        after the block removal (the blocks left are renumbered from 0)."""
        stages = self.structure_stages()
        for site, config in self.options:
            renamed = renamed_after_removal(site, self.stack, self.removed_blocks)
            stages.append(Stage(config, pattern=glob.escape(renamed), name=renamed))
        return Recipe(stages, name=name)

    def describe(self) -> str:
        counts = {}
        for _, config in self.options:
            counts[option_label(config)] = counts.get(option_label(config), 0) + 1
        layers = ", ".join(f"{n} x {label}" for label, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        blocks = f" (blocks {list(self.removed_blocks)})" if self.removed_blocks else ""
        return f"{self.structure}{blocks}; {layers or 'all layers dense'}"


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One evaluated candidate: predicted latency and size, predicted output error E (quality.py), the
    measured fidelity (None when not evaluated) and whether it meets the budget."""

    assignment: Assignment
    latency_s: float
    size_bytes: int
    error: float
    feasible: bool
    fidelity: Optional[float] = None

    @property
    def recipe(self) -> Recipe:
        return self.assignment.recipe()


@dataclasses.dataclass
class SearchResult:
    """What ``search`` chose (``recipe``, ``assignment``, its predicted latency, size and output error
    and fidelity) next to the dense model's latency and size; ``candidates``: all candidates
    evaluated; ``pareto``: those not dominated in (the budgeted quantities, error); ``skipped``:
    layers left out of the search (name -> why)."""

    recipe: Recipe
    assignment: Assignment
    predicted_latency_s: float
    dense_latency_s: float
    predicted_size_bytes: int
    dense_size_bytes: int
    error: float
    fidelity: Optional[float]
    budget: Budget
    candidates: list
    pareto: list
    skipped: dict

    def __str__(self) -> str:
        lines = [f"{self.budget}: predicted latency {self.predicted_latency_s * 1e3:.1f} ms "
                 f"({self.predicted_latency_s / self.dense_latency_s:.3f} of dense {self.dense_latency_s * 1e3:.1f} ms), "
                 f"size {self.predicted_size_bytes / 2**20:.2f} MiB ({self.predicted_size_bytes / self.dense_size_bytes:.3f} "
                 f"of dense), predicted output error {self.error:.4f}"
                 + (f", fidelity {self.fidelity:.4f}" if self.fidelity is not None else ""),
                 f"  {self.assignment.describe()}",
                 f"  {len(self.candidates)} candidates, {len(self.pareto)} on the Pareto front"]
        return "\n".join(lines)

    def plot(self, path: Union[str, Path]) -> Path:
        """Write a PNG: predicted latency (or size, for a size-only budget) against the predicted error
        of every candidate, the Pareto front and the budget; and, for the candidates whose fidelity was
        measured, against fidelity. Needs matplotlib."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise ImportError("SearchResult.plot needs matplotlib: pip install matplotlib") from exc
        by_latency = self.budget.latency is not None or self.budget.latency_s is not None
        if by_latency:
            x = lambda c: c.latency_s * 1e3  # noqa: E731
            limit = self.budget.limits(self.dense_latency_s, self.dense_size_bytes)["latency"] * 1e3
            xlabel = "predicted latency (ms)"
        else:
            x = lambda c: c.size_bytes / 2**20  # noqa: E731
            limit = self.budget.limits(self.dense_latency_s, self.dense_size_bytes)["size"] / 2**20
            xlabel = "predicted size (MiB)"
        measured = [c for c in self.candidates if c.fidelity is not None]
        panels = 2 if measured else 1
        fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.5), squeeze=False)
        ax = axes[0][0]
        ax.scatter([x(c) for c in self.candidates], [c.error for c in self.candidates], s=8, c="0.7",
                   label="candidates")
        front = sorted(self.pareto, key=x)
        ax.plot([x(c) for c in front], [c.error for c in front], "o-", c="tab:blue", ms=4, label="Pareto front")
        chosen = [c for c in self.candidates if c.assignment == self.assignment]
        ax.scatter([x(c) for c in chosen], [c.error for c in chosen], s=80, marker="*", c="tab:red", zorder=3,
                   label="chosen")
        ax.axvline(limit, ls="--", c="k", lw=1, label="budget")
        ax.set(xlabel=xlabel, ylabel="predicted output error E (squared relative)")
        ax.legend(fontsize=8)
        if measured:
            ax = axes[0][1]
            ax.scatter([x(c) for c in measured], [c.fidelity for c in measured], c="tab:blue", label="evaluated")
            ax.scatter([x(c) for c in chosen], [c.fidelity for c in chosen], s=80, marker="*", c="tab:red",
                       zorder=3, label="chosen")
            ax.axvline(limit, ls="--", c="k", lw=1, label="budget")
            ax.set(xlabel=xlabel, ylabel="fidelity")
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


class _Problem:
    """The numbers the strategies work on: for each structure index s its base latency, size and error
    and the kept sites; for each (s, site) the available options {option index: (d latency, d bytes,
    error)}. Option index -1 is dense (0, 0, 0)."""

    def __init__(self, ms: ModelSpace, limits: dict, base: list, choices: list, removed: list):
        self.ms, self.limits, self.base, self.choices, self.removed = ms, limits, base, choices, removed
        self.kept = [sorted(choice) for choice in choices]
        index = {(st.heads, st.ffn, st.removed): i for i, st in enumerate(ms.structures)}
        heads = sorted({st.heads for st in ms.structures})
        ffn = sorted({st.ffn for st in ms.structures})
        self.neighbours = []
        for st in ms.structures:
            steps = []
            for levels, field in ((heads, "heads"), (ffn, "ffn")):
                at = levels.index(getattr(st, field))
                for other in levels[max(at - 1, 0):at] + levels[at + 1:at + 2]:
                    steps.append(index[(other if field == "heads" else st.heads,
                                        other if field == "ffn" else st.ffn, st.removed)])
            for r in (st.removed - 1, st.removed + 1):
                if (st.heads, st.ffn, r) in index:
                    steps.append(index[(st.heads, st.ffn, r)])
            self.neighbours.append(steps)

    def repair(self, s: int, opts: tuple) -> tuple:
        """``opts`` with the options unavailable under structure s set to dense."""
        return tuple(o if o == -1 or (j in self.choices[s] and o in self.choices[s][j]) else -1
                     for j, o in enumerate(opts))

    def totals(self, s: int, opts: tuple) -> tuple:
        lat, size, err = self.base[s]
        for j, choice in self.choices[s].items():
            o = opts[j]
            if o != -1:
                dl, db, de = choice[o]
                lat, size, err = lat + dl, size + db, err + de
        return lat, size, err

    def excess(self, lat: float, size: float) -> float:
        """Sum over the budgeted quantities of the relative excess over the limit (0: within budget)."""
        total = 0.0
        if "latency" in self.limits:
            total += max(0.0, lat / self.limits["latency"] - 1.0)
        if "size" in self.limits:
            total += max(0.0, size / self.limits["size"] - 1.0)
        return total

    def minimum(self, key: str) -> float:
        """The smallest latency (key "latency") or size ("size") any candidate reaches."""
        k = 0 if key == "latency" else 1
        best = math.inf
        for s, (lat, size, _) in enumerate(self.base):
            value = (lat, size)[k]
            for choice in self.choices[s].values():
                value += min([0.0] + [v[k] for v in choice.values()])
            best = min(best, value)
        return best


_DENSE = (0.0, 0, 0.0)


def _moves(problem: _Problem, s: int, opts: tuple, free_structure: bool):
    """Every change of one site's option (and, with ``free_structure``, one structure step):
    (structure index, change, (latency, size, error) after it); ``_after`` makes the change."""
    lat, size, err = problem.totals(s, opts)
    for j, choice in problem.choices[s].items():
        current = _DENSE if opts[j] == -1 else choice[opts[j]]
        for o, value in [(-1, _DENSE), *choice.items()]:
            if o != opts[j]:
                yield s, ("site", j, o), (lat - current[0] + value[0], size - current[1] + value[1],
                                          err - current[2] + value[2])
    if free_structure:
        for t in problem.neighbours[s]:
            new = problem.repair(t, opts)
            yield t, ("all", new), problem.totals(t, new)


def _after(opts: tuple, change: tuple) -> tuple:
    if change[0] == "all":
        return change[1]
    _, j, o = change
    return opts[:j] + (o,) + opts[j + 1:]


def _greedy(problem: _Problem, s: int, free_structure: bool, visit: Callable) -> Optional[tuple]:
    """The greedy of the module docstring from structure s with every site dense: the final
    (s, opts, totals), or None when it cannot reach the budget. ``visit(s, opts, totals)`` sees every
    state taken."""
    opts = tuple([-1] * len(problem.ms.sites))
    totals = problem.totals(s, opts)
    visit(s, opts, totals)
    excess = problem.excess(totals[0], totals[1])
    while excess > 0:
        best_rate, best_finish = None, None
        for t, change, value in _moves(problem, s, opts, free_structure):
            after = problem.excess(value[0], value[1])
            if after >= excess:
                continue
            d_err = value[2] - totals[2]
            rate = d_err / (excess - after)
            if best_rate is None or rate < best_rate[0]:
                best_rate = (rate, t, change, value)
            if after == 0 and (best_finish is None or d_err < best_finish[0]):
                best_finish = (d_err, t, change, value)
        if best_rate is None:
            return None
        take = best_finish if best_finish is not None and best_finish[0] <= best_rate[0] * excess else best_rate
        _, s, change, totals = take
        opts = _after(opts, change)
        visit(s, opts, totals)
        excess = problem.excess(totals[0], totals[1])
    return _improve(problem, s, opts, free_structure, visit)


def _improve(problem: _Problem, s: int, opts: tuple, free_structure: bool, visit: Callable) -> tuple:
    """Take the change that lowers the error most and stays within budget, while there is one."""
    totals = problem.totals(s, opts)
    while True:
        best = None
        for t, change, value in _moves(problem, s, opts, free_structure):
            if value[2] < totals[2] - 1e-12 and problem.excess(value[0], value[1]) == 0:
                if best is None or value[2] < best[2][2]:
                    best = (t, change, value)
        if best is None:
            return s, opts, totals
        s, change, totals = best
        opts = _after(opts, change)
        visit(s, opts, totals)


def _evolve(problem: _Problem, seeds: list, rng: random.Random, visit: Callable, progress: bool) -> tuple:
    """The evolutionary strategy of the module docstring, from the (s, opts) ``seeds``."""
    n = len(problem.ms.sites)
    n_structures = len(problem.ms.structures)

    def fitness(state):
        lat, size, err = problem.totals(*state)
        visit(*state, (lat, size, err))
        excess = problem.excess(lat, size)
        return (0, err) if excess == 0 else (1, excess)

    def mutate(state):
        s, opts = state
        if n_structures > 1 and rng.random() < 0.15:
            s = rng.choice(problem.neighbours[s])
        opts = list(problem.repair(s, opts))
        rate = 1.5 / max(1, len(problem.choices[s]))
        for j, choice in problem.choices[s].items():
            if rng.random() < rate:
                opts[j] = rng.choice([-1] + sorted(choice))
        return s, tuple(opts)

    def crossover(a, b):
        s = a[0] if rng.random() < 0.5 else b[0]
        opts = tuple(x if rng.random() < 0.5 else y for x, y in zip(a[1], b[1]))
        return s, problem.repair(s, opts)

    population = list(dict.fromkeys(seeds))
    while len(population) < POPULATION:
        population.append(mutate(rng.choice(seeds)))
    scores = {state: fitness(state) for state in population}
    for _ in tqdm(range(GENERATIONS), desc="evolutionary search", unit="generation", disable=not progress,
                  leave=False):
        ranked = sorted(population, key=lambda st: scores[st])
        children = ranked[:ELITES]
        while len(children) < POPULATION:
            a = min(rng.sample(population, TOURNAMENT), key=lambda st: scores[st])
            b = min(rng.sample(population, TOURNAMENT), key=lambda st: scores[st])
            child = crossover(a, b) if rng.random() < 0.7 else a
            child = mutate(child)
            if child not in scores:
                scores[child] = fitness(child)
            children.append(child)
        population = children
    best = min(population, key=lambda st: scores[st])
    if scores[best][0] != 0:
        return None
    return _improve(problem, *best, True, visit)


def apply_searched(model: nn.Module, recipe: Recipe, calibration: list, *, progress: bool = False) -> nn.Module:
    """A deep copy of ``model`` with ``recipe`` applied by apply_recipe (calibrated on ``calibration``),
    in eval mode."""
    return apply_recipe(copy.deepcopy(model), recipe, calibration=calibration, progress=progress).model.eval()


def _check_inputs(model, calibration, example_inputs, budget, strategy, fidelity, space, seed, evaluations) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"search: model must be an nn.Module (got {type(model).__name__})")
    if not isinstance(calibration, (list, tuple)) or not calibration:
        raise ValueError("search: calibration must be a non-empty list of model inputs (tensors, tuples or dicts "
                         f"of tensors); it is read several times (got {type(calibration).__name__})")
    if example_inputs is None:
        raise ValueError("search: example_inputs must be one batch of model inputs at the size to optimise for "
                         "(e.g. batch 32 x seq 128)")
    if not isinstance(budget, Budget):
        raise TypeError(f"search: budget must be a Budget, e.g. Budget(latency=0.5) (got {type(budget).__name__})")
    if strategy not in STRATEGIES:
        raise ValueError(f"search: strategy must be one of {', '.join(STRATEGIES)} (got {strategy!r})")
    if fidelity is not None and not callable(fidelity):
        raise TypeError(f"search: fidelity must be None or a callable model -> float (got {type(fidelity).__name__})")
    if space is not None and not isinstance(space, SearchSpace):
        raise TypeError(f"search: space must be None or a SearchSpace (got {type(space).__name__})")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"search: seed must be an int (got {type(seed).__name__})")
    if isinstance(evaluations, bool) or not isinstance(evaluations, int) or evaluations < 1:
        raise ValueError(f"search: evaluations must be a positive int (got {evaluations!r})")


def _block_ratios(model: nn.Module, ms: ModelSpace, table: LatencyTable, structure: Structure, i: int) -> tuple:
    """(rho - 1 summed over the structure's heads and FFN parts, d bytes) of block i."""
    block = model.get_submodule(f"{ms.stack.name}.{i}")
    sig = signature(block, ms.block_inputs)
    d_ratio, d_bytes = 0.0, 0
    if structure.heads:
        cost = table.block(block, ms.block_inputs, sig, f"heads={structure.heads}",
                           lambda b: prune_heads_(b, structure.heads))
        d_ratio, d_bytes = d_ratio + cost.ratio - 1.0, d_bytes + cost.delta_bytes
    if structure.ffn:
        cost = table.block(block, ms.block_inputs, sig, f"ffn={structure.ffn} round_to={ms.space.ffn_round_to}",
                           lambda b: prune_ffn_(b, structure.ffn, round_to=ms.space.ffn_round_to))
        d_ratio, d_bytes = d_ratio + cost.ratio - 1.0, d_bytes + cost.delta_bytes
    return d_ratio, d_bytes


def _time_options(ms: ModelSpace, table: LatencyTable, limits: dict, dtype, progress: bool) -> None:
    """Fill the table for every (site shape under each structure, option). With a latency-only budget, an
    option not faster than dense on a site's own shape is not timed on the site's shrunk shapes (it is
    taken to be no faster there either)."""
    original = {(site.out_features, site.in_features, site.bias, site.tokens, option)
                for site in ms.sites for option in ms.options}
    _measure(table, original, dtype, "timing layer options", progress)
    shrunk = set()
    for site in ms.sites:
        for option in ms.options:
            cost = table.layer(site.out_features, site.in_features, site.bias, dtype, site.tokens, option)
            if "size" not in limits and (isinstance(cost, str) or cost.ratio >= 1.0):
                continue
            shrunk.update((*ms.shape(site, st), site.bias, site.tokens, option) for st in ms.structures)
    _measure(table, shrunk - original, dtype, "timing layer options on shrunk shapes", progress)


def _measure(table: LatencyTable, keys: set, dtype, desc: str, progress: bool) -> None:
    missing = [key for key in sorted(keys, key=repr) if not table.has_layer(*key[:3], dtype, *key[3:])]
    try:
        for N, K, bias, tokens, option in tqdm(missing, desc=desc, unit="option", disable=not progress or not missing,
                                               leave=False):
            table.layer(N, K, bias, dtype, tokens, option)
    finally:
        table.save()


def _structure_errors(model, ms: ModelSpace, quality: QualityModel, calibration: list, order: list) -> dict:
    """(part, value) -> E of that structure change alone, for part heads, ffn and removed."""
    def run(stage):
        return lambda m: apply_recipe(m, Recipe([stage]), calibration=calibration, progress=False)

    errors = {("heads", 0.0): 0.0, ("ffn", 0.0): 0.0, ("removed", 0): 0.0}
    for st in ms.structures:
        if ("heads", st.heads) not in errors:
            errors[("heads", st.heads)] = quality.change_error(run(Stage(heads_config(st.heads))), ("heads", st.heads))
        if ("ffn", st.ffn) not in errors:
            config = ffn_config(st.ffn, ms.space.ffn_round_to)
            errors[("ffn", st.ffn)] = quality.change_error(run(Stage(config)), ("ffn", st.ffn))
        if ("removed", st.removed) not in errors:
            config = PruneLayersConfig(remove=tuple(sorted(order[:st.removed])), blocks=ms.stack.name)
            errors[("removed", st.removed)] = quality.change_error(run(Stage(config)), ("removed", st.removed))
    return errors


def _dominated(o: int, others: list, layer_errors: dict, costs: dict, structures: list, j: int, limits: dict) -> bool:
    """Whether another option of site j has no larger layer-wise error and, under every structure where
    option o applies, no larger cost in any budgeted quantity (ties: the earlier option stays)."""
    keys = [k for k, name in ((0, "latency"), (1, "size")) if name in limits]
    for p in others:
        if p == o or layer_errors[p] > layer_errors[o] or (layer_errors[p] == layer_errors[o] and p > o):
            continue
        if all((st, j, p) in costs and all(costs[(st, j, p)][k] <= costs[(st, j, o)][k] for k in keys)
               for st in structures if (st, j, o) in costs):
            return True
    return False


def _site_errors(ms: ModelSpace, quality: QualityModel, costs: dict, limits: dict, progress: bool) -> dict:
    """(site, option) -> E of the option on the site, for the options not dominated on their site
    (quality.py): layer-wise errors first, then the model's output error of each option left."""
    options = {}
    for (_, j, o) in costs:
        options.setdefault(j, set()).add(o)
    errors = {}
    with tqdm(total=sum(map(len, options.values())), desc="layer-wise and output errors", unit="option",
              disable=not progress, leave=False) as bar:
        for j in sorted(options):
            site = ms.sites[j]
            layer_errors = {}
            for o in sorted(options[j]):
                e = quality.layer_error(site, ms.options[o])
                if not isinstance(e, str):
                    layer_errors[o] = e
            for o in layer_errors:
                if not _dominated(o, list(layer_errors), layer_errors, costs, ms.structures, j, limits):
                    errors[(j, o)] = quality.output_error_of(site, ms.options[o])
            quality.release(site)
            bar.update(len(options[j]))
    return errors


def _build_problem(model, ms: ModelSpace, table: LatencyTable, quality: QualityModel, limits: dict,
                   model_time: ModelTime, dense_size: int, calibration: list, progress: bool) -> _Problem:
    dtype = next(model.parameters()).dtype
    _time_options(ms, table, limits, dtype, progress)
    block_ratios = {}
    try:
        if ms.stack is not None:
            for st in ms.structures:
                for i in range(ms.stack.count):
                    block_ratios[(st.heads, st.ffn, i)] = _block_ratios(model, ms, table, st, i)
    finally:
        table.save()
    costs = {}
    for st in ms.structures:
        for j, site in enumerate(ms.sites):
            N, K = ms.shape(site, st)
            dense_time = model_time.modules[site.name] * (N * K) / (site.out_features * site.in_features)
            for o, option in enumerate(ms.options):
                if not table.has_layer(N, K, site.bias, dtype, site.tokens, option):
                    continue
                cost = table.layer(N, K, site.bias, dtype, site.tokens, option)
                if isinstance(cost, str):
                    continue
                d_lat = dense_time * (cost.ratio - 1.0)
                # An option that lowers no budgeted quantity only adds error.
                if ("latency" in limits and d_lat < 0) or ("size" in limits and cost.delta_bytes < 0):
                    costs[(st, j, o)] = (d_lat, cost.delta_bytes)
    errors = _site_errors(ms, quality, costs, limits, progress)
    order = quality.removal_order() if ms.stack is not None and any(st.removed for st in ms.structures) else []
    structure_errors = _structure_errors(model, ms, quality, calibration, order) if ms.stack is not None else {}
    base, choices, removed_sets = [], [], []
    for st in ms.structures:
        removed = sorted(order[:st.removed])
        lat, size, err = model_time.seconds, dense_size, 0.0
        if ms.stack is not None:
            err = (structure_errors[("heads", st.heads)] + structure_errors[("ffn", st.ffn)]
                   + structure_errors[("removed", st.removed)])
            for i in range(ms.stack.count):
                name = f"{ms.stack.name}.{i}"
                if i in removed:
                    lat -= model_time.modules[name]
                    size -= module_bytes(model.get_submodule(name))
                else:
                    d_ratio, d_bytes = block_ratios[(st.heads, st.ffn, i)]
                    lat, size = lat + model_time.modules[name] * d_ratio, size + d_bytes
        base.append((lat, size, err))
        choice = {}
        for j, site in enumerate(ms.sites):
            if site.block is not None and site.block in removed:
                continue
            choice[j] = {o: (*costs[(st, j, o)], errors[(j, o)]) for o in range(len(ms.options))
                         if (st, j, o) in costs and (j, o) in errors}
        choices.append(choice)
        removed_sets.append(tuple(removed))
    return _Problem(ms, limits, base, choices, removed_sets)


def _assignment(problem: _Problem, s: int, opts: tuple) -> Assignment:
    ms = problem.ms
    options = tuple((ms.sites[j].name, ms.options[o]) for j, o in enumerate(opts)
                    if o != -1 and j in problem.choices[s])
    return Assignment(ms.structures[s], problem.removed[s], options, ms.stack.name if ms.stack else None,
                      ms.space.ffn_round_to)


def _pareto(candidates: list, keys: tuple) -> list:
    """The candidates no other candidate matches or beats in every key and beats in one (all keys
    smaller-is-better)."""
    values = [tuple(getattr(c, k) for k in keys) for c in candidates]
    if len(keys) == 2:
        # Sorted by the first key, a point is on the front when its second key beats all before it.
        front, best = [], (math.inf, math.inf)
        for i in sorted(range(len(candidates)), key=lambda i: values[i]):
            if values[i][1] < best[1] or values[i] == best:
                front.append(candidates[i])
                best = values[i]
        return front
    return [c for c, v in zip(candidates, values)
            if not any(w != v and all(a <= b for a, b in zip(w, v)) for w in values)]


def search(model: nn.Module, *, calibration: list, example_inputs, budget: Budget, strategy: str = "greedy",
           fidelity: Optional[Callable[[nn.Module], float]] = None, space: Optional[SearchSpace] = None,
           seed: int = 0, progress: bool = True, cache_dir: Optional[Union[str, Path]] = None,
           filter_fn: Optional[Callable[[nn.Module, str], bool]] = None, evaluations: int = 4,
           max_rows: int = MAX_ROWS) -> SearchResult:
    """Search the compression of ``model`` (left unchanged) that meets ``budget`` with the least error.

    ``calibration``: a list of model inputs for the layer-wise errors and for the data-driven options
    (the recipe needs them too). ``example_inputs``: one batch at the size to optimise for; latency is
    predicted for it. ``strategy``: "greedy" or "evolutionary" (module docstring). ``fidelity(model)
    -> float`` (higher is better), e.g. the embedding cosine to the original model on held-out data,
    judges the ``evaluations`` best candidates of distinct structures. ``space``: a SearchSpace
    (default: every option, heads, FFN and block removal where the model has BERT-style blocks).
    ``filter_fn(module, name)`` limits the nn.Linear layers searched. ``cache_dir``: where the latency
    table lives (latency.resolve_cache_dir). ``max_rows``: calibration rows per layer for its errors.

    Raises ValueError when no candidate can meet the budget, naming the minimum reachable.
    """
    _check_inputs(model, calibration, example_inputs, budget, strategy, fidelity, space, seed, evaluations)
    space = space or SearchSpace()
    ms = analyze(model, example_inputs, space, filter_fn)
    if not ms.sites and len(ms.structures) == 1:
        raise ValueError(f"search: the model has nothing to search: no nn.Linear layer to compress "
                         f"({'; '.join(f'{k}: {v}' for k, v in ms.skipped.items()) or 'none found'}) and no "
                         f"block stack at {space.blocks!r}")
    device = next(model.parameters()).device
    table = LatencyTable(device, cache_dir=cache_dir)
    was_training = model.training
    model.eval()
    try:
        timed = {site.name: model.get_submodule(site.name) for site in ms.sites}
        if ms.stack is not None:
            timed.update({f"{ms.stack.name}.{i}": model.get_submodule(f"{ms.stack.name}.{i}")
                          for i in range(ms.stack.count)})
        model_time = table.model(lambda: call_model(model, example_inputs), signature(model, example_inputs), timed)
        table.save()
        dense_latency = model_time.seconds
        dense_size = module_bytes(model)
        limits = budget.limits(dense_latency, dense_size)
        quality = QualityModel(model, list(calibration), ms, max_rows=max_rows)
        problem = _build_problem(model, ms, table, quality, limits, model_time, dense_size, list(calibration), progress)
    finally:
        model.train(was_training)
    for key, unit, dense in (("latency", "s", dense_latency), ("size", " bytes", dense_size)):
        if key in limits and problem.minimum(key) > limits[key]:
            reachable = problem.minimum(key)
            raise ValueError(f"search: {budget} asks for {key} <= {limits[key]:.6g}{unit} ({limits[key] / dense:.3f} of "
                             f"the dense model) but the minimum reachable in this search space is "
                             f"{reachable:.6g}{unit} ({reachable / dense:.3f} of the dense model)")

    visited = {}

    def visit(s, opts, totals):
        key = (s, tuple(o for j, o in enumerate(opts) if j in problem.choices[s]))
        visited.setdefault(key, (s, opts, totals))

    results = [_greedy(problem, 0, True, visit)]
    for s in range(1, len(ms.structures)):
        results.append(_greedy(problem, s, False, visit))
    results = [r for r in results if r is not None]
    if strategy == "evolutionary" and results:
        best = _evolve(problem, [(s, opts) for s, opts, _ in results], random.Random(seed), visit, progress)
        if best is not None:
            results.append(best)
    if not results:
        raise ValueError(f"search: no candidate in this search space meets {budget} (each limit alone is "
                         "reachable, but not all at once)")
    candidates = [Candidate(_assignment(problem, s, opts), lat, int(round(size)), err,
                            feasible=problem.excess(lat, size) == 0)
                  for s, opts, (lat, size, err) in visited.values()]
    # The best feasible candidate of each structure, best structures first, for fidelity.
    best_of = {}
    for i, c in enumerate(candidates):
        if c.feasible:
            s = ms.structures.index(c.assignment.structure)
            if s not in best_of or c.error < candidates[best_of[s]].error:
                best_of[s] = i
    shortlist = sorted(best_of.values(), key=lambda i: candidates[i].error)
    if fidelity is not None:
        shortlist = shortlist[:evaluations]
        for i in tqdm(shortlist, desc="fidelity of the best candidates", unit="candidate", disable=not progress,
                      leave=False):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                compressed = apply_searched(model, candidates[i].recipe, list(calibration))
            with torch.no_grad():
                value = fidelity(compressed)
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TypeError(f"search: fidelity must return a finite number (got {value!r})")
            candidates[i] = dataclasses.replace(candidates[i], fidelity=float(value))
        chosen = max(shortlist, key=lambda i: (candidates[i].fidelity, -candidates[i].error))
    else:
        chosen = shortlist[0]
    best = candidates[chosen]
    keys = tuple(attr for key, attr in (("latency", "latency_s"), ("size", "size_bytes")) if key in limits)
    pareto = _pareto(candidates, keys + ("error",))
    return SearchResult(recipe=best.recipe, assignment=best.assignment, predicted_latency_s=best.latency_s,
                        dense_latency_s=dense_latency, predicted_size_bytes=best.size_bytes,
                        dense_size_bytes=dense_size, error=best.error, fidelity=best.fidelity, budget=budget,
                        candidates=candidates, pareto=pareto, skipped=dict(ms.skipped))
