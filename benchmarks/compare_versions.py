"""Run one benchmark against two source trees of orchestrix, interleaved, and print the ratios.

A change that must not slow anything down (a refactoring) is measured this way: the two versions
run in turns in the same session (before, after, after, before...), so that the machine's noise
(other jobs, CPU frequency) falls on both alike. Every number of every markdown table row the
benchmark prints is collected per version; the report gives each row's medians and the ratio
after / before.

Run: ``python benchmarks/compare_versions.py --before OLD/src --after NEW/src --rounds 3 --
benchmarks/bench_overhead.py``. ``OLD`` is e.g. a ``git worktree`` of the earlier commit.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Sequence

_NUMBER = re.compile(r"^[-+]?[\d,]*\.?\d+(?:[eE][-+]?\d+)?$")


def table_numbers(text: str) -> dict[tuple[str, str, str], float]:
    """``(section, row label, column name)`` -> number, for every markdown table row of
    ``text``; the section is the last heading above the table (two tables may have a row of the
    same label)."""
    found: dict[tuple[str, str, str], float] = {}
    section, header = "", []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            section, header = stripped.lstrip("#").strip(), []
            continue
        if not stripped.startswith("|"):
            header = [] if not stripped else header
            continue
        cells = [cell.strip() for cell in stripped.strip("|").split("|")]
        if not header:
            header = cells
            continue
        if set("".join(cells)) <= set("-: "):
            continue  # the separator row
        for column, cell in enumerate(cells[1:], start=1):
            number = cell.split()[0] if cell else ""
            if _NUMBER.match(number):
                name = header[column] if column < len(header) else str(column)
                found[(section, cells[0], name)] = float(number.replace(",", ""))
    return found


def run_once(src: str, command: Sequence[str]) -> dict[tuple[str, str, str], float]:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    done = subprocess.run(
        [sys.executable, *command], env=env, capture_output=True, text=True, check=True
    )
    return table_numbers(done.stdout)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="src directory of the earlier version")
    parser.add_argument("--after", required=True, help="src directory of the later version")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each version")
    parser.add_argument("command", nargs="+", help="the benchmark script and its arguments")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[tuple[str, str, str], float]]] = {"before": [], "after": []}
    for round_ in range(args.rounds):
        # before-after, then after-before: a drift over the session (a warming cache, a
        # neighbour's job) does not always fall on the same version
        order = ("before", "after") if round_ % 2 == 0 else ("after", "before")
        for version in order:
            runs[version].append(run_once(getattr(args, version), args.command))
    print(f"`{' '.join(args.command)}`: {args.rounds} interleaved rounds per version\n")
    print("| table | row | column | before (median) | after (median) | after / before |")
    print("|---|---|---|---|---|---|")
    for cell in sorted(set(runs["before"][0]) & set(runs["after"][0])):
        before = statistics.median(run[cell] for run in runs["before"] if cell in run)
        after = statistics.median(run[cell] for run in runs["after"] if cell in run)
        ratio = f"{after / before:.3f}" if before else "-"
        print(f"| {cell[0]} | {cell[1]} | {cell[2]} | {before:g} | {after:g} | {ratio} |")


if __name__ == "__main__":
    main()
