"""JSON inputs: labelled sequences as a list of {"points": [[v1, ..., vD], ...], "label": "...",
"sequence": optional name} objects; sequences to classify also as one list of points, or a list
of such lists. Every value is a JSON number (no strings, no true/false); every point has the
same D >= 1 values."""

from __future__ import annotations

import json

import numpy as np

from spiralctl.errors import SpiralError
from spiralctl.formats.common import BEYOND_FLOAT32, Sequences, check_points, value_problem

OBJECTS = 'a list of {"points": [[v1, ..., vD], ...], "label": "..."} objects'
LISTS = "a list of points (each a list of D numbers), or a list of such lists"


def read_json(text: str, where: str, labelled: bool) -> Sequences:
    """The sequences of a JSON text; `labelled` needs the objects form, each with its label."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SpiralError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(value, list) or not value:
        raise SpiralError(f"{where}: JSON input must be {OBJECTS}{'' if labelled else ', or ' + LISTS}")
    if labelled or isinstance(value[0], dict):
        return _objects(value, where, labelled)
    several = isinstance(value[0], list) and value[0] and isinstance(value[0][0], list)
    points = _Points(where)
    sequences = [points(sequence, str(index)) for index, sequence in enumerate(value if several else [value])]
    return Sequences([str(i) for i in range(len(sequences))], sequences, None)


def _objects(items: list, where: str, labelled: bool) -> Sequences:
    points = _Points(where)
    names, sequences, labels = [], [], []
    for index, item in enumerate(items):
        name = _name(item.get("sequence", index) if isinstance(item, dict) else index, where, index)
        if not isinstance(item, dict) or "points" not in item or (labelled and "label" not in item):
            needs = "points and label" if labelled else "points (and label)"
            raise SpiralError(f"{where}: sequence {name} must be an object with {needs}; give {OBJECTS}")
        if ("label" in item) != ("label" in items[0]):
            raise SpiralError(
                f"{where}: sequence {name} {'has' if 'label' in item else 'has no'} label and sequence "
                f"{names[0]} {'has none' if 'label' in item else 'has one'}; label every sequence or none"
            )
        names.append(name)
        sequences.append(points(item["points"], name))
        if "label" in item:
            labels.append(_label(item["label"], f"{where}: sequence {name}"))
    return Sequences(names, sequences, labels if labels else None)


def _name(value: object, where: str, index: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise SpiralError(
            f"{where}: sequence {index}: the sequence name must be text or a whole number, found "
            f"{json.dumps(value)[:40]}"
        )
    return str(value).strip()


def _label(value: object, where: str) -> str:
    """A label as text: as written, or a whole number's digits (1 and 1.0 alike)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise SpiralError(
            f"{where}: the label must be text or a whole number, found {json.dumps(value)[:40]}; "
            "give each sequence its class"
        )
    return str(value).strip()


class _Points:
    """One JSON sequence as float32 [T, D]: its first point sets D for every sequence."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.width: int | None = None

    def __call__(self, sequence: object, name: str) -> np.ndarray:
        if not isinstance(sequence, list):
            raise SpiralError(
                f"{self.where}: sequence {name} must be a list of points, each a list of numbers"
            )
        for index, point in enumerate(sequence):
            at = f"{self.where}: sequence {name}, point {index}"
            if not isinstance(point, list) or not point:
                raise SpiralError(f"{at}: expected a list of numbers, found {json.dumps(point)[:60]}")
            if self.width is None:
                self.width = len(point)
            elif len(point) != self.width:
                raise SpiralError(
                    f"{at}: {len(point)} value(s) where the first point has {self.width}; give every point "
                    "the same values"
                )
            for feature, value in enumerate(point):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise SpiralError(
                        f"{at}: feature {feature} = {json.dumps(value)[:60]} is not a number; write the "
                        "values as JSON numbers (no quotes, no true/false)"
                    )
                try:
                    why = value_problem(float(value))
                except OverflowError:  # an integer too large for a float
                    why = BEYOND_FLOAT32
                if why is not None:
                    raise SpiralError(f"{at}: feature {feature} = {json.dumps(value)[:60]} {why}")
        return check_points(
            np.array(sequence, dtype=np.float64).reshape(len(sequence), self.width or 1), self.where, name
        )
