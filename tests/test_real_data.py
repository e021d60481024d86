"""Real data end to end: the archive's sets bundled in aeon's wheel (BasicMotions: 6 features, 4
classes; ItalyPowerDemand), imported, trained, evaluated, predicted and exported; and files of
the release before K classes, which keep loading and predicting the same."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from spiralctl.checkpoint import load_checkpoint
from spiralctl.data import load_dataset

aeon = pytest.importorskip("aeon", reason="aeon is not installed (pip install 'spiralctl[aeon]')")
ARCHIVE = Path(aeon.__file__).parent / "datasets" / "data"
BEFORE = Path(__file__).parent / "fixtures" / "before-real-data"
MOTIONS = ("Standing", "Running", "Walking", "Badminton")  # @classLabel's order in BasicMotions_TRAIN.ts


def _ts(name: str, split: str) -> Path:
    return ARCHIVE / name / f"{name}_{split}.ts"


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _rows(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def _error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="session")
def motions(tmp_path_factory) -> Path:
    """BasicMotions imported from its two .ts files: the official test split whole."""
    from spiralctl.commands import import_dataset

    folder = tmp_path_factory.mktemp("motions")
    import_dataset(str(_ts("BasicMotions", "TRAIN")), folder, test=str(_ts("BasicMotions", "TEST")))
    return folder


@pytest.fixture(scope="session")
def motions_run(tmp_path_factory, motions) -> Path:
    from spiralctl.commands import train
    from spiralctl.config import TrainConfig

    run = tmp_path_factory.mktemp("motions-run") / "run"
    train(TrainConfig(epochs=3, batch_size=16, hidden=8, seed=0), data_dir=motions, out=run, device="cpu")
    return run


def test_basicmotions_imports_with_its_classes_and_whole_test_split(run, tmp_path):
    result = run(
        "import", _ts("BasicMotions", "TRAIN"), "data", "--test", _ts("BasicMotions", "TEST"), "--json"
    )
    summary = _json(result)
    assert summary["classes"] == list(MOTIONS) and summary["inputs"] == 6
    splits = {row["split"]: row for row in summary["splits"]}
    assert set(splits) == {"train", "val", "test"}
    assert splits["test"]["sequences"] == 40  # all of BasicMotions_TEST.ts
    assert splits["train"]["sequences"] + splits["val"]["sequences"] == 40
    assert splits["val"]["classes"] == dict.fromkeys(MOTIONS, 2)  # 20% of each class's 10
    test = load_dataset(tmp_path / "data" / "test.safetensors")
    assert test.x.shape == (40, 100, 6) and test.classes == list(MOTIONS)
    from aeon.datasets import load_from_ts_file

    x, y = load_from_ts_file(str(_ts("BasicMotions", "TEST")))
    np.testing.assert_array_equal(test.x, x.transpose(0, 2, 1).astype(np.float32))
    assert [MOTIONS[i].lower() for i in test.y] == [label.lower() for label in y]


def test_import_options_for_small_archive_sets(run, tmp_path):
    # no validation: every training sequence is trained on, and train says so
    summary = _json(run("import", "ucr:ItalyPowerDemand", "ipd", "--val-fraction", 0, "--json"))
    splits = {row["split"]: row["sequences"] for row in summary["splits"]}
    assert splits == {"train": 67, "test": 1029}
    result = run("train", "--data", "ipd", "--epochs", 1, "--hidden", 4, "--batch-size", 32, "--no-plots")
    assert result.exit_code == 0, result.output
    assert "no validation split" in result.stderr and "not one chosen by validation" in result.stderr
    # a val file of its own: kept whole, nothing carved from TRAIN
    train, test = _ts("ItalyPowerDemand", "TRAIN"), _ts("ItalyPowerDemand", "TEST")
    summary = _json(run("import", train, "ipd2", "--val", test, "--json"))
    assert {row["split"]: row["sequences"] for row in summary["splits"]} == {"train": 67, "val": 1029}


def test_train_eval_predict_on_four_classes(run, motions, motions_run, tmp_path):
    checkpoint = motions_run / "best.safetensors"
    held = load_checkpoint(checkpoint)
    assert held.classes == list(MOTIONS) and held.model.classes == 4 and held.model.input_size == 6
    assert held.weights["head.weight"].shape == (4, 8)
    # normalisation from the training split only
    train = load_dataset(motions / "train.safetensors")
    points = train.x.reshape(-1, 6).astype(np.float64)
    mean, std = held.normalization
    np.testing.assert_allclose(mean, points.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, points.std(axis=0), rtol=1e-5)

    report = _json(run("eval", checkpoint, motions / "test.safetensors", "--json"))
    assert report["n"] == 40 and report["classes"] == list(MOTIONS)
    confusion = np.array(report["confusion"])
    assert confusion.shape == (4, 4) and confusion.sum() == 40
    assert list(report["per_class"]) == list(MOTIONS)
    assert {row["support"] for row in report["per_class"].values()} == {10}
    assert report["accuracy"] == pytest.approx(np.trace(confusion) / 40)
    recalls = [row["recall"] for row in report["per_class"].values()]
    assert report["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    assert "threshold" not in report
    table = run("eval", checkpoint, motions / "test.safetensors", "--confusion", "c.png")
    assert table.exit_code == 0 and all(name in table.stdout for name in MOTIONS)
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "c.png" in table.stdout
    result = run("eval", checkpoint, motions / "test.safetensors", "--confusion", "c.png")
    assert result.exit_code == 2 and "--force" in _error(result)

    # the .ts file scored directly gives the same report
    direct = _json(run("eval", checkpoint, _ts("BasicMotions", "TEST"), "--json"))
    assert direct["confusion"] == report["confusion"] and direct["loss"] == pytest.approx(report["loss"])

    rows = _rows(run("predict", checkpoint, _ts("BasicMotions", "TEST"), "--json"))
    assert len(rows) == 40
    for row in rows:
        assert list(row["probabilities"]) == list(MOTIONS)
        assert sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        assert row["probability"] == max(row["probabilities"].values())
        assert row["label"] in MOTIONS and row["true_label"] in MOTIONS
    accuracy = np.mean([row["label"] == row["true_label"] for row in rows])
    assert accuracy == pytest.approx(report["accuracy"])

    result = run("predict", checkpoint, _ts("BasicMotions", "TEST"), "--threshold", 0.7)
    assert result.exit_code == 2 and "--threshold" in _error(result) and "4 classes" in _error(result)


def test_four_class_model_in_torch_and_onnx(run, motions, motions_run, tmp_path):
    checkpoint = motions_run / "best.safetensors"
    data = load_dataset(motions / "test.safetensors")
    rows = _rows(run("predict", checkpoint, motions / "test.safetensors", "--json"))
    expected = np.array([list(row["probabilities"].values()) for row in rows])

    pytest.importorskip("onnx", reason="onnx is not installed")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    report = _json(run("export", checkpoint, "m.onnx", "--json"))
    assert report["inputs"] == {"sequences": ["batch", "time", 6]}
    assert report["outputs"]["probabilities"] == ["batch", 4] and report["classes"] == list(MOTIONS)
    session = ort.InferenceSession("m.onnx", providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {"sequences": data.x})  # raw values in
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)

    torch = pytest.importorskip("torch", reason="torch is not installed")
    from spiralctl.storage import read_safetensors

    tensors, metadata = read_safetensors(checkpoint)
    model = torch.nn.ModuleDict(
        {"lstm": torch.nn.LSTM(6, 8, batch_first=True), "head": torch.nn.Linear(8, 4)}
    )
    weights = {k: torch.from_numpy(v.copy()) for k, v in tensors.items() if not k.startswith("optimizer.")}
    model.load_state_dict(weights, strict=True)
    normalization = json.loads(metadata["normalization"])
    x = (data.x - np.array(normalization["mean"], np.float32)) / np.array(normalization["std"], np.float32)
    with torch.no_grad():
        _, (h, _) = model["lstm"](torch.from_numpy(x))
        probabilities = torch.softmax(model["head"](h[-1]), dim=1).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_files_of_the_release_before_keep_predicting_the_same(run, tmp_path):
    checkpoint, data = BEFORE / "checkpoint.safetensors", BEFORE / "test.safetensors"
    held = load_checkpoint(checkpoint)
    assert held.classes == ["clockwise", "anticlockwise"] and held.normalization is None
    assert load_dataset(data).classes == ["clockwise", "anticlockwise"]
    before = [json.loads(line) for line in (BEFORE / "predictions.jsonl").read_text().splitlines()]
    rows = _rows(run("predict", checkpoint, data, "--json"))
    assert [row["label"] for row in rows] == [row["label"] for row in before]
    assert [row["true_label"] for row in rows] == [row["true_label"] for row in before]
    # that release gave P(anticlockwise) as "probability"
    np.testing.assert_allclose(
        [row["probabilities"]["anticlockwise"] for row in rows],
        [row["probability"] for row in before],
        atol=1e-6,
    )


def _write_ts(path: Path, labels: str, cases: list[str]) -> Path:
    header = [
        "@problemName t",
        "@timeStamps false",
        "@univariate true",
        f"@classLabel true {labels}",
        "@data",
    ]
    path.write_text("\n".join(header + cases) + "\n")
    return path


def test_bad_real_data_is_one_error_line_and_writes_nothing(run, tmp_path, motions_run):
    one_class = _write_ts(tmp_path / "one.ts", "a b", ["1,2,3:a", "2,3,4:a", "3,4,5:a"])
    result = run("import", one_class, "out")
    assert result.exit_code == 2 and "one.ts" in _error(result) and "at least two classes" in _error(result)
    assert not (tmp_path / "out").exists()

    train = _write_ts(
        tmp_path / "train.ts", "a b c", [f"{i},{i + 1},{i + 2}:{'ab'[i % 2]}" for i in range(8)]
    )
    test = _write_ts(tmp_path / "test.ts", "a b c", ["1,2,3:a", "2,3,4:c"])
    result = run("import", train, "out", "--test", test)
    assert result.exit_code == 2 and "'c'" in _error(result) and "test.ts" in _error(result)
    assert not (tmp_path / "out").exists()

    # a declared class without training sequences: balanced weights cannot be computed
    assert run("import", train, "abc", "--val-fraction", 0.25).exit_code == 0
    result = run("train", "--data", "abc", "--class-weight", "balanced", "--epochs", 1)
    assert result.exit_code == 2 and "--class-weight" in _error(result) and "'c'" in _error(result)

    # a predict input with other features than the model's
    np.save("three.npy", np.zeros((2, 5, 3), dtype=np.float32))
    result = run("predict", motions_run / "best.safetensors", "three.npy")
    assert result.exit_code == 2 and "3 feature(s)" in _error(result) and "takes 6" in _error(result)


def test_class_weights_balanced_are_recorded_and_train(run, tmp_path):
    rng = np.random.default_rng(0)
    counts = {"rare": 6, "common": 30}
    rows = ["sequence,a,b,label"]
    for name, n in counts.items():
        for i in range(n):
            for t in range(6):
                value = rng.normal(1.0 if name == "rare" else -1.0, 0.3)
                rows.append(f"{name}{i},{value:.4f},{t},{name}")
    (tmp_path / "imbalanced.csv").write_text("\n".join(rows) + "\n")
    summary = _json(run("import", "imbalanced.csv", "data", "--json"))
    assert summary["features"] == ["a", "b"] and summary["classes"] == ["common", "rare"]
    result = run("train", "--data", "data", "--class-weight", "balanced", "--epochs", 2, "--no-plots", "-q")
    assert result.exit_code == 0, result.output
    config = json.loads(Path("runs/train-1/config.json").read_text())
    assert config["class_weight"] == "balanced" and config["normalize"] == "auto"
    metrics = [json.loads(line) for line in Path("runs/train-1/metrics.jsonl").read_text().splitlines()]
    assert "val_balanced_accuracy" in metrics[-1]


def test_info_shows_classes_features_and_normalization(run, motions, motions_run):
    dataset = _json(run("info", motions / "train.safetensors", "--json"))
    assert dataset["inputs"] == 6 and list(dataset["classes"]) == list(MOTIONS)
    report = _json(run("info", motions_run / "best.safetensors", "--json"))
    assert report["classes"] == list(MOTIONS) and report["inputs"] == 6
    assert len(report["normalization"]["mean"]) == 6
    table = run("info", motions_run / "best.safetensors")
    assert table.exit_code == 0 and "normalization" in table.stdout and "Badminton" in table.stdout


def test_tune_runs_on_imported_data(run, motions, tmp_path):
    pytest.importorskip("optuna")
    data = tmp_path / "m"
    shutil.copytree(motions, data)
    result = run(
        "tune", "--data", data, "--trials", 1, "--epochs", 1, "--workers", 1, "--no-plots", "--json", "-q"
    )
    assert result.exit_code == 0, result.output
