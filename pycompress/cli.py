"""The ``pycompress`` command.

    pycompress info                                     the ops x backends table of this machine
    pycompress compress MODEL --recipe R --out DIR      apply a recipe to a model and save the result
    pycompress eval DIR [--model MODEL]                 size, latency and fidelity against the original
    pycompress search MODEL --budget latency=0.5        search a recipe that meets a budget on this device
    pycompress bench [--family F ...] [--plot PNG]      run the benchmarks, or plot their committed results
    pycompress demo                                     the tour on the bundled all-MiniLM-L6-v2

MODEL is ``minilm`` (the bundled model), a Hugging Face model folder or ``module:factory``
(``pycompress.models.load_model_spec``). An error is printed as one line, ``pycompress: error: <message>``,
with exit status 2 for a command line that does not parse and 1 otherwise; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import importlib.util
import json
import os
import shutil
import statistics
import sys
import uuid
from pathlib import Path

PROG = "pycompress"
MODEL_HELP = "minilm, a Hugging Face model folder or module:factory"
RECIPE_FILE = "recipe.yaml"


class UsageError(Exception):
    """A command line that does not parse, or options that do not go together (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def _api(module: str, name: str):
    """``module.name``, imported when a subcommand needs it: the recipe and search packages load only for
    the subcommands that use them."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"{module}.{name} is not available in this installation ({exc})") from exc


# The calls into the recipe and search packages, one place each (the demo uses them too).

def _load_recipe(source: str):
    return _api("pycompress.recipe", "load_recipe")(source)


def _check_recipe(model, recipe) -> None:
    _api("pycompress.recipe", "check_recipe")(model, recipe)


def apply_recipe_to(model, recipe, loaded, *, checkpoint_dir, progress: bool):
    """The recipe applied to ``model`` (in place where the stages allow) with the data of ``loaded`` (a
    LoadedModel); returns the RecipeReport, whose ``.model`` is the result."""
    return _api("pycompress.recipe", "apply_recipe")(
        model, recipe, calibration=loaded.calibration_batches(), train_data=loaded.train_batches(10),
        example_inputs=loaded.example_inputs(), checkpoint_dir=checkpoint_dir, resume=True, progress=progress)


def _save_compressed(model, path: Path, recipe, source: str) -> None:
    _api("pycompress.recipe", "save_compressed")(model, path, recipe=recipe, source=source)


def _load_compressed(path: Path, model, device):
    return _api("pycompress.recipe", "load_compressed")(path, model=model, device=device)


def _saved_source(path: Path) -> str:
    """The model spec a directory written by ``pycompress compress`` was made from."""
    return _api("pycompress.recipe", "saved_source")(path)


def make_budget(text: str):
    """``"latency=0.5"`` or ``"latency=0.5,size=0.25"`` -> ``pycompress.search.Budget(latency=0.5, ...)``."""
    kwargs = {}
    for item in text.split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise UsageError(f"--budget: expected KEY=VALUE[,KEY=VALUE...], e.g. latency=0.5 (got {text!r})")
        try:
            kwargs[key] = int(value) if value.lstrip("+-").isdigit() else float(value)
        except ValueError:
            raise UsageError(f"--budget: {key} must be a number (got {value!r})") from None
    budget_type = _api("pycompress.search", "Budget")
    if dataclasses.is_dataclass(budget_type):
        known = [f.name for f in dataclasses.fields(budget_type)]
        unknown = [key for key in kwargs if key not in known]
        if unknown:
            raise UsageError(f"--budget: unknown key {unknown[0]!r} (known: {', '.join(known)})")
    try:
        return budget_type(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--budget: {exc}") from exc


def run_search(model, loaded, *, budget, strategy: str, batch: int, seq: int, progress: bool):
    return _api("pycompress.search", "search")(
        model, calibration=loaded.calibration_batches(), example_inputs=loaded.timing_batch(batch, seq),
        budget=budget, strategy=strategy, fidelity=loaded.fidelity, progress=progress)


# Output directories: written next to their final place, renamed into it only when complete.

def _check_out_dir(out: Path, force: bool) -> None:
    if Path.cwd().resolve().is_relative_to(out.resolve()):
        raise ValueError(f"--out: {out} holds the working directory; name a directory to create or replace")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"--out: {out} exists and is not empty (pass --force to replace it)")


def _sibling(out: Path, what: str) -> Path:
    """A new hidden name next to ``out`` (on the same file system, so that renames are atomic)."""
    return out.parent / f".{out.name}.{what}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished directory ``tmp`` to ``out``, replacing what is there."""
    if not out.exists():
        os.replace(tmp, out)
        return
    trash = _sibling(out, "old")
    trash.mkdir()
    try:
        os.replace(out, trash / out.name)
        try:
            os.replace(tmp, out)
        except OSError:
            os.replace(trash / out.name, out)
            raise
    finally:
        # Only once `out` holds a complete directory again may the old one go.
        if out.exists():
            shutil.rmtree(trash)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.2f} MiB"


def _ratio(before: float, after: float, less: str, more: str) -> str:
    """``before / after`` as "1.52x smaller" (``less``) or, below 1, its inverse as "1.10x larger"."""
    ratio = before / after if after else float("inf")
    return f"{ratio:.2f}x {less}" if ratio >= 1 else f"{1 / ratio:.2f}x {more}"


def format_table(rows: list) -> str:
    """Rows of cells as aligned columns, a rule under the first row."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# Subcommands.

def _cmd_info(args) -> int:
    import pycompress

    pycompress.info()
    return 0


def _cmd_compress(args) -> int:
    from pycompress.models import load_model_spec, model_bytes

    out = Path(args.out)
    _check_out_dir(out, args.force)
    recipe = _load_recipe(args.recipe)
    loaded = load_model_spec(args.model, device=args.device)
    source = Path(loaded.spec.rpartition(":")[0] if loaded.kind == "factory" else loaded.spec)
    if source.exists() and source.resolve().is_relative_to(out.resolve()):
        raise ValueError(f"--out: {out} holds the model it would be made from ({loaded.spec})")
    _check_recipe(loaded.model, recipe)
    original_bytes = model_bytes(loaded.model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out, "partial")
    tmp.mkdir()
    try:
        report = apply_recipe_to(loaded.model, recipe, loaded, checkpoint_dir=args.checkpoint_dir,
                                 progress=args.progress)
        _save_compressed(report.model, tmp, recipe, loaded.spec)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = model_bytes(report.model)
    print(report)
    print(f"{PROG}: wrote {out}: {len(recipe.stages)} stages of {recipe.name!r} applied to "
          f"{loaded.spec}; weights {_mib(size)} (original {_mib(original_bytes)}, "
          f"{_ratio(original_bytes, size, 'smaller', 'larger')}), {_mib(_dir_bytes(out))} on disk")
    return 0


def _cmd_eval(args) -> int:
    from pycompress.models import load_model_spec, model_bytes, time_models

    path = Path(args.dir)
    if not path.is_dir():
        raise ValueError(f"DIR: {path} is not a directory written by `{PROG} compress`")
    spec = args.model or _saved_source(path)
    loaded = load_model_spec(spec, device=args.device)
    compressed = _load_compressed(path, copy.deepcopy(loaded.model), loaded.device)
    inputs = loaded.timing_batch(args.batch, args.seq)
    latency = time_models({"original": loaded.model, "compressed": compressed}, inputs, rounds=args.rounds,
                          progress=args.progress)
    fidelity = loaded.fidelity(compressed)
    b0, b1 = model_bytes(loaded.model), model_bytes(compressed)
    t0, t1 = latency["original"], latency["compressed"]
    shape = f"batch {args.batch} x seq {args.seq}" if loaded.kind == "hf" else f"batch {args.batch}"
    what = "held-out embedding cosine" if loaded.kind == "hf" else "output cosine on random inputs"
    print(f"{path} (from {loaded.spec}) on {loaded.device.type}")
    print(format_table([
        ("", "original", "compressed"),
        ("weights", _mib(b0), f"{_mib(b1)} ({_ratio(b0, b1, 'smaller', 'larger')})"),
        ("on disk", "", _mib(_dir_bytes(path))),
        (f"latency ({shape}, median of {args.rounds})", f"{t0 * 1e3:.2f} ms",
         f"{t1 * 1e3:.2f} ms ({_ratio(t0, t1, 'faster', 'slower')})"),
        (f"fidelity ({what})", "1.0000", f"{fidelity:.4f}"),
    ]))
    return 0


def _cmd_search(args) -> int:
    from pycompress.models import load_model_spec

    budget = make_budget(args.budget)
    out = Path(args.out) if args.out else None
    if out is not None and (out / RECIPE_FILE).exists() and not args.force:
        raise ValueError(f"--out: {out / RECIPE_FILE} exists (pass --force to replace it)")
    if args.plot:
        from pycompress.demo import require_matplotlib

        require_matplotlib()
    loaded = load_model_spec(args.model, device=args.device)
    result = run_search(copy.deepcopy(loaded.model), loaded, budget=budget, strategy=args.strategy,
                        batch=args.batch, seq=args.seq, progress=args.progress)
    text = result.recipe.to_yaml()
    print(f"{PROG}: {args.strategy} search on {loaded.spec}")
    print(result)
    if out is None:
        print(text, end="" if text.endswith("\n") else "\n")
    else:
        out.mkdir(parents=True, exist_ok=True)
        (out / RECIPE_FILE).write_text(text if text.endswith("\n") else text + "\n")
        print(f"{PROG}: wrote {out / RECIPE_FILE}")
    if args.plot:
        result.plot(args.plot)
        print(f"{PROG}: wrote {args.plot}")
    return 0


def _benchmark_runner():
    """The benchmark runner ``benchmarks/run.py`` of the source checkout this package runs from."""
    import pycompress

    path = Path(pycompress.__file__).resolve().parent.parent / "benchmarks" / "run.py"
    if not path.is_file():
        raise FileNotFoundError(f"bench needs the benchmarks/ folder of a pycompress source checkout, which is not "
                                f"installed with the package ({path} is missing)")
    spec = importlib.util.spec_from_file_location("_pycompress_benchmarks_run", path)
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    return runner


def speedup_table(results: list) -> list:
    """One row per (family, case, candidate, baseline) of benchmark results (the JSON the runner writes):
    the median, lowest and highest ratio ``baseline time / candidate time`` over the shapes measured."""
    groups = {}
    for result in results:
        for row in result["rows"]:
            for baseline, ratio in row.get("speedup_vs", {}).items():
                key = (result["family"], row["case"], row["candidate"], baseline)
                groups.setdefault(key, []).append(ratio)
    return [{"family": family, "case": case, "candidate": candidate, "baseline": baseline,
             "median": statistics.median(ratios), "low": min(ratios), "high": max(ratios), "shapes": len(ratios)}
            for (family, case, candidate, baseline), ratios in groups.items()]


def plot_speedups(results: list, path) -> Path:
    """A bar chart of ``speedup_table(results)`` written to the PNG ``path``: one panel per family, one bar
    per candidate and baseline (the median over shapes, whiskers from the lowest to the highest)."""
    from pycompress.demo import require_matplotlib

    figure_type = require_matplotlib()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    table = speedup_table(results)
    if not table:
        raise ValueError("plot_speedups: the results hold no speedup ratios")
    families = list(dict.fromkeys(row["family"] for row in table))
    counts = [sum(row["family"] == f for row in table) for f in families]
    fig = figure_type(figsize=(11, 1.2 + 0.3 * sum(counts) + 0.7 * len(families)))
    axes = fig.subplots(len(families), 1, squeeze=False, gridspec_kw={"height_ratios": counts})[:, 0]
    for ax, family in zip(axes, families):
        rows = [row for row in table if row["family"] == family]
        y = list(range(len(rows)))
        medians = [row["median"] for row in rows]
        errors = [[m - row["low"] for m, row in zip(medians, rows)], [row["high"] - m for m, row in zip(medians, rows)]]
        # Bars grow from 1x: to the right for a speedup, to the left for a slowdown.
        ax.barh(y, [m - 1 for m in medians], left=1, xerr=errors, capsize=2,
                color=["tab:green" if m >= 1 else "tab:red" for m in medians])
        ax.set_yticks(y, [f"{r['case']}: {r['candidate']} vs {r['baseline']} ({r['shapes']})" for r in rows],
                      fontsize=7)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(family, fontsize=9, loc="left")
    devices = ", ".join(dict.fromkeys(str(r.get("device", "?")) for r in results))
    axes[-1].set_xlabel("speedup = baseline time / candidate time")
    fig.suptitle(f"pycompress benchmarks on {devices}: median over the shapes (count in parentheses), "
                 f"whiskers from the lowest to the highest", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def _cmd_bench(args) -> int:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.from_results is not None:
        if not args.plot:
            raise UsageError("--from-results only draws the plot: give --plot PNG")
        if args.quick or args.out:
            raise UsageError("--from-results runs no benchmark: --quick and --out do not apply")
        folder = Path(args.from_results) if args.from_results else None
        if folder is None:
            runner = _benchmark_runner()
            folder = runner.RESULTS / runner.device_name(device)
        if not folder.is_dir():
            raise FileNotFoundError(f"--from-results: {folder} is not a folder of benchmark results")
        files = sorted(folder.glob("*.json"))
        if args.family:
            files = [f for f in files if f.stem in args.family]
        if not files:
            wanted = f" for {', '.join(args.family)}" if args.family else ""
            raise FileNotFoundError(f"--from-results: {folder} holds no results{wanted} (*.json)")
    else:
        runner = _benchmark_runner()
        unknown = [f for f in args.family or [] if f not in runner.FAMILIES]
        if unknown:
            raise UsageError(f"--family: must be among {', '.join(runner.FAMILIES)} (got {', '.join(unknown)})")
        if args.plot:
            from pycompress.demo import require_matplotlib

            require_matplotlib()
        out = Path(args.out) if args.out else runner.RESULTS
        files = [runner.run_family(family, device, args.quick, out) for family in args.family or runner.FAMILIES]
    if args.plot:
        results = [json.loads(Path(f).read_text()) for f in files]
        print(f"{PROG}: wrote {plot_speedups(results, args.plot)} from {', '.join(str(f) for f in files)}")
    return 0


def _cmd_demo(args) -> int:
    from pycompress.demo import run_demo

    run_demo(model=args.model, quick=args.quick, search=not args.no_search, budget=args.budget,
             plot=None if args.no_plot else args.plot, batch=args.batch, seq=args.seq, rounds=args.rounds,
             device=args.device, progress=args.progress)
    return 0


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__} (got {text!r})") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__} (got {text!r})")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    # Options every subcommand takes, before or after its name: SUPPRESS keeps a value given before it.
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")
    common.add_argument("--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS,
                        help="no progress bars")
    on_device = _Parser(add_help=False)
    on_device.add_argument("--device", default="cpu", help="torch device to load and run the models on (cpu)")
    timing = _Parser(add_help=False)
    timing.add_argument("--batch", type=_positive(int), default=32, help="rows per timed batch (32)")
    timing.add_argument("--seq", type=_positive(int), default=128, help="tokens per row of text models (128)")

    parser = _Parser(prog=PROG, description="Model compression for PyTorch that ends in real speed.",
                     epilog="MODEL: 'minilm' (the bundled all-MiniLM-L6-v2), a Hugging Face model folder, or "
                            "'module:factory' (a module or a path to a .py file; factory() returns an nn.Module "
                            "or (nn.Module, example_inputs)).")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", parents=[common], help="print the ops x backends table of this machine")
    p.set_defaults(run=_cmd_info)

    p = sub.add_parser("compress", parents=[common, on_device], help="apply a recipe to a model and save it",
                       description="Apply a recipe to MODEL and save the result in DIR (written next to DIR and "
                                   "renamed into place only when complete).")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--recipe", required=True, metavar="R",
                   help="a .yaml file, YAML text, a .py file defining RECIPE, or module:attr")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--force", action="store_true", help="replace DIR when it exists and is not empty")
    p.add_argument("--checkpoint-dir", metavar="CKPT",
                   help="save each finished stage there; a rerun with the same recipe resumes after the last one")
    p.set_defaults(run=_cmd_compress)

    p = sub.add_parser("eval", parents=[common, on_device, timing],
                       help="size, latency and fidelity of a compressed model against the original")
    p.add_argument("dir", metavar="DIR", help="a directory written by `pycompress compress`")
    p.add_argument("--model", metavar="MODEL", help="the original model (default: the one DIR was made from)")
    p.add_argument("--rounds", type=_positive(int), default=5, help="timed rounds; the median is shown (5)")
    p.set_defaults(run=_cmd_eval)

    p = sub.add_parser("search", parents=[common, on_device, timing],
                       help="search a recipe that meets a budget on this device")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--budget", default="latency=0.5",
                   help="KEY=VALUE[,...] of pycompress.search.Budget, e.g. latency=0.5: half the dense latency")
    p.add_argument("--strategy", choices=("greedy", "evolutionary"), default="greedy")
    p.add_argument("--out", metavar="DIR", help=f"write the recipe to DIR/{RECIPE_FILE} (default: print it)")
    p.add_argument("--force", action="store_true", help=f"replace an existing DIR/{RECIPE_FILE}")
    p.add_argument("--plot", metavar="PNG", help="write the latency-fidelity plot of the candidates (Pareto front)")
    p.set_defaults(run=_cmd_search)

    p = sub.add_parser("bench", parents=[common], help="run the benchmarks, or plot their results",
                       description="Run benchmarks/run.py for the families (all by default), or with "
                                   "--from-results only plot results already written: a bar chart of speedups.")
    p.add_argument("--family", nargs="+", metavar="F", help="int8, lowbit, sparse, lowrank (default: all)")
    p.add_argument("--quick", action="store_true", help="the target shapes only")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--out", metavar="DIR", help="where the runner writes <device>/<family>.json "
                                                "(default: benchmarks/results)")
    p.add_argument("--from-results", nargs="?", const="", default=None, metavar="FOLDER",
                   help="plot the *.json in FOLDER (default: benchmarks/results/<this device>) without running")
    p.add_argument("--plot", metavar="PNG", help="write the bar chart of speedup ratios")
    p.set_defaults(run=_cmd_bench)

    p = sub.add_parser("demo", parents=[common, on_device, timing],
                       help="the tour: methods and a searched recipe on the bundled MiniLM, with a plot")
    p.add_argument("--model", default="minilm", metavar="MODEL", help="the model to tour (minilm)")
    p.add_argument("--quick", action="store_true", help="fewer methods and timed rounds")
    p.add_argument("--no-search", action="store_true", help="leave out the searched recipe")
    p.add_argument("--budget", default="latency=0.5", help="the search's budget, as for `pycompress search` "
                                                          "(latency=0.5)")
    p.add_argument("--rounds", type=_positive(int), default=None, help="timed rounds (5; 2 with --quick)")
    p.add_argument("--plot", default="pycompress-demo.png", metavar="PNG",
                   help="where to write the latency-fidelity plot (pycompress-demo.png)")
    p.add_argument("--no-plot", action="store_true", help="no plot (matplotlib not needed)")
    p.set_defaults(run=_cmd_demo)
    return parser


def _message(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = "; ".join(lines) or type(exc).__name__
    if isinstance(exc, (ValueError, TypeError, OSError, ImportError)):
        return text
    return f"{type(exc).__name__}: {text} (--debug shows the traceback)"


def _fail(message: str, status: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status


def main(argv=None) -> int:
    """Run the command line ``argv`` (default: sys.argv[1:]); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return _fail(str(exc), 2)
    try:
        return args.run(args)
    except UsageError as exc:
        return _fail(str(exc), 2)
    except KeyboardInterrupt:
        if args.debug:
            raise
        return _fail("interrupted", 130)
    except Exception as exc:
        if args.debug:
            raise
        return _fail(_message(exc), 1)


if __name__ == "__main__":
    sys.exit(main())
