"""safetensors reading and writing: round trips, the official package, damaged files, atomic writes."""

from __future__ import annotations

import json
import os
import stat
import struct

import numpy as np
import pytest

from spiralctl.errors import SpiralError
from spiralctl.storage import atomic_output, read_safetensors, write_safetensors


def _raw(header: dict, data: bytes = b"") -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def test_round_trip(tmp_path):
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], dtype=np.uint8)}
    write_safetensors(tmp_path / "f.safetensors", tensors, {"k": "v"})
    loaded, metadata = read_safetensors(tmp_path / "f.safetensors")
    assert metadata["k"] == "v" and metadata["checksum"].startswith("sha256:")
    for name in tensors:
        np.testing.assert_array_equal(loaded[name], tensors[name])


def test_official_safetensors_package_reads_spiralctl_files(tmp_path, small_data, trained_run):
    safe_open = pytest.importorskip("safetensors").safe_open
    for path in (small_data / "train.safetensors", trained_run / "best.safetensors"):
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata()
            assert metadata["format"].startswith("spiralctl-")
            ours, _ = read_safetensors(path)
            for name in handle.keys():
                np.testing.assert_array_equal(handle.get_tensor(name), ours[name])


GOOD = {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
BAD_FILES = {
    "empty": b"",
    "short": b"\x01\x02",
    "header past end": struct.pack("<Q", 100) + b"{}",
    "absurd header length": struct.pack("<Q", 2**60) + b"{}",
    "not json": struct.pack("<Q", 5) + b"hello",
    "not an object": _raw([1, 2]),  # type: ignore[arg-type]
    "invalid utf-8": struct.pack("<Q", 4) + b"\xff\xfe{}",
    "missing field": _raw({"x": {"dtype": "F32", "shape": [2]}}, b"\0" * 8),
    "unknown dtype": _raw({"x": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
    "negative offset": _raw({"x": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, b"\0" * 8),
    "offset past end": _raw({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4),
    "reversed offsets": _raw({"x": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}, b"\0" * 8),
    "overlap": _raw(
        {
            "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        },
        b"\0" * 12,
    ),
    "size mismatch": _raw({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
    "trailing bytes": _raw(GOOD, b"\0" * 12),
    "non-string metadata": _raw({"__metadata__": {"a": 1}, **GOOD}, b"\0" * 8),
    "duplicate keys": struct.pack("<Q", 23) + b'{"__metadata__":{},"__metadata__":{}}'[:23],
    "deep nesting": (lambda b: struct.pack("<Q", len(b)) + b)(b"[" * 100000 + b"]" * 100000),
    "NaN constant": (lambda b: struct.pack("<Q", len(b)) + b)(b'{"__metadata__":{"a":NaN}}'),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_damaged_files_are_refused_with_the_file_named(tmp_path, case):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(BAD_FILES[case])
    with pytest.raises(SpiralError) as info:
        read_safetensors(path)
    assert str(path) in info.value.message


def test_folder_and_missing_file(tmp_path):
    with pytest.raises(SpiralError, match="folder"):
        read_safetensors(tmp_path)
    with pytest.raises(SpiralError, match="no such file"):
        read_safetensors(tmp_path / "nope.safetensors")


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(path, "w") as handle:
            handle.write("new, half written")
            raise RuntimeError("crash in the middle")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_unwritable_target_is_a_clear_error(tmp_path):
    with pytest.raises(SpiralError, match="cannot write"):
        write_safetensors(tmp_path / "missing" / "f.safetensors", {"a": np.zeros(1, np.float32)}, {})


def test_flipped_byte_is_caught_by_the_checksum(tmp_path):
    path = tmp_path / "f.safetensors"
    write_safetensors(path, {"a": np.arange(100, dtype=np.float32)}, {})
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0x01  # one bit in the data section: still a well-formed file
    path.write_bytes(bytes(raw))
    with pytest.raises(SpiralError, match="checksum") as info:
        read_safetensors(path)
    assert str(path) in info.value.message


def test_a_file_of_zeros_is_refused(tmp_path):
    path = tmp_path / "zeros.safetensors"
    path.write_bytes(bytes(4096))  # what an interrupted non-atomic writer leaves behind
    with pytest.raises(SpiralError):
        read_safetensors(path)


def test_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(SpiralError, match="regular file"):
        read_safetensors(fifo)


def test_written_files_get_the_usual_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        write_safetensors(tmp_path / "new.safetensors", {"a": np.zeros(2, dtype=np.float32)}, {})
        assert stat.S_IMODE(os.stat(tmp_path / "new.safetensors").st_mode) == 0o644  # as open() gives
        os.chmod(tmp_path / "new.safetensors", 0o640)
        write_safetensors(tmp_path / "new.safetensors", {"a": np.ones(2, dtype=np.float32)}, {})
        assert stat.S_IMODE(os.stat(tmp_path / "new.safetensors").st_mode) == 0o640  # kept on replace
    finally:
        os.umask(previous)
