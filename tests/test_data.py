"""Dataset generation: determinism, balance, the two styles, and option checks."""

from __future__ import annotations

import numpy as np
import pytest

from spiralctl.data import LUX_A, LUX_B, LUX_THETA, DataConfig, generate, load_dataset, save_datasets
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
        (DataConfig(sequences=0), "--sequences"),
        (DataConfig(sequences=11), "even"),
        (DataConfig(length=1), "--length"),
        (DataConfig(noise=-1), "--noise"),
        (DataConfig(style="round"), "--style"),
        (DataConfig(val_fraction=0), "--val-fraction"),
        (DataConfig(test_fraction=-0.1), "--test-fraction"),
        (DataConfig(val_fraction=0.6, test_fraction=0.5), "add up"),
        (DataConfig(sequences=4, val_fraction=0.1), "too few"),
    ],
)
def test_bad_configs_are_refused(config, message):
    with pytest.raises(SpiralError, match=message):
        generate(config)


def test_existing_files_need_force(tmp_path):
    splits = generate(DataConfig(sequences=20))
    save_datasets(tmp_path, splits)
    before = (tmp_path / "train.safetensors").read_bytes()
    with pytest.raises(SpiralError, match="--force"):
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
    assert loaded.metadata["format"] == "spiralctl-dataset/1"
    assert loaded.metadata["split"] == "val"
    assert '"seed": 2' in loaded.metadata["generator"]
