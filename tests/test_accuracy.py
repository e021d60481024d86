"""The default configuration learns the direction task: the product's main promise."""

from __future__ import annotations

from spiralctl import commands
from spiralctl.config import InferenceOptions, TrainConfig
from spiralctl.data import DataConfig, generate, save_datasets


def test_defaults_reach_95_percent_on_a_held_out_test_split(tmp_path):
    # the default dataset (1000 sequences of 50 points) with a test split held out
    save_datasets(tmp_path / "data", generate(DataConfig(val_fraction=0.2, test_fraction=0.2)))
    result = commands.train(TrainConfig(), data_dir=tmp_path / "data", out=tmp_path / "run", device="cpu")
    assert result["last"]["epoch"] == 25
    assert result["best"]["val_accuracy"] >= 0.95
    report = commands.evaluate(
        tmp_path / "run" / "best.safetensors", tmp_path / "data" / "test.safetensors", InferenceOptions("cpu")
    )
    assert report["accuracy"] >= 0.95, report
