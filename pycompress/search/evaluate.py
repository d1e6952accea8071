"""The search against single-method recipes on the bundled MiniLM, at one CPU latency budget.

    python -m pycompress.search.evaluate [--budget 0.5] [--strategy greedy] [--batch 32 --seq 128]

The search gets the budget as a fraction of the dense model's latency at batch x seq tokens, and
calibration batches and a validation fidelity (embedding cosine to the original model) from the
calibration split of the bundled sentences. Each single method (one config on every layer, or one
kind of structure change) is tuned to the same budget: its settings are tried from the mildest up,
measuring each one's latency against the dense model, and the first that meets
the budget is kept; a method whose strongest setting misses it is reported as such. The mildest
setting that missed is reported too, for a comparison at about the same latency. All settings of a
method are timed together with the dense model (in turn, round after round), and in the end the
searched recipe and every kept setting are timed again together; all are judged on the held-out
sentences.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings

import torch

from pycompress.data import sentences
from pycompress.lowrank.configs import LowRankConfig
from pycompress.models import embed, load_minilm, mean_cosine, synthetic_batch
from pycompress.prune.configs import Sparse24Config, SparseConfig
from pycompress.prune.layers import prune_layers_
from pycompress.prune.physical import StructuredPruneConfig
from pycompress.quant.configs import Int8Config
from pycompress.recipe import Recipe, Stage
from pycompress.search.latency import median_ratio, time_interleaved
from pycompress.search.search import Budget, apply_searched, search


def _methods(calibration) -> dict:
    """Method name -> settings from the mildest to the strongest, each (label, model -> compressed copy)."""

    def recipe(config):
        return lambda model: apply_searched(model, Recipe([Stage(config)], name="single"), calibration)

    def remove(n):
        def run(model):
            return prune_layers_(copy.deepcopy(model), n, data=calibration).eval()
        return run

    def structure(target, amount):
        return recipe(StructuredPruneConfig(amount=amount, target=target, importance="data",
                                            round_to=16 if target == "ffn" else 1))

    return {
        "int8 W8A8 everywhere": [("Int8Config()", recipe(Int8Config()))],
        "2:4 everywhere": [("Sparse24Config(wanda)", recipe(Sparse24Config(method="wanda", min_speedup=None)))],
        "unstructured sparsity everywhere": [
            (f"SparseConfig({s}, wanda)", recipe(SparseConfig(sparsity=s, method="wanda", min_speedup=None)))
            for s in (0.5, 0.7, 0.8, 0.9, 0.95)],
        "low-rank everywhere": [
            (f"LowRankConfig(rank={f}, activation_scaled)", recipe(LowRankConfig(rank=f, method="activation_scaled")))
            for f in (0.375, 0.25, 0.1875, 0.125, 0.0625)],
        "FFN pruning": [(f"ffn -{a:.0%}", structure("ffn", a)) for a in (0.5, 0.75, 0.875)],
        "head pruning": [(f"heads -{a:.0%}", structure("heads", a)) for a in (0.5, 0.75, 0.9)],
        "block removal": [(f"{n} of 6 blocks removed", remove(n)) for n in (1, 2, 3, 4)],
    }


def _relative_latencies(model, models: list, batch, rounds: int) -> list:
    """Each of ``models``' latency over the dense ``model``'s: all run in turn, round after round, and
    each ratio is the median over rounds of the ratio within a round (the load of a shared machine
    drifts; within a round all see about the same)."""
    fns = [lambda m=m: m(**batch) for m in (model, *models)]
    times = time_interleaved(fns, device=torch.device("cpu"), rounds=rounds, warmup=1)
    return [median_ratio(t, times[0]) for t in times[1:]]


def evaluate(budget: float = 0.5, strategy: str = "greedy", batch: int = 32, seq: int = 128,
             cache_dir=None, rounds: int = 7, progress: bool = True, plot=None) -> dict:
    """Run the comparison of the module docstring; returns what it prints, as a dict."""
    warnings.simplefilter("ignore")
    model, tokenizer = load_minilm()
    calibration_text = sentences("calibration")
    calibration = [dict(tokenizer(calibration_text[i:i + 16], padding=True, return_tensors="pt"))
                   for i in range(0, 64, 16)]
    validation = calibration_text[256:]
    heldout = sentences("heldout")
    reference_validation = embed(model, tokenizer, validation)
    reference = embed(model, tokenizer, heldout)
    inputs = synthetic_batch(tokenizer, batch, seq)

    start = time.perf_counter()
    result = search(model, calibration=calibration, example_inputs=inputs, budget=Budget(latency=budget),
                    strategy=strategy, cache_dir=cache_dir, progress=progress,
                    fidelity=lambda m: mean_cosine(reference_validation, embed(m, tokenizer, validation)))
    search_seconds = time.perf_counter() - start
    if plot:
        result.plot(plot)
    searched = apply_searched(model, result.recipe, calibration)
    rows = [{"method": f"search ({strategy})", "setting": result.assignment.describe(),
             "predicted": result.predicted_latency_s / result.dense_latency_s, "model": searched}]

    for method, ladder in _methods(calibration).items():
        built = [(label, build(model)) for label, build in ladder]
        ratios = _relative_latencies(model, [m for _, m in built], inputs, rounds)
        tried = [f"{label}: {ratio:.3f}" for (label, _), ratio in zip(built, ratios)]
        meets = next((i for i, ratio in enumerate(ratios) if ratio <= budget), None)
        if meets is None:
            rows.append({"method": method, "setting": None, "tried": tried})
        else:
            rows.append({"method": method, "setting": built[meets][0], "tried": tried, "model": built[meets][1]})
        missed = len(built) - 1 if meets is None else meets - 1
        if missed >= 0:
            # The mildest setting that missed the budget, for a comparison at about the same latency.
            rows.append({"method": method, "setting": built[missed][0], "misses": True, "model": built[missed][1]})

    final = [row for row in rows if "model" in row]
    for row, ratio in zip(final, _relative_latencies(model, [row["model"] for row in final], inputs, rounds)):
        row["latency"] = ratio
        row["heldout_cosine"] = mean_cosine(reference, embed(row.pop("model"), tokenizer, heldout))

    print(f"\nMiniLM-L6 on CPU ({torch.get_num_threads()} threads), batch {batch} x seq {seq}, "
          f"latency budget {budget} of dense ({result.dense_latency_s * 1e3:.0f} ms); search took "
          f"{search_seconds:.0f} s")
    print(f"search: {result}")
    print(f"{'method':34} {'latency (measured)':>18} {'held-out cosine':>16}  setting")
    for row in rows:
        if row["setting"] is None:
            print(f"{row['method']:34} {'cannot meet the budget':>35}  tried {'; '.join(row['tried'])}")
            continue
        note = f" (predicted {row['predicted']:.3f})" if "predicted" in row else ""
        note += " (misses the budget)" if row.get("misses") else ""
        print(f"{row['method']:34} {row['latency']:>18.3f} {row['heldout_cosine']:>16.4f}  {row['setting']}{note}")
    return {"budget": budget, "strategy": strategy, "batch": batch, "seq": seq, "search_seconds": search_seconds,
            "dense_latency_s": result.dense_latency_s, "rows": rows,
            "recipe": [f"{type(s.config).__name__} {s.pattern or ''}" for s in result.recipe.stages]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--strategy", choices=("greedy", "evolutionary"), default="greedy")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--plot", default=None, help="also draw the search's candidates to this PNG")
    args = parser.parse_args(argv)
    out = evaluate(args.budget, args.strategy, args.batch, args.seq, args.cache_dir, args.rounds, plot=args.plot)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
