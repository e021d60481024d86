"""safetensors files, read and written by spiralctl itself.

tinygrad's safe_save is not atomic and its safe_load opens files read-write and
trusts the header; this module checks every header before it trusts it and
writes through a temporary file, fsync and rename so that a crash never leaves
a half-written file under the real name.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from spiralctl.errors import SpiralError, WriteFailed

# safetensors dtype names <-> numpy dtypes (the ones spiralctl reads or writes).
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("bool"),
}
_NAMES = {dt: name for name, dt in DTYPES.items()}
MAX_HEADER_BYTES = 16 * 1024 * 1024


def _new_file_mode(path: Path) -> int:
    """The permissions of the file being replaced, or those a new file gets under the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def check_output(path: Path, force: bool, option: str | None = "output") -> None:
    """A file spiralctl writes replaces an existing one only with `force` (the rule everywhere)."""
    path = Path(path)
    if path.is_dir():
        raise SpiralError(f"{path} is a folder; give a file name", option=option)
    if path.exists() and not force:
        raise SpiralError(f"{path} exists; pass {{force}} to replace it", option=option)


@contextmanager
def atomic_output(path: Path, mode: str = "wb") -> Iterator:
    """Open a temporary file next to `path`; on success fsync and rename it over `path`.

    On any failure the temporary file is removed and an existing `path` is untouched.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise WriteFailed(str(path), exc.strerror, "; check the folder exists and is writable") from exc
    try:
        os.chmod(tmp, _new_file_mode(path))  # mkstemp makes it 0600; give it what open() would
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            hint = "; free some disk space or write somewhere else" if full else ""
            raise WriteFailed(str(path), exc.strerror, hint) from exc
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# The metadata entry that holds the checksum of a file's tensors (see tensors_checksum), and the
# entry spiralctl 0.1.0 used for a SHA-256 of the data section exactly as it wrote it.
CHECKSUM_KEY = "tensors_checksum"
LEGACY_CHECKSUM_KEY = "checksum"
# The order spiralctl 0.1.0 wrote tensors in, which its checksum depends on: a dataset's x and y,
# a checkpoint's parameters, then Adam's step numbers and moments. Frozen: it describes old files.
_LEGACY_PARAMETERS = (
    "lstm.weight_ih_l0",
    "lstm.weight_hh_l0",
    "lstm.bias_ih_l0",
    "lstm.bias_hh_l0",
    "head.weight",
    "head.bias",
)
_LEGACY_NAMES = (
    "x",
    "y",
    *_LEGACY_PARAMETERS,
    "optimizer.step",
    "optimizer.b1_power",
    "optimizer.b2_power",
    *(f"optimizer.{name}.{slot}" for name in _LEGACY_PARAMETERS for slot in ("exp_avg", "exp_avg_sq")),
)


def _stored(array: np.ndarray) -> np.ndarray:
    """The array as a file holds it: C order, little-endian, same shape."""
    array = np.asarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)


def _bytes(array: np.ndarray) -> memoryview:
    """A stored array's bytes, without a copy."""
    return memoryview(_stored(array).reshape(-1)).cast("B")


def tensors_checksum(tensors: dict[str, np.ndarray]) -> str:
    """A SHA-256 of what the tensors hold, whatever the file's layout.

    For each tensor in name order: the JSON line `["name","F32",[2,3]]` (name, safetensors dtype,
    shape), then its little-endian bytes. Another writer may order the tensors, the header and its
    padding as it likes (the official safetensors library sorts by dtype): the checksum stays.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        array = _stored(tensors[name])
        if array.dtype not in _NAMES:
            raise ValueError(f"dtype {array.dtype} of tensor {name} cannot be stored")
        line = json.dumps([name, _NAMES[array.dtype], list(array.shape)], separators=(",", ":"))
        digest.update(line.encode() + b"\n")
        digest.update(_bytes(array))
    return f"sha256:{digest.hexdigest()}"


def write_safetensors_to(handle, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write `tensors` and string `metadata` as a safetensors file to an open binary file."""
    arrays = {name: _stored(array) for name, array in tensors.items()}
    meta = {k: v for k, v in metadata.items() if k != LEGACY_CHECKSUM_KEY}
    # verified on every load: catches flipped bytes and torn writes
    meta[CHECKSUM_KEY] = tensors_checksum(arrays)
    header: dict[str, object] = {"__metadata__": meta}
    offset = 0
    for name, array in arrays.items():
        header[name] = {
            "dtype": _NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data section to 8 bytes
    handle.write(struct.pack("<Q", len(blob)))
    handle.write(blob)
    for array in arrays.values():
        handle.write(_bytes(array))


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write `tensors` and string `metadata` as a safetensors file, atomically."""
    with atomic_output(path) as handle:
        write_safetensors_to(handle, tensors, metadata)


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key in header")
    return dict(pairs)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read and check a safetensors file; raise SpiralError naming the file if it is damaged.

    A stored checksum is verified: `tensors_checksum`, or spiralctl 0.1.0's `checksum`. A file
    without either (written by another tool) is read with every other check.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise SpiralError(f"{path}: no such file; check the path") from None
    except OSError as exc:
        raise SpiralError(f"cannot read {path}: {exc.strerror}; check its permissions") from None
    if stat.S_ISDIR(mode):
        raise SpiralError(f"{path} is a folder; give the path of a .safetensors file")
    if not stat.S_ISREG(mode):
        raise SpiralError(f"{path} is not a regular file; give the path of a .safetensors file")
    try:
        with open(path, "rb") as handle:  # read-only: a checkpoint the user may only read still loads
            raw = handle.read()
    except OSError as exc:
        raise SpiralError(f"cannot read {path}: {exc.strerror}; check its permissions") from exc

    other = path.suffix.lower() in (".csv", ".json", ".npy", ".npz", ".txt", ".tsv", ".ts")
    hint = (
        f"; a {path.suffix} file holds sequences for predict and eval, or for import into a dataset"
        if other
        else "; an ONNX file is export's output, not spiralctl's input"
        if path.suffix.lower() == ".onnx"
        else "; it may be damaged, or another kind of file"
    )

    def bad(why: str) -> SpiralError:
        return SpiralError(f"{path} is not a valid safetensors file: {why}{hint}")

    if len(raw) < 8:
        raise bad("shorter than the 8-byte header length")
    (header_len,) = struct.unpack("<Q", raw[:8])
    if header_len > MAX_HEADER_BYTES:
        raise bad(f"header length {header_len} is over the {MAX_HEADER_BYTES}-byte limit")
    if 8 + header_len > len(raw):
        raise bad(f"header length {header_len} runs past the end of the file")
    try:
        text = raw[8 : 8 + header_len].decode("utf-8")
        header = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad(f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")

    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise bad("__metadata__ must map strings to strings")

    data = memoryview(raw)[8 + header_len :]
    entries = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"tensor {name!r} must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPES:
            raise bad(f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
            raise bad(f"tensor {name!r} has an invalid shape {shape!r}")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(n) is int for n in offsets):
            raise bad(f"tensor {name!r} has invalid data_offsets {offsets!r}")
        entries.append((offsets[0], offsets[1], name, DTYPES[dtype], shape))
    entries.sort(key=lambda e: (e[0], e[1]))
    position = 0
    tensors: dict[str, np.ndarray] = {}
    for start, end, name, dtype, shape in entries:
        if start != position or end < start:
            raise bad(f"tensor {name!r} data_offsets [{start}, {end}] leave a gap or overlap")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if end - start != count * dtype.itemsize:
            raise bad(
                f"tensor {name!r} holds {end - start} bytes but its shape needs {count * dtype.itemsize}"
            )
        if end > len(data):
            raise bad(f"tensor {name!r} runs past the end of the file")
        tensors[name] = np.frombuffer(data[start:end], dtype=dtype).reshape(shape).copy()
        position = end
    if position != len(data):
        raise bad(f"{len(data) - position} bytes after the last tensor")
    if not _checksum_matches(metadata, tensors, data, [e[2] for e in entries], bad):
        raise SpiralError(
            f"{path} is damaged: its tensors do not match the checksum stored in it (a flipped byte, an "
            "incomplete write, or tensors changed by a tool that kept the old metadata); use another "
            f"copy or an earlier checkpoint (a file you changed on purpose: save it without {CHECKSUM_KEY})"
        )
    return tensors, metadata


def _checksum_matches(metadata, tensors, data, disk_order, bad) -> bool:
    """Whether the stored checksum, of either scheme, matches; True when none is stored."""
    if CHECKSUM_KEY in metadata:
        if not metadata[CHECKSUM_KEY].startswith("sha256:"):
            raise bad(f"unknown {CHECKSUM_KEY} {metadata[CHECKSUM_KEY][:40]!r} (from a newer spiralctl?)")
        return tensors_checksum(tensors) == metadata[CHECKSUM_KEY]
    if LEGACY_CHECKSUM_KEY in metadata:
        algorithm, _, expected = metadata[LEGACY_CHECKSUM_KEY].partition(":")
        if algorithm != "sha256":
            return False
        if hashlib.sha256(data).hexdigest() == expected:
            return True
        # re-saved by another writer: the data in the order spiralctl 0.1.0 wrote it
        if set(tensors) <= set(_LEGACY_NAMES):
            order = sorted(tensors, key=_LEGACY_NAMES.index)
            if order != disk_order:
                digest = hashlib.sha256()
                for name in order:
                    digest.update(_bytes(tensors[name]))
                return digest.hexdigest() == expected
        return False
    return True


# what each spiralctl file format is, for messages when one is given where the other belongs
KINDS = {
    "spiralctl-dataset/": ("a dataset", "give a dataset file (from spiralctl gen-data)"),
    "spiralctl-checkpoint/": ("a checkpoint", "give a checkpoint (from spiralctl train)"),
}


def read_spiralctl_file(
    path: Path, expected: str | tuple[str, ...]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """read_safetensors, then check the format tag is `expected` (e.g. spiralctl-dataset/2), or
    one of them."""
    tensors, metadata = read_safetensors(path)
    found = metadata.get("format", "")
    accepted = (expected,) if isinstance(expected, str) else expected
    expected = accepted[-1]
    if found not in accepted:
        want, hint = next(v for k, v in KINDS.items() if expected.startswith(k))
        got = next((v[0] for k, v in KINDS.items() if found.startswith(k)), None)
        if got is not None:
            raise SpiralError(f"{path} is {got}, not {want}; {hint}")
        raise SpiralError(f"{path} is not {want} of spiralctl (format {found or 'missing'!r}); {hint}")
    return tensors, metadata
