"""Dataset generation: determinism, balance, the two styles, and option checks."""

from __future__ import annotations

import errno
import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import spiralctl.data
from spiralctl.cli import app
from spiralctl.config import TrainConfig
from spiralctl.data import (
    LUX_A,
    LUX_B,
    LUX_THETA,
    DataConfig,
    generate,
    load_dataset,
    load_training_data,
    save_datasets,
)
from spiralctl.errors import SpiralError


def _turning(x: np.ndarray) -> np.ndarray:
    """Summed cross product of successive steps: negative for clockwise, positive for anticlockwise."""
    step = np.diff(x, axis=1)
    return (step[:, :-1, 0] * step[:, 1:, 1] - step[:, :-1, 1] * step[:, 1:, 0]).sum(1)


def test_same_arguments_same_bytes(tmp_path):
    config = DataConfig(sequences=40, length=10, test_fraction=0.2, seed=5)
    save_datasets(tmp_path / "a", generate(config))
    save_datasets(tmp_path / "b", generate(config))
    for split in ("train", "val", "test"):
        assert (tmp_path / "a" / f"{split}.safetensors").read_bytes() == (
            tmp_path / "b" / f"{split}.safetensors"
        ).read_bytes()
    other = generate(DataConfig(sequences=40, length=10, test_fraction=0.2, seed=6))
    assert not np.array_equal(other["train"].x, generate(config)["train"].x)


def test_splits_are_balanced_and_disjoint():
    splits = generate(DataConfig(sequences=1000, val_fraction=0.2, test_fraction=0.1))
    assert {k: len(v) for k, v in splits.items()} == {"train": 700, "val": 200, "test": 100}
    for data in splits.values():
        assert (data.y == 0).sum() == (data.y == 1).sum()
        assert data.x.dtype == np.float32 and data.y.dtype == np.uint8
    rows = np.concatenate([d.x.reshape(len(d), -1) for d in splits.values()])
    assert len(np.unique(rows, axis=0)) == 1000


def test_no_test_split_without_test_fraction():
    assert set(generate(DataConfig(sequences=20))) == {"train", "val"}


def test_direction_label_is_the_turning_direction():
    data = generate(DataConfig(sequences=200, noise=0.0))["train"]
    turning = _turning(data.x)
    assert np.all((turning > 0) == (data.y == 1))
    # random rotation: start points of one class are spread all around the circle
    start_angles = np.arctan2(data.x[data.y == 0, 0, 0], data.x[data.y == 0, 0, 1])
    assert start_angles.std() > 1.0


def test_lux_style_is_make_spiral():
    data = generate(DataConfig(sequences=20, length=30, noise=0.0, style="lux"))["train"]
    i = np.arange(30)
    radius = LUX_A * (LUX_B - i) / LUX_B
    arm = np.stack([radius * np.sin(i * np.pi / LUX_THETA), radius * np.cos(i * np.pi / LUX_THETA)], -1)
    for x, y in zip(data.x, data.y):
        np.testing.assert_allclose(x, arm if y == 0 else -arm, atol=1e-5)
    # both arms turn the same way: in this style the label is not the direction
    assert np.all(_turning(data.x) < 0)


def test_noise_has_the_requested_spread():
    clean = generate(DataConfig(sequences=400, style="lux", noise=0.0))["train"]
    noisy = generate(DataConfig(sequences=400, style="lux", noise=0.3))["train"]
    assert np.std(noisy.x - clean.x) == pytest.approx(0.3, rel=0.05)


@pytest.mark.parametrize(
    "config, message",
    [
        (DataConfig(sequences=0), "sequences"),
        (DataConfig(sequences=11), "even"),
        (DataConfig(length=1), "length"),
        (DataConfig(noise=-1), "noise"),
        (DataConfig(noise=1e40), "noise must be a number from 0 to 1e\\+06"),
        (DataConfig(style="round"), "style"),
        (DataConfig(val_fraction=0), "val_fraction"),
        (DataConfig(test_fraction=-0.1), "test_fraction"),
        (DataConfig(val_fraction=0.6, test_fraction=0.5), "add up"),
        (DataConfig(sequences=4, val_fraction=0.1), "too few"),
        (DataConfig(seed=-1), "seed must be a whole number from 0 up"),
        (DataConfig(seed=1.5), "seed"),
    ],
)
def test_bad_configs_are_refused(config, message):
    with pytest.raises(SpiralError, match=message):
        generate(config)


def test_existing_files_need_force(tmp_path):
    splits = generate(DataConfig(sequences=20))
    save_datasets(tmp_path, splits)
    before = (tmp_path / "train.safetensors").read_bytes()
    with pytest.raises(SpiralError, match="pass force"):
        save_datasets(tmp_path, generate(DataConfig(sequences=20, seed=9)))
    assert (tmp_path / "train.safetensors").read_bytes() == before
    save_datasets(tmp_path, generate(DataConfig(sequences=20, seed=9)), force=True)
    assert (tmp_path / "train.safetensors").read_bytes() != before


def test_round_trip_keeps_arrays_and_metadata(tmp_path):
    splits = generate(DataConfig(sequences=20, seed=2))
    save_datasets(tmp_path, splits)
    loaded = load_dataset(tmp_path / "val.safetensors")
    np.testing.assert_array_equal(loaded.x, splits["val"].x)
    np.testing.assert_array_equal(loaded.y, splits["val"].y)
    assert loaded.metadata["format"] == "spiralctl-dataset/2"
    np.testing.assert_array_equal(loaded.lengths, np.full(len(loaded), loaded.length))
    assert loaded.metadata["split"] == "val"
    assert '"seed": 2' in loaded.metadata["generator"]


def test_seeds_are_whole_numbers_from_0_of_any_size():
    for seed in (0, 2**32 - 1, 2**32, 2**100):
        DataConfig(seed=seed).check()
        TrainConfig(seed=seed).check()
    assert not np.array_equal(
        generate(DataConfig(sequences=10, seed=2**100))["train"].x,
        generate(DataConfig(sequences=10, seed=2**100 + 1))["train"].x,
    )
    for seed in (-1, True, "3"):
        with pytest.raises(SpiralError, match="seed must be"):
            TrainConfig(seed=seed).check()


@pytest.mark.parametrize("command", [["gen-data", "data"], ["train"]])
def test_a_negative_seed_is_a_usage_error(command):
    result = CliRunner().invoke(app, [*command, "--seed", "-1"])
    assert result.exit_code == 2
    assert result.output == "error: --seed must be a whole number from 0 up, such as 0 or 42 (got -1)\n"


def test_the_memory_estimate_covers_what_generating_takes():
    for config in (DataConfig(sequences=4000, length=50), DataConfig(sequences=400, length=500, style="lux")):
        tracemalloc.start()
        try:
            generate(config)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak <= config.memory_needed() < 2 * peak


def test_gen_data_says_how_much_memory_it_needs(monkeypatch):
    monkeypatch.setattr(spiralctl.data, "available_memory", lambda: 2 * 1024**3)
    result = CliRunner().invoke(app, ["gen-data", "data", "--sequences", "100000000"])
    assert result.exit_code == 2
    assert result.output == (
        "error: --sequences 100000000 of --length 50 need about 210.1 GiB of memory to generate but "
        "2.0 GiB is available; ask for fewer --sequences or a shorter --length\n"
    )
    assert not Path("data").exists()


def test_running_out_of_memory_anyway_is_a_clear_error(monkeypatch):
    def out_of_memory(config, rng):
        raise MemoryError

    monkeypatch.setattr(spiralctl.data, "_generate_all", out_of_memory)
    with pytest.raises(SpiralError, match="out of memory: sequences 1000 of length 50 need about"):
        generate(DataConfig())


def _disk_full_after(monkeypatch, files: int) -> None:
    """Writing the split after the first `files` ones fails as on a full disk."""
    write = spiralctl.data.write_safetensors_to
    calls = []

    def writer(handle, tensors, metadata):
        calls.append(metadata["split"])
        if len(calls) > files:
            handle.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        write(handle, tensors, metadata)

    monkeypatch.setattr(spiralctl.data, "write_safetensors_to", writer)


def test_a_full_disk_removes_the_folders_gen_data_created(tmp_path, monkeypatch):
    _disk_full_after(monkeypatch, 1)
    result = CliRunner().invoke(app, ["gen-data", str(tmp_path / "new" / "data"), "--sequences", "20"])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: cannot write {tmp_path}/new/data/val.safetensors: No space left")
    assert "free some disk space" in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_leaves_an_existing_folder_as_it_was(tmp_path, monkeypatch):
    save_datasets(tmp_path / "data", generate(DataConfig(sequences=20, test_fraction=0.2)))
    (tmp_path / "data" / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()}
    _disk_full_after(monkeypatch, 2)
    with pytest.raises(SpiralError, match="test.safetensors: No space left on device"):
        save_datasets(
            tmp_path / "data", generate(DataConfig(sequences=20, test_fraction=0.2, seed=1)), force=True
        )
    assert {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()} == before  # no temporaries


def test_a_folder_given_as_data_that_is_not_a_split_of_its_own_gets_a_warning(tmp_path, small_data):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(small_data / "train.safetensors", data / "train.safetensors")
    shutil.copy(small_data / "val.safetensors", data / "val.safetensors")
    assert load_training_data(data).warnings == []
    shutil.copy(small_data / "test.safetensors", data / "val.safetensors")
    assert load_training_data(data).warnings == [
        f"{data}/val.safetensors holds the test split (its metadata says so), not the val split; "
        "use the val.safetensors that gen-data wrote"
    ]
    shutil.copy(small_data / "train.safetensors", data / "val.safetensors")
    assert load_training_data(data).warnings == [
        f"{data}/val.safetensors holds the same sequences as {data}/train.safetensors, so validation "
        "measures nothing the training did not see; use the val split gen-data wrote"
    ]


def test_train_shows_the_warning_on_stderr(tmp_path, small_data):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.safetensors", "val.safetensors"):
        shutil.copy(small_data / "train.safetensors", data / name)
    args = ["train", "--data", data, "--epochs", "1", "--hidden", "4", "--batch-size", "32", "--no-plots"]
    result = CliRunner().invoke(app, [str(a) for a in [*args, "-q", "--json"]])
    assert result.exit_code == 0, result.output
    assert result.stderr == (
        f"warning: {data}/val.safetensors holds the same sequences as {data}/train.safetensors, so "
        "validation measures nothing the training did not see; use the val split gen-data wrote\n"
    )
    summary = json.loads(result.stdout)
    assert summary["warnings"] == [result.stderr[len("warning: ") : -1]]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_force_removes_the_splits_the_new_dataset_does_not_have(tmp_path):
    """The report: gen-data --force without --test-fraction left an older test.safetensors, which
    eval then read as this dataset's. A folder holds the splits of one command; other files stay."""
    data = tmp_path / "d1"
    gen = ["gen-data", str(data), "--sequences", "40", "--length", "6"]
    assert CliRunner().invoke(app, [*gen, "--test-fraction", "0.2", "--seed", "1"]).exit_code == 0
    (data / "notes.txt").write_text("mine")
    result = CliRunner().invoke(app, [*gen, "--force"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in data.iterdir()) == ["notes.txt", "train.safetensors", "val.safetensors"]
    assert (data / "notes.txt").read_text() == "mine"
    assert json.loads(load_dataset(data / "train.safetensors").metadata["generator"])["seed"] == 0


def test_without_force_a_split_the_new_dataset_lacks_is_refused_too(tmp_path):
    save_datasets(tmp_path, {"test": generate(DataConfig(sequences=20, test_fraction=0.2))["test"]})
    before = _files(tmp_path)
    result = CliRunner().invoke(app, ["gen-data", str(tmp_path), "--sequences", "20"])
    assert result.exit_code == 2 and result.output == (
        f"error: {tmp_path}/test.safetensors already exists; pass --force to overwrite (and to remove "
        "test.safetensors: the new dataset has no such split)\n"
    )
    assert _files(tmp_path) == before


def test_import_without_validation_removes_the_old_val_split(tmp_path):
    """import --val-fraction 0 writes no val split: with --force an older val.safetensors goes, so
    train trains on train.safetensors alone instead of validating on another dataset's split."""
    data = tmp_path / "data"
    save_datasets(data, generate(DataConfig(sequences=20, length=6, seed=3)))
    x = np.random.default_rng(0).normal(size=(12, 5, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(12) % 2)
    args = ["import", str(tmp_path / "x.npy"), str(data), "--labels", str(tmp_path / "y.npy")]
    result = CliRunner().invoke(app, [*args, "--val-fraction", "0"])
    assert result.exit_code == 2 and "val.safetensors already exist" in result.output
    assert CliRunner().invoke(app, [*args, "--val-fraction", "0", "--force"]).exit_code == 0
    assert sorted(p.name for p in data.iterdir()) == ["train.safetensors"]
    assert load_training_data(data).val is None


def test_stale_splits_go_only_once_the_new_ones_are_in_place(tmp_path, monkeypatch):
    data = tmp_path / "data"
    save_datasets(data, generate(DataConfig(sequences=20, test_fraction=0.2, seed=1)))
    (data / "notes.txt").write_text("mine")
    before = _files(data)
    _disk_full_after(monkeypatch, 1)  # the new val split fails: the old dataset stays whole
    with pytest.raises(SpiralError, match="val.safetensors: No space left on device"):
        save_datasets(data, generate(DataConfig(sequences=20, seed=2)), force=True)
    assert _files(data) == before
    monkeypatch.undo()

    new = generate(DataConfig(sequences=20, seed=2))
    unlink, seen = Path.unlink, []

    def unlinking(path, *args, **kwargs):
        if path.parent == data:  # what the folder holds when the old test split is removed
            seen.append((path.name, load_dataset(data / "train.safetensors").fingerprint()))
        return unlink(path, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", unlinking)
    save_datasets(data, new, force=True)
    assert seen == [("test.safetensors", new["train"].fingerprint())]
    assert sorted(p.name for p in data.iterdir()) == ["notes.txt", "train.safetensors", "val.safetensors"]
