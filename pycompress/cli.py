"""The ``pycompress`` command: ``pycompress info`` and ``pycompress demo``."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pycompress", description="Model compression for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print the ops x backends table of this machine")
    demo = sub.add_parser("demo", help="compress the bundled MiniLM model with Int8Config and compare")
    demo.add_argument("--batch", type=int, default=32, help="sentences per batch for the latency figure")
    demo.add_argument("--seq", type=int, default=128, help="tokens per sentence for the latency figure")
    demo.add_argument("--repeats", type=int, default=5, help="timed runs per model (the median is shown)")
    args = parser.parse_args(argv)
    if args.command == "info":
        import pycompress

        pycompress.info()
        return 0
    from pycompress.demo import run_demo

    run_demo(batch=args.batch, seq=args.seq, repeats=args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
