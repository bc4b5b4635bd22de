"""Command line: ``implicit-bench run | report | compare | list | strategies | suites``.

A user's mistake (unknown strategy or suite, bad TOML key, wrong type or range, missing data
folder, absent device, a results folder that cannot be written) is one line on stderr and exit
status 2, never a traceback. ``run`` exits 1 when some run failed for a reason other than
divergence, or when writing results failed mid-sweep (one line, naming the file). Out of
memory is one line too: in a run, that run fails with it as its reason and the sweep goes on; in
the data check before training, exit 2; anywhere else, exit 1. ``compare`` exits 1 when folder
B is significantly slower, heavier or worse than A, 0 otherwise. SIGINT exits
130 and SIGTERM 143, both saying that finished runs are kept.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import signal
import sys
from pathlib import Path

# the plug-in kinds `implicit-bench list` shows, in this order
PLUGIN_KINDS = ("tasks", "metrics", "datasets", "solvers", "baselines", "strategies")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors: one line, status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    # No registry is imported here: they pull in torch, torchvision and torchmetrics (~8 s on a
    # 2-core machine), and `--help` or a usage error should not wait for that. The help points
    # to `implicit-bench list KIND`, which shows what is registered.
    p = _Parser(prog="implicit-bench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run (or resume) a benchmark suite")
    run.add_argument("suite", nargs="?", default="quick", help="built-in suite name or TOML path")
    run.add_argument(
        "--strategies", help="comma-separated, e.g. jfb,cg:tol=1e-6,neumann:k=10,unrolled:k=10"
    )
    run.add_argument("--seeds", type=int, help="run seeds 0..N-1")
    run.add_argument("--epochs", type=int)
    run.add_argument("--lr", type=float)
    run.add_argument("--dataset", help="a registered data set (implicit-bench list datasets)")
    run.add_argument(
        "--data-root",
        help="folder holding the data, for the data sets read from disk (implicit-bench list "
        "datasets)",
    )
    run.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    run.add_argument("--out", type=Path, help="results folder (default results/<suite>)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a suite setting, dotted as in [sweep]: --set train.epochs=3 "
        "--set solver.tol=1e-4 (repeatable)",
    )
    run.add_argument("--force", action="store_true", help="rerun runs already complete")
    stale = run.add_mutually_exclusive_group()
    stale.add_argument(
        "--rerun-stale",
        action="store_true",
        help="rerun completed runs whose strategy code, parameters or defaults changed",
    )
    stale.add_argument(
        "--keep-stale", action="store_true", help="keep such stale runs (they are listed)"
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=1,
        help="runs at once on this machine, each with cores/N torch threads (local executor)",
    )
    run.add_argument(
        "--runs-per-gpu", type=int, default=1, help="with -j N on a CUDA machine (default 1)"
    )
    run.add_argument("--executor", choices=("local", "submitit"), default="local")
    run.add_argument("--slurm-partition", help="SLURM partition (submitit executor)")
    run.add_argument("--slurm-time", type=int, default=60, help="minutes per job")
    run.add_argument("--slurm-gpus", type=int, default=0, help="GPUs per job")
    run.add_argument("--slurm-array-parallelism", type=int, default=32)
    run.add_argument(
        "--submitit-cluster",
        choices=("slurm", "local", "debug"),
        default="slurm",
        help="submitit backend: slurm (default), local (all jobs as local processes), debug",
    )
    run.add_argument("--submitit-folder", type=Path, help="submitit logs (default OUT/submitit)")

    report = sub.add_parser("report", help="write plots, tables and report.html from results")
    report.add_argument("results", type=Path, help="a results folder (holding runs.csv)")
    report.add_argument("--out", type=Path, help="report folder (default reports/<name>)")
    report.add_argument(
        "--metric",
        help="primary metric: rankings, comparisons and the target (default psnr, "
        "bench.metrics.PRIMARY_METRIC; implicit-bench list metrics)",
    )
    report.add_argument(
        "--target",
        "--target-psnr",
        type=float,
        dest="target",
        help="target for time-to-target, in the primary metric's unit (default: chosen from the "
        "results)",
    )

    compare = sub.add_parser(
        "compare",
        help="compare results folder B against A (step time, memory, quality); exit 1 when B is "
        "significantly slower, heavier or worse",
    )
    compare.add_argument("a", type=Path, metavar="A", help="the baseline results folder")
    compare.add_argument("b", type=Path, metavar="B", help="the results folder compared with A")
    compare.add_argument(
        "--threshold",
        type=float,
        default=10.0,
        metavar="PERCENT",
        help="change in median step time or peak step memory below which B is not called "
        "slower or heavier (default 10)",
    )
    compare.add_argument("--output", type=Path, help="also write the Markdown to this file")

    listing = sub.add_parser(
        "list", help="list the registered plug-ins (tasks, metrics, data sets, ...), one line each"
    )
    listing.add_argument(
        "kind",
        nargs="?",
        choices=PLUGIN_KINDS,
        metavar="KIND",
        help=f"one of {', '.join(PLUGIN_KINDS)} (default: all of them)",
    )
    sub.add_parser("strategies", help="list registered strategies and their parameters")
    sub.add_parser("suites", help="list built-in suites")
    return p


def _run(args) -> int:
    from .config import SHORTCUTS, load_suite, with_overrides
    from .executor import LocalExecutor, SubmititExecutor
    from .sweep import run_suite

    if args.jobs < 1:
        raise ValueError(f"-j/--jobs must be >= 1, got {args.jobs}")
    if args.runs_per_gpu < 1:
        raise ValueError(f"--runs-per-gpu must be >= 1, got {args.runs_per_gpu}")
    if args.executor == "submitit" and args.jobs != 1:
        raise ValueError("-j/--jobs applies to --executor local (submitit runs one run per job)")
    notes: list[str] = []
    suite = with_overrides(
        load_suite(args.suite),
        args.set,
        notes=notes,
        # the named options (--epochs, --device, ...), each a --set shortcut; None: not given
        **{key: getattr(args, key) for key in SHORTCUTS},
    )
    for note in notes:  # a swept key the command line replaced
        print(f"implicit-bench: note: {note}", file=sys.stderr)
    _check_data(suite)
    out = args.out or Path("results") / suite.name
    if args.executor == "submitit":
        executor = SubmititExecutor(
            cluster=args.submitit_cluster,
            folder=args.submitit_folder,
            partition=args.slurm_partition,
            time_min=args.slurm_time,
            gpus=args.slurm_gpus,
            array_parallelism=args.slurm_array_parallelism,
        )
    else:
        executor = LocalExecutor(jobs=args.jobs, runs_per_gpu=args.runs_per_gpu)
    counts = run_suite(
        suite,
        out,
        executor,
        force=args.force,
        progress=not args.quiet,
        stale=_stale_choice(args),
    )
    elsewhere = counts.get("elsewhere", 0)
    print(
        f"{suite.name}: {counts['ok']} ok, {counts['diverged']} diverged, "
        f"{counts['failed']} failed, {counts['skipped']} already complete"
        + (f", {elsewhere} running elsewhere" if elsewhere else "")
        + f" -> {out}"
    )
    return 1 if counts["failed"] else 0


def _stale_choice(args) -> str:
    return "rerun" if args.rerun_stale else "keep" if args.keep_stale else "error"


def _check_data(suite) -> None:
    """Load each data setting once up front, so a missing folder is a usage error, not a run failure."""
    from .task_data import load_task_data

    for data, problem, _ in suite.data_settings():
        load_task_data(data, problem)


def _report(args) -> int:
    from .report import build_report

    html = build_report(args.results, args.out, metric=args.metric, target=args.target)
    print(f"report: {html}")
    return 0


def _compare(args) -> int:
    from .report.compare import compare_folders
    from .results import atomic_write_bytes

    result = compare_folders(args.a, args.b, threshold=args.threshold / 100)
    markdown = result.to_markdown()
    if args.output:
        try:
            atomic_write_bytes(args.output, markdown.encode())
        except OSError as err:  # a user's path, not a sweep's results: a usage error
            raise ValueError(f"cannot write {args.output}: {err.strerror or err}") from err
    print(markdown, end="")
    return 1 if result.regressions else 0


def _strategies() -> int:
    from strategies import (
        broken_strategies,
        list_strategies,
        strategy_class,
        unregistered_strategies,
    )

    for name in list_strategies():
        cls = strategy_class(name)
        kind = "exact" if cls.exact else "approximate"
        cost = f"; cost set by {', '.join(cls.cost_params)}" if cls.cost_params else ""
        print(f"{name}  ({kind} gradient{cost})")
        for line in (cls.__doc__ or "").strip().splitlines():
            print(f"    {line.strip()}".rstrip())
        for key, param in cls.parameters.items():
            print(f"    {key}: {param.describe()}" + (f" — {param.doc}" if param.doc else ""))
        print()
    for source, problem in broken_strategies().items():
        print(f"BROKEN  {source}: {problem}")
    for source, cls_name in unregistered_strategies().items():
        print(f"NOT REGISTERED  {source}: class {cls_name} (add @register)")
    return 0


def _summary(obj) -> str:
    """The first paragraph of ``obj``'s docstring on one line (its summary, even where that
    wraps onto a second line), or "" when it has none."""
    paragraph = (inspect.getdoc(obj) or "").strip().split("\n\n")[0]
    return " ".join(paragraph.split())


def _plugins(kind: str) -> list[tuple[str, str, str]]:
    """(name, what the entry declares, first docstring line) of every registered ``kind``."""
    if kind == "tasks":
        from .tasks import TASKS

        return [
            (
                name,
                "; ".join(f"{k}: {p.describe()}" for k, p in cls.settings.items())
                + f"; naive: {cls.naive_label}",
                _summary(cls),
            )
            for name, cls in TASKS.items()
        ]
    if kind == "metrics":
        from .metrics import METRICS

        return [
            (
                name,
                f"{m.label}{f' ({m.unit})' if m.unit else ''}, "
                f"{'higher' if m.higher_is_better else 'lower'} is better",
                _summary(m.fn),
            )
            for name, m in METRICS.items()
        ]
    if kind == "datasets":
        from .data import DATASETS

        return [(name, "", _summary(fn)) for name, fn in DATASETS.items()]
    if kind == "solvers":
        from .solver import SOLVERS

        return [
            (name, f"options: {', '.join(e.options) or 'none'}", _summary(e.solve))
            for name, e in SOLVERS.items()
        ]
    if kind == "baselines":
        from .baselines import BASELINES

        return [
            (
                name,
                "lambda fitted" if e.fixed_lam is None else f"fixed lambda {e.fixed_lam:g}",
                _summary(e.fn),
            )
            for name, e in BASELINES.items()
        ]
    from strategies import list_strategies, strategy_class

    return [(name, "", _summary(strategy_class(name))) for name in list_strategies()]


def _list(kind: str | None) -> int:
    """Print every registered plug-in of ``kind`` (all kinds, each under a heading, if None):
    its name, what it declares (a metric's label and direction, a solver's options, whether a
    baseline's lambda is fitted) and its docstring's summary, in aligned columns."""
    kinds = PLUGIN_KINDS if kind is None else (kind,)
    for i, k in enumerate(kinds):
        rows = _plugins(k)
        if kind is None:
            print(("\n" if i else "") + f"{k}:")
        widths = [max((len(row[c]) for row in rows), default=0) for c in (0, 1)]
        for name, what, doc in rows:
            cells = [name.ljust(widths[0])] + ([what.ljust(widths[1])] if widths[1] else [])
            print("  " + "  ".join([*cells, doc]).rstrip())
        if not rows:
            print(f"  (no {k} registered)")
    return 0


class _Terminated(BaseException):
    """SIGTERM, turned into an exception so that it ends the sweep like Ctrl-C does."""


def _on_sigterm(signum, frame):
    raise _Terminated


@contextlib.contextmanager
def _sigterm_raises():
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _unencodable_replaced():
    """Meanwhile, characters that stdout or stderr cannot encode (a non-ASCII path under
    PYTHONIOENCODING=ascii or the C locale) are printed as '?' instead of failing the print,
    which would otherwise fail a command after its work is done."""
    strict = [s for s in (sys.stdout, sys.stderr) if getattr(s, "errors", None) == "strict"]
    for stream in strict:
        stream.reconfigure(errors="replace")
    try:
        yield
    finally:
        for stream in strict:
            stream.reconfigure(errors="strict")


def main(argv: list[str] | None = None) -> int:
    with _unencodable_replaced():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    saved = "finished runs are saved, rerun to resume"
    try:
        with _sigterm_raises():
            if args.command == "run":
                return _run(args)
            if args.command == "report":
                return _report(args)
            if args.command == "compare":
                return _compare(args)
            if args.command == "list":
                return _list(args.kind)
            if args.command == "strategies":
                return _strategies()
            from .config import list_suites

            print("\n".join(list_suites()))
            return 0
    except ValueError as err:
        print(f"implicit-bench: error: {err}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:  # out of memory outside a run: one line too
        from .out_of_memory import allocation, is_out_of_memory

        if not is_out_of_memory(err):
            raise
        print(f"implicit-bench: error: out of memory ({allocation(err)})", file=sys.stderr)
        return 1
    except OSError as err:  # the disk filled up, the folder went away... mid-sweep
        from .results import describe_os_error

        print(
            f"implicit-bench: error: cannot write results: {describe_os_error(err)}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"implicit-bench: interrupted; {saved}", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"implicit-bench: terminated (SIGTERM); {saved}", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
