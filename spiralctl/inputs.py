"""Sequences to classify: dataset files, .npy arrays, CSV, JSON, or CSV/JSON on stdin."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spiralctl.data import LABELS, load_dataset, padded_sequences
from spiralctl.errors import SpiralError

CSV_HEADER = ["sequence", "x", "y"]
LABELLED_CSV_HEADER = [*CSV_HEADER, "label"]
# spiralctl computes in float32: a coordinate beyond this would become infinite
FLOAT32_MAX = float(np.finfo(np.float32).max)
NOT_FINITE = "is not a finite number; give finite x and y values"
BEYOND_FLOAT32 = (
    "is beyond float32's range (about 3.4e38), which spiralctl computes in; scale the points down"
)


def _value_problem(value: float) -> str | None:
    """Why a coordinate cannot be used, or None."""
    if not math.isfinite(value):
        return NOT_FINITE
    if abs(value) > FLOAT32_MAX:
        return BEYOND_FLOAT32
    return None


def _check_sequence(points: np.ndarray, where: str, name: str) -> np.ndarray:
    """A [T, 2] array of numbers as float32, or a SpiralError saying which point is wrong."""
    if points.ndim != 2 or points.shape[1] != 2:
        raise SpiralError(
            f"{where}: sequence {name} must be a list of [x, y] points, found shape {list(points.shape)}"
        )
    if len(points) < 2:
        raise SpiralError(f"{where}: sequence {name} has {len(points)} point(s); at least 2 are needed")
    bad = ~np.isfinite(points)
    if points.dtype.kind == "f" and points.dtype.itemsize > 4:  # wider than float32: a cast may overflow
        bad |= np.abs(points) > FLOAT32_MAX
    if bad.any():
        point, column = (int(i) for i in np.argwhere(bad)[0])
        value = points[point, column]
        why = BEYOND_FLOAT32 if np.isfinite(value) else NOT_FINITE
        raise SpiralError(f"{where}: sequence {name}, point {point}: {'xy'[column]} = {value} {why}")
    return points.astype(np.float32)


def _number(field: str, decimal_comma: bool) -> float:
    field = field.strip()
    if decimal_comma and "." not in field:
        field = field.replace(",", ".", 1)
    return float(field)


def _csv_rows(lines: Iterable[str], where: str, columns: list[str] = CSV_HEADER):
    """The CSV's data rows as (line number, fields), after a header in any spreadsheet's dialect:
    comma, semicolon or tab separated (with the two others, a decimal comma is allowed). `lines`
    is read as it comes (a file, stdin), never all at once."""
    lines = iter(lines)
    first = next(lines, "")
    for delimiter in (",", ";", "\t"):
        header = next(csv.reader([first], delimiter=delimiter), [])
        while header and not header[-1].strip():
            header.pop()
        if [c.strip().lower() for c in header] == columns:
            break
    else:
        raise SpiralError(
            f"{where}: a CSV input needs the header '{','.join(columns)}' on its first line "
            "(separated by commas, semicolons or tabs)"
        )
    reader = csv.reader(itertools.chain([first], lines), delimiter=delimiter)
    try:
        next(reader)
        for row in reader:
            while len(row) > len(columns) and not row[-1].strip():  # empty columns a spreadsheet adds
                row.pop()
            if row and any(c.strip() for c in row):
                yield reader.line_num, row, delimiter != ","
    except csv.Error as exc:
        raise SpiralError(f"{where}: line {reader.line_num}: not valid CSV ({exc})") from None


def _csv_point(row: list[str], line: int, where: str, decimal_comma: bool) -> list[float]:
    point = []
    for axis, field in zip("xy", row[1:3]):
        try:
            value = _number(field, decimal_comma)
        except ValueError:
            hint = "; for decimal commas separate the fields with ;" if "," in field else ""
            raise SpiralError(
                f"{where}: line {line}: {axis} must be a number, found {field!r}{hint}"
            ) from None
        if (why := _value_problem(value)) is not None:
            raise SpiralError(f"{where}: line {line}: {axis} = {field.strip()} {why}")
        point.append(value)
    return point


def _csv_sequences(
    lines: Iterable[str], where: str, labelled: bool = False
) -> Iterator[tuple[str, np.ndarray, int | None]]:
    """(name, points, label) of each sequence as soon as its last row is read. A sequence's rows
    come together, in time order. With `labelled`, the CSV has a fourth column, label, which
    every row of a sequence must agree on."""
    columns = LABELLED_CSV_HEADER if labelled else CSV_HEADER
    seen: set[str] = set()
    name, points, label = None, [], None
    for line, row, decimal_comma in _csv_rows(lines, where, columns):
        if len(row) != len(columns):
            raise SpiralError(f"{where}: line {line} has {len(row)} fields, expected {','.join(columns)}")
        row_name = row[0].strip()
        row_label = parse_label(row[3], f"{where}: line {line}") if labelled else None
        if row_name != name:
            if name is not None:
                yield name, _check_sequence(np.array(points, dtype=np.float64), where, name), label
            if row_name in seen:
                raise SpiralError(
                    f"{where}: line {line}: sequence {row_name} continues after other sequences' rows; "
                    "keep each sequence's rows together, in time order"
                )
            seen.add(row_name)
            name, points, label = row_name, [], row_label
        elif row_label != label:
            raise SpiralError(
                f"{where}: line {line}: sequence {name} is labelled {LABELS[label]} on its "
                f"earlier lines and {LABELS[row_label]} here; give each sequence one label"
            )
        points.append(_csv_point(row, line, where, decimal_comma))
    if name is None:
        raise SpiralError(f"{where}: the CSV holds no points")
    yield name, _check_sequence(np.array(points, dtype=np.float64), where, name), label


def _from_csv(text: str, where: str, labelled: bool = False) -> tuple[list[str], list[np.ndarray], list]:
    names, sequences, labels = [], [], []
    for name, points, label in _csv_sequences(io.StringIO(text), where, labelled):
        names.append(name)
        sequences.append(points)
        labels.append(label)
    return names, sequences, labels


def _json_points(sequence: object, where: str, index: int) -> np.ndarray:
    """One JSON sequence, [[x, y], ...] with JSON numbers only (no strings, no true/false)."""
    if not isinstance(sequence, list):
        raise SpiralError(f"{where}: sequence {index} must be a list of [x, y] points")
    values = []
    for point_index, point in enumerate(sequence):
        where_point = f"{where}: sequence {index}, point {point_index}"
        if not isinstance(point, list) or len(point) != 2:
            raise SpiralError(f"{where_point}: expected [x, y], found {json.dumps(point)[:60]}")
        for axis, value in zip("xy", point):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SpiralError(
                    f"{where_point}: {axis} = {json.dumps(value)[:60]} is not a number; "
                    "write x and y as JSON numbers (no quotes, no true/false)"
                )
            try:
                why = _value_problem(float(value))
            except OverflowError:  # an integer too large for a float
                why = BEYOND_FLOAT32
            if why is not None:
                raise SpiralError(f"{where_point}: {axis} = {json.dumps(value)[:60]} {why}")
        values.append(point)
    return _check_sequence(np.array(values, dtype=np.float64).reshape(-1, 2), where, str(index))


def _from_json(text: str, where: str) -> tuple[list[str], list[np.ndarray]]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SpiralError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(value, list) or not value:
        raise SpiralError(f"{where}: JSON input must be a list of [x, y] points or a list of such lists")
    # one sequence ([[x, y], ...]) or several ([[[x, y], ...], ...])
    several = isinstance(value[0], list) and value[0] and isinstance(value[0][0], list)
    raw = value if several else [value]
    sequences = [_json_points(seq, where, i) for i, seq in enumerate(raw)]
    return [str(i) for i in range(len(sequences))], sequences


NPY_USAGE = "save the points with numpy.save as a float array of shape [T, 2] or [N, T, 2]"


def _open_npy(path: Path) -> np.ndarray:
    """The .npy array as [N, T, 2], memory-mapped (read block by block), after every check of
    its header."""
    usage = NPY_USAGE
    try:
        # memory-mapped: a header that claims more than the file holds is an error, not an allocation
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except EOFError:  # not Ctrl-D: the file ends before its header does
        what = "is empty" if path.stat().st_size == 0 else "ends before its .npy header does"
        raise SpiralError(f"{path} {what}; {usage}") from None
    except (ValueError, OSError) as exc:
        why = str(exc)
        if "pickle" in why:
            why = "it holds Python objects, or is not a .npy file"
        elif "mmap length" in why:
            why = "it is shorter than its header says: cut short?"
        raise SpiralError(f"{path}: not a readable .npy array ({why}); {usage}") from None
    if not isinstance(array, np.ndarray):  # a .npz archive under a .npy name
        raise SpiralError(f"{path} is a .npz archive, not a .npy array; {usage}")
    kind = array.dtype.kind
    if kind not in "iuf":
        what = {"b": "booleans", "c": "complex numbers"}.get(kind, "values that are not numbers")
        raise SpiralError(f"{path} holds {what} (dtype {array.dtype}); x and y must be real numbers: {usage}")
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[2] != 2:
        raise SpiralError(
            f"{path}: a .npy input must have shape [T, 2] or [N, T, 2], found {list(array.shape)}"
        )
    if len(array) == 0:
        raise SpiralError(f"{path} holds no sequences (shape {list(array.shape)}); {usage}")
    return array


def _checked_block(points: np.ndarray, where: str, first: int) -> np.ndarray:
    """Sequences first, first + 1, ... of a .npy array as float32, or the error _check_sequence
    gives for the first bad one."""
    if points.shape[1] < 2:
        raise SpiralError(f"{where}: sequence {first} has {points.shape[1]} point(s); at least 2 are needed")
    bad = ~np.isfinite(points)
    if points.dtype.kind == "f" and points.dtype.itemsize > 4:  # wider than float32: a cast may overflow
        bad |= np.abs(points) > FLOAT32_MAX
    if bad.any():
        row = int(np.argmax(bad.any(axis=(1, 2))))
        _check_sequence(np.asarray(points[row]), where, str(first + row))
    return points.astype(np.float32)


def _npy_rows(path: Path, block: int) -> Iterator[np.ndarray]:
    """The array's sequences, `block` at a time. Read from the file rather than through the
    memory map where the layout allows: mapped pages, once read, count as the process's memory
    (1,000,000 x 50 points: 400 MB more)."""
    array = _open_npy(path)
    count, steps = array.shape[:2]
    offset = getattr(array, "offset", None)
    if not (isinstance(array, np.memmap) and array.flags.c_contiguous and offset is not None):
        for first in range(0, count, block):
            yield np.asarray(array[first : first + block])
        return
    dtype = array.dtype
    del array
    with open(path, "rb") as handle:
        handle.seek(offset)
        for first in range(0, count, block):
            rows = min(block, count - first)
            yield np.fromfile(handle, dtype=dtype, count=rows * steps * 2).reshape(rows, steps, 2)


def _npy_blocks(path: Path, block: int) -> Iterator[SequenceBlock]:
    first = 0
    for rows in _npy_rows(path, block):
        points = _checked_block(rows, str(path), first)
        lengths = np.full(len(points), points.shape[1], dtype=np.int64)
        yield SequenceBlock([str(i) for i in range(first, first + len(points))], points, lengths)
        first += len(points)


def _from_npy(path: Path) -> tuple[list[str], list[np.ndarray]]:
    blocks = list(_npy_blocks(path, 1 << 14))
    return [n for b in blocks for n in b.names], [s for b in blocks for s in b.sequences()]


@dataclass
class SequenceBlock:
    """Some of an input's sequences: names, x float32[n, T, 2] (zero past each sequence's
    length), lengths [n], and the true labels when the input is a dataset."""

    names: list[str]
    x: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray | None = None

    def sequences(self) -> list[np.ndarray]:
        return [x[:length] for x, length in zip(self.x, self.lengths)]


def _grouped(sequences: Iterable[tuple[str, np.ndarray]], block: int) -> Iterator[SequenceBlock]:
    names: list[str] = []
    points: list[np.ndarray] = []
    for name, sequence in sequences:
        names.append(name)
        points.append(sequence)
        if len(names) == block:
            yield SequenceBlock(names, *padded_sequences(points))
            names, points = [], []
    if names:
        yield SequenceBlock(names, *padded_sequences(points))


def _text_lines(path: Path) -> Iterator[str]:
    """A UTF-8 text file's lines as they are read (a byte-order mark from a spreadsheet skipped)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            yield from handle
    except UnicodeDecodeError:
        raise SpiralError(f"{path} is not UTF-8 text; save it as CSV UTF-8 (or JSON) and try again") from None
    except OSError as exc:
        raise SpiralError(f"cannot read {path}: {exc.strerror}; check its permissions") from None


def _stdin_blocks(block: int) -> Iterator[SequenceBlock]:
    """CSV on stdin, read as it comes; or JSON, read whole."""
    start: list[str] = []
    for line in sys.stdin:
        start.append(line.removeprefix("\ufeff") if not start else line)
        if start[-1].strip():
            break
    if "".join(start).lstrip().startswith(("[", "{")):
        names, sequences = _from_json("".join(start) + sys.stdin.read(), "stdin")
        yield from _grouped(zip(names, sequences), block)
        return
    rows = _csv_sequences(itertools.chain(start, sys.stdin), "stdin")
    yield from _grouped(((name, points) for name, points, _ in rows), block)


# sequences read and classified at a time: the memory predict needs is bounded by this, not by the input
BLOCK = 1 << 14


def read_blocks(source: str, block: int | None = None) -> Iterator[SequenceBlock]:
    """The sequences of `source` (a dataset, .npy, CSV, JSON, or - for CSV/JSON on stdin) in
    blocks of up to `block` (BLOCK), as they are read: CSV line by line, .npy block by block."""
    block = block or BLOCK
    if source == "-":
        yield from _stdin_blocks(block)
        return
    path = Path(source)
    if not path.exists():
        raise SpiralError(f"{path}: no such file; give a dataset, .npy, .csv or .json file, or - for stdin")
    if path.is_dir():
        raise SpiralError(f"{path} is a folder; give a file (dataset, .npy, .csv or .json)")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        data = load_dataset(path)
        for first in range(0, len(data), block):
            rows = slice(first, first + block)
            names = [str(i) for i in range(first, min(first + block, len(data)))]
            yield SequenceBlock(names, data.x[rows], data.lengths[rows], data.y[rows])
        return
    if suffix == ".npy":
        yield from _npy_blocks(path, block)
        return
    if suffix not in (".csv", ".json"):
        raise SpiralError(
            f"{path}: unknown input type {suffix or '(none)'!r}; use .safetensors, .npy, .csv or .json"
        )
    if suffix == ".csv":
        rows = _csv_sequences(_text_lines(path), str(path))
        yield from _grouped(((name, points) for name, points, _ in rows), block)
        return
    names, sequences = _from_json("".join(_text_lines(path)), str(path))
    yield from _grouped(zip(names, sequences), block)


def read_sequences(source: str) -> tuple[list[str], list[np.ndarray], np.ndarray | None]:
    """Returns sequence names, the sequences, and labels when the input is a dataset."""
    blocks = list(read_blocks(source))
    labels = None if blocks[0].labels is None else np.concatenate([b.labels for b in blocks])
    return [n for b in blocks for n in b.names], [s for b in blocks for s in b.sequences()], labels


LABEL_HINT = "clockwise, anticlockwise, 0 (clockwise) or 1 (anticlockwise)"


def parse_label(value: object, where: str) -> int:
    """A label as 0 (clockwise) or 1 (anticlockwise): a class name (any case) or 0/1."""
    if isinstance(value, (bool, np.bool_)):
        value = repr(bool(value))  # true/false are not labels
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value) in (0.0, 1.0):
        return int(value)
    text = str(value).strip().lower()
    if text in LABELS:
        return LABELS.index(text)
    if text in ("0", "1"):
        return int(text)
    raise SpiralError(f"{where}: the label must be {LABEL_HINT}, found {str(value)[:40]!r}")


def _labelled_json(text: str, where: str) -> tuple[list[str], list[np.ndarray], list[int]]:
    """[{"points": [[x, y], ...], "label": ..., "sequence": optional name}, ...]"""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SpiralError(f"{where}: not valid JSON ({exc})") from None
    usage = 'a list of {"points": [[x, y], ...], "label": "clockwise"} objects'
    if not isinstance(value, list) or not value:
        raise SpiralError(f"{where}: labelled JSON must be {usage}")
    names, sequences, labels = [], [], []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or "points" not in item or "label" not in item:
            raise SpiralError(f"{where}: sequence {index} must be an object with points and label; {usage}")
        names.append(str(item.get("sequence", index)))
        sequences.append(_json_points(item["points"], where, index))
        labels.append(parse_label(item["label"], f"{where}: sequence {index}"))
    return names, sequences, labels


def _labels_npy(path: Path, count: int) -> list[int]:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise SpiralError(f"{path}: not a readable .npy array of labels ({exc})", option="labels") from None
    if not isinstance(array, np.ndarray) or array.shape != (count,) or array.dtype.kind not in "iuU":
        what = f"{array.dtype}{list(array.shape)}" if isinstance(array, np.ndarray) else "an archive"
        raise SpiralError(
            f"{path}: labels must be one per sequence, [{count}] of 0/1 or class names; found {what}",
            option="labels",
        )
    return [parse_label(value, f"{path}: label {i}") for i, value in enumerate(array.tolist())]


def read_labelled(
    source: str, labels_path: Path | None = None
) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    """Labelled sequences for import: a CSV with the header sequence,x,y,label, a JSON list of
    {"points", "label"} objects, or a .npy array [N, T, 2] with its labels in `labels_path`."""
    path = Path(source)
    if not path.exists():
        raise SpiralError(f"{path}: no such file; give a .csv, .json or .npy file")
    if path.is_dir():
        raise SpiralError(f"{path} is a folder; give a .csv, .json or .npy file")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json", ".npy"):
        raise SpiralError(f"{path}: unknown input type {suffix or '(none)'!r}; use .csv, .json or .npy")
    if suffix == ".npy":
        if labels_path is None:
            raise SpiralError(
                f"{path} holds no labels: give them as a .npy array [N] with {{labels}} FILE.npy"
            )
        names, sequences = _from_npy(path)
        return names, sequences, np.array(_labels_npy(Path(labels_path), len(sequences)), dtype=np.uint8)
    if labels_path is not None:
        raise SpiralError(f"is for .npy inputs; {path} holds its own labels", option="labels")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise SpiralError(f"{path} is not UTF-8 text; save it as CSV UTF-8 (or JSON) and try again") from None
    except OSError as exc:
        raise SpiralError(f"cannot read {path}: {exc.strerror}; check its permissions") from None
    if suffix == ".json":
        names, sequences, labels = _labelled_json(text, str(path))
        return names, sequences, np.array(labels, dtype=np.uint8)
    names, sequences, labels = _from_csv(text, str(path), labelled=True)
    return names, sequences, np.array(labels, dtype=np.uint8)


PREDICTION_COLUMNS = ["sequence", "points", "probability", "label"]


def prediction_csv_lines(block, header: bool = False) -> str:
    """A predict block as CSV: sequence, points, probability, label (and true_label when known),
    with the header line first when `header`."""
    truth = block.true_label is not None
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(PREDICTION_COLUMNS + (["true_label"] if truth else []))
    labels = [LABELS[label] for label in block.label.tolist()]
    columns = [block.names, block.points.tolist(), block.probability.tolist(), labels]
    if truth:
        columns.append([LABELS[label] for label in block.true_label.tolist()])
    writer.writerows(zip(*columns))
    return buffer.getvalue()
