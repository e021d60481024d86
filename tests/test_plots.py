"""Plots: the PNG files exist and decode; without matplotlib training still works and says how to
get plots, and `spiralctl plot` exits 2 with the install command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

matplotlib = pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")


def _decode(path) -> tuple[int, int]:
    from matplotlib.image import imread

    image = imread(path, format="png")
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.std() > 0  # not a blank picture
    return image.shape[:2]


def test_training_writes_loss_and_accuracy_plots(run, small_data):
    result = run(
        "train", "--data", small_data, "--epochs", 3, "--hidden", 4, "--batch-size", 32, "--out", "r"
    )
    assert result.exit_code == 0, result.output
    height, width = _decode("r/loss.png")
    assert (height, width) == (400, 640)
    _decode("r/accuracy.png")
    assert "loss.png, accuracy.png" in result.output
    assert "train loss" in result.output and "->" in result.output  # the curves in the terminal summary


def test_plot_by_label_and_by_prediction(run, small_data, trained_run):
    result = run("plot", small_data / "test.safetensors", "-o", "labels.png", "--limit", 9, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["sequences"] == 9 and report["total"] == 30 and report["coloured_by"] == "label"
    assert report["mistakes"] is None
    _decode("labels.png")

    checkpoint = trained_run / "best.safetensors"
    result = run("plot", small_data / "test.safetensors", "--checkpoint", checkpoint, "-o", "p.png", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    _decode("p.png")
    predictions = run("predict", checkpoint, small_data / "test.safetensors", "--json")
    rows = [json.loads(line) for line in predictions.stdout.splitlines()]
    assert report["mistakes"] == sum(row["label"] != row["true_label"] for row in rows)

    Path("points.csv").write_text("sequence,x,y\na,0,1\na,1,0\na,0,-1\n")
    result = run("plot", "points.csv", "-o", "unlabelled.png", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["coloured_by"] == "none"
    _decode("unlabelled.png")

    result = run("plot", small_data / "test.safetensors", "-o", "out.jpg")
    assert result.exit_code == 2 and "give a name ending in .png" in result.output


def test_without_matplotlib(run, small_data, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    result = run(
        "train", "--data", small_data, "--epochs", 1, "--hidden", 4, "--batch-size", 32, "--out", "r"
    )
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    install = 'pip install "spiralctl[plot]"'
    assert notes == [f"note: no loss.png/accuracy.png: plots need matplotlib; install it with: {install}"]
    assert not list(Path("r").glob("*.png")) and Path("r/best.safetensors").exists()

    result = run("plot", small_data / "test.safetensors", "-o", "x.png")
    assert result.exit_code == 2
    assert (
        result.output.strip()
        == 'error: plots need matplotlib; install it with: pip install "spiralctl[plot]"'
    )
