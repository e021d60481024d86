"""safetensors reading and writing: round trips, the official package, damaged files, atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from helpers import BAD_FILES

from spiralctl.checkpoint import load_checkpoint
from spiralctl.data import load_dataset
from spiralctl.errors import SpiralError
from spiralctl.storage import atomic_output, read_safetensors, tensors_checksum, write_safetensors

# files written by spiralctl 0.1.0, whose checksum covered the data section as laid out on disk
OLD_FILES = Path(__file__).parent / "fixtures" / "spiralctl-0.1"


def test_round_trip(tmp_path):
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], dtype=np.uint8)}
    write_safetensors(tmp_path / "f.safetensors", tensors, {"k": "v"})
    loaded, metadata = read_safetensors(tmp_path / "f.safetensors")
    assert metadata["k"] == "v" and metadata["tensors_checksum"].startswith("sha256:")
    assert "checksum" not in metadata
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


def _flip_last_data_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))


def _save_official(path: Path, tensors: dict, metadata: dict) -> None:
    """The file the official safetensors library writes: tensors sorted by dtype, its own padding."""
    pytest.importorskip("safetensors.numpy").save_file(tensors, str(path), metadata=metadata)


def test_the_checksum_covers_the_tensors_not_the_layout(tmp_path):
    tensors = {
        "b": np.arange(6, dtype=np.float32).reshape(2, 3),
        "a": np.array([1, 2, 3], dtype=np.uint8),
        "c": np.array([7], dtype=np.int64),
    }
    reordered = {name: tensors[name] for name in ("c", "a", "b")}
    assert tensors_checksum(tensors) == tensors_checksum(reordered)
    # name, dtype and shape count, not only the bytes
    assert tensors_checksum(tensors) != tensors_checksum({**tensors, "b": tensors["b"].reshape(3, 2)})
    assert tensors_checksum(tensors) != tensors_checksum({**tensors, "B": tensors.pop("b")})
    expected = hashlib.sha256()
    for name in ("a", "b", "c"):
        array = reordered[name]
        dtype = {"uint8": "U8", "float32": "F32", "int64": "I64"}[str(array.dtype)]
        expected.update(json.dumps([name, dtype, list(array.shape)], separators=(",", ":")).encode() + b"\n")
        expected.update(array.tobytes())
    assert tensors_checksum(reordered) == f"sha256:{expected.hexdigest()}"  # as the README describes it


def test_a_file_rewritten_by_the_official_library_keeps_its_checksum(tmp_path):
    tensors = {"z": np.arange(4, dtype=np.uint8), "a": np.ones((2, 2), np.float32), "s": np.int64(3)}
    write_safetensors(tmp_path / "ours.safetensors", tensors, {"format": "mine"})
    loaded, metadata = read_safetensors(tmp_path / "ours.safetensors")
    _save_official(tmp_path / "theirs.safetensors", loaded, metadata)
    assert (tmp_path / "theirs.safetensors").read_bytes() != (tmp_path / "ours.safetensors").read_bytes()
    again, metadata_again = read_safetensors(tmp_path / "theirs.safetensors")
    assert metadata_again == metadata and again.keys() == loaded.keys()
    _flip_last_data_byte(tmp_path / "theirs.safetensors")  # still refused after a flipped byte
    with pytest.raises(SpiralError, match="checksum"):
        read_safetensors(tmp_path / "theirs.safetensors")


def test_files_of_spiralctl_0_1_still_load():
    tensors, metadata = read_safetensors(OLD_FILES / "checkpoint.safetensors")
    assert metadata["checksum"].startswith("sha256:") and "tensors_checksum" not in metadata
    assert load_checkpoint(OLD_FILES / "checkpoint.safetensors").model.hidden == 2
    assert len(load_dataset(OLD_FILES / "test.safetensors")) == 4


@pytest.mark.parametrize("name", ["checkpoint.safetensors", "test.safetensors"])
def test_files_of_spiralctl_0_1_are_still_checked(tmp_path, name):
    copy = tmp_path / name
    copy.write_bytes((OLD_FILES / name).read_bytes())
    _flip_last_data_byte(copy)
    with pytest.raises(SpiralError, match="checksum"):
        read_safetensors(copy)


@pytest.mark.parametrize("name", ["checkpoint.safetensors", "test.safetensors"])
def test_files_of_spiralctl_0_1_rewritten_by_the_official_library_load(tmp_path, name):
    tensors, metadata = read_safetensors(OLD_FILES / name)
    _save_official(tmp_path / name, tensors, metadata)
    again, _ = read_safetensors(tmp_path / name)  # the old checksum, in the order spiralctl 0.1 wrote
    for key in tensors:
        np.testing.assert_array_equal(again[key], tensors[key])
    _flip_last_data_byte(tmp_path / name)
    with pytest.raises(SpiralError, match="checksum"):
        read_safetensors(tmp_path / name)


def test_saving_again_replaces_an_old_checksum(tmp_path):
    tensors, metadata = read_safetensors(OLD_FILES / "checkpoint.safetensors")
    tensors["head.bias"] = tensors["head.bias"] + 1  # changed: the old checksum would no longer match
    write_safetensors(tmp_path / "new.safetensors", tensors, metadata)
    _, written = read_safetensors(tmp_path / "new.safetensors")
    assert "checksum" not in written and written["tensors_checksum"].startswith("sha256:")


def test_a_file_without_a_checksum_is_read_with_the_other_checks(tmp_path):
    _save_official(tmp_path / "plain.safetensors", {"a": np.ones(3, np.float32)}, {"k": "v"})
    tensors, metadata = read_safetensors(tmp_path / "plain.safetensors")
    assert metadata == {"k": "v"} and tensors["a"].tolist() == [1, 1, 1]


def test_an_unknown_checksum_scheme_is_refused(tmp_path):
    _save_official(
        tmp_path / "future.safetensors", {"a": np.ones(3, np.float32)}, {"tensors_checksum": "blake3:00"}
    )
    with pytest.raises(SpiralError, match="unknown tensors_checksum"):
        read_safetensors(tmp_path / "future.safetensors")
