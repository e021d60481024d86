"""The sktime/aeon .ts format: a header (@problemName, @univariate, @equalLength, @classLabel
true A B ..., '#' or '%' comments), then @data and one case per line: each dimension's values
separated by commas, the dimensions by ':', the class label last. aeon reads the values; this
module reads what aeon does not keep (the labels as written, the line of each case), checks the
labels against @classLabel, and refuses with the line what spiralctl cannot use."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from spiralctl.errors import SpiralError
from spiralctl.formats.common import TOO_SHORT, Sequences, check_values, read_text

NEEDS_AEON = "reading .ts files needs aeon: pip install 'spiralctl[aeon]'"
FLAGS = ("timestamps", "missing", "univariate", "equallength", "targetlabel")


class _Header:
    """The tags before @data: lower-case name -> (line, the name as written, its values)."""

    def __init__(self, lines: list[str], where: str) -> None:
        self.where = where
        self.tags: dict[str, tuple[int, str, list[str]]] = {}
        self.data = 0  # the line of @data
        for number, line in enumerate(lines, 1):
            words = line.split()
            if not words or words[0][0] in "#%":
                continue
            if words[0][0] != "@":
                raise SpiralError(
                    f"{where}: line {number}: expected a header tag (@...) or a comment before @data; "
                    "a .ts file's header comes first, then @data, then one case per line"
                )
            tag = words[0][1:].lower()
            if tag == "data":
                if len(words) > 1:
                    raise SpiralError(f"{where}: line {number}: @data stands alone on its line")
                self.data = number
                return
            if tag in FLAGS and (len(words) != 2 or words[1].lower() not in ("true", "false")):
                raise SpiralError(f"{where}: line {number}: {words[0]} takes one value, true or false")
            if tag == "problemname" and len(words) < 2:
                raise SpiralError(f"{where}: line {number}: {words[0]} needs the problem's name after it")
            self.tags[tag] = (number, words[0], words[1:])
        raise SpiralError(
            f"{where}: no @data line; a .ts file holds its header (@problemName, @classLabel, ...), "
            "then @data, then one case per line"
        )

    def flag(self, tag: str) -> bool | None:
        return self.tags[tag][2][0].lower() == "true" if tag in self.tags else None

    def at(self, tag: str) -> str:
        """Where a tag is, for messages: 'TAG (line N)'."""
        number, written, _ = self.tags[tag]
        return f"{written} (line {number})"

    def refuse(self, tag: str, why: str) -> SpiralError:
        number, written, values = self.tags[tag]
        return SpiralError(f"{self.where}: line {number}: {' '.join([written, *values])}: {why}")

    def classes(self, labelled: bool) -> tuple[bool, list[str] | None]:
        """Whether the cases end in a class label, and the classes @classLabel declares."""
        if self.flag("timestamps"):
            raise self.refuse(
                "timestamps", "spiralctl reads values, not time stamps; write the file without them"
            )
        if self.flag("targetlabel"):
            raise self.refuse(
                "targetlabel",
                "the cases hold regression targets and spiralctl classifies; give a "
                "classification set (@classLabel true, then its classes)",
            )
        if "classlabel" not in self.tags:
            return True, None  # as aeon reads it: a label ends each case, the classes undeclared
        number, written, values = self.tags["classlabel"]
        if not values or values[0].lower() not in ("true", "false"):
            raise SpiralError(
                f"{self.where}: line {number}: {written} takes true (then the classes) or false"
            )
        if values[0].lower() == "false":
            if labelled:
                raise self.refuse(
                    "classlabel",
                    "the cases have no class labels (a regression or unlabelled set); "
                    "import needs labelled cases: @classLabel true, then the classes",
                )
            return False, None
        classes = values[1:]
        if not classes:
            raise SpiralError(f"{self.where}: line {number}: {written} true needs the class names after it")
        twice = [name for i, name in enumerate(classes) if name in classes[:i]]
        if twice:
            raise SpiralError(f"{self.where}: line {number}: {written} declares {twice[0]!r} twice")
        return True, classes

    def dimensions(self) -> int | None:
        """The dimensions every case must have: @dimensions, or 1 where the file is univariate
        (aeon reads a file without @univariate as univariate)."""
        if "dimensions" in self.tags:
            values = self.tags["dimensions"][2]
            if len(values) != 1 or not values[0].isdigit() or int(values[0]) < 1:
                raise self.refuse("dimensions", "takes one whole number, the dimensions of each case")
            return int(values[0])
        return None if self.flag("univariate") is False else 1

    def says(self, tag: str, what: str, otherwise: str) -> str:
        """'TAG (line N) says WHAT', or, without the tag, that aeon reads the file so."""
        if tag in self.tags:
            number, written, values = self.tags[tag]
            return f"{' '.join([written, *values])} (line {number}) says {what}"
        return f"the header has no {otherwise}, so aeon reads {what}: add {otherwise}"


class _Case:
    """One line after @data, scanned as text: its dimensions' texts and its label as written."""

    def __init__(self, line: int, text: str, has_label: bool, where: str) -> None:
        self.line = line
        parts = text.split(":")
        self.label = None
        if has_label:
            if len(parts) < 2:
                raise SpiralError(
                    f"{where}: line {line}: no ':' before a class label; a case is its dimensions' values "
                    "(comma separated), each dimension followed by ':', then its class label"
                )
            self.label = parts.pop().strip()
            if not self.label:
                raise SpiralError(f"{where}: line {line}: the class label after the last ':' is empty")
        self.dimensions = parts
        for dimension, values in enumerate(parts):
            if not values.strip():
                raise SpiralError(f"{where}: line {line}: dimension {dimension} has no values")
        counts = [values.count(",") + 1 for values in parts]
        for dimension, count in enumerate(counts):
            if count != counts[0]:
                raise SpiralError(
                    f"{where}: line {line}: dimension {dimension} has {count} values and dimension 0 has "
                    f"{counts[0]}; a case's dimensions need one length"
                )
        self.length = counts[0]


def _scan(cases: list[_Case], header: _Header, classes: list[str] | None, where: str) -> None:
    """Every check the text allows before aeon reads the values."""
    first = cases[0]
    dimensions = header.dimensions()
    equal = header.flag("equallength") is not False  # aeon's default: one length
    for case in cases:
        if classes is not None and case.label not in classes:
            raise SpiralError(
                f"{where}: line {case.line}: label {case.label!r} is not a class that "
                f"{header.at('classlabel')} declares ({', '.join(classes)}); correct the label or declare it"
            )
        if len(case.dimensions) != len(first.dimensions):
            raise SpiralError(
                f"{where}: line {case.line}: the case has {len(case.dimensions)} dimension(s) and the first "
                f"case (line {first.line}) has {len(first.dimensions)}; every case needs the same dimensions"
            )
        if dimensions is not None and len(case.dimensions) != dimensions:
            tag = "dimensions" if "dimensions" in header.tags else "univariate"
            raise SpiralError(
                f"{where}: line {case.line}: the case has {len(case.dimensions)} dimension(s) but "
                + header.says(tag, f"{dimensions} per case", "@univariate false")
            )
        if equal and case.length != first.length:
            raise SpiralError(
                f"{where}: line {case.line}: the case has {case.length} points and the first case (line "
                f"{first.line}) has {first.length}, but "
                + header.says("equallength", "all cases at one length", "@equalLength false")
            )
        if case.length < 2:
            raise SpiralError(f"{where}: line {case.line}: the case has {case.length} point(s); {TOO_SHORT}")


def _aeon_values(path: Path, lines: list[str], header: _Header, cases: list[_Case], where: str) -> list:
    """Each case's values as aeon reads them, [D, T_i]. aeon reads every line after @data as a
    case: where the file has empty lines there, it reads a copy without them."""
    try:
        from aeon.datasets import load_from_ts_file
    except ImportError:
        raise SpiralError(f"{where}: {NEEDS_AEON}") from None
    after = lines[header.data :]
    if after and after[-1] == "":  # the file's last line end
        after.pop()
    copy = None
    with open(path, "rb") as handle:
        marked = handle.read(3) == b"\xef\xbb\xbf"  # a byte-order mark hides aeon's first tag
    if marked or any(not line.strip() for line in after):
        handle, copy = tempfile.mkstemp(suffix=".ts")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write("\n".join([*lines[: header.data], *(line for line in after if line.strip())]) + "\n")
    try:
        values, _ = load_from_ts_file(copy or str(path))
    except Exception as exc:  # aeon raises OSError, ValueError, IndexError ... for what it cannot read
        raise _unreadable(cases, where, exc) from None
    finally:
        if copy is not None:
            os.unlink(copy)
    values = list(values)
    if len(values) != len(cases):
        raise SpiralError(f"{where}: aeon read {len(values)} cases where the file holds {len(cases)}")
    return values


def _unreadable(cases: list[_Case], where: str, exc: Exception) -> SpiralError:
    """The first value that is not a number, or what aeon said."""
    for case in cases:
        for dimension, text in enumerate(case.dimensions):
            for point, value in enumerate(text.split(",")):
                if value.strip() == "?":
                    continue
                try:
                    float(value)
                except ValueError:
                    return SpiralError(
                        f"{where}: line {case.line}: dimension {dimension}, point {point}: "
                        f"{value.strip()!r} is not a number"
                    )
    said = " ".join(f"{type(exc).__name__}: {exc}".split())
    return SpiralError(f"{where}: aeon cannot read it ({said[:200]}); check it against the .ts format")


def _points(values: np.ndarray, case: _Case, where: str) -> np.ndarray:
    """A case's [D, T] values as float32 [T', D]: a missing value ('?' or NaN) is refused, but
    where every dimension is missing at the end, that pads a shorter case."""
    points = np.asarray(values, dtype=np.float64).T
    missing = np.isnan(points)
    if missing.any():
        present = np.flatnonzero(~missing.all(axis=1))
        length = int(present[-1]) + 1 if present.size else 0
        inside = np.argwhere(missing[:length])
        if inside.size:
            point, dimension = (int(i) for i in inside[0])
            raise SpiralError(
                f"{where}: line {case.line}: dimension {dimension}, point {point} is missing ('?' or NaN); "
                "spiralctl needs every value of a case: fill it in or leave the case out"
            )
        points = points[:length]
        if length < 2:
            raise SpiralError(f"{where}: line {case.line}: the case has {length} point(s); {TOO_SHORT}")
    return check_values(points, lambda t, d: f"{where}: line {case.line}: dimension {d}, point {t}")


def read_ts(path: Path, labelled: bool) -> Sequences:
    """A .ts file's cases, named by their index, with their labels as written and the classes in
    the order @classLabel declares them (labelled: refuses a file without class labels)."""
    where = str(path)
    text = read_text(path)
    if not text.strip():
        raise SpiralError(
            f"{where} is empty; a .ts file holds its header, then @data, then one case per line"
        )
    lines = text.split("\n")
    header = _Header(lines, where)
    has_label, classes = header.classes(labelled)
    cases = [
        _Case(number, line, has_label, where)
        for number, line in enumerate(lines[header.data :], header.data + 1)
        if line.strip()
    ]
    if not cases:
        raise SpiralError(f"{where}: no cases after @data (line {header.data}); give one case per line")
    _scan(cases, header, classes, where)
    values = _aeon_values(path, lines, header, cases, where)
    sequences = [_points(case_values, case, where) for case_values, case in zip(values, cases)]
    labels = [case.label for case in cases] if has_label else None
    names = [str(i) for i in range(len(cases))]
    return Sequences(names, sequences, labels, classes, None, [case.line for case in cases])
