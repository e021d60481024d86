"""Sequences to classify: dataset files, .npy arrays, CSV, JSON, or CSV/JSON on stdin."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np

from spiralctl.data import load_dataset
from spiralctl.errors import SpiralError
from spiralctl.storage import atomic_output

CSV_HEADER = ["sequence", "x", "y"]


def _check_sequence(points: np.ndarray, where: str, name: str) -> np.ndarray:
    if points.ndim != 2 or points.shape[1] != 2:
        raise SpiralError(
            f"{where}: sequence {name} must be a list of [x, y] points, found shape {list(points.shape)}"
        )
    if len(points) < 2:
        raise SpiralError(f"{where}: sequence {name} has {len(points)} point(s); at least 2 are needed")
    if not np.isfinite(points).all():
        raise SpiralError(f"{where}: sequence {name} holds NaN or infinite values")
    return points.astype(np.float32)


def _from_csv(text: str, where: str) -> tuple[list[str], list[np.ndarray]]:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [c.strip() for c in rows[0]] != CSV_HEADER:
        raise SpiralError(f"{where}: a CSV input needs the header 'sequence,x,y' on its first line")
    order: list[str] = []
    points: dict[str, list[tuple[float, float]]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 3:
            raise SpiralError(f"{where}: line {line} has {len(row)} fields, expected sequence,x,y")
        name = row[0].strip()
        try:
            point = (float(row[1]), float(row[2]))
        except ValueError:
            raise SpiralError(
                f"{where}: line {line}: x and y must be numbers, found {row[1]!r}, {row[2]!r}"
            ) from None
        if name not in points:
            order.append(name)
            points[name] = []
        points[name].append(point)
    if not order:
        raise SpiralError(f"{where}: the CSV holds no points")
    return order, [_check_sequence(np.array(points[n], dtype=np.float64), where, n) for n in order]


def _from_json(text: str, where: str) -> tuple[list[str], list[np.ndarray]]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise SpiralError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(value, list) or not value:
        raise SpiralError(f"{where}: JSON input must be a list of [x, y] points or a list of such lists")
    # one sequence ([[x, y], ...]) or several ([[[x, y], ...], ...])
    several = isinstance(value[0], list) and value[0] and isinstance(value[0][0], list)
    raw = value if several else [value]
    sequences = []
    for i, seq in enumerate(raw):
        try:
            array = np.array(seq, dtype=np.float64)
        except (ValueError, TypeError):
            raise SpiralError(f"{where}: sequence {i} must be a list of [x, y] number pairs") from None
        sequences.append(_check_sequence(array, where, str(i)))
    return [str(i) for i in range(len(sequences))], sequences


def _from_npy(path: Path) -> tuple[list[str], list[np.ndarray]]:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise SpiralError(f"{path}: not a readable .npy array ({exc})") from None
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[2] != 2 or not np.issubdtype(array.dtype, np.number):
        raise SpiralError(
            f"{path}: a .npy input must be a number array of shape [T, 2] or [N, T, 2], "
            f"found {list(array.shape)}"
        )
    return [str(i) for i in range(len(array))], [
        _check_sequence(a.astype(np.float64), str(path), str(i)) for i, a in enumerate(array)
    ]


def read_sequences(source: str) -> tuple[list[str], list[np.ndarray], np.ndarray | None]:
    """Returns sequence names, the sequences, and labels when the input is a dataset."""
    if source == "-":
        text = sys.stdin.read()
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
        return [str(i) for i in range(len(data))], list(data.x), data.y
    if suffix == ".npy":
        return (*_from_npy(path), None)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpiralError(f"cannot read {path}: {exc}") from None
    if suffix == ".csv":
        return (*_from_csv(text, str(path)), None)
    if suffix == ".json":
        return (*_from_json(text, str(path)), None)
    raise SpiralError(
        f"{path}: unknown input type {suffix or '(none)'!r}; use .safetensors, .npy, .csv or .json"
    )


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
