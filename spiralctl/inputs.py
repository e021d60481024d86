"""Users' sequence files, for import, predict and eval: any number of features per point (D >= 1)
and any class labels, kept as the file writes them (the class indices are the caller's). The
readers per format are in spiralctl.formats; this module picks one by the file's suffix (a .csv
by its content) and gives labelled sequences (read_labelled, read_archive) or the sequences to
classify block by block (read_blocks, read_sequences)."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spiralctl.data import load_dataset, padded_sequences
from spiralctl.errors import SpiralError
from spiralctl.formats.archive import archive_files
from spiralctl.formats.arrays import npy_blocks, read_labels_npy, read_npz
from spiralctl.formats.common import Sequence, Sequences, read_text, text_lines
from spiralctl.formats.jsonfile import read_json
from spiralctl.formats.table import read_csv
from spiralctl.formats.ts import read_ts
from spiralctl.formats.ucr import separator, ucr_sequences

LABELLED_TYPES = ".ts, .tsv, .txt, .csv, .json, .npz or .npy"
TYPES = f"{LABELLED_TYPES.replace(' or ', ', ')} or .safetensors"


@dataclass
class LabelledSequences:
    """A file's labelled sequences, as read_labelled gives them to import."""

    source: str  # the file as given (or "ucr:NAME/train")
    names: list[str]  # each sequence's name (its "sequence" column/field, or its index as text)
    sequences: list[np.ndarray]  # float32 [T_i, D] each, T_i >= 2, same D for all
    labels: list[str]  # label text as the file writes it
    classes: list[str] | None  # class names the file declares, in declared order (.ts @classLabel), else None
    features: list[str] | None  # feature names where the file names them (long CSV columns), else None
    lines: list[int] | None  # the file line where each sequence starts, for formats with lines, else None


@dataclass
class SequenceBlock:
    """Some of an input's sequences: names, x float32[n, T, D] (zero past each sequence's
    length), lengths [n], and the labels' text where the input carries labels."""

    names: list[str]
    x: np.ndarray
    lengths: np.ndarray
    labels: list[str] | None = None
    features: list[str] | None = None  # the D columns' names, where the input names them

    def sequences(self) -> list[np.ndarray]:
        return [x[:length] for x, length in zip(self.x, self.lengths)]


def _input_path(source: str, types: str, stdin: str = "") -> Path:
    path = Path(source)
    if not path.exists():
        raise SpiralError(f"{path}: no such file; give a {types} file{stdin}")
    if path.is_dir():
        raise SpiralError(f"{path} is a folder; give a file ({types})")
    return path


def _unknown(path: Path, types: str) -> SpiralError:
    return SpiralError(f"{path}: unknown input type {path.suffix.lower() or '(none)'!r}; use {types}")


def _text_sequences(path: Path) -> tuple[list[str] | None, bool, Iterator[Sequence]] | None:
    """(features, labelled, sequences as they are read) of the line-by-line formats: CSV and the
    UCR archive's .tsv and .txt; None for the other formats."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        found = read_csv(text_lines(path), str(path))
        return found.features, found.labelled, found.sequences
    if suffix in (".tsv", ".txt"):
        lines = text_lines(path)
        first = next(lines, None)
        if first is None:
            raise SpiralError(f"{path} is empty; give one sequence per line: its label, then its values")
        sep = separator(first, suffix)
        return None, True, ucr_sequences(itertools.chain([first], lines), str(path), sep)
    return None


def _read(path: Path, labelled: bool) -> Sequences:
    """A file's sequences, read whole (labelled: each with its label)."""
    suffix = path.suffix.lower()
    text = _text_sequences(path)
    if text is not None:
        features, has_labels, sequences = text
        if labelled and not has_labels:
            raise SpiralError(
                f"{path}: line 1: the header has no label column; give each row its sequence's label in "
                "a column named label (such as 'sequence,x,y,label')"
            )
        return Sequences.collect(sequences, features)
    if suffix == ".ts":
        return read_ts(path, labelled)
    if suffix == ".json":
        return read_json(read_text(path), str(path), labelled)
    if suffix == ".npz":
        x, lengths, labels = read_npz(path, labelled)
        names = [str(i) for i in range(len(x))]
        return Sequences(names, [row[:length] for row, length in zip(x, lengths)], labels)
    if suffix == ".npy":
        blocks = list(npy_blocks(path, BLOCK, single=not labelled))
        names = [str(i) for first, rows in blocks for i in range(first, first + len(rows))]
        return Sequences(names, [row for _, rows in blocks for row in rows], None)
    raise _unknown(path, LABELLED_TYPES if labelled else TYPES)


def _labelled(found: Sequences, source: str) -> LabelledSequences:
    return LabelledSequences(
        source, found.names, found.sequences, found.labels, found.classes, found.features, found.lines
    )


def read_labelled(source: str, labels_path: Path | None = None) -> LabelledSequences:
    """Labelled sequences for import: a .ts file, the UCR archive's .tsv/.txt/headerless .csv, a
    long CSV with a label column, a JSON list of {"points", "label"} objects, a .npz holding x and
    y, or a .npy array [N, T, D] with its labels in `labels_path`."""
    path = _input_path(source, LABELLED_TYPES)
    suffix = path.suffix.lower()
    if labels_path is not None and suffix != ".npy":
        raise SpiralError(f"is for .npy inputs; {path} holds its own labels", option="labels")
    if suffix == ".npy":
        if labels_path is None:
            raise SpiralError(
                f"{path} holds no labels: give them as a .npy array [N] with {{labels}} FILE.npy"
            )
        found = _read(path, labelled=True)
        found.labels = read_labels_npy(Path(labels_path), len(found.sequences))
        return _labelled(found, source)
    return _labelled(_read(path, labelled=True), source)


def read_archive(name: str) -> tuple[LabelledSequences, LabelledSequences]:
    """The train and test splits of the archive's set NAME (ucr:NAME): the .ts files aeon bundles
    or has downloaded, else downloaded through aeon."""
    train, test = archive_files(name)
    return (
        _labelled(read_ts(train, labelled=True), f"ucr:{name}/train"),
        _labelled(read_ts(test, labelled=True), f"ucr:{name}/test"),
    )


def _block(sequences: list[Sequence], features: list[str] | None) -> SequenceBlock:
    x, lengths = padded_sequences([sequence.points for sequence in sequences])
    labels = [sequence.label for sequence in sequences] if sequences[0].label is not None else None
    return SequenceBlock([sequence.name for sequence in sequences], x, lengths, labels, features)


def _grouped(
    sequences: Iterable[Sequence], block: int, features: list[str] | None = None
) -> Iterator[SequenceBlock]:
    batch: list[Sequence] = []
    for sequence in sequences:
        batch.append(sequence)
        if len(batch) == block:
            yield _block(batch, features)
            batch = []
    if batch:
        yield _block(batch, features)


def _whole(found: Sequences) -> Iterator[Sequence]:
    labels = found.labels or [None] * len(found.names)
    lines = found.lines or [None] * len(found.names)
    for item in zip(found.names, found.sequences, labels, lines):
        yield Sequence(*item)


def _stdin_blocks(block: int) -> Iterator[SequenceBlock]:
    """CSV on stdin, read as it comes; or JSON, read whole."""
    start: list[str] = []
    for line in sys.stdin:
        start.append(line.removeprefix("\ufeff") if not start else line)
        if start[-1].strip():
            break
    if not "".join(start).strip():
        raise SpiralError("stdin is empty; pipe CSV or JSON into it, or give a file")
    if "".join(start).lstrip().startswith(("[", "{")):
        yield from _grouped(_whole(read_json("".join(start) + sys.stdin.read(), "stdin", False)), block)
        return
    found = read_csv(itertools.chain(start, sys.stdin), "stdin")
    yield from _grouped(found.sequences, block, found.features)


# sequences read and classified at a time: the memory predict needs is bounded by this, not by the input
BLOCK = 1 << 14


def read_blocks(source: str, block: int | None = None) -> Iterator[SequenceBlock]:
    """The sequences of `source` (any format read_labelled reads, labelled or not; a dataset
    .safetensors; or - for CSV or JSON on stdin) in blocks of up to `block` (BLOCK), as they are
    read: CSV and the UCR text formats a chunk of lines at a time, .npy block by block."""
    block = block or BLOCK
    if source == "-":
        yield from _stdin_blocks(block)
        return
    path = _input_path(source, TYPES, ", or - for stdin")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        data = load_dataset(path)
        classes = data.classes
        for first in range(0, len(data), block):
            rows = slice(first, first + block)
            names = [str(i) for i in range(first, min(first + block, len(data)))]
            labels = [classes[i] for i in data.y[rows].tolist()]
            yield SequenceBlock(names, data.x[rows], data.lengths[rows], labels, data.features)
        return
    if suffix == ".npy":
        for first, rows in npy_blocks(path, block, single=True):
            lengths = np.full(len(rows), rows.shape[1], dtype=np.int64)
            yield SequenceBlock([str(i) for i in range(first, first + len(rows))], rows, lengths)
        return
    if suffix == ".npz":
        x, lengths, labels = read_npz(path, labelled=False)
        for first in range(0, len(x), block):
            rows = slice(first, first + block)
            names = [str(i) for i in range(first, min(first + block, len(x)))]
            yield SequenceBlock(names, x[rows], lengths[rows], labels[rows] if labels is not None else None)
        return
    text = _text_sequences(path)
    if text is not None:
        yield from _grouped(text[2], block, text[0])
        return
    found = _read(path, labelled=False)
    yield from _grouped(_whole(found), block, found.features)


def read_sequences(source: str) -> tuple[list[str], list[np.ndarray], list[str] | None]:
    """Sequence names, the sequences, and their labels' text where the input carries labels."""
    blocks = list(read_blocks(source))
    labels = None if blocks[0].labels is None else [label for b in blocks for label in b.labels]
    return [n for b in blocks for n in b.names], [s for b in blocks for s in b.sequences()], labels
