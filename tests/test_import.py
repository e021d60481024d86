"""spiralctl import: a user's labelled sequences (CSV, JSON, .npy + labels) as a dataset that
train, eval and predict read, split by class and seed; every bad input is one error line."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from spiralctl.data import LABELS, load_dataset


def _spirals(count=40, seed=0):
    """(name, points [T, 2], label) with lengths from 3 to 24."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        length, label = int(rng.integers(3, 25)), i % 2
        step = np.arange(length)
        angle = rng.uniform(0, 2 * np.pi) + (1 if label == 0 else -1) * step * np.pi / 16
        radius = 6.5 * (104 - step) / 104
        rows.append((f"s{i}", np.stack([radius * np.sin(angle), radius * np.cos(angle)], 1), label))
    return rows


def _csv(path, rows, label=lambda label: LABELS[label]):
    with open(path, "w") as handle:
        handle.write("sequence,x,y,label\n")
        for name, points, value in rows:
            for x, y in points:
                handle.write(f"{name},{float(x)!r},{float(y)!r},{label(value)}\n")
    return path


def _loaded(folder):
    return {split: load_dataset(f"{folder}/{split}.safetensors") for split in ("train", "val", "test")}


def test_csv_import_is_split_by_class_and_seed_and_trains(run):
    rows = _spirals()
    _csv("mine.csv", rows)
    result = run("import", "mine.csv", "data", "--test-fraction", "0.2", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    summary = json.loads(result.stdout)
    assert summary["classes"] == ["clockwise", "anticlockwise"]
    assert summary["features"] == ["x", "y"] and summary["inputs"] == 2
    assert [(r["split"], r["sequences"], r["classes"]) for r in summary["splits"]] == [
        ("train", 24, {"clockwise": 12, "anticlockwise": 12}),
        ("val", 8, {"clockwise": 4, "anticlockwise": 4}),
        ("test", 8, {"clockwise": 4, "anticlockwise": 4}),
    ]
    splits = _loaded("data")
    by_name = {name: (points, label) for name, points, label in rows}
    seen = 0
    for data in splits.values():
        assert data.metadata["format"] == "spiralctl-dataset/2"
        for x, length, label in zip(data.x, data.lengths, data.y):
            # each stored sequence is one of the input's, at its own length, with its label
            match = [n for n, (p, lab) in by_name.items() if len(p) == length and np.allclose(x[:length], p)]
            assert len(match) == 1 and by_name[match[0]][1] == label
            assert not x[length:].any()
            seen += 1
    assert seen == len(rows)
    assert run("import", "mine.csv", "again", "--test-fraction", "0.2").exit_code == 0
    for split, data in _loaded("again").items():
        np.testing.assert_array_equal(data.x, splits[split].x)  # same seed, same split
    other = run("import", "mine.csv", "other", "--seed", "5")
    assert other.exit_code == 0
    assert not np.array_equal(load_dataset("other/train.safetensors").x, splits["train"].x)
    result = run(
        "train", "--data", "data", "--epochs", "1", "--hidden", "3", "--out", "r", "-q", "--no-plots"
    )
    assert result.exit_code == 0, result.stderr
    result = run("eval", "r/best.safetensors", "data/test.safetensors", "--json")
    assert json.loads(result.stdout)["n"] == 8


def test_json_and_npy_imports(run):
    rows = _spirals(20, seed=1)
    items = [{"sequence": n, "points": p.tolist(), "label": int(lab)} for n, p, lab in rows]
    with open("mine.json", "w") as handle:
        json.dump(items, handle)
    assert run("import", "mine.json", "fromjson").exit_code == 0
    assert sum(len(d) for d in _loaded_two("fromjson")) == 20
    x = np.stack([p[:3] for _, p, _ in rows]).astype(np.float32)
    np.save("x.npy", x)
    np.save("y.npy", np.array([LABELS[lab] for *_, lab in rows]))
    result = run("import", "x.npy", "fromnpy", "--labels", "y.npy")
    assert result.exit_code == 0, result.stderr
    train, val = _loaded_two("fromnpy")
    assert (train.lengths == 3).all() and len(train) + len(val) == 20


def test_any_label_text_is_a_class(run):
    """A label beside clockwise and anticlockwise is a third class, not an error: the classes
    are then the labels in natural order, and each sequence keeps its own."""
    rows = _spirals(30, seed=2)
    names = ["clockwise", "anticlockwise", "left"]
    with open("three.csv", "w") as handle:
        handle.write("sequence,x,y,label\n")
        for i, (name, points, _) in enumerate(rows):
            for x, y in points:
                handle.write(f"{name},{float(x)!r},{float(y)!r},{names[i % 3]}\n")
    result = run("import", "three.csv", "data", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["classes"] == ["anticlockwise", "clockwise", "left"]
    assert [(r["split"], r["sequences"], r["classes"]) for r in summary["splits"]] == [
        ("train", 24, {"anticlockwise": 8, "clockwise": 8, "left": 8}),
        ("val", 6, {"anticlockwise": 2, "clockwise": 2, "left": 2}),
    ]
    for data in _loaded_two("data"):
        assert data.classes == ["anticlockwise", "clockwise", "left"]
        for x, length, label in zip(data.x, data.lengths, data.y):
            match = [i for i, (_, p, _) in enumerate(rows) if len(p) == length and np.allclose(x[:length], p)]
            assert len(match) == 1 and data.classes[label] == names[match[0] % 3]


def _loaded_two(folder):
    return [load_dataset(f"{folder}/{split}.safetensors") for split in ("train", "val")]


BAD = [
    # (file name, content, extra arguments, the error line)
    (
        "a.csv",
        "sequence,x,y\na,1,2\n",
        [],
        "a.csv: line 1: the header has no label column; give each row its sequence's label in a "
        "column named label (such as 'sequence,x,y,label')\n",
    ),
    (
        "b.csv",
        "sequence,x,y,label\na,1,2,0\na,2,3,1\n",
        [],
        "b.csv: line 3: sequence a is labelled 0 on its earlier lines and 1 here; give each sequence "
        "one label\n",
    ),
    (
        "c.csv",
        "sequence,x,y,label\na,1,2,\na,2,3,\n",
        [],
        "c.csv: line 2: the label is empty; give every row its sequence's label\n",
    ),
    (
        "d.csv",
        "sequence,x,y,label\na,1,2,0\na,nan,3,0\n",
        [],
        "d.csv: line 3: x = nan is not a finite number",
    ),
    (
        "e.csv",
        "sequence,x,y,label\na,1,2,0\nb,1,2,1\nb,2,2,1\n",
        [],
        "e.csv: line 2: sequence a has 1 point(s); at least 2 are needed\n",
    ),
    ("f.csv", "sequence,x,y,label\na,1,2,0\na,1e39,2,0\n", [], "f.csv: line 3: x = 1e39 is beyond float32"),
    (
        "g.csv",
        "sequence,x,y,label\na,1,2,0\na,2,2,0\nb,1,2,1\nb,1,3,1\n",
        [],
        "g.csv: 1 of class 'clockwise', 1 of class 'anticlockwise' are too few sequences for the "
        "fractions given: the val split would be empty; give more sequences, a smaller fraction, or "
        "--val-fraction 0 to train on all of them\n",
    ),
    (
        "h.json",
        '[{"points": [[0, 1], [1, "2"]], "label": 0}]',
        [],
        'h.json: sequence 0, point 1: feature 1 = "2" is not a number; write the values as JSON numbers',
    ),
    ("i.json", '[{"points": [[0, 1], [1, 2]]}]', [], "i.json: sequence 0 must be an object"),
    ("j.json", '[{"points": [[0, 1], [1, 2]], "label": true}]', [], "j.json: sequence 0: the label must be"),
    ("k.npy", None, [], "k.npy holds no labels: give them as a .npy array [N] with --labels FILE.npy\n"),
    ("l.csv", "sequence,x,y,label\na,1,2,0\n", ["--labels", "y.npy"], "--labels is for .npy inputs"),
    ("m.txt", "", [], "m.txt is empty; give one sequence per line: its label, then its values\n"),
    (
        "m.dat",
        "sequence,x,y,label\na,1,2,0\na,2,2,0\n",
        [],
        "m.dat: unknown input type '.dat'; use .ts, .tsv, .txt, .csv, .json, .npz or .npy\n",
    ),
    ("n.csv", "sequence,x,y,label\na,1,2,0\na,2,2,0\n", ["--val-fraction", "1.5"], "--val-fraction must be"),
]


@pytest.mark.parametrize("name, content, extra, message", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_are_one_error_line(run, name, content, extra, message):
    if content is None:
        np.save(name, np.zeros((2, 3, 2), dtype=np.float32))
    else:
        with open(name, "w") as handle:
            handle.write(content)
    result = run("import", name, "out", *extra)
    assert result.exit_code == 2, result.stdout
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {message}"), result.stderr
    assert result.stderr.count("\n") == 1
    assert not os.path.exists("out")


def test_npy_labels_must_match_the_sequences(run):
    np.save("x.npy", np.zeros((4, 3, 2), dtype=np.float32))
    np.save("y.npy", np.array([0, 1, 0]))
    result = run("import", "x.npy", "out", "--labels", "y.npy")
    assert result.exit_code == 2
    assert result.stderr == (
        "error: --labels y.npy: labels must be one per sequence, [4] integers or class names; "
        "found int64[3]\n"
    )


def test_existing_files_need_force(run):
    _csv("mine.csv", _spirals(20))
    assert run("import", "mine.csv", "data").exit_code == 0
    result = run("import", "mine.csv", "data")
    assert result.exit_code == 2 and "--force" in result.stderr
    assert run("import", "mine.csv", "data", "--force").exit_code == 0


def test_installed_import_then_train(tmp_path):
    from helpers import EXE

    if not os.path.exists(EXE):
        pytest.skip("spiralctl is not installed in this environment")
    _csv("mine.csv", _spirals(20))
    result = subprocess.run(
        [EXE, "import", "mine.csv", "data", "--json"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["splits"][0]["split"] == "train"
    result = subprocess.run(
        [
            EXE,
            "train",
            "--data",
            "data",
            "--epochs",
            "1",
            "--hidden",
            "3",
            "--out",
            "r",
            "--json",
            "--no-plots",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["last"]["epoch"] == 1
