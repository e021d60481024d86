"""Sequences to classify: dataset files, .npy arrays, CSV, JSON, or CSV/JSON on stdin."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

import numpy as np

from spiralctl.data import LABELS, load_dataset
from spiralctl.errors import SpiralError
from spiralctl.storage import atomic_output

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


def _csv_rows(text: str, where: str, columns: list[str] = CSV_HEADER):
    """The CSV's data rows as (line number, fields), after a header in any spreadsheet's dialect:
    comma, semicolon or tab separated (with the two others, a decimal comma is allowed)."""
    first = text.split("\n", 1)[0]
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
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        next(reader)
        for row in reader:
            while len(row) > len(columns) and not row[-1].strip():  # empty columns a spreadsheet adds
                row.pop()
            if row and any(c.strip() for c in row):
                yield reader.line_num, row, delimiter != ","
    except csv.Error as exc:
        raise SpiralError(f"{where}: line {reader.line_num}: not valid CSV ({exc})") from None


def _from_csv(
    text: str, where: str, labels: dict[str, int] | None = None
) -> tuple[list[str], list[np.ndarray]]:
    """Sequences in order of first appearance. With `labels` (a dict to fill), the CSV has a
    fourth column, label, which every row of a sequence must agree on."""
    columns = CSV_HEADER if labels is None else LABELLED_CSV_HEADER
    order: list[str] = []
    points: dict[str, list[list[float]]] = {}
    for line, row, decimal_comma in _csv_rows(text, where, columns):
        if len(row) != len(columns):
            raise SpiralError(f"{where}: line {line} has {len(row)} fields, expected {','.join(columns)}")
        name = row[0].strip()
        if labels is not None:
            label = parse_label(row[3], f"{where}: line {line}")
            if labels.setdefault(name, label) != label:
                raise SpiralError(
                    f"{where}: line {line}: sequence {name} is labelled {LABELS[labels[name]]} on its "
                    f"earlier lines and {LABELS[label]} here; give each sequence one label"
                )
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
        if name not in points:
            order.append(name)
            points[name] = []
        points[name].append(point)
    if not order:
        raise SpiralError(f"{where}: the CSV holds no points")
    return order, [_check_sequence(np.array(points[n], dtype=np.float64), where, n) for n in order]


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


def _from_npy(path: Path) -> tuple[list[str], list[np.ndarray]]:
    usage = "save the points with numpy.save as a float array of shape [T, 2] or [N, T, 2]"
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
    return [str(i) for i in range(len(array))], [
        _check_sequence(np.asarray(a), str(path), str(i)) for i, a in enumerate(array)
    ]


def read_sequences(source: str) -> tuple[list[str], list[np.ndarray], np.ndarray | None]:
    """Returns sequence names, the sequences, and labels when the input is a dataset."""
    if source == "-":
        text = sys.stdin.read().removeprefix("\ufeff")
        stripped = text.lstrip()
        if stripped.startswith(("[", "{")):
            return (*_from_json(text, "stdin"), None)
        return (*_from_csv(text, "stdin"), None)
    path = Path(source)
    if not path.exists():
        raise SpiralError(f"{path}: no such file; give a dataset, .npy, .csv or .json file, or - for stdin")
    if path.is_dir():
        raise SpiralError(f"{path} is a folder; give a file (dataset, .npy, .csv or .json)")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        data = load_dataset(path)
        return [str(i) for i in range(len(data))], [x[:n] for x, n in zip(data.x, data.lengths)], data.y
    if suffix == ".npy":
        return (*_from_npy(path), None)
    if suffix not in (".csv", ".json"):
        raise SpiralError(
            f"{path}: unknown input type {suffix or '(none)'!r}; use .safetensors, .npy, .csv or .json"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (from a spreadsheet) is skipped
    except UnicodeDecodeError:
        raise SpiralError(f"{path} is not UTF-8 text; save it as CSV UTF-8 (or JSON) and try again") from None
    except OSError as exc:
        raise SpiralError(f"cannot read {path}: {exc.strerror}; check its permissions") from None
    if suffix == ".csv":
        return (*_from_csv(text, str(path)), None)
    return (*_from_json(text, str(path)), None)


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
    by_name: dict[str, int] = {}
    names, sequences = _from_csv(text, str(path), by_name)
    return names, sequences, np.array([by_name[n] for n in names], dtype=np.uint8)


def check_output(path: Path, force: bool) -> None:
    """A file spiralctl writes replaces an existing one only with `force` (the rule everywhere)."""
    path = Path(path)
    if path.is_dir():
        raise SpiralError(f"{path} is a folder; give a file name", option="output")
    if path.exists() and not force:
        raise SpiralError(f"{path} exists; pass {{force}} to replace it", option="output")


def write_predictions_csv(path: Path, rows: list[dict]) -> None:
    """The predictions as CSV: sequence, points, probability, label (and true_label when known)."""
    columns = ["sequence", "points", "probability", "label"]
    if rows and "true_label" in rows[0]:
        columns.append("true_label")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in columns})
    with atomic_output(Path(path), "w") as handle:
        handle.write(buffer.getvalue())
