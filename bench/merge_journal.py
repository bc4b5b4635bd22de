"""What the merged tables of a results folder hold, so a merge can append to them.

``out/.merged.jsonl`` is a journal: its first line records the columns of each merged CSV and
the parts (run id -> part signature) they were rebuilt from; each later line, the parts whose
rows were appended since. Every line also records each table file's state (inode, size,
modification time) once its rows were on disk. A line is written only after the rows it names
were appended and flushed to disk, so it is what commits them: tables whose files differ from
the last line (a kill during an append, a table edited or replaced by hand, an older harness's
merge) are not trusted, and :func:`bench.results.merge_new` rebuilds them whole from the parts.

This module only reads and writes the journal and appends bytes; :mod:`bench.results` decides
what to append.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

JOURNAL = ".merged.jsonl"
# Rows of one run are appended to these tables in this order, runs.csv last: a reader that joins
# epochs and steps to runs.csv never sees a run's row before its epochs and steps.
APPEND_ORDER = ("steps", "epochs", "runs")


@dataclass
class Merged:
    """What the merged tables hold: per table its ``columns`` and its file's state after the last
    committed write (``files``), and the parts they hold (``runs``: run id -> part signature)."""

    columns: dict[str, list[str]]
    files: dict[str, list[int]]
    runs: dict[str, list]


def file_state(path: Path) -> list[int] | None:
    """Inode, size and modification time of a file (None when absent): an append changes size and
    time, an atomic rewrite the inode."""
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def plain(signature) -> list:
    """A part signature as JSON reads it back (tuples as lists), so the two compare equal."""
    return json.loads(json.dumps(signature))


# The journal as this process last read or wrote it, per folder: (its file state, what it says).
# Re-reading it is needed only when another process wrote it meanwhile.
_READ: dict[Path, tuple[list[int], Merged]] = {}


def read(out: Path) -> Merged | None:
    """The journal of ``out`` (None when absent or unreadable: the tables are then rebuilt)."""
    path = Path(out) / JOURNAL
    key = path.absolute()
    state = file_state(path)
    cached = _READ.get(key)
    if state is not None and cached is not None and cached[0] == state:
        return cached[1]
    _READ.pop(key, None)
    if state is None:
        return None
    try:
        text = path.read_text()
        if not text.endswith("\n"):  # a line cut short: its rows were never committed
            return None
        lines = [json.loads(line) for line in text.splitlines()]
        merged = Merged(dict(lines[0]["columns"]), {}, {})
        for line in lines:
            merged.runs.update(line["runs"])
            merged.files = dict(line["files"])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    _READ[key] = (state, merged)
    return merged


def matches(out: Path, merged: Merged) -> bool:
    """Whether every table file is as the journal's last line left it."""
    return all(
        file_state(Path(out) / f"{name}.csv") == merged.files.get(name) for name in merged.columns
    )


def reset(out: Path, columns: dict[str, list[str]], runs: dict[str, list], write) -> None:
    """Start the journal again after the tables were rewritten whole (``write``: an atomic write
    of bytes to a path, bench.results.atomic_write_bytes)."""
    out = Path(out)
    files = {name: file_state(out / f"{name}.csv") for name in columns}
    line = {"columns": columns, "files": files, "runs": runs}
    path = out / JOURNAL
    write(path, (json.dumps(line) + "\n").encode())
    _READ[path.absolute()] = (file_state(path), Merged(columns, files, dict(runs)))


def append(out: Path, merged: Merged, runs: dict[str, list], rows: dict[str, bytes]) -> None:
    """Append ``rows`` (CSV lines, no header) to each table, then commit them in the journal.

    Each table is flushed to disk before the next, and the journal line is written last.
    """
    out = Path(out)
    for name in APPEND_ORDER:
        if rows.get(name):
            append_bytes(out / f"{name}.csv", rows[name])
    files = {name: file_state(out / f"{name}.csv") for name in merged.columns}
    path = out / JOURNAL
    append_bytes(path, (json.dumps({"files": files, "runs": runs}) + "\n").encode())
    merged.files = files
    merged.runs.update(runs)
    _READ[path.absolute()] = (file_state(path), merged)


def append_bytes(path: Path, data: bytes) -> None:
    """Append ``data`` to the end of ``path`` and flush it to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
