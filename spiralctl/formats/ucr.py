"""The UCR archive's own text formats: one sequence per line, its label first, then its values
(one feature): .tsv (UCR 2018, tab separated), .txt (UCR 2015, spaces or commas) and .csv
without a header (commas). NaN at the end of a line pads a shorter sequence."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from spiralctl.errors import SpiralError
from spiralctl.formats.common import TOO_SHORT, Sequence, check_values


def separator(first_line: str, suffix: str) -> str | None:
    """The field separator of a UCR file: tabs (.tsv), commas (.csv, or a .txt with commas),
    else runs of spaces (None)."""
    if suffix == ".tsv":
        return "\t"
    if suffix == ".csv" or "," in first_line:
        return ","
    return None


def is_ucr_row(line: str, sep: str | None) -> bool:
    """Whether a line reads as a UCR row: a label, then at least one number."""
    fields = _fields(line, sep)
    if len(fields) < 2:
        return False
    try:
        np.array(fields[1:], dtype=np.float64)
    except ValueError:
        return False
    return True


def _fields(line: str, sep: str | None) -> list[str]:
    fields = line.split(sep)
    while len(fields) > 1 and not fields[-1].strip():  # a separator at the end of the line
        fields.pop()
    return fields


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _values(fields: list[str], where: str) -> np.ndarray:
    """A row's values as float32 [T, 1], without the NaN that pads it."""
    try:
        values = np.array(fields, dtype=np.float64)
    except ValueError:
        point = next((i for i, field in enumerate(fields) if not _is_number(field)), 0)
        raise SpiralError(
            f"{where}: point {point} must be a number, found {fields[point].strip()!r}"
        ) from None
    missing = np.isnan(values)
    if missing.any():
        length = len(values) - int(np.argmax(~missing[::-1])) if not missing.all() else 0
        inside = np.flatnonzero(missing[:length])
        if inside.size:
            raise SpiralError(
                f"{where}: point {int(inside[0])} is missing (NaN) and values follow it; only the end of "
                "a line may be NaN, padding a shorter sequence: fill the value in or leave the line out"
            )
        values = values[:length]
    if len(values) < 2:
        raise SpiralError(f"{where}: the sequence has {len(values)} point(s); {TOO_SHORT}")
    return check_values(values[:, None], lambda point, _: f"{where}: point {point}")


def ucr_sequences(lines: Iterable[str], where: str, sep: str | None) -> Iterator[Sequence]:
    """Each line's sequence as it is read, named by its index (0, 1, ...), with its label as the
    file writes it. Empty lines are skipped."""
    count = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = _fields(line, sep)
        label = fields[0].strip()
        if not label:
            raise SpiralError(
                f"{where}: line {number}: the label (the first field) is empty; begin each line with "
                "its sequence's label, then its values"
            )
        yield Sequence(str(count), _values(fields[1:], f"{where}: line {number}"), label, number)
        count += 1
    if count == 0:
        raise SpiralError(
            f"{where} holds no sequences; give one sequence per line: its label, then its values"
        )
