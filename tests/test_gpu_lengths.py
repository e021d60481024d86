"""Sequence length as data in the GPU kernel family: each sequence ends at its own length.

The GPU forward kernel reads the lengths [B] at a flat position of x's buffer and `start` right after
them, carries (h, c) past each sequence's end and between chunks through the state buffer; backward
reads xa's last row (1 inside, 0 past the end). Held against a float64 numpy LSTM run on each
sequence alone, on tinygrad's PYTHON device and on OpenCL (see tests/test_gpu.py, whose device
choice and launch recorder this file shares).

main's PackedBatch has no lengths / start fields yet, so the tests pack the buffer by hand: x [B, T, D]
at the start, the lengths at a position they pass (not right after x, so the kernels must use it),
then `start` at that position + B.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from gpu_helpers import GPU, LAUNCHES, _close, _threads, cl, needs_cl, needs_gpu
from helpers import lstm_numpy
from tinygrad import Tensor

from spiralctl.kernels import gpu as gk


def lstm_numpy_lengths(x, lengths, w_ih, w_hh, b_ih, b_hh, grad_h):
    """The float64 reference on sequences of their own lengths: sequence b is x[b, :lengths[b]], run
    alone. Returns h at each sequence's last point (0 for length 0) and the gradients of
    sum(h_T * grad_h): x's (0 past each end), W_ih's, W_hh's and the bias's, summed over sequences."""
    hidden = w_hh.shape[1]
    h = np.zeros((len(lengths), hidden))
    grads = {"x": np.zeros(x.shape), "w_ih": 0.0, "w_hh": 0.0, "b": 0.0}
    for b, length in enumerate(int(n) for n in lengths):
        h_b, g = lstm_numpy(x[b : b + 1, :length], w_ih, w_hh, b_ih, b_hh, grad_h[b : b + 1])
        h[b] = h_b[0]
        grads["x"][b, :length] = g["x"][0]
        for name in ("w_ih", "w_hh", "b"):
            grads[name] = grads[name] + g[name]
    return h, grads


def _pack(x: np.ndarray, lengths: np.ndarray, start: int, position: int) -> np.ndarray:
    """x [B, T, D] at the start of a flat buffer, the lengths at `position`, `start` after them."""
    batch = len(lengths)
    packed = np.full(position + batch + 1 + 5, np.nan, np.float32)  # what the kernels must not read
    packed[: x.size] = x.reshape(-1)
    packed[x.size : position] = 7.0
    packed[position : position + batch] = lengths
    packed[position + batch] = start
    return packed


def _problem(batch: int, steps: int, hidden: int, lengths: list[int], seed: int) -> tuple:
    """x (zero past each end and in rows of length 0), weights and grad_h, as float32 arrays."""
    rng = np.random.default_rng(seed)
    lengths = np.array(lengths + [0] * (batch - len(lengths)))
    x = np.zeros((batch, steps, 2), np.float32)
    for b, length in enumerate(lengths):
        x[b, :length] = rng.standard_normal((length, 2)) * 0.6
    shapes = [(4 * hidden, 2), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,)]
    weights = [rng.standard_normal(s).astype(np.float32) * 0.6 for s in shapes]
    grad_h = rng.standard_normal((batch, hidden)).astype(np.float32)
    grad_h[lengths == 0] = 0.0  # padding rows: no loss, as the head's mask gives
    return x, lengths, weights, grad_h


# (device, batch, steps, hidden, lengths; rows after them have length 0): length 1, the full length,
# ends in between, padding rows of length 0; on OpenCL several workgroups, and a batch of 256
CASES = [
    ("PYTHON", 5, 4, 3, [4, 1, 2]),
    cl(32, 9, 12, [9, 1, 5, 3, 9, 2, 8, 1, 7, 4, 6] * 2 + [1, 9, 3]),
    cl(256, 3, 8, [3, 1, 2] * 80),
]


@pytest.mark.parametrize("device, batch, steps, hidden, lengths", CASES)
def test_each_sequence_ends_at_its_own_length(device, batch, steps, hidden, lengths):
    x, lengths, weights, grad_h = _problem(batch, steps, hidden, lengths, seed=batch + steps)
    position = x.size + 3
    packed = Tensor(_pack(x, lengths, 0, position), device=device).realize()
    w_ih, w_hh, b_ih, b_hh = (Tensor(w, device=device).contiguous().realize() for w in weights)
    hs, cs, tanh_cs, gates, xa, state = gk.sequence_forward_gpu(
        packed, w_ih, w_hh, b_ih, b_hh, batch, steps, lengths=position
    )[:6]
    assert hs.shape[2] == batch and state.shape == (2, hidden, batch)
    dh_last = np.ascontiguousarray(grad_h.T)
    dz, d_w_hh, d_w_in = gk.sequence_backward_gpu(
        Tensor(dh_last, device=device), hs, cs, tanh_cs, gates, xa, w_hh
    )
    Tensor.realize(hs, cs, xa, state, dz, d_w_hh, d_w_in)
    h_ref, ref = lstm_numpy_lengths(x, lengths, *weights, grad_h=grad_h)
    hs, cs, state = hs.numpy(), cs.numpy(), state.numpy()
    np.testing.assert_allclose(hs[steps, :, :batch].T, h_ref, atol=1e-5)
    np.testing.assert_array_equal(state[0], hs[steps])  # (h_T, c_T) written back
    np.testing.assert_array_equal(state[1], cs[steps])
    inside = (np.arange(steps)[:, None] < lengths[None, :]).astype(np.float32)
    xa = xa.numpy()
    np.testing.assert_array_equal(xa[:, :2, :batch], x.transpose(1, 2, 0))
    np.testing.assert_array_equal(xa[:, 2, :batch], inside)
    d_w_in = d_w_in.numpy()
    _close(d_w_hh.numpy(), ref["w_hh"], "w_hh")
    _close(d_w_in[:, :2], ref["w_ih"], "w_ih")
    _close(d_w_in[:, 2], ref["b"], "b")
    # the inputs' gradient W_ih^T dz: 0 past each end, so dz is 0 there
    _close(np.einsum("jd,tjb->btd", weights[0], dz.numpy()[:, :, :batch]), ref["x"], "x")


@pytest.mark.parametrize("device", ["PYTHON", pytest.param(GPU, marks=needs_gpu)])
def test_lengths_at_the_full_length_are_the_plain_kernel(device):
    """Every sequence at the full length: the same h and gradients as without `lengths`."""
    batch, steps, hidden = 3, 3, 4
    x, lengths, weights, grad_h = _problem(batch, steps, hidden, [steps] * batch, seed=2)
    position = x.size
    packed = Tensor(_pack(x, lengths, 0, position), device=device).realize()
    w_ih, w_hh, b_ih, b_hh = (Tensor(w, device=device).contiguous().realize() for w in weights)
    runs = []
    for where in (None, position):
        forward = gk.sequence_forward_gpu(packed, w_ih, w_hh, b_ih, b_hh, batch, steps, lengths=where)
        hs, cs, tanh_cs, gates, xa = forward[:5]
        dh_last = Tensor(np.ascontiguousarray(grad_h.T), device=device)
        dz, d_w_hh, d_w_in = gk.sequence_backward_gpu(dh_last, hs, cs, tanh_cs, gates, xa, w_hh)
        runs.append([t.numpy() for t in (hs, xa, dz, d_w_hh, d_w_in)])
    for plain, masked in zip(*runs):
        np.testing.assert_array_equal(masked, plain)


# (device, batch, chunk steps, chunks, hidden, lengths): ends inside a chunk, on a chunk's last step,
# length 1, the full length and padding rows of length 0
CHUNK_CASES = [
    ("PYTHON", 4, 2, 3, 3, [6, 1, 4]),
    cl(20, 4, 3, 8, [12, 1, 4, 8, 5, 11, 2, 9, 12, 7, 3, 10, 6, 1]),
]


@pytest.mark.parametrize("device, batch, steps, chunks, hidden, lengths", CHUNK_CASES)
def test_chunks_carry_the_state_as_one_call(device, batch, steps, chunks, hidden, lengths):
    """A batch of `chunks` x `steps` points as one call and as `chunks` calls of `steps` points,
    start = k * steps, the state of each call passed to the next: the same (h_T, c_T)."""
    total = steps * chunks
    x, lengths, weights, grad_h = _problem(batch, total, hidden, lengths, seed=batch)
    w_ih, w_hh, b_ih, b_hh = (Tensor(w, device=device).contiguous().realize() for w in weights)

    def forward(part: np.ndarray, start: int, state: Tensor | None) -> list[Tensor]:
        position = part.size + 1
        packed = Tensor(_pack(part, lengths, start, position), device=device).realize()
        return gk.sequence_forward_gpu(
            packed, w_ih, w_hh, b_ih, b_hh, batch, part.shape[1], lengths=position, state=state
        )

    # a scratch state full of garbage: the first chunk (start 0) must not read it
    state = Tensor.full((2, hidden, batch), np.nan, device=device).contiguous().realize()
    for k in range(chunks):
        state = forward(x[:, k * steps : (k + 1) * steps], k * steps, state)[5].realize()
    chunked = state.numpy()
    whole = forward(x, 0, None)
    hs, cs = whole[0].numpy(), whole[1].numpy()
    # the same float32 operations step by step; allclose, not equal, for compilers that contract
    # differently in the two programs
    np.testing.assert_allclose(chunked[0], hs[total], atol=1e-6)
    np.testing.assert_allclose(chunked[1], cs[total], atol=1e-6)
    h_ref, _ = lstm_numpy_lengths(x, lengths, *weights, grad_h=grad_h)
    np.testing.assert_allclose(chunked[0][:, :batch].T, h_ref, atol=1e-5)


# the shape the parallelism requirement is stated for (tests/test_gpu.py)
LAUNCH_BATCH, LAUNCH_STEPS, LAUNCH_HIDDEN = 256, 3, 32


@needs_cl
def test_launch_sizes_with_lengths_on_opencl():
    """Lengths change no launch: at H = 32, B = 256 no kernel under 32 threads, the recurrences
    B x H or more, in 32 tiles of 8 columns x 32 units."""
    batch, steps, hidden = LAUNCH_BATCH, LAUNCH_STEPS, LAUNCH_HIDDEN
    x, lengths, weights, grad_h = _problem(batch, steps, hidden, [3, 1, 2] * 85, seed=0)
    position = x.size + 2
    packed = Tensor(_pack(x, lengths, 0, position), device=GPU).realize()
    w_ih, w_hh, b_ih, b_hh = (Tensor(w, device=GPU).contiguous().realize() for w in weights)
    LAUNCHES.clear()
    hs, cs, tanh_cs, gates, xa, state = gk.sequence_forward_gpu(
        packed, w_ih, w_hh, b_ih, b_hh, batch, steps, lengths=position
    )[:6]
    dh_last = Tensor(np.zeros((hidden, hs.shape[2]), np.float32), device=GPU)
    Tensor.realize(state, *gk.sequence_backward_gpu(dh_last, hs, cs, tanh_cs, gates, xa, w_hh))
    sizes = {name: (g, loc) for name, g, loc in LAUNCHES if name.startswith("lstm_")}
    assert set(sizes) == {
        "lstm_forward_gpu",
        "lstm_backward_gpu",
        "lstm_weight_grad_hh_gpu",
        "lstm_weight_grad_in_gpu",
    }
    for name, (global_size, local_size) in sizes.items():
        assert _threads(global_size, local_size) >= 32, name
        assert math.prod(local_size) <= gk.MAX_BLOCK, name
    for name in ("lstm_forward_gpu", "lstm_backward_gpu"):
        assert _threads(*sizes[name]) >= batch * hidden, name
        assert sizes[name] == ((32, 1, 1), (8, 32, 1)), name


@needs_gpu
def test_predict_on_the_gpu_device_carries_long_sequences_over_chunks():
    """Sequences of over 64 points take several chunks of the same program, the packed buffer
    refilled between them: on the GPU device the same logits as on the CPU, twice in a row."""
    from spiralctl.data import DataConfig, generate
    from spiralctl.model import ModelConfig, SpiralClassifier, init_parameters
    from spiralctl.predictor import Predictor

    data = generate(DataConfig(sequences=120, length=200, seed=3, min_length=5))["train"]
    weights = init_parameters(ModelConfig(hidden=8), seed=2)
    results = {}
    for device in ("CPU", GPU):
        predictor = Predictor(SpiralClassifier(ModelConfig(hidden=8), weights, device), batch_size=32)
        results[device] = [predictor.logits(data.x, data.lengths) for _ in range(2)]
    for run in results[GPU]:
        np.testing.assert_allclose(run, results["CPU"][0], atol=1e-5)
