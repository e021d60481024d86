"""What every reader shares: the sequence it gives, the checks a sequence's values get, and
reading a text file."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from spiralctl.errors import SpiralError

# spiralctl computes in float32: a value beyond this would become infinite
FLOAT32_MAX = float(np.finfo(np.float32).max)
NOT_FINITE = "is not a finite number; give finite values"
BEYOND_FLOAT32 = (
    "is beyond float32's range (about 3.4e38), which spiralctl computes in; scale the values down"
)
TOO_SHORT = "at least 2 are needed"


class Sequence(NamedTuple):
    """One sequence as a reader gives it: its name, float32 [T, D] points (T >= 2), its label
    text (None where the input has no labels) and the line it starts on (None without lines)."""

    name: str
    points: np.ndarray
    label: str | None
    line: int | None


@dataclass
class Sequences:
    """All of an input's sequences: what one reader found in one file."""

    names: list[str]
    sequences: list[np.ndarray]
    labels: list[str] | None
    classes: list[str] | None = None
    features: list[str] | None = None
    lines: list[int] | None = None

    @classmethod
    def collect(cls, items: Iterator[Sequence], features: list[str] | None = None) -> Sequences:
        """The sequences of a reader that gives them one at a time."""
        names, points, labels, lines = [], [], [], []
        for item in items:
            names.append(item.name)
            points.append(item.points)
            labels.append(item.label)
            lines.append(item.line)
        has_labels = bool(labels) and labels[0] is not None
        has_lines = bool(lines) and lines[0] is not None
        return cls(
            names, points, labels if has_labels else None, None, features, lines if has_lines else None
        )


def value_problem(value: float) -> str | None:
    """Why one value cannot be used, or None."""
    if not math.isfinite(value):
        return NOT_FINITE
    if abs(value) > FLOAT32_MAX:
        return BEYOND_FLOAT32
    return None


def bad_values(values: np.ndarray) -> np.ndarray:
    """Where an array of numbers holds values spiralctl cannot use (NaN, infinite, or beyond
    float32's range), as a boolean mask. Integers always fit."""
    if values.dtype.kind != "f":
        return np.zeros(values.shape, dtype=bool)
    bad = ~np.isfinite(values)
    if values.dtype.itemsize > 4:  # wider than float32: a cast may overflow
        bad |= np.abs(values) > FLOAT32_MAX
    return bad


def check_values(values: np.ndarray, where: Callable[[int, int], str]) -> np.ndarray:
    """A [T, D] array of numbers as float32, or a SpiralError for its first bad value, placed by
    where(point, feature)."""
    bad = bad_values(values)
    if bad.any():
        point, feature = (int(i) for i in np.argwhere(bad)[0])
        value = values[point, feature]
        why = BEYOND_FLOAT32 if np.isfinite(value) else NOT_FINITE
        raise SpiralError(f"{where(point, feature)} = {value} {why}")
    return values.astype(np.float32)


def check_points(points: np.ndarray, where: str, name: str) -> np.ndarray:
    """A sequence named `name` in `where` as float32 [T, D]: at least 2 points of usable values."""
    if len(points) < 2:
        raise SpiralError(f"{where}: sequence {name} has {len(points)} point(s); {TOO_SHORT}")
    return check_values(points, lambda t, d: f"{where}: sequence {name}, point {t}: feature {d}")


def text_lines(path: Path) -> Iterator[str]:
    """A UTF-8 text file's lines as they are read (a byte-order mark from a spreadsheet skipped),
    each with its line end."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            yield from handle
    except UnicodeDecodeError:
        raise SpiralError(f"{path} is not UTF-8 text; save it as UTF-8 and try again") from None
    except OSError as exc:
        raise SpiralError(f"cannot read {path}: {exc.strerror}; check its permissions") from None


def read_text(path: Path) -> str:
    """A UTF-8 text file's whole text (a byte-order mark skipped, line ends as \\n)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise SpiralError(f"{path} is not UTF-8 text; save it as UTF-8 and try again") from None
    except OSError as exc:
        raise SpiralError(f"cannot read {path}: {exc.strerror}; check its permissions") from None
