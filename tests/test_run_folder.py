"""Run folders: config.json and --config, metrics.jsonl/metrics.csv across resumes, training controls
(--patience, --save-every, --lr-schedule) and train's JSON output."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from spiralctl import commands
from spiralctl.checkpoint import load_checkpoint
from spiralctl.config import TrainConfig
from spiralctl.runs import METRIC_COLUMNS

SMALL = ("--epochs", 2, "--hidden", 4, "--batch-size", 32)


def _json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_config_json_repeats_the_run_and_options_override_it(run, small_data):
    result = run(
        "train", "--data", small_data, *SMALL, "--seed", 4, "--lr-schedule", "cosine", "--out", "a", "-q"
    )
    assert result.exit_code == 0, result.output
    config = json.loads(open("a/config.json").read())
    assert config == {
        "data": str(small_data),
        "device": "auto",
        "epochs": 2,
        "batch_size": 32,
        "hidden": 4,
        "lr": 0.01,
        "seed": 4,
        "lr_schedule": "cosine",
        "patience": 0,
        "save_every": 0,
        "normalize": "auto",
        "class_weight": "none",
    }

    # the same run again, from the file alone: the same weights
    assert run("train", "--config", "a/config.json", "--out", "b", "-q").exit_code == 0
    a, b = load_checkpoint("a/last.safetensors"), load_checkpoint("b/last.safetensors")
    for name, weights in a.weights.items():
        np.testing.assert_array_equal(weights, b.weights[name])

    # an option on the command line wins over the file
    assert run("train", "--config", "a/config.json", "--epochs", 1, "--out", "c", "-q").exit_code == 0
    repeated = json.loads(open("c/config.json").read())
    assert repeated == {**config, "epochs": 1}
    assert load_checkpoint("c/last.safetensors").epoch == 1


@pytest.mark.parametrize(
    "content, text",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"epochz": 3}', "unknown option 'epochz'"),
        ('{"epochs": "three"}', "'epochs' must be an int"),
        ('{"lr_schedule": "linear"}', "'lr_schedule' must be one of constant, cosine"),
    ],
)
def test_bad_config_files_get_one_error_line(run, content, text):
    with open("config.json", "w") as handle:
        handle.write(content)
    result = run("train", "--config", "config.json")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert result.stdout == ""
    assert text in lines[0]


def test_metrics_files_survive_a_resume(small_data):
    config = TrainConfig(epochs=2, batch_size=32, hidden=4, seed=2)
    commands.train(config, data_dir=small_data, out="r", device="cpu", plots=False)
    jsonl, table = open("r/metrics.jsonl", "rb").read(), open("r/metrics.csv", "rb").read()
    commands.train(
        TrainConfig(epochs=4), resume_path="r/last.safetensors", device="cpu", plots=False
    )  # --data comes from the checkpoint
    new_jsonl, new_table = open("r/metrics.jsonl", "rb").read(), open("r/metrics.csv", "rb").read()
    assert new_jsonl.startswith(jsonl) and new_table.startswith(table)  # kept byte for byte
    rows = list(csv.DictReader(open("r/metrics.csv")))
    assert tuple(rows[0]) == METRIC_COLUMNS
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4]
    for row, line in zip(rows, new_jsonl.decode().splitlines()):
        metrics = json.loads(line)
        assert {k: float(v) for k, v in row.items()} == pytest.approx({k: metrics[k] for k in METRIC_COLUMNS})
        assert 0 <= metrics["train_accuracy"] <= 1


def test_train_json_progress_gives_one_object_per_epoch_then_the_summary(run, small_data):
    result = run("train", "--data", small_data, *SMALL, "--json-progress", "-q")
    assert result.exit_code == 0, result.output
    objects = _json_lines(result.output)
    assert [o["event"] for o in objects] == ["epoch", "epoch", "summary"]
    assert [o["epoch"] for o in objects[:2]] == [1, 2]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "sequences_per_second"):
        assert isinstance(objects[0][key], float)
    summary = objects[-1]
    assert summary["epochs_run"] == 2 and summary["stopped_early"] is False
    assert [m["epoch"] for m in summary["history"]] == [1, 2]
    assert summary["config"] == "runs/train-1/config.json"
    assert summary["metrics"] == "runs/train-1/metrics.csv"

    result = run("train", "--data", small_data, *SMALL, "--json", "-q")
    assert [o["event"] for o in _json_lines(result.output)] == ["summary"]


def test_save_every_keeps_numbered_checkpoints(run, small_data):
    result = run("train", "--data", small_data, *SMALL, "--save-every", 1, "--out", "r", "-q", "--no-plots")
    assert result.exit_code == 0, result.output
    assert [load_checkpoint(f"r/epoch-{n}.safetensors").epoch for n in (1, 2)] == [1, 2]


def test_cosine_schedule_decays_to_zero():
    config = TrainConfig(lr=0.02, lr_schedule="cosine")
    assert config.learning_rate(1, 100) == pytest.approx(0.02)
    assert config.learning_rate(51, 100) == pytest.approx(0.01)
    assert config.learning_rate(100, 100) == pytest.approx(0.02 * 0.5 * (1 + math.cos(math.pi * 0.99)))
    assert TrainConfig(lr=0.02).learning_rate(100, 100) == 0.02


def test_cosine_schedule_in_a_run(small_data):
    config = TrainConfig(epochs=3, batch_size=32, hidden=4, lr_schedule="cosine")
    result = commands.train(config, data_dir=small_data, out="r", device="cpu", plots=False)
    rates = [m["lr"] for m in result["history"]]
    steps = math.ceil(60 / 32)  # 60 training sequences
    assert rates == pytest.approx([config.learning_rate(e * steps, 3 * steps) for e in (1, 2, 3)])
    assert rates[0] > rates[1] > rates[2] > 0


def test_patience_stops_early_and_resume_says_so(small_data):
    # a learning rate this large makes the validation loss jump about: it soon stops improving
    config = TrainConfig(epochs=30, batch_size=32, hidden=4, lr=0.3, patience=2, seed=0)
    result = commands.train(config, data_dir=small_data, out="r", device="cpu", plots=False)
    assert result["stopped_early"] and result["epochs_run"] < 30
    history = result["history"]
    best = min(history, key=lambda m: m["val_loss"])
    assert history[-1]["epoch"] - best["epoch"] == 2
    assert all(m["val_loss"] >= best["val_loss"] for m in history[best["epoch"] :])
    assert load_checkpoint("r/best.safetensors").epoch == best["epoch"]

    from spiralctl.errors import SpiralError

    before = {
        name: open(f"r/{name}", "rb").read() for name in ("config.json", "metrics.csv", "last.safetensors")
    }
    with pytest.raises(SpiralError, match="stopped early"):
        commands.train(config, resume_path="r/last.safetensors", device="cpu", plots=False)
    assert before == {name: open(f"r/{name}", "rb").read() for name in before}  # nothing touched
    # a larger patience goes on
    more = commands.train(
        TrainConfig(epochs=history[-1]["epoch"] + 1, patience=0),
        resume_path="r/last.safetensors",
        device="cpu",
        plots=False,
    )
    assert more["last"]["epoch"] == history[-1]["epoch"] + 1


@pytest.mark.parametrize(
    "option, value, text",
    [
        ("--patience", -1, "--patience must be 0 (off) or more"),
        ("--save-every", -2, "--save-every must be 0 (off) or more"),
        ("--lr-schedule", "linear", "'linear' is not one of"),
    ],
)
def test_bad_training_controls(run, option, value, text):
    result = run("train", option, value)
    assert result.exit_code == 2 and text in result.output
