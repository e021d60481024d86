"""Labels, features and scores of real data: columns matched by name, labels mapped to the model's
classes (or refused as measurements), scikit-learn's balanced accuracy and macro F1, class
weights, and normalisation over each sequence's own points."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spiralctl.checkpoint import load_checkpoint
from spiralctl.data import feature_statistics, load_dataset
from spiralctl.predictor import classification_report

CLASSES = ("low", "mid", "high")


def _error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _rows(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def _long_csv(path: Path, columns: list[str], sequences: int = 36, seed: int = 0) -> Path:
    """A long CSV of three features whose level tells the class, ragged lengths 4 to 9."""
    rng = np.random.default_rng(seed)
    rows = [",".join(columns)]
    for s in range(sequences):
        label = CLASSES[s % 3]
        for _ in range(int(rng.integers(4, 10))):
            values = {
                "temp": (s % 3) + rng.normal(0, 0.1),
                "press": 10 + rng.normal(0, 2),
                "hum": rng.normal(50, 5),
            }
            cells = {"sequence": f"s{s}", "label": label, **{k: f"{v:.4f}" for k, v in values.items()}}
            rows.append(",".join(cells[c] for c in columns))
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory) -> tuple[Path, Path]:
    from spiralctl.commands import import_dataset, train
    from spiralctl.config import TrainConfig

    folder = tmp_path_factory.mktemp("csv")
    source = _long_csv(folder / "long.csv", ["sequence", "temp", "press", "hum", "label"])
    import_dataset(str(source), folder / "data", val_fraction=0.25)
    run = folder / "run"
    config = TrainConfig(epochs=2, batch_size=8, hidden=4, seed=0)
    train(config, data_dir=folder / "data", out=run, device="cpu", plots=False)
    return source, run


def test_columns_are_matched_by_name(run, tmp_path, csv_run):
    source, trained = csv_run
    checkpoint = trained / "best.safetensors"
    assert load_checkpoint(checkpoint).features == ["temp", "press", "hum"]
    # the same sequences with their columns in another order give the same predictions
    reordered = _long_csv(tmp_path / "reordered.csv", ["sequence", "label", "hum", "temp", "press"])
    expected = _rows(run("predict", checkpoint, source, "--json"))
    assert _rows(run("predict", checkpoint, reordered, "--json")) == expected
    same = json.loads(run("eval", checkpoint, source, "--json").stdout)
    assert json.loads(run("eval", checkpoint, reordered, "--json").stdout)["loss"] == same["loss"]
    # and a --test file in another order is stored in TRAIN's
    assert run("import", source, "d2", "--test", reordered).exit_code == 0
    test = load_dataset(tmp_path / "d2" / "test.safetensors")
    assert test.features == ["temp", "press", "hum"]
    first = np.array([float(v) for v in reordered.read_text().splitlines()[1].split(",")[2:]])
    np.testing.assert_allclose(test.x[0, 0], first[[1, 2, 0]], rtol=1e-6)
    # other names are an error naming both lists
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(source.read_text().replace("temp,press,hum", "a,b,c", 1))
    result = run("predict", checkpoint, renamed)
    assert result.exit_code == 2 and "a, b, c" in _error(result) and "temp, press, hum" in _error(result)
    result = run("import", source, "d3", "--test", renamed)
    assert result.exit_code == 2 and "a, b, c" in _error(result) and not (tmp_path / "d3").exists()


def test_predict_shows_labels_the_model_does_not_know_as_written(run, tmp_path, csv_run):
    source, trained = csv_run
    other = tmp_path / "other.csv"
    other.write_text(source.read_text().replace(",high\n", ",extreme\n"))
    rows = _rows(run("predict", trained / "best.safetensors", other, "--json"))
    assert {row["true_label"] for row in rows} == {"low", "mid", "extreme"}
    result = run("eval", trained / "best.safetensors", other)
    error = _error(result)
    assert result.exit_code == 2 and "'extreme'" in error and "sequence s2" in error


def test_measurements_are_not_classes(run, tmp_path):
    lines = ["sequence,a,label"] + [f"s{s},{t},{s * 0.37:.2f}" for s in range(30) for t in range(3)]
    (tmp_path / "regress.csv").write_text("\n".join(lines) + "\n")
    result = run("import", "regress.csv", "out")
    assert result.exit_code == 2 and "measurements" in _error(result) and not (tmp_path / "out").exists()
    assert len(_error(result)) < 400


def test_spirals_labelled_0_and_1_and_whole_float_labels_are_the_two_classes(run, tmp_path):
    rng = np.random.default_rng(1)
    items = [{"points": rng.normal(size=(5, 2)).tolist(), "label": float(i % 2)} for i in range(20)]
    (tmp_path / "spirals.json").write_text(json.dumps(items))
    summary = json.loads(run("import", "spirals.json", "d", "--json").stdout)
    assert summary["classes"] == ["clockwise", "anticlockwise"]
    counts = {row["split"]: row["classes"] for row in summary["splits"]}
    assert counts["train"] == {"clockwise": 8, "anticlockwise": 8}


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # on purpose: see below
def test_scores_are_scikit_learns():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 4)).astype(np.float32)
    logits[:, 3] -= 5  # the model never predicts class 3...
    labels = rng.integers(0, 3, size=50)  # ...and the data holds none of it
    labels[:3] = 0
    logits[:3, 3] = 9  # except three predictions: a class predicted that the data lacks
    report = classification_report(logits, labels, classes=["a", "b", "c", "d"])
    predicted = logits.argmax(axis=1)
    assert report["accuracy"] == pytest.approx(metrics.accuracy_score(labels, predicted))
    assert report["balanced_accuracy"] == pytest.approx(metrics.balanced_accuracy_score(labels, predicted))
    assert report["macro_f1"] == pytest.approx(metrics.f1_score(labels, predicted, average="macro"))
    np.testing.assert_array_equal(
        report["confusion"], metrics.confusion_matrix(labels, predicted, labels=range(4))
    )


def test_balanced_weights_reach_the_loss_as_n_over_k_n_k():
    from spiralctl.config import TrainConfig
    from spiralctl.data import Dataset
    from spiralctl.trainer import class_weights

    y = np.array([0] * 6 + [1] * 3 + [2] * 1, dtype=np.uint8)
    data = Dataset(np.zeros((10, 3, 1), np.float32), y, {"labels": json.dumps(["a", "b", "c"])})
    weights = class_weights(TrainConfig(class_weight="balanced"), data)
    np.testing.assert_allclose(weights, [10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)], rtol=1e-6)
    assert (weights[y]).sum() == pytest.approx(10)  # the weights of all sequences add up to n
    np.testing.assert_array_equal(class_weights(TrainConfig(), data), [1, 1, 1])


def test_normalisation_counts_each_sequences_own_points_only(csv_run):
    _, trained = csv_run
    train = load_dataset(trained.parent / "data" / "train.safetensors")
    assert train.mixed  # ragged: padding would pull the mean towards 0 if it were counted
    inside = np.concatenate([train.x[i, : train.lengths[i]] for i in range(len(train))]).astype(np.float64)
    mean, std = load_checkpoint(trained / "best.safetensors").normalization
    np.testing.assert_allclose(mean, inside.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(std, inside.std(axis=0), rtol=1e-5)
    np.testing.assert_array_equal(feature_statistics(train)[0], mean)


def test_plot_compares_with_the_true_class_as_the_model_names_it(run, tmp_path, trained_run, small_data):
    pytest.importorskip("matplotlib")
    data = load_dataset(small_data / "test.safetensors")
    rows = ["sequence,x,y,label"]
    for i in range(len(data)):
        rows += [f"s{i},{x:.6f},{y:.6f},{int(data.y[i])}" for x, y in data.x[i, : data.lengths[i]]]
    (tmp_path / "digits.csv").write_text("\n".join(rows) + "\n")
    checkpoint = trained_run / "best.safetensors"
    report = json.loads(run("eval", checkpoint, "digits.csv", "--json").stdout)
    result = run(
        "plot", "digits.csv", "--checkpoint", checkpoint, "-o", "p.png", "--limit", len(data), "--json"
    )
    assert result.exit_code == 0, result.output
    wrong = round((1 - report["accuracy"]) * len(data))
    assert json.loads(result.stdout)["mistakes"] == wrong


def test_tune_refuses_data_without_a_validation_split(run, tmp_path, csv_run):
    pytest.importorskip("optuna")
    source, _ = csv_run
    assert run("import", source, "all", "--val-fraction", 0).exit_code == 0
    result = run("tune", "--data", "all", "--trials", 1, "--epochs", 1)
    assert result.exit_code == 2 and "no validation split" in _error(result) and "--val" in _error(result)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("classes", [["clockwise", "anticlockwise"], ["a", 'b"q', "c", "Ω"]])
def test_predictions_written_column_by_column_are_the_rows_as_json(classes):
    from spiralctl.commands import PredictionBlock
    from spiralctl.ui import prediction_csv_lines, prediction_json_lines

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, len(classes)))
    probabilities = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    truth = [classes[i] for i in rng.integers(0, len(classes), 40)]
    for true_label in (None, truth):
        block = PredictionBlock(
            [f"s{i}" for i in range(40)],
            np.full(40, 7),
            probabilities,
            logits.argmax(axis=1),
            classes,
            true_label,
        )
        rows = list(block.rows())
        assert prediction_json_lines(block) == "".join(json.dumps(row) + "\n" for row in rows)
        lines = prediction_csv_lines(block, header=True).splitlines()
        assert lines[0].split(",")[:4] == ["sequence", "points", "label", "probability"]
        assert len(lines) == 41 and lines[1].startswith(
            f"s0,7,{rows[0]['label']},{rows[0]['probability']!r},"
        )


def test_split_options_that_would_be_ignored_are_errors(run, tmp_path, csv_run):
    source, _ = csv_run
    other = _long_csv(tmp_path / "other.csv", ["sequence", "temp", "press", "hum", "label"], seed=1)
    for options, named in (
        (["--test", other, "--test-fraction", 0.2], "--test-fraction"),
        (["--val", other, "--val-fraction", 0.1], "--val-fraction"),
    ):
        result = run("import", source, "out", *options)
        assert result.exit_code == 2 and named in _error(result) and not (tmp_path / "out").exists()
    result = run("import", "ucr:ItalyPowerDemand", "out", "--test-fraction", 0.2)
    assert result.exit_code == 2 and "official test split" in _error(result)


def test_plot_refuses_a_threshold_for_three_classes(run, tmp_path, csv_run):
    pytest.importorskip("matplotlib")
    source, trained = csv_run
    result = run(
        "plot", source, "--checkpoint", trained / "best.safetensors", "--threshold", 0.7, "-o", "p.png"
    )
    assert result.exit_code == 2 and "--threshold" in _error(result) and not (tmp_path / "p.png").exists()
