"""numpy inputs: a .npy array of sequences [N, T, D] (or [T, D], one sequence, where one will
do), read block by block; its labels as a .npy array [N]; and a .npz archive of x [N, T, D],
y [N] and optionally lengths [N]."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from spiralctl.errors import SpiralError
from spiralctl.formats.common import TOO_SHORT, bad_values, check_points

# what a broken archive or array file raises while numpy reads it
UNREADABLE = (
    ValueError,
    OSError,
    EOFError,
    KeyError,
    RuntimeError,
    NotImplementedError,
    zipfile.BadZipFile,
    zlib.error,
)
NPZ_USAGE = "a .npz input holds x [N, T, D], y [N] and optionally lengths [N]: numpy.savez(FILE, x=x, y=y)"


def _shapes(single: bool) -> str:
    return "[N, T, D] (or [T, D] for one sequence)" if single else "[N, T, D]"


def _usage(single: bool) -> str:
    return f"save the sequences with numpy.save as a float array of shape {_shapes(single)}"


def _check_kind(array: np.ndarray, where: str, usage: str) -> None:
    kind = array.dtype.kind
    if kind not in "iuf":
        what = {"b": "booleans", "c": "complex numbers"}.get(kind, "values that are not numbers")
        raise SpiralError(
            f"{where} holds {what} (dtype {array.dtype}); the values must be real numbers: {usage}"
        )


def _check_shape(shape: tuple, where: str, usage: str) -> None:
    """N >= 1 sequences of T >= 2 points of D >= 1 features."""
    if shape[0] == 0:
        raise SpiralError(f"{where} holds no sequences (shape {list(shape)}); {usage}")
    if shape[2] == 0:
        raise SpiralError(f"{where} holds no features (shape {list(shape)}, D = 0); {usage}")
    if shape[1] < 2:
        raise SpiralError(f"{where}: sequence 0 has {shape[1]} point(s); {TOO_SHORT}")


def open_npy(path: Path, single: bool) -> np.ndarray:
    """The .npy array as [N, T, D], memory-mapped (read block by block), after every check of
    its header; `single` also takes [T, D] as one sequence."""
    usage = _usage(single)
    try:
        # memory-mapped: a header that claims more than the file holds is an error, not an allocation
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except EOFError:  # not Ctrl-D: the file ends before its header does
        what = "is empty" if path.stat().st_size == 0 else "ends before its .npy header does"
        raise SpiralError(f"{path} {what}; {usage}") from None
    except UNREADABLE as exc:
        why = str(exc)
        if "pickle" in why:
            why = "it holds Python objects, or is not a .npy file"
        elif "mmap length" in why:
            why = "it is shorter than its header says: cut short?"
        raise SpiralError(f"{path}: not a readable .npy array ({why}); {usage}") from None
    if not isinstance(array, np.ndarray):  # a .npz archive under a .npy name
        array.close()
        raise SpiralError(f"{path} is a .npz archive, not a .npy array; {usage}")
    _check_kind(array, str(path), usage)
    shape = list(array.shape)
    if single and array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        hint = ""
        if array.ndim == 2:
            hint = "; for one feature per point save x[..., None], of shape [N, T, 1]"
        elif array.ndim == 1 and single:
            hint = "; for one sequence of one feature save x[:, None], of shape [T, 1]"
        raise SpiralError(f"{path}: a .npy input must have shape {_shapes(single)}, found {shape}{hint}")
    _check_shape(array.shape, str(path), usage)
    return array


def checked_block(points: np.ndarray, where: str, first: int) -> np.ndarray:
    """Sequences first, first + 1, ... of an array as float32, or the error check_points gives
    for the first bad one."""
    bad = bad_values(points)
    if bad.any():
        row = int(np.argmax(bad.any(axis=(1, 2))))
        check_points(np.asarray(points[row]), where, str(first + row))
    return points.astype(np.float32)


def npy_blocks(path: Path, block: int, single: bool) -> Iterator[tuple[int, np.ndarray]]:
    """(index of the first, float32 [n, T, D]) of the array's sequences, `block` at a time. Read
    from the file rather than through the memory map where the layout allows: mapped pages, once
    read, count as the process's memory (1,000,000 x 50 points: 400 MB more)."""
    array = open_npy(path, single)
    count, steps, depth = array.shape
    offset = getattr(array, "offset", None)
    if not (isinstance(array, np.memmap) and array.flags.c_contiguous and offset is not None):
        for first in range(0, count, block):
            yield first, checked_block(np.asarray(array[first : first + block]), str(path), first)
        return
    dtype = array.dtype
    del array
    with open(path, "rb") as handle:
        handle.seek(offset)
        for first in range(0, count, block):
            rows = min(block, count - first)
            points = np.fromfile(handle, dtype=dtype, count=rows * steps * depth).reshape(rows, steps, depth)
            yield first, checked_block(points, str(path), first)


def label_texts(array: np.ndarray, count: int, where: str, what: str, option: str | None = None) -> list[str]:
    """One label per sequence as text: integers (and floats that are whole numbers) as their
    digits, strings as written (stripped)."""
    if array.dtype.kind == "f" and array.shape == (count,) and np.isfinite(array).all():
        if (array == np.round(array)).all():
            array = array.astype(np.int64)
    if array.shape != (count,) or array.dtype.kind not in "iuU":
        raise SpiralError(
            f"{where}: {what} must be one per sequence, [{count}] integers or class names; found "
            f"{array.dtype}{list(array.shape)}",
            option=option,
        )
    texts = [str(value).strip() for value in array.tolist()]
    if "" in texts:
        raise SpiralError(
            f"{where}: {what}[{texts.index('')}] is empty; give every sequence its class", option=option
        )
    return texts


def read_labels_npy(path: Path, count: int) -> list[str]:
    """The labels of `count` sequences from a .npy array [N] of integers or strings."""
    try:
        array = np.load(path, allow_pickle=False)
    except UNREADABLE as exc:
        why = "it holds Python objects, or is not a .npy file" if "pickle" in str(exc) else str(exc)
        raise SpiralError(
            f"{path}: not a readable .npy array of labels ({why}); save them with numpy.save as an "
            "array of integers or strings",
            option="labels",
        ) from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise SpiralError(
            f"{path}: labels must be a .npy array [{count}], found a .npz archive", option="labels"
        )
    return label_texts(array, count, str(path), "labels", option="labels")


def read_npz(path: Path, labelled: bool) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """x float32 [N, T, D] (zero past each length), lengths int64 [N] and the labels (None
    without y) of a .npz archive; `labelled` needs y."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            raise SpiralError(f"{path} is a .npy array, not a .npz archive; {NPZ_USAGE}")
        with loaded:
            names = set(loaded.files)
            if "x" not in names or not names <= {"x", "y", "lengths"} or (labelled and "y" not in names):
                raise SpiralError(f"{path} holds {sorted(names)}; {NPZ_USAGE}")
            arrays = {name: loaded[name] for name in names}
    except EOFError:
        raise SpiralError(f"{path} is empty or cut short; {NPZ_USAGE}") from None
    except UNREADABLE as exc:
        why = "it holds Python objects, or is not a .npz archive" if "pickle" in str(exc) else str(exc)
        raise SpiralError(f"{path}: not a readable .npz archive ({why}); {NPZ_USAGE}") from None
    x = arrays["x"]
    _check_kind(x, f"{path}: x", NPZ_USAGE)
    if x.ndim != 3:
        raise SpiralError(f"{path}: x must have shape [N, T, D], found {list(x.shape)}; {NPZ_USAGE}")
    _check_shape(x.shape, f"{path}: x", NPZ_USAGE)
    count, steps = x.shape[:2]
    lengths = np.full(count, steps, dtype=np.int64)
    if "lengths" in arrays:
        given = arrays["lengths"]
        if given.dtype.kind not in "iu" or given.shape != (count,):
            raise SpiralError(
                f"{path}: lengths must be integers [{count}], found {given.dtype}{list(given.shape)}"
            )
        lengths = given.astype(np.int64)
        wrong = np.flatnonzero((lengths < 2) | (lengths > steps))
        if wrong.size:
            i = int(wrong[0])
            raise SpiralError(
                f"{path}: lengths[{i}] = {int(lengths[i])}; each length must be 2 to T ({steps})"
            )
    inside = np.arange(steps) < lengths[:, None]
    bad = bad_values(x) & inside[:, :, None]
    if bad.any():
        row = int(np.argmax(bad.any(axis=(1, 2))))
        check_points(x[row, : lengths[row]], str(path), str(row))
    points = np.where(inside[:, :, None], x, 0).astype(np.float32)
    labels = label_texts(arrays["y"], count, str(path), "y") if "y" in arrays else None
    return points, lengths, labels
