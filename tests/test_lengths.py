"""Sequence length as data: the kernels mask each sequence past its own length, and one compiled
forward program serves every length (against the numpy reference on each sequence alone)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import lstm_numpy, lstm_numpy_lengths
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


# (batch, steps, hidden): one lane block, two, and a batch of 256 (the kernels pad it to 272 columns)
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
