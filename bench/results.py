"""Tidy result tables: their columns, atomic writes, and loading.

A results folder holds ``runs.csv`` (one row per run), ``epochs.csv`` (run x epoch) and
``steps.csv`` (run x step), plus Parquet copies where pyarrow is installed, and
``recons/<run_id>.npz`` (reconstructions of fixed test images, for figures).

Each finished run is first written to ``parts/<run_id>/`` (temporary file + rename, so a killed
sweep loses at most the runs in progress); the top-level tables are the concatenation of the parts.
After each finished run a sweep appends that run's rows to the CSVs (:func:`merge_new`: the
work grows with the new rows, not the folder), and at its end (or when stopped) rewrites them
whole, sorted by run id, with the Parquet copies (:func:`merge`). After a kill at any moment the
parts hold every finished run and each table CSV is either a whole atomic rewrite or one plus
appended runs; a kill during an append may leave that run's rows, the last line perhaps cut
short, which :mod:`bench.merge_journal` has not committed: the next merge (any ``run``) rebuilds
such tables whole from the parts. The Parquet copies lag behind the CSVs until the sweep ends.
Several processes (e.g. SLURM array jobs) can therefore write
into one folder: a process claims a run (``claim``, a lock file per run) before training it, and
part writes and merges happen under one folder-wide lock (``folder_lock``), so no row is lost.

A part is trusted only after it is validated against the schema (``read_part``, through
:mod:`bench.schema`, which the report reads tables through too); a broken one is named in a
warning, moved to ``parts/.broken/`` and its run redone. A part an older harness wrote is not
broken: the columns it lacks are missing values. A process reads each part once and again only
when its files change, so merging after every finished run costs one part read, whatever the
folder's size.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from filelock import FileLock, Timeout

from . import merge_journal
from .metrics import METRICS
from .schema import (
    COLUMNS,
    EPOCH_COLUMNS,
    REQUIRED_CELLS,
    RUN_COLUMNS,
    STEP_COLUMNS,
    TEXT_COLUMNS,
    conform,
    read_csv,
)

__all__ = ["COLUMNS", "EPOCH_COLUMNS", "RUN_COLUMNS", "STEP_COLUMNS", "TEXT_COLUMNS"]

TABLES = ("runs", "epochs", "steps")
_UMASK = os.umask(0)
os.umask(_UMASK)

STATUSES = ("ok", "diverged", "failed")
COMPLETE = ("ok", "diverged")  # results: skipped on resume (a failed run is retried)
LOCK_NAME = ".results.lock"
BROKEN_DIR = ".broken"
CLAIMS_DIR = ".claims"


def read_table(path: Path, name: str | None = None) -> pd.DataFrame:
    """Read one CSV table with identifier/text columns as strings (missing text stays NaN),
    under the current schema (:func:`bench.schema.conform`: renamed columns under their new
    names, implied settings filled in; columns an older harness did not write stay absent).
    ``name`` is the table (runs, epochs, steps); by default the file's name."""
    name = name or Path(path).stem
    return conform(read_csv(path, name), name)[0]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_bytes(path, frame.to_csv(index=False).encode())


def warn(message: str) -> None:
    """One warning line on stderr (the sweep goes on)."""
    print(f"implicit-bench: warning: {message}", file=sys.stderr, flush=True)


def folder_lock(out: Path) -> FileLock:
    """The lock that serialises part writes, merges and quarantines in one results folder.

    A file lock (fcntl on POSIX), so it holds across processes and SLURM tasks sharing the folder.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # One reentrant instance per path in a process: merge() scans parts under the same lock.
    return FileLock(out / LOCK_NAME, is_singleton=True)


@contextlib.contextmanager
def claim(out: Path, run_id: str) -> Iterator[bool]:
    """Try to claim ``run_id`` for this process (non-blocking); yields whether it was claimed.

    The claim is a lock held on ``parts/.claims/<run_id>.lock`` until the block ends, and the
    operating system drops it if the process dies, so a killed run never blocks a rerun.
    """
    folder = Path(out) / "parts" / CLAIMS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / f"{run_id}.lock")
    try:
        lock.acquire(blocking=False)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def check_writable(out: Path) -> None:
    """Create ``out`` and write and remove a probe file there; ValueError naming why not.

    Called before any training, so a bad results folder never costs a trained run. A folder
    holding a symbolic link is refused too (:func:`check_no_links`).
    """
    out = Path(out)
    check_no_links(out)
    probe = out / f".write-probe-{os.getpid()}"  # per process: concurrent sweeps probe too
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(probe, b"probe")
        probe.unlink()
    except OSError as err:
        raise ValueError(
            f"results folder {str(out)!r} is not writable: {describe_os_error(err)}"
        ) from None


def check_no_links(out: Path) -> None:
    """ValueError naming the first symbolic link found inside the results folder ``out``.

    The harness writes only inside its results folder: through a linked ``recons/``, ``parts/``
    or part folder it would write into the link's target, and a linked lock file would be
    truncated. ``out`` itself may be a link (the user named it); nothing under it may be.
    """
    # os.walk does not follow links below the top: a linked folder is listed, never entered
    for root, folders, files in os.walk(out):
        for name in (*folders, *files):
            path = Path(root) / name
            if path.is_symlink():
                raise ValueError(
                    f"results folder {str(out)!r} holds a symbolic link, {str(path)!r} -> "
                    f"{os.readlink(path)!r}; results are written only inside their folder: "
                    "replace the link with a real folder or file, or choose another --out"
                )


def describe_os_error(err: OSError) -> str:
    """A one-line account of an OSError: what failed, on which path."""
    what = err.strerror or (errno.errorcode.get(err.errno, "") if err.errno else "") or str(err)
    where = f" ({err.filename})" if err.filename else ""
    return f"{what}{where}"


def remove_stale_temporaries(out: Path, before: float) -> list[Path]:
    """Delete hidden ``.*.tmp`` files under ``out`` last modified before ``before`` (a time).

    They are what a process killed during an atomic write leaves; a live writer's temporary
    file is newer than this process's start, so it is left alone.
    """
    removed = []
    for path in Path(out).rglob(".*.tmp"):
        try:
            if path.is_file() and path.stat().st_mtime < before:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # another process finished (or cleaned) it meanwhile
            continue
    return removed


def write_run(out: Path, run_id: str, tables: dict[str, pd.DataFrame]) -> None:
    """Write one finished run's rows to ``out/parts/<run_id>/`` (runs.csv last: it marks completion).

    Each file is replaced atomically and only now, so a run redone with ``--force`` keeps its old
    part until the new one is written; the folder lock keeps a concurrent merge from seeing a
    part half replaced.
    """
    part = Path(out) / "parts" / run_id
    frames = {}
    for name in ("epochs", "steps", "runs"):
        frame = tables.get(name)
        if frame is None:
            frame = pd.DataFrame(columns=list(COLUMNS[name]))
        missing = [c for c in COLUMNS[name] if c not in frame.columns]
        if missing:
            raise RuntimeError(
                f"{name} rows for run {run_id} lack columns {missing}"
            )  # a bug, not bad input
        frames[name] = frame
    with folder_lock(out):
        for name, frame in frames.items():
            atomic_write_csv(part / f"{name}.csv", frame)


class BrokenPart(ValueError):
    """A part folder whose files do not hold one valid run (its message says why)."""


def _read_checked(path: Path, name: str) -> tuple[pd.DataFrame, list[str]]:
    """Table ``name`` of a part under the current schema, and the declared columns it lacks.

    A table an older harness wrote lacks newer columns: those are missing values, never a reason
    to set the part aside; only a file that cannot be read, or lacks the identifying columns,
    is broken.
    """
    try:
        frame = read_csv(path, name)
    except (ValueError, UnicodeDecodeError) as err:  # pandas' parser errors are ValueErrors
        raise BrokenPart(f"{path.name} is unreadable ({str(err).splitlines()[0]})") from None
    except OSError as err:
        raise BrokenPart(f"{path.name} cannot be read ({describe_os_error(err)})") from None
    frame, conformed = conform(frame, name)
    required = REQUIRED_CELLS if name == "runs" else ("run_id",)
    absent = [c for c in required if c not in frame.columns]
    if absent:
        raise BrokenPart(f"{path.name} lacks the column(s) {', '.join(absent)}")
    return frame, conformed.missing


def _final_metrics(frame: pd.DataFrame) -> list[str]:
    return [f"final_test_{m}" for m in METRICS if f"final_test_{m}" in frame.columns]


@dataclass(frozen=True)
class Part:
    """One part folder as read: its ``tables`` (runs, epochs, steps) and, per table, the declared
    columns it lacks (``missing_columns``; a part an older harness wrote)."""

    tables: dict[str, pd.DataFrame]
    missing_columns: dict[str, list[str]]


def _load_part(part: Path) -> Part:
    """Read and validate one part folder (see :func:`read_part`); the only place parts are read."""
    runs, missing = _read_checked(part / "runs.csv", "runs")
    if len(runs) != 1:
        raise BrokenPart(f"runs.csv has {len(runs)} rows, expected 1")
    row = runs.iloc[0]
    empty = [c for c in REQUIRED_CELLS if pd.isna(row[c]) or str(row[c]) == ""]
    if empty:
        raise BrokenPart(f"runs.csv is incomplete (no {', '.join(empty)})")
    if row["run_id"] != part.name:
        raise BrokenPart(f"runs.csv is for run {row['run_id']!r}, not {part.name!r}")
    if row["status"] not in STATUSES:
        raise BrokenPart(f"runs.csv has status {row['status']!r}, not one of {STATUSES}")
    if row["status"] == "ok":
        # every metric the part's harness recorded (a metric registered since has no column)
        recorded = _final_metrics(runs)
        blank = [c for c in recorded if _is_blank(row[c])]
        if blank or not recorded:
            what = ", ".join(blank) or "any final_test_<metric>"
            raise BrokenPart(f"runs.csv is incomplete: an ok run without {what}")
    tables = {"runs": runs}
    missing_by_table = {"runs": missing}
    for name in ("epochs", "steps"):
        path = part / f"{name}.csv"
        if path.exists():
            tables[name], missing_by_table[name] = _read_checked(path, name)
        else:
            tables[name] = pd.DataFrame(columns=COLUMNS[name])
    return Part(tables, missing_by_table)


def _signature(part: Path) -> tuple:
    """What identifies the current contents of a part's files without reading them."""
    signature = []
    for name in TABLES:
        try:
            st = (part / f"{name}.csv").stat()
        except FileNotFoundError:
            signature.append(None)
            continue
        signature.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(signature)


# Parts already read by this process, by folder: (signature, part, read number). Files are
# replaced atomically (a new inode) and only then read again, so merging after each finished run
# reads only that run's part, not the whole folder again (issue 20 §6).
_PART_CACHE: dict[Path, tuple[tuple, Part, int]] = {}
_READS = itertools.count()  # numbers each read, so a merge knows which parts are new


def read_part(part: Path) -> dict[str, pd.DataFrame]:
    """The tables of one part folder under the current schema, validated: one row in runs.csv with
    a known status, its required cells filled, and an ok run's recorded metrics set (+inf is a
    value). Columns its harness did not write are absent (missing values), never a reason to set
    it aside. BrokenPart otherwise. A part unchanged since this process read it is not re-read.
    """
    return _read_part(part).tables


def _read_part(part: Path) -> Part:
    """:func:`read_part`, with the columns each table lacks."""
    part = Path(part)
    key = part.absolute()
    signature = _signature(part)
    cached = _PART_CACHE.get(key)
    if cached is not None and cached[0] == signature:
        return cached[1]
    _PART_CACHE.pop(key, None)
    if signature[TABLES.index("runs")] is None:  # no part (yet), or set aside meanwhile
        raise FileNotFoundError(errno.ENOENT, "no runs.csv", str(part / "runs.csv"))
    loaded = _load_part(part)
    _PART_CACHE[key] = (signature, loaded, next(_READS))
    return loaded


# The tables this process last merged per folder, with the read of each part they hold: the next
# merge appends the parts read since instead of concatenating every part again.
_MERGED: dict[Path, tuple[dict[str, int], dict[str, pd.DataFrame]]] = {}


def _concatenated(out: Path, parts: dict[str, dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """The parts' tables concatenated (rows by run id, as the part folders sort)."""
    folder = Path(out).absolute()
    reads = {
        run_id: _PART_CACHE[folder / "parts" / run_id][2]
        for run_id in parts
        if folder / "parts" / run_id in _PART_CACHE
    }
    before = _MERGED.get(folder)
    if before is not None and all(reads.get(i) == n for i, n in before[0].items()):
        base, todo = before[1], [i for i in parts if i not in before[0]]
    else:
        base, todo = {}, list(parts)
    merged = {}
    for name in TABLES:
        frames = [f for f in (base.get(name), *(parts[i][name] for i in todo)) if f is not None]
        frames = [f for f in frames if len(f)]
        frame = (
            pd.concat(frames, ignore_index=True)
            if frames
            else pd.DataFrame(columns=list(COLUMNS[name]))
        )
        if todo and base and len(frame):
            frame = frame.sort_values("run_id", kind="stable", ignore_index=True)
        merged[name] = frame
    if len(reads) == len(parts):
        _MERGED[folder] = (reads, merged)
    return merged


def _is_blank(value) -> bool:
    """A missing value (empty, NaN or not a number). +inf is a value: a perfect reconstruction's
    PSNR (an exact result, e.g. constant images without noise)."""
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def _part_folders(out: Path) -> list[Path]:
    """Part folders that claim to be complete (hold runs.csv); hidden ones are bookkeeping."""
    return sorted(
        p.parent
        for p in (Path(out) / "parts").glob("*/runs.csv")
        if not p.parent.name.startswith(".")
    )


def quarantine(out: Path, part: Path, reason: str) -> Path | None:
    """Move a broken part to ``parts/.broken/<id>-<timestamp>/`` and say so; returns where."""
    stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    target = Path(out) / "parts" / BROKEN_DIR / f"{part.name}-{stamp}"
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        part.rename(target)
    except FileNotFoundError:  # another process set it aside first
        return None
    warn(
        f"broken part {part.relative_to(out)}: {reason}; moved to {target.relative_to(out)}, "
        "its run will be redone"
    )
    return target


# Folders whose older parts this process has named in a note already (once per command).
_NOTED: set[Path] = set()


def scan_parts(out: Path) -> dict[str, dict[str, pd.DataFrame]]:
    """Every valid part of ``out`` (run_id -> its tables); broken parts are set aside.

    Parts written by an older harness are kept; the columns they lack are named once per
    folder and process in a note.
    """
    out = Path(out)
    valid = {}
    with folder_lock(out):
        for part in _part_folders(out):
            try:
                valid[part.name] = _read_part(part)
            except BrokenPart as err:
                quarantine(out, part, str(err))
            except FileNotFoundError:  # another process set it aside since the listing
                continue
    _note_older_parts(out, list(valid.values()))
    return {run_id: part.tables for run_id, part in valid.items()}


def _note_older_parts(out: Path, parts: list[Part]) -> None:
    key = out.absolute()
    if key in _NOTED:
        return
    lacking: dict[str, set[str]] = {}
    older = 0
    for part in parts:
        older += any(part.missing_columns.values())
        for table, columns in part.missing_columns.items():
            for column in columns:
                lacking.setdefault(column, set()).add(table)
    if older:
        _NOTED.add(key)
        names = ", ".join(sorted(lacking))
        print(
            f"note: {older} part(s) in {out} were written by an older harness and lack the "
            f"column(s) {names}: kept, with those values missing"
        )


def completed_runs(out: Path) -> dict[str, str]:
    """run_id -> status of every run whose part is complete and valid (broken ones set aside)."""
    return {run_id: str(t["runs"]["status"].iloc[0]) for run_id, t in scan_parts(out).items()}


def part_status(out: Path, run_id: str, written_after: float | None = None) -> str | None:
    """The status in ``parts/<run_id>`` if it is valid (and written after the given time)."""
    path = Path(out) / "parts" / run_id / "runs.csv"
    try:
        if written_after is not None and path.stat().st_mtime < written_after:
            return None
        return str(read_part(path.parent)["runs"]["status"].iloc[0])
    except (FileNotFoundError, BrokenPart):
        return None


def set_setting_hash(out: Path, run_id: str, setting_hash: str) -> None:
    """Set the ``setting_hash`` cell of part ``run_id`` (an older part adopted by a current run,
    bench.legacy), atomically and only if it differs; every other cell is kept as written."""
    path = Path(out) / "parts" / run_id / "runs.csv"
    with folder_lock(out):
        frame = read_csv(path, "runs")
        if "setting_hash" in frame.columns and (frame["setting_hash"] == setting_hash).all():
            return
        atomic_write_csv(path, frame.assign(setting_hash=setting_hash))


def merge(out: Path) -> dict[str, pd.DataFrame]:
    """Concatenate all valid parts into ``out/{runs,epochs,steps}.csv`` (and .parquet), rewriting
    each file whole (rows sorted by run id); returns the tables as the CSVs read back.

    Runs under the folder lock, so concurrent processes cannot overwrite each other's merge
    with a stale one. Parts this process has read before and that are unchanged are not read
    again. The CSVs are written first; the Parquet copies are a convenience, and a failure there
    (pyarrow missing memory, say) is a warning, never a lost CSV. A sweep calls this once at its
    end (and when stopped); after each finished run it calls :func:`merge_new`.
    """
    out = Path(out)
    with folder_lock(out):
        parts = scan_parts(out)
        merged = _concatenated(out, parts)
        tables = {}
        for name, frame in merged.items():
            atomic_write_csv(out / f"{name}.csv", frame)
            # the table as the CSV reads back: mixed columns (a bool parameter that baselines
            # lack) then hold the same values in both copies
            tables[name] = read_table(out / f"{name}.csv") if len(frame) else frame
        columns = {name: [str(c) for c in frame.columns] for name, frame in merged.items()}
        merge_journal.reset(out, columns, _part_signatures(out, parts), atomic_write_bytes)
        _write_parquet(out, tables)
    return tables


def merge_new(out: Path) -> None:
    """Bring ``out/{runs,epochs,steps}.csv`` up to date by appending the rows of the parts they
    do not hold yet, so that a merge after each finished run writes only that run's rows.

    The tables are rebuilt whole (:func:`merge`, Parquet copies included) instead when the
    journal (:mod:`bench.merge_journal`) does not vouch for them (a first merge, a kill during an
    append, a file changed by hand), when a part they hold was replaced (``--force``) or set
    aside, or when new rows bring a column the table lacks. Appended rows follow in the order
    the runs finished (a whole rewrite sorts them by run id); the Parquet copies are not
    updated by an append.
    """
    out = Path(out)
    with folder_lock(out):
        parts = scan_parts(out)
        signatures = _part_signatures(out, parts)
        held = merge_journal.read(out)
        if (
            held is None
            or set(held.columns) != set(TABLES)
            or not merge_journal.matches(out, held)
            or any(signatures.get(run_id) != s for run_id, s in held.runs.items())
        ):
            merge(out)
            return
        new = sorted(set(parts) - set(held.runs))
        rows = {}
        for name in TABLES:
            frames = [parts[run_id][name] for run_id in new if len(parts[run_id][name])]
            if not frames:
                continue
            frame = pd.concat(frames, ignore_index=True)
            if not set(frame.columns) <= set(held.columns[name]):  # a new column: rewrite
                merge(out)
                return
            frame = frame.reindex(columns=held.columns[name])
            rows[name] = frame.to_csv(index=False, header=False).encode()
        if new:
            merge_journal.append(out, held, {i: signatures[i] for i in new}, rows)


def _part_signatures(out: Path, parts: dict) -> dict[str, list]:
    """run id -> the signature of its part's files as read (see :func:`_signature`)."""
    folder = Path(out).absolute() / "parts"
    return {i: merge_journal.plain(_PART_CACHE[folder / i][0]) for i in parts}


def _write_parquet(out: Path, tables: dict[str, pd.DataFrame]) -> None:
    import io

    try:
        if not _has_pyarrow():
            return
        for name, frame in tables.items():
            buf = io.BytesIO()
            frame.to_parquet(buf, index=False)
            atomic_write_bytes(out / f"{name}.parquet", buf.getvalue())
    except Exception as err:  # MemoryError included: the CSVs above are the results
        warn(f"Parquet copies not written ({type(err).__name__}: {err}); the CSV tables are")


def _has_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def load(path: str | Path) -> dict[str, pd.DataFrame]:
    """Load a results folder's tables as DataFrames: ``{"runs": ..., "epochs": ..., "steps": ...}``."""
    path = Path(path)
    if not (path / "runs.csv").exists():
        raise ValueError(f"no results at {str(path)!r}: expected {path / 'runs.csv'}")
    tables = {}
    for name in TABLES:
        file = path / f"{name}.csv"
        tables[name] = (
            read_table(file) if file.exists() else pd.DataFrame(columns=list(COLUMNS[name]))
        )
    return tables
