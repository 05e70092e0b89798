"""Command line: ``python -m orchestrix demo`` (more commands arrive with later features)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from .config import DEFAULT_MODE, MODES
from .errors import OrchestrixError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrix")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a tiled raster computation and print a summary")
    demo.add_argument("--mode", choices=MODES, default=DEFAULT_MODE)
    demo.add_argument("--size", type=int, default=2048, help="raster side in pixels")
    demo.add_argument("--tile", type=int, default=256, help="tile side in pixels")
    demo.add_argument("--nb-workers", help="worker count (int or 'auto'; not for sequential)")
    demo.add_argument("--out-dir", help="where the run writes its files")
    args = parser.parse_args(argv)
    try:
        return _demo(args)
    except OrchestrixError as exc:
        print(f"orchestrix: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


def _demo(args: argparse.Namespace) -> int:
    from .demo import format_summary, run_demo  # numpy only when the demo runs

    options: dict[str, Any] = {"mode": args.mode}
    if args.nb_workers is not None:
        options["nb_workers"] = (
            int(args.nb_workers) if args.nb_workers.isdigit() else args.nb_workers
        )
    if args.out_dir is not None:
        options["out_dir"] = args.out_dir
    summary = run_demo(args.size, args.tile, **options)
    print(format_summary(summary, args.size, args.tile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
