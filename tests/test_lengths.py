"""Sequence length as data: the kernels mask each sequence past its own length, and one compiled
forward program serves every length (against the numpy reference on each sequence alone)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import count_compiled, lstm_numpy, lstm_numpy_lengths
from tinygrad import Tensor

from spiralctl.config import TrainConfig
from spiralctl.kernels.layout import PackedBatch
from spiralctl.kernels.lstm import sequence_backward, sequence_forward
from spiralctl.model import PARAMETER_NAMES, ModelConfig, SpiralClassifier, init_parameters
from spiralctl.predictor import Predictor, bce_numpy
from spiralctl.trainer import Trainer


def _ragged(count, longest, seed=0, shortest=2):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(shortest, longest + 1, size=count)
    lengths[0] = longest
    x = np.zeros((count, longest, 2), dtype=np.float32)
    for b, length in enumerate(lengths):
        x[b, :length] = rng.standard_normal((length, 2)) * 0.8
    return x, lengths


def _weights(hidden, seed=1):
    return init_parameters(ModelConfig(hidden=hidden), seed)


def _reference_logits(x, lengths, weights):
    lstm_weights = [weights[name] for name in PARAMETER_NAMES[:4]]
    h = lstm_numpy_lengths(x, lengths, *lstm_weights)
    return (h @ weights["head.weight"].astype(np.float64).T + weights["head.bias"]).reshape(-1)


# (batch, steps, hidden): one lane block, two, and a batch of 256 (16 blocks, in groups of 4)
@pytest.mark.parametrize("batch, steps, hidden", [(5, 7, 3), (32, 11, 8), (256, 4, 6)])
def test_kernels_mask_past_each_sequence_end(batch, steps, hidden):
    """Forward: h_T is h at each sequence's own last point; backward: the weight gradients are
    those of each sequence alone, summed. Rows past `count` are padding of length 0."""
    count = batch - 2 if batch > 5 else batch
    x, lengths = _ragged(count, steps, seed=batch)
    weights = _weights(hidden)
    layout = PackedBatch(batch, steps)
    packed = Tensor(layout.pack(x, lengths=lengths).reshape(1, -1))
    lstm_weights = [Tensor(weights[name]) for name in PARAMETER_NAMES[:4]]
    w_ih, w_hh, b_ih, b_hh = lstm_weights
    hs, cs, tanh_cs, gates, xa, _ = sequence_forward(
        packed, w_ih, w_hh, b_ih, b_hh, batch, steps, lengths=layout.lengths
    )[:6]
    grad_h = np.random.default_rng(5).standard_normal((count, hidden)).astype(np.float32)
    dh_last = np.zeros((hidden, hs.shape[2]), dtype=np.float32)
    dh_last[:, :count] = grad_h.T
    _, d_w_hh, d_w_in = sequence_backward(Tensor(dh_last), hs, cs, tanh_cs, gates, xa, w_hh)
    h_ref, ref = lstm_numpy_lengths(x, lengths, *(weights[n] for n in PARAMETER_NAMES[:4]), grad_h=grad_h)
    np.testing.assert_allclose(hs.numpy()[steps, :, :count].T, h_ref, atol=1e-5)
    d_w_in = d_w_in.numpy()
    for got, name in ((d_w_hh.numpy(), "w_hh"), (d_w_in[:, :2], "w_ih"), (d_w_in[:, 2], "b")):
        scale = max(1.0, float(np.abs(ref[name]).max()))
        np.testing.assert_allclose(got, ref[name], atol=1e-5 * scale, err_msg=name)


def test_full_lengths_match_the_plain_reference():
    """Every sequence at the full length: the masked kernels compute the plain LSTM."""
    x, _ = _ragged(6, 9, seed=3)
    x[:] = np.random.default_rng(3).standard_normal(x.shape).astype(np.float32)
    weights = _weights(4)
    model = SpiralClassifier(ModelConfig(hidden=4), weights, "CPU")
    got = Predictor(model, 8, chunk=4).logits(x)
    h = lstm_numpy(x, *(weights[n] for n in PARAMETER_NAMES[:4]))
    expected = (h @ weights["head.weight"].astype(np.float64).T + weights["head.bias"]).reshape(-1)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_one_program_serves_every_length_in_chunks():
    """200 sequences of 200 lengths (2..201): one jitted program, chunks of 16 steps carrying (h, c)
    between calls; each logit as the reference on that sequence alone, and bit for bit the logit
    of the sequence predicted on its own."""
    rng = np.random.default_rng(4)
    lengths = rng.permutation(np.arange(2, 202))
    x = np.zeros((200, 201, 2), dtype=np.float32)
    for b, length in enumerate(lengths):
        x[b, :length] = rng.standard_normal((length, 2)) * 0.5
    weights = _weights(4, seed=2)
    model = SpiralClassifier(ModelConfig(hidden=4), weights, "CPU")
    predictor = Predictor(model, 32, chunk=16)
    got = predictor.logits(x, lengths)
    assert predictor.compiled == 1
    np.testing.assert_allclose(got, _reference_logits(x, lengths, weights), atol=1e-5)
    alone = Predictor(model, 32, chunk=16)
    for b in (0, 17, 199):  # padded into a batch of its own: the same bits
        assert alone.logits(x[b : b + 1], lengths[b : b + 1])[0] == got[b]
    ragged = predictor.logits_ragged([x[b, :length] for b, length in enumerate(lengths)])
    np.testing.assert_array_equal(ragged, got)


def test_training_step_on_mixed_lengths_reports_the_loss_of_each_sequence_at_its_own_end():
    x, lengths = _ragged(16, 12, seed=8)
    y = (np.arange(16) % 2).astype(np.uint8)
    weights = _weights(5, seed=4)
    model = SpiralClassifier(ModelConfig(hidden=5), weights, "CPU")
    trainer = Trainer(model, TrainConfig(hidden=5, batch_size=16))
    mask = (np.arange(16) < 13).astype(np.float32)
    loss, right = trainer.step(x, y, mask, lengths)
    logits = _reference_logits(x, lengths, weights)
    assert loss == pytest.approx(bce_numpy(logits[:13], y[:13]).mean(), abs=1e-5)
    assert right == int(((logits[:13] > 0) == (y[:13] == 1)).sum())


# ---- datasets of mixed lengths


def test_gen_data_draws_each_length_from_min_to_max(tmp_path):
    from spiralctl.data import DataConfig, generate, load_dataset, save_datasets

    config = DataConfig(sequences=400, length=30, min_length=5, seed=2)
    splits = generate(config)
    again = generate(config)
    save_datasets(tmp_path, splits)
    for split, data in splits.items():
        loaded = load_dataset(tmp_path / f"{split}.safetensors")
        np.testing.assert_array_equal(loaded.lengths, data.lengths)
        np.testing.assert_array_equal(loaded.x, again[split].x)
        assert loaded.metadata["format"] == "spiralctl-dataset/2"
        assert 5 <= loaded.lengths.min() and loaded.lengths.max() <= 30
        past_end = np.arange(30)[None, :] >= loaded.lengths[:, None]
        assert not loaded.x[past_end].any() and loaded.x[~past_end].any(axis=-1).all()
    every = np.concatenate([d.lengths for d in splits.values()])
    assert set(every) == set(range(5, 31))  # uniform: 400 draws reach all 26 lengths


def test_a_fixed_length_keeps_the_same_sequences_as_before():
    """--length 50 draws no lengths: the arrays (and the training data's fingerprint) stay those
    a version 1 file held."""
    from spiralctl.data import DataConfig, generate

    data = generate(DataConfig(sequences=20, seed=2))["train"]
    assert not data.mixed and (data.lengths == 50).all()
    assert data.fingerprint() == "2089b2f43e3ae168"  # as computed before lengths were stored


def test_version_1_files_load_as_full_length(tmp_path):
    from spiralctl.data import load_dataset
    from spiralctl.storage import write_safetensors

    x = np.random.default_rng(0).standard_normal((4, 6, 2)).astype(np.float32)
    y = np.array([0, 1, 0, 1], dtype=np.uint8)
    write_safetensors(tmp_path / "v1.safetensors", {"x": x, "y": y}, {"format": "spiralctl-dataset/1"})
    data = load_dataset(tmp_path / "v1.safetensors")
    np.testing.assert_array_equal(data.lengths, [6, 6, 6, 6])


@pytest.mark.parametrize(
    "lengths, message",
    [
        (np.array([2, 6, 7, 3], dtype=np.int32), "sequence 2 has length 7; lengths must be 2 to T \\(6\\)"),
        (np.array([2, 1, 6, 3], dtype=np.int64), "sequence 1 has length 1"),
        (np.array([2, 6, 6, 3], dtype=np.float32), "lengths must be integers \\[4\\]"),
        (np.array([2, 6, 6], dtype=np.int32), "lengths must be integers \\[4\\], found int32\\[3\\]"),
        (None, "a dataset holds tensors lengths and x and y"),
    ],
)
def test_bad_lengths_are_refused(tmp_path, lengths, message):
    from spiralctl.data import load_dataset
    from spiralctl.errors import SpiralError
    from spiralctl.storage import write_safetensors

    tensors = {"x": np.zeros((4, 6, 2), dtype=np.float32), "y": np.zeros(4, dtype=np.uint8)}
    if lengths is not None:
        tensors["lengths"] = lengths
    write_safetensors(tmp_path / "bad.safetensors", tensors, {"format": "spiralctl-dataset/2"})
    with pytest.raises(SpiralError, match=message):
        load_dataset(tmp_path / "bad.safetensors")


def test_length_buckets():
    from spiralctl.predictor import accuracy_by_length, length_buckets

    assert length_buckets(np.array([50, 50])) == [(50, 50)]
    assert length_buckets(np.array([3, 9, 3])) == [(3, 3), (9, 9)]
    assert length_buckets(np.arange(2, 202)) == [(2, 51), (52, 101), (102, 151), (152, 201)]
    assert length_buckets(np.array([2, 3, 4, 5, 6])) == [(2, 3), (4, 4), (5, 5), (6, 6)]
    rows = accuracy_by_length(np.array([1.0, -1.0, 1.0]), np.array([1, 1, 1]), np.array([2, 2, 9]))
    assert rows == [
        {"shortest": 2, "longest": 2, "n": 2, "accuracy": 0.5},
        {"shortest": 9, "longest": 9, "n": 1, "accuracy": 1.0},
    ]


@pytest.mark.parametrize(
    "length, message",
    [
        ("5:3", "error: --length MIN:MAX needs MIN <= MAX (got 5:3)\n"),
        (
            "a:3",
            "error: --length must be a whole number of points (such as 50) or MIN:MAX (such as 20:80), "
            "got 'a:3'\n",
        ),
        ("1:3", "error: --length must be at least 2 points (got 1:3)\n"),
    ],
)
def test_bad_length_ranges_are_one_error_line(run, length, message):
    result = run("gen-data", "d", "--length", length)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == message


def test_mixed_lengths_end_to_end(run):
    """gen-data MIN:MAX, train, eval (accuracy by length bucket) and plot through the CLI."""
    import json

    result = run(
        "gen-data", "d", "--length", "4:15", "--sequences", "120", "--test-fraction", "0.25", "--json"
    )
    assert result.exit_code == 0, result.stderr
    splits = json.loads(result.stdout)["splits"]
    assert all(row["length"] <= 15 and row["min_length"] >= 4 for row in splits)
    result = run(
        "train",
        "--data",
        "d",
        "--epochs",
        "2",
        "--hidden",
        "4",
        "--batch-size",
        "32",
        "--out",
        "r",
        "-q",
        "--no-plots",
    )
    assert result.exit_code == 0, result.stderr
    result = run("eval", "r/best.safetensors", "d/test.safetensors", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert sum(row["n"] for row in report["by_length"]) == report["n"] == 30
    assert len(report["by_length"]) == 4 and report["by_length"][0]["shortest"] >= 4
    table = run("eval", "r/best.safetensors", "d/test.safetensors")
    assert "accuracy by length (points)" in table.stdout and table.stderr == ""
    result = run("predict", "r/best.safetensors", "d/test.safetensors", "--json")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    from spiralctl.data import load_dataset

    assert [row["points"] for row in rows] == list(load_dataset("d/test.safetensors").lengths)


def test_training_on_mixed_lengths_and_its_validation_compile_one_forward_program(monkeypatch, tmp_path):
    """Every training batch runs the step compiled for the longest sequence, and validation (in
    chunks of that length) reuses its forward kernel: one forward program for the whole run."""
    from tinygrad.helpers import Context

    from spiralctl import commands
    from spiralctl.data import DataConfig, generate, save_datasets

    save_datasets(tmp_path / "d", generate(DataConfig(sequences=80, length=13, min_length=3, seed=5)))
    names = count_compiled(monkeypatch)
    with Context(PARALLEL=0):
        config = TrainConfig(epochs=2, batch_size=16, hidden=3)
        commands.train(config, data_dir=tmp_path / "d", out=tmp_path / "r", device="cpu", plots=False)
    assert sum(name.startswith("lstm_forward") for name in names) == 1, names


def test_predicting_many_lengths_compiles_one_forward_program(monkeypatch):
    from tinygrad.helpers import Context

    weights = _weights(3, seed=6)
    model = SpiralClassifier(ModelConfig(hidden=3), weights, "CPU")
    x, lengths = _ragged(50, 37, seed=6)
    names = count_compiled(monkeypatch)
    with Context(PARALLEL=0):
        got = Predictor(model, 8, chunk=9).logits(x, lengths)
    assert len(set(lengths)) > 20
    assert sum(name.startswith("lstm_forward") for name in names) == 1, names
    np.testing.assert_allclose(got, _reference_logits(x, lengths, weights), atol=1e-5)


def test_points_past_a_sequence_end_change_nothing():
    """Training steps and predictions read nothing past each sequence's length: junk there gives
    the same bits as zeros."""
    x, lengths = _ragged(16, 10, seed=9)
    junk = x.copy()
    junk[np.arange(10)[None, :] >= lengths[:, None]] = 7.5
    y = (np.arange(16) % 2).astype(np.uint8)
    results = []
    for data in (x, junk):
        model = SpiralClassifier(ModelConfig(hidden=4), _weights(4, seed=3), "CPU")
        trainer = Trainer(model, TrainConfig(hidden=4, batch_size=16))
        steps = [trainer.step(data, y, np.ones(16, np.float32), lengths) for _ in range(3)]
        results.append((steps, model.state_dict(), Predictor(model, 16, chunk=4).logits(data, lengths)))
    assert results[0][0] == results[1][0]
    for name, value in results[0][1].items():
        np.testing.assert_array_equal(value, results[1][1][name], err_msg=name)
    np.testing.assert_array_equal(results[0][2], results[1][2])
