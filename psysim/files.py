"""Reading user files: text that must be UTF-8, and tables (CSV/TSV, gzipped or not, JSONL, Parquet).

All readers report problems with the file and a precise position, and never
guess types: CSV cells stay strings, so that typing is done explicitly against
a schema (no silent ``"007" -> 7`` or ``"NA" -> NaN``). The one thing guessed
is a ``.csv`` file's delimiter, from its header line only (comma, tab,
semicolon or pipe; comma when the header has none of them).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError, Problem, PsysimError

__all__ = [
    "TABLE_SUFFIXES",
    "TRIAL_TABLE_SUFFIXES",
    "Table",
    "display_path",
    "read_jsonl",
    "read_table",
    "read_text",
    "table_suffix",
]

#: What :func:`read_table` reads: a trial or item table may be any but JSONL; a cohort file any.
TRIAL_TABLE_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".parquet")
TABLE_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".jsonl", ".parquet")
#: Delimiters a ``.csv`` header may use; ``.tsv`` files are always tab-separated.
CSV_DELIMITERS = ",\t;|"
_GZIP_MAGIC = b"\x1f\x8b"


def table_suffix(path: str | os.PathLike) -> str | None:
    """The table suffix ``path`` ends with (``.csv.gz`` before ``.gz``), lower-cased; ``None`` if none of TABLE_SUFFIXES."""
    name = Path(path).name.lower()
    return next((s for s in sorted(TABLE_SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)


def display_path(path: str | os.PathLike) -> str:
    """A path as a user should read it: relative to the working folder when inside it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def read_text(path: str | os.PathLike, *, error: type[PsysimError] = DataError, what: str = "file") -> str:
    """Read a UTF-8 text file, or raise ``error`` naming the file and the first bad byte."""
    p = Path(path)
    return _decode(_read_bytes(p, error, what), display_path(p), error, what)


def _read_bytes(p: Path, error: type[PsysimError], what: str) -> bytes:
    shown = display_path(p)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} not found: {shown}", [Problem("no such file", file=shown)]) from None
    except IsADirectoryError:
        raise error(f"{what} is a folder, expected a file: {shown}", [Problem("is a folder", file=shown)]) from None
    except PermissionError:
        raise error(f"{what} is not readable: {shown}", [Problem("permission denied", file=shown)]) from None


def _gunzip(raw: bytes, shown: str, what: str) -> bytes:
    """The uncompressed content of a ``.gz`` file, or a DataError saying why it cannot be read."""
    try:
        return gzip.decompress(raw)
    except gzip.BadGzipFile:
        found = "an empty file" if not raw else f"bytes {raw[:2]!r} instead of gzip's 1f 8b"
        message = f"expected gzip-compressed data (the name ends in .gz), found {found}"
    except EOFError:
        message = "the compressed data ends early: the file is truncated"
    except Exception as exc:  # zlib.error and friends: corrupt data inside a valid header
        message = f"the compressed data is corrupt ({exc})"
    raise DataError(f"{what} is not a readable gzip file: {shown}", [Problem(message, file=shown)])


def _decode(raw: bytes, shown: str, error: type[PsysimError], what: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        col = len(raw[line_start : exc.start].decode("utf-8", errors="replace")) + 1  # in characters
        if raw.startswith(_GZIP_MAGIC):
            message = "the file is gzip-compressed (it starts with bytes 1f 8b) but its name does not end in .gz"
        else:
            message = (
                f"not UTF-8: byte 0x{raw[exc.start]:02x} at byte offset {exc.start} cannot be decoded; save the file as UTF-8"
            )
        raise error(f"{what} is not UTF-8: {shown}", [Problem(message, file=shown, line=line, column=col)]) from None
    # A UTF-8 byte-order mark is not part of the content.
    return text[1:] if text.startswith("\ufeff") else text


@dataclass(frozen=True)
class Location:
    """Where a record is: a file and its 1-based line (text formats) or row (Parquet)."""

    file: str
    line: int | None = None
    row: int | None = None

    def problem(self, message: str, where: str | None = None) -> Problem:
        """A :class:`Problem` at this location; ``where`` adds e.g. ``participant 3, field age``."""
        parts = ([f"row {self.row}"] if self.row is not None else []) + ([where] if where else [])
        return Problem(message, file=self.file, line=self.line, where=", ".join(parts) or None)

    def __str__(self) -> str:
        if self.line is not None:
            return f"line {self.line}"
        return f"row {self.row}" if self.row is not None else self.file


@dataclass
class Table:
    """Rows of a table file, each a dict, with the 1-based source line (or Parquet row) of each."""

    path: str
    columns: list[str]
    rows: list[dict[str, Any]]
    lines: list[int]

    def location(self, i: int) -> Location:
        """Where row ``i`` is, for messages: its line for CSV/JSONL, its row for Parquet."""
        if self.path.endswith(".parquet"):
            return Location(self.path, row=self.lines[i])
        return Location(self.path, line=self.lines[i])


def read_jsonl(path: str | os.PathLike, *, what: str = "JSONL file", problems: list[Problem] | None = None) -> Table:
    """Read a JSON Lines file: one JSON object per non-blank line.

    Bad lines raise a :class:`DataError` listing all of them; if ``problems`` is
    given they are appended to it instead and the good lines are returned, so
    that a caller can report them together with its own checks.
    """
    shown = display_path(path)
    text = _unzip_jsonl(Path(path), what) if str(path).lower().endswith(".zip") else read_text(path, what=what)
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    collect = problems is not None
    problems = problems if problems is not None else []
    columns: dict[str, None] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(Problem(f"invalid JSON: {exc.msg}", file=shown, line=lineno, column=exc.colno))
            continue
        if not isinstance(obj, dict):
            problems.append(Problem(f"expected a JSON object, found {_json_type(obj)}", file=shown, line=lineno, column=1))
            continue
        rows.append(obj)
        lines.append(lineno)
        columns.update(dict.fromkeys(obj))
    if problems and not collect:
        raise DataError(f"{what} is not valid JSON Lines: {shown}", problems)
    return Table(shown, list(columns), rows, lines)


def _unzip_jsonl(p: Path, what: str) -> str:
    """The text of the one ``.jsonl`` member of a zip archive (Psych-201 distributes ``prompts.jsonl.zip``)."""
    import io
    import zipfile

    shown = display_path(p)
    raw = _read_bytes(p, DataError, what)
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            members = [m for m in archive.namelist() if m.lower().endswith(".jsonl") and not m.startswith("__MACOSX/")]
            if len(members) != 1:
                found = ", ".join(archive.namelist()[:5]) or "no file"
                raise DataError(
                    f"{what} is a zip archive without exactly one .jsonl file: {shown}",
                    [Problem(f"expected one .jsonl member, found {found}", file=shown)],
                )
            data = archive.read(members[0])
    except zipfile.BadZipFile as exc:
        raise DataError(f"{what} is not a readable zip archive: {shown}", [Problem(str(exc), file=shown)]) from None
    return _decode(data, f"{shown}:{members[0]}", DataError, what)


def read_table(path: str | os.PathLike, *, what: str = "table") -> Table:
    """Read a table file into a :class:`Table`: CSV or TSV (cells as strings; ``.gz`` compressed or not), JSONL or Parquet.

    A ``.csv`` file's delimiter is detected from its header line (comma, tab,
    semicolon or pipe; comma when in doubt); a ``.tsv`` file's is a tab. A header
    cell left empty (as pandas writes its index column) names the column by its
    position as pandas does: ``Unnamed: 0`` for the first column. Line numbers
    in messages are lines of the uncompressed text.
    """
    p = Path(path)
    shown = display_path(p)
    suffix = table_suffix(p)
    if suffix == ".jsonl":
        return read_jsonl(p, what=what)
    if suffix in (".csv", ".csv.gz", ".tsv", ".tsv.gz"):
        raw = _read_bytes(p, DataError, what)
        if suffix.endswith(".gz"):
            raw = _gunzip(raw, shown, what)
        text = _decode(raw, shown, DataError, what)
        return _read_csv(text, shown, what, "\t" if suffix.startswith(".tsv") else None)
    if suffix == ".parquet":
        return _read_parquet(p, what)
    found = "".join(p.suffixes[-2:]) or "no suffix"
    raise DataError(
        f"{what} has an unsupported format: {shown}",
        [Problem(f"expected a file ending in {', '.join(TABLE_SUFFIXES)}, found {found!r}", file=shown)],
    )


def _delimiter(text: str) -> str:
    """The delimiter of a CSV text, from its header line: the one of CSV_DELIMITERS the csv.Sniffer finds, else a comma."""
    header = text.split("\n", 1)[0]
    try:
        return csv.Sniffer().sniff(header, delimiters=CSV_DELIMITERS).delimiter
    except csv.Error:  # a header of one column (or nothing the sniffer recognises)
        return ","


def _read_csv(text: str, shown: str, what: str, delimiter: str | None) -> Table:
    delimiter = delimiter or _delimiter(text)
    kind = "TSV" if delimiter == "\t" and shown.lower().endswith((".tsv", ".tsv.gz")) else "CSV"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{what} is empty: {shown}", [Problem("no header row", file=shown, line=1)]) from None
    except csv.Error as exc:
        raise DataError(f"{what} is not valid {kind}: {shown}", [Problem(str(exc), file=shown, line=1)]) from None
    # pandas writes its index with an empty header cell; name it as pandas reads it back.
    header = [name if name else f"Unnamed: {i}" for i, name in enumerate(header)]
    problems: list[Problem] = []
    seen: set[str] = set()
    for name in header:
        if name in seen:
            problems.append(Problem(f"duplicate column {name!r}", file=shown, line=1))
        seen.add(name)
    rows, lines = [], []
    sep = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}[delimiter]
    try:
        for record in reader:
            lineno = reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            if len(record) != len(header):
                problems.append(
                    Problem(
                        f"expected {len(header)} cells (as in the header, {sep}-separated), found {len(record)}",
                        file=shown,
                        line=lineno,
                    )
                )
                continue
            rows.append(dict(zip(header, record, strict=True)))
            lines.append(lineno)
    except csv.Error as exc:
        problems.append(Problem(f"invalid {kind}: {exc}", file=shown, line=reader.line_num))
    if problems:
        raise DataError(f"{what} is not a valid {kind} table: {shown}", problems)
    return Table(shown, header, rows, lines)


def _read_parquet(p: Path, what: str) -> Table:
    shown = display_path(p)
    if not p.is_file():
        raise DataError(f"{what} not found: {shown}", [Problem("no such file", file=shown)])
    import pyarrow.parquet as pq  # lazy: only Parquet users pay for the import

    try:
        table = pq.read_table(p)
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(f"{what} is not a readable Parquet file: {shown}", [Problem(str(exc), file=shown)]) from None
    rows = table.to_pylist()
    return Table(shown, list(table.column_names), rows, list(range(1, len(rows) + 1)))


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )
