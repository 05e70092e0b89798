"""Command line: ``python -m orchestrix demo | plan | status OUT_DIR | report OUT_DIR |
profile OUT_DIR``."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from .config import DEFAULT_MODE, MODES
from .errors import ConfigError, ConfigWarning, OrchestrixError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrix")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a tiled raster computation and print a summary")
    demo.add_argument("--mode", choices=MODES, default=DEFAULT_MODE)
    demo.add_argument("--size", type=int, default=2048, help="raster side in pixels")
    demo.add_argument("--tile", type=int, default=256, help="tile side in pixels")
    demo.add_argument("--nb-workers", help="worker count (int or 'auto'; not for sequential)")
    demo.add_argument("--out-dir", help="where the run writes its files")
    plan = commands.add_parser("plan", help="print the resolved config and why (pool sizing)")
    plan.add_argument("--mode", choices=MODES, help="default: the file's mode, else auto")
    plan.add_argument("--nb-workers", help="worker count (int or 'auto')")
    plan.add_argument("--max-ram-per-worker", type=_number, help="memory limit of a worker (MB)")
    plan.add_argument("--config", help="a JSON or YAML config file (flags override it)")
    for key in ("account", "walltime", "queue", "qos", "out-dir"):
        plan.add_argument(f"--{key}", help=f"{key} (cluster modes)")
    profile = commands.add_parser("profile", help="summarize the profiles a run wrote")
    profile.add_argument("out_dir", metavar="OUT_DIR", help="the run's out_dir")
    report = commands.add_parser("report", help="write the HTML report of a run's run.json")
    report.add_argument("out_dir", metavar="OUT_DIR", help="the run's out_dir")
    report.add_argument("-o", "--output", help="where to write it (default OUT_DIR/report.html)")
    status = commands.add_parser(
        "status", help="a run's task states, failures and times, from its journal"
    )
    status.add_argument("out_dir", metavar="OUT_DIR", help="the run's out_dir")
    status.add_argument("--json", action="store_true", help="print it as JSON")
    args = parser.parse_args(argv)
    try:
        with _config_warnings_in_one_line():
            if args.command == "status":
                return _status(args)
            if args.command == "profile":
                return _profile(args)
            if args.command == "report":
                return _report(args)
            return _plan(args) if args.command == "plan" else _demo(args)
    except OrchestrixError as exc:
        print(f"orchestrix: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def _config_warnings_in_one_line() -> Iterator[None]:
    """A ConfigWarning (a key of the file or flags that is ignored) printed as the errors are,
    without the source line; other warnings as Python shows them."""
    with warnings.catch_warnings():  # restores showwarning
        show = warnings.showwarning

        def show_config_warning(
            message: Warning | str,
            category: type[Warning],
            filename: str,
            lineno: int,
            file: TextIO | None = None,
            line: str | None = None,
        ) -> None:
            if issubclass(category, ConfigWarning):
                print(f"orchestrix: {category.__name__}: {message}", file=sys.stderr)
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = show_config_warning
        yield


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


def _status(args: argparse.Namespace) -> int:
    from .journal.status import format_status, read_status

    status = read_status(args.out_dir)
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def _profile(args: argparse.Namespace) -> int:
    from .reports.profiles import summarize_profiles

    for path in summarize_profiles(args.out_dir):
        print(path)
    return 0


def _report(args: argparse.Namespace) -> int:
    import os

    from .reports.report import load_run_data, write_report

    data = load_run_data(args.out_dir)  # before choosing a path: no report without a run
    path = args.output or os.path.join(args.out_dir, "report.html")
    try:
        print(write_report(data, path))
    except OSError as exc:  # e.g. -o into a missing folder: one line, like the other errors
        raise OrchestrixError(f"cannot write {path}: {exc.strerror or exc}") from None
    return 0


def _number(text: str) -> int | float:
    value = float(text)  # argparse reports a ValueError as an invalid value
    return int(value) if value.is_integer() else value


def _plan(args: argparse.Namespace) -> int:
    from .config import load_config_file
    from .resolve import resolve_with_reasons
    from .sizing import describe_facts, read_machine_facts, usable_cpus

    options: dict[str, Any] = {}
    if args.config is not None:
        import yaml  # load_config_file's YAML parser: its errors are reported in one line too

        try:
            options = load_config_file(args.config)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            reason = " ".join(str(exc).split())
            raise ConfigError(f"cannot read config file {args.config}: {reason}") from None
    if args.mode is not None or "mode" not in options:
        options["mode"] = args.mode or "auto"
    if args.nb_workers is not None:
        options["nb_workers"] = (
            int(args.nb_workers) if args.nb_workers.isdigit() else args.nb_workers
        )
    if args.max_ram_per_worker is not None:
        options["max_ram_per_worker"] = args.max_ram_per_worker
    for key in ("account", "walltime", "queue", "qos", "out_dir"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    facts = read_machine_facts()
    resolved, reasons = resolve_with_reasons(options, {}, facts)
    print(f"# machine: {describe_facts(facts)}")
    print(f"# usable: {usable_cpus(facts)[1]}")
    for key, value in resolved.to_dict().items():
        line = f"{key} = {json.dumps(value)}"
        print(f"{line}  # {reasons[key]}" if key in reasons else line)
    if resolved.mode in ("slurm_dask", "pbs_dask"):
        from .backends.dask.jobqueue import job_script  # dask only for the cluster modes

        jobs = getattr(resolved, "nb_workers", "?")
        print(f"\n# the job script each of the {jobs} worker jobs runs (not submitted):")
        print(job_script(resolved))
    return 0


if __name__ == "__main__":
    sys.exit(main())
