"""What observing a run costs: noop throughput with each profiling mode, side by side in one run.

The workload is the ``noop`` row of ``bench_local.py`` (``submit`` one task per call, then wait for
every result) on the multiprocessing backend, 2 workers, forkserver; ``--workload compute`` runs
the same tasks as one graph (``compute`` of N independent tasks), ``--workload sequential`` that
graph in sequential mode (the caller does everything, so every cost of the caller shows).
Each variant runs in its own process; rounds are interleaved so that a noisy neighbour slows
every variant alike. Variants:

* ``timing`` (the default): per-task wall, CPU, peak RSS and worker recorded.
* ``timing+out_dir``: the same, with worker logs, run.json and the task journal written.
* ``cprofile``: every task run under cProfile in the workers.
* ``baseline`` and ``baseline+out_dir`` (with ``--baseline-src DIR``): the same workload on
  another orchestrix source tree, e.g. a checkout of a version from before task records or the
  journal existed (``git worktree add``).

Run: ``python benchmarks/bench_profiling.py [--tasks 20000] [--rounds 7] [--baseline-src DIR]
[--workload submit|compute|sequential] [--variants timing,timing+out_dir,cprofile]``.
Prints a markdown table: median tasks/s per variant and its ratio to the first variant, and the
caller's CPU time per task (the caller is the bottleneck of this workload; CPU time is steadier
than throughput on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, tempfile, time
import orchestrix as ox

def noop(x):
    return x

variant, n_tasks, workload = sys.argv[1], int(sys.argv[2]), sys.argv[3]
options = {"mode": "multiprocessing", "nb_workers": 2, "mp_mode": "forkserver"}
if workload == "sequential":
    options = {"mode": "sequential"}
task = ox.task(noop)

def run(orch, count):
    if workload == "submit":
        return [f.result() for f in [orch.submit(noop, i) for i in range(count)]]
    return orch.compute([task(i) for i in range(count)])

with tempfile.TemporaryDirectory() as out_dir:
    if variant.endswith("+out_dir") or variant == "cprofile":
        options["out_dir"] = out_dir
    if variant == "cprofile":
        options["profiling"] = {"mode": "cprofile"}
    with ox.Orchestrator(**options) as orch:
        run(orch, 2000)  # warm up
        start, cpu_start = time.perf_counter(), time.process_time()
        results = run(orch, n_tasks)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    assert results == list(range(n_tasks))
print(json.dumps({"tasks_per_s": n_tasks / seconds, "caller_cpu_us": cpu / n_tasks * 1e6}))
"""


def run_variant(variant: str, n_tasks: int, source: str | None, workload: str) -> dict[str, float]:
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.path.join(source, "src")
    with tempfile.TemporaryDirectory() as cwd:
        output = subprocess.run(
            [sys.executable, "-c", CHILD, variant, str(n_tasks), workload],
            env=env,
            cwd=cwd,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    return dict(json.loads(output.splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--baseline-src", help="another orchestrix source tree to compare with")
    parser.add_argument("--workload", choices=("submit", "compute", "sequential"), default="submit")
    parser.add_argument("--variants", default="timing,timing+out_dir,cprofile")
    args = parser.parse_args()
    variants = args.variants.split(",")
    sources: dict[str, str | None] = dict.fromkeys(variants)
    if args.baseline_src:
        variants[:0] = ["baseline", "baseline+out_dir"]
        sources["baseline"] = sources["baseline+out_dir"] = args.baseline_src
    rates: dict[str, list[float]] = {variant: [] for variant in variants}
    cpus: dict[str, list[float]] = {variant: [] for variant in variants}
    for _ in range(args.rounds):
        for variant in variants:
            measured = run_variant(variant, args.tasks, sources[variant], args.workload)
            rates[variant].append(measured["tasks_per_s"])
            cpus[variant].append(measured["caller_cpu_us"])
    reference = statistics.median(rates[variants[0]])
    cpu_reference = statistics.median(cpus[variants[0]])
    print(
        f"noop ({args.workload}), {args.tasks} tasks, median of {args.rounds} interleaved rounds\n"
    )
    first = variants[0]
    print(
        f"| variant | tasks/s | ratio to {first} | spread (min-max) | caller CPU per task "
        f"| ratio to {first} |"
    )
    print("|---|---|---|---|---|---|")
    for variant in variants:
        median, cpu = statistics.median(rates[variant]), statistics.median(cpus[variant])
        spread = f"{min(rates[variant]):,.0f}-{max(rates[variant]):,.0f}"
        print(
            f"| {variant} | {median:,.0f} | {median / reference:.3f} | {spread} "
            f"| {cpu:.1f} us | {cpu / cpu_reference:.3f} |"
        )


if __name__ == "__main__":
    main()
