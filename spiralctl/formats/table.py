"""CSV inputs. A long CSV has a header row, then one row per time step: a sequence column, an
optional label column and one column per feature, in any order and under any names. It may come
from a spreadsheet: comma, semicolon or tab separated (with the two others a decimal comma is
allowed), a byte-order mark, CRLF, quoted fields, empty lines and empty trailing columns. A
sequence's rows come together, in time order, and agree on its label. A CSV without a header
is the UCR archive's: one sequence per row, the label first (see ucr.py).

The rows are read a chunk of lines at a time. A chunk goes through numpy at once where it is
plain (no quotes, every row complete, every value a usable number); otherwise, and to word any
error, through the csv module row by row: both give the same sequences."""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from spiralctl.errors import SpiralError
from spiralctl.formats.common import TOO_SHORT, Sequence, bad_values, value_problem
from spiralctl.formats.ucr import is_ucr_row, ucr_sequences

DELIMITERS = (",", ";", "\t")
CHUNK = 1 << 16  # lines parsed at a time: predict's memory stays bounded by its block, not the file
USAGE = (
    "a CSV input needs a header on its first line naming a sequence column and one column per "
    "feature (such as 'sequence,x,y,label'; separated by commas, semicolons or tabs), or no header "
    "and one sequence per row: its label, then its values"
)


@dataclass
class Header:
    """A long CSV's columns: their names as written, and which is which."""

    delimiter: str
    columns: list[str]
    sequence: int
    label: int | None
    features: list[int]

    @property
    def feature_names(self) -> list[str]:
        return [self.columns[i] for i in self.features]


def find_header(first: str, where: str) -> Header | None:
    """The header of a long CSV (a line with a sequence column, in any case), or None where the
    first line has none."""
    for delimiter in DELIMITERS:
        try:
            fields = next(csv.reader([first], delimiter=delimiter), [])
        except csv.Error:
            continue
        columns = [name.strip() for name in fields]
        while columns and not columns[-1]:  # empty columns a spreadsheet adds
            columns.pop()
        lowered = [name.lower() for name in columns]
        if "sequence" in lowered:
            break
    else:
        return None
    for index, name in enumerate(lowered):
        if not name:
            raise SpiralError(
                f"{where}: line 1: column {index + 1} of the header is empty; name every column"
            )
        if name in lowered[:index]:
            raise SpiralError(
                f"{where}: line 1: the header names column {columns[index]!r} twice; give each column "
                "its own name"
            )
    features = [i for i, name in enumerate(lowered) if name not in ("sequence", "label")]
    if not features:
        raise SpiralError(
            f"{where}: line 1: the header names no feature columns; give one column per feature besides "
            "sequence and label (such as 'sequence,x,y,label')"
        )
    label = lowered.index("label") if "label" in lowered else None
    return Header(delimiter, columns, lowered.index("sequence"), label, features)


@dataclass
class CsvInput:
    """A CSV's sequences as they are read, and what its first line says about them."""

    features: list[str] | None  # the feature columns' names (None: the UCR format, one feature)
    labelled: bool
    sequences: Iterator[Sequence]


def read_csv(lines: Iterable[str], where: str) -> CsvInput:
    """A long CSV (a header with a sequence column) or the UCR archive's headerless CSV, told apart
    by the first line. `lines` is read as it comes (a file, stdin), never all at once."""
    lines = iter(lines)
    first = next(lines, None)
    if first is None:
        raise SpiralError(f"{where} is empty; {USAGE}")
    header = find_header(first, where)
    if header is not None:
        return CsvInput(header.feature_names, header.label is not None, _long_sequences(lines, header, where))
    if is_ucr_row(first, ","):
        return CsvInput(None, True, ucr_sequences(itertools.chain([first], lines), where, ","))
    raise SpiralError(f"{where}: {USAGE}")


class _Rows(NamedTuple):
    """Rows of a long CSV: each one's sequence name and label (stripped), feature values
    float64 [n, D], and line number."""

    names: np.ndarray
    labels: np.ndarray | None
    values: np.ndarray
    lines: np.ndarray


def _long_sequences(lines: Iterator[str], header: Header, where: str) -> Iterator[Sequence]:
    runs = _Runs(where)
    number = 2  # the line the next chunk starts on
    for chunk in _chunks(lines):
        rows = _plain_rows(chunk, number, header)
        error = None
        if rows is None:
            rows, error = _careful_rows(chunk, number, header, where)
        yield from runs.feed(rows)
        if error is not None:
            raise error
        number += len(chunk)
    yield from runs.finish()


def _chunks(lines: Iterator[str]) -> Iterator[list[str]]:
    """The lines, CHUNK at a time; a chunk ends where a record does (an even number of quotes so
    far), so that a quoted field over several lines stays in one chunk."""
    while chunk := list(itertools.islice(lines, CHUNK)):
        quotes = sum(line.count('"') for line in chunk)
        while quotes % 2 and (line := next(lines, None)) is not None:
            chunk.append(line)
            quotes += line.count('"')
        yield chunk


def _plain_rows(lines: list[str], first: int, header: Header) -> _Rows | None:
    """The rows of a chunk of lines that numpy can read as they are, or None where it cannot and
    the csv module must (quotes, short or long rows, a value that is not a usable number)."""
    delimiter, width = header.delimiter, len(header.columns)
    counts = np.fromiter((line.count(delimiter) for line in lines), dtype=np.int64, count=len(lines))
    complete = counts == width - 1
    kept = lines
    if not complete.all():
        if any(lines[i].strip() for i in np.flatnonzero(~complete).tolist()):
            return None
        kept = [lines[i] for i in np.flatnonzero(complete).tolist()]  # without the empty lines
    if not kept:
        return _Rows(*_empty_rows(header))
    text = "".join(kept)
    if '"' in text or "\0" in text:
        return None
    numbers = text if delimiter == "," else text.replace(",", ".")  # decimal commas
    text_columns = [header.sequence] + ([header.label] if header.label is not None else [])
    try:
        values = np.loadtxt(
            io.StringIO(numbers), delimiter=delimiter, usecols=header.features, comments=None, ndmin=2
        )
        strings = np.loadtxt(
            io.StringIO(text), dtype=str, delimiter=delimiter, usecols=text_columns, comments=None, ndmin=2
        )
    except ValueError:
        return None
    if len(values) != len(kept) or len(strings) != len(kept) or bad_values(values).any():
        return None
    strings = np.strings.strip(strings)
    labels = strings[:, 1] if header.label is not None else None
    return _Rows(strings[:, 0], labels, values, first + np.flatnonzero(complete))


def _empty_rows(header: Header) -> tuple:
    labels = np.array([], dtype=str) if header.label is not None else None
    return np.array([], dtype=str), labels, np.zeros((0, len(header.features))), np.zeros(0, dtype=np.int64)


def _careful_rows(
    lines: list[str], first: int, header: Header, where: str
) -> tuple[_Rows, SpiralError | None]:
    """The rows of a chunk read by the csv module, up to the first one it cannot use, and the
    error that names that row's line (None where every row is good)."""
    names, labels, values, numbers = [], [], [], []
    width, decimal_comma = len(header.columns), header.delimiter != ","
    reader = csv.reader(lines, delimiter=header.delimiter)
    error = None
    try:
        for row in reader:
            line = first - 1 + reader.line_num
            while len(row) > width and not row[-1].strip():  # empty columns a spreadsheet adds
                row.pop()
            if not any(field.strip() for field in row):
                continue
            if len(row) != width:
                raise SpiralError(
                    f"{where}: line {line} has {len(row)} fields, expected {','.join(header.columns)}"
                )
            point = [
                _number(row[column], name, f"{where}: line {line}", decimal_comma)
                for column, name in zip(header.features, header.feature_names)
            ]
            names.append(row[header.sequence].strip())
            labels.append(row[header.label].strip() if header.label is not None else "")
            values.append(point)
            numbers.append(line)
    except csv.Error as exc:
        error = SpiralError(f"{where}: line {first - 1 + reader.line_num}: not valid CSV ({exc})")
    except SpiralError as exc:
        error = exc
    if not names:
        return _Rows(*_empty_rows(header)), error
    rows = _Rows(
        np.array(names, dtype=str),
        np.array(labels, dtype=str) if header.label is not None else None,
        np.array(values, dtype=np.float64),
        np.array(numbers, dtype=np.int64),
    )
    return rows, error


def _number(field: str, feature: str, where: str, decimal_comma: bool) -> float:
    text = field.strip()
    if decimal_comma and "." not in text:
        text = text.replace(",", ".", 1)
    try:
        value = float(text)
    except ValueError:
        hint = "; for decimal commas separate the fields with ;" if "," in field else ""
        raise SpiralError(f"{where}: {feature} must be a number, found {field!r}{hint}") from None
    if (why := value_problem(value)) is not None:
        raise SpiralError(f"{where}: {feature} = {field.strip()} {why}")
    return value


@dataclass
class _Open:
    """The sequence whose rows were read last: more may follow in the next chunk."""

    name: str
    label: str | None
    line: int
    parts: list[np.ndarray] = field(default_factory=list)


class _Runs:
    """Rows into sequences, chunk by chunk: a sequence is its run of rows with one name, which
    must not appear again later, agree on one label, and number at least 2. A sequence of one
    row is reported at the end of the input, unless its name comes back: that is reported then,
    as what it is."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.seen: set[str] = set()
        self.open: _Open | None = None
        self.short: SpiralError | None = None
        self.count = 0

    def feed(self, rows: _Rows) -> Iterator[Sequence]:
        """The sequences that the rows complete; then the first problem in them, if any."""
        names, labels, lines = rows.names, rows.labels, rows.lines
        if len(names) == 0:
            return
        values = rows.values.astype(np.float32)
        same = names[1:] == names[:-1]
        starts = np.flatnonzero(np.concatenate([[True], ~same])).tolist()
        goes_on = self.open is not None and names[0] == self.open.name
        problems = self._problems(rows, same, starts, goes_on)
        stop = problems[0][0] if problems else len(names)
        ends = [*starts[1:], len(names)]
        for run, (start, end) in enumerate(zip(starts, ends)):
            if start > stop:
                break
            if run == 0 and goes_on:
                self.open.parts.append(values[start:end])
                continue
            yield from self._close()
            if start == stop:
                break
            label = str(labels[start]) if labels is not None else None
            self.open = _Open(str(names[start]), label, int(lines[start]), [values[start:end]])
        if problems:
            raise SpiralError(f"{self.where}: line {int(lines[stop])}: {problems[0][1]}")

    def _problems(self, rows: _Rows, same: np.ndarray, starts: list[int], goes_on: bool) -> list:
        """(row, what is wrong) of the first problem of each kind, the first row's first."""
        names, labels = rows.names, rows.labels
        found = []
        empty = np.flatnonzero(names == "")
        if empty.size:
            found.append((int(empty[0]), "the sequence field is empty; give every row its sequence's name"))
        if labels is not None and (empty := np.flatnonzero(labels == "")).size:
            found.append((int(empty[0]), "the label is empty; give every row its sequence's label"))
        for run, start in enumerate(starts):
            name = str(names[start])
            if run == 0 and goes_on:
                continue
            if name in self.seen:
                found.append(
                    (
                        start,
                        f"sequence {name} continues after other sequences' rows; keep each sequence's "
                        "rows together, in time order",
                    )
                )
                break
            self.seen.add(name)
        if labels is not None:
            changed = (np.flatnonzero(same & (labels[1:] != labels[:-1])) + 1).tolist()
            if goes_on and labels[0] != self.open.label:
                changed.insert(0, 0)
            if changed:
                row = changed[0]
                before = labels[row - 1] if row else self.open.label
                found.append(
                    (
                        row,
                        f"sequence {names[row]} is labelled {before} on its earlier lines and {labels[row]} "
                        "here; give each sequence one label",
                    )
                )
        return sorted(found, key=lambda problem: problem[0])

    def _close(self) -> Iterator[Sequence]:
        """The open sequence, complete; one of a single row is kept back to report at the end."""
        if self.open is None:
            return
        done, self.open = self.open, None
        points = done.parts[0] if len(done.parts) == 1 else np.concatenate(done.parts)
        if len(points) < 2:
            if self.short is None:
                self.short = SpiralError(
                    f"{self.where}: line {done.line}: sequence {done.name} has {len(points)} point(s); "
                    f"{TOO_SHORT}"
                )
            return
        self.count += 1
        if self.short is None:
            yield Sequence(done.name, points, done.label, done.line)

    def finish(self) -> Iterator[Sequence]:
        """The last sequence, at the end of the input; or what was wrong."""
        yield from self._close()
        if self.short is not None:
            raise self.short
        if self.count == 0:
            raise SpiralError(
                f"{self.where}: the CSV holds no points; give one row per point after its header"
            )
