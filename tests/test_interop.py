"""Taking a model elsewhere: PyTorch's load_state_dict and ONNX (onnxruntime) give the same
probabilities as `spiralctl predict`."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from spiralctl.data import load_dataset
from spiralctl.storage import read_safetensors


def _probabilities(run, checkpoint, data) -> np.ndarray:
    """Every class's probability [N, K] as `spiralctl predict` gives it, in class order."""
    result = run("predict", checkpoint, data, "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(list(row["probabilities"]) == ["clockwise", "anticlockwise"] for row in rows)
    return np.array([list(row["probabilities"].values()) for row in rows])


def _predict(run, checkpoint, data) -> np.ndarray:
    """P(anticlockwise) of each sequence, as `spiralctl predict` gives it."""
    return _probabilities(run, checkpoint, data)[:, 1]


def test_checkpoint_loads_into_torch_lstm(run, trained_run, small_data):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'spiralctl[torch]')")

    class Classifier(torch.nn.Module):
        def __init__(self, hidden: int) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(2, hidden, batch_first=True)
            self.head = torch.nn.Linear(hidden, 1)

        def forward(self, x):
            _, (h, _) = self.lstm(x)
            return torch.sigmoid(self.head(h[-1])).reshape(-1)

    tensors, _ = read_safetensors(trained_run / "best.safetensors")
    weights = {k: torch.from_numpy(v.copy()) for k, v in tensors.items() if not k.startswith("optimizer.")}
    model = Classifier(hidden=weights["lstm.weight_hh_l0"].shape[1])
    model.load_state_dict(weights, strict=True)
    data = small_data / "test.safetensors"
    with torch.no_grad():
        expected = model(torch.from_numpy(load_dataset(data).x)).numpy()
    np.testing.assert_allclose(_predict(run, trained_run / "best.safetensors", data), expected, atol=1e-5)


def test_onnx_export_matches_predict(run, trained_run, small_data):
    pytest.importorskip("onnx", reason="onnx is not installed (pip install 'spiralctl[onnx]')")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    checkpoint = trained_run / "best.safetensors"
    result = run("export", checkpoint, "model.onnx", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["inputs"] == {"sequences": ["batch", "time", 2]}
    assert report["outputs"] == {
        "probabilities": ["batch", 2],
        "logits": ["batch", 2],
        "probability": ["batch"],  # a two-class model's outputs of the releases before K classes
        "logit": ["batch"],
    }
    assert report["classes"] == ["clockwise", "anticlockwise"]
    assert report["normalized"] is False  # generated spirals are not normalised (--normalize auto)

    session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
    for split in ("test", "val"):
        data = small_data / f"{split}.safetensors"
        probabilities, logits = session.run(["probabilities", "logits"], {"sequences": load_dataset(data).x})
        assert probabilities.shape == logits.shape == (len(load_dataset(data)), 2)
        np.testing.assert_allclose(probabilities, _probabilities(run, checkpoint, data), atol=1e-5)
        # two classes: the single logit z as [-z/2, z/2], so probabilities[:, 1] == sigmoid(z)
        np.testing.assert_allclose(logits[:, 0], -logits[:, 1], atol=1e-6)
        z = (logits[:, 1] - logits[:, 0]).astype(np.float64)
        np.testing.assert_allclose(probabilities[:, 1], 1 / (1 + np.exp(-z)), atol=1e-6)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-6)
    # any batch size and length: one sequence of 5 points
    one = np.array([[[0, 1], [1, 0], [0, -1], [-1, 0], [0, 1]]], dtype=np.float32)
    np.save("one.npy", one[0])
    (probabilities,) = session.run(["probabilities"], {"sequences": one})
    np.testing.assert_allclose(probabilities, _probabilities(run, checkpoint, "one.npy"), atol=1e-5)

    # an existing file is kept unless --force
    before = open("model.onnx", "rb").read()
    result = run("export", checkpoint, "model.onnx")
    assert result.exit_code == 2 and "pass --force" in result.output
    assert open("model.onnx", "rb").read() == before
    assert run("export", checkpoint, "model.onnx", "--force").exit_code == 0


def test_export_without_onnx_says_how_to_get_it(run, trained_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    result = run("export", trained_run / "best.safetensors", "m.onnx")
    assert result.exit_code == 2
    assert (
        result.output.strip()
        == 'error: ONNX export needs the onnx package; install it with: pip install "spiralctl[onnx]"'
    )


def test_export_refuses_other_names(run, trained_run):
    result = run("export", trained_run / "best.safetensors", "model.safetensors")
    assert result.exit_code == 2 and "ending in .onnx" in result.output


def _resave(source, target, writer: str) -> None:
    """Load a file with the official safetensors library and save it again with its metadata."""
    safetensors = pytest.importorskip("safetensors")
    if writer == "torch":
        pytest.importorskip("torch", reason="torch is not installed (pip install 'spiralctl[torch]')")
    module = pytest.importorskip(f"safetensors.{writer}")
    with safetensors.safe_open(str(source), framework="pt" if writer == "torch" else "numpy") as handle:
        metadata = handle.metadata()
    module.save_file(module.load_file(str(source)), str(target), metadata=metadata)


@pytest.mark.parametrize("writer", ["numpy", "torch"])
def test_files_saved_again_by_the_official_library_work_everywhere(
    run, tmp_path, trained_run, small_data, writer
):
    checkpoint, data = tmp_path / "checkpoint.safetensors", tmp_path / "test.safetensors"
    _resave(trained_run / "best.safetensors", checkpoint, writer)
    _resave(small_data / "test.safetensors", data, writer)
    assert checkpoint.read_bytes() != (trained_run / "best.safetensors").read_bytes()  # another layout
    for path in (checkpoint, data):
        result = run("info", path, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["checksum"] == "verified"
    expected = _predict(run, trained_run / "best.safetensors", small_data / "test.safetensors")
    np.testing.assert_array_equal(_predict(run, checkpoint, data), expected)
    result = run("eval", checkpoint, data, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n"] == len(expected)


def test_a_dataset_written_without_spiralctl_loads(run, tmp_path, trained_run, small_data):
    save_file = pytest.importorskip("safetensors.numpy").save_file
    data = load_dataset(small_data / "test.safetensors")
    # what someone bringing their own sequences writes: the format tag, no checksum
    save_file({"x": data.x, "y": data.y}, "mine.safetensors", metadata={"format": "spiralctl-dataset/1"})
    result = run("info", "mine.safetensors", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["checksum"] == "none stored"
    result = run("eval", trained_run / "best.safetensors", "mine.safetensors")
    # the small model predicts one class for everything, and eval says so; nothing else is said
    warnings = result.stderr.splitlines()
    assert result.exit_code == 0 and all(w.startswith("warning: the model predicts") for w in warnings)
    expected = _predict(run, trained_run / "best.safetensors", small_data / "test.safetensors")
    np.testing.assert_array_equal(
        _predict(run, trained_run / "best.safetensors", "mine.safetensors"), expected
    )
