"""The fused LSTM kernels and the plain tinygrad recurrence against a numpy reference (and PyTorch)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import lstm_inputs, lstm_numpy
from tinygrad import Tensor

from spiralctl.kernels.lstm import lstm

# (batch, steps, hidden): batch 1, two steps, hidden sizes that are not powers of two; two blocks
# of 16 batch columns with several blocks of gate rows and sums of 4 and 5 terms; a batch of
# 256 (16 blocks, which the recurrent kernels take 4 at a time); and the weight gradients' column
# form (H >= 128): H = 128 with sums of 8 terms, H = 130 (4H = 520 in tiles of 8 rows) with sums
# of 5, and H = 129 (tiles of 4 rows) with sums of 1
SHAPES = [
    (1, 2, 3),
    (3, 5, 4),
    (6, 9, 5),
    (4, 3, 8),
    (2, 20, 7),
    (32, 10, 12),
    (256, 4, 40),
    (48, 3, 128),
    (20, 2, 130),
    (3, 2, 129),
]
# the reference recurrence unrolls over time, which tinygrad schedules slowly: keep it short
SHORT_SHAPES = [(1, 2, 3), (4, 3, 8)]


def _tinygrad_run(impl, arrays, grad_h):
    tensors = [Tensor(a) for a in arrays]
    h = lstm(*tensors, impl=impl)
    (h * Tensor(grad_h)).sum().backward()
    return h.numpy(), [t.grad.numpy() for t in tensors]


@pytest.mark.parametrize(
    "impl, shape", [("fused", s) for s in SHAPES] + [("reference", s) for s in SHORT_SHAPES]
)
def test_forward_and_gradients_match_numpy(impl, shape):
    arrays, grad_h = lstm_inputs(*shape)
    h, grads = _tinygrad_run(impl, arrays, grad_h)
    h_ref, ref = lstm_numpy(*arrays, grad_h=grad_h)
    np.testing.assert_allclose(h, h_ref, atol=1e-5)
    for grad, name in zip(grads, ("x", "w_ih", "w_hh", "b", "b")):
        # float32 kernels against a float64 reference: 1e-5 of the array's scale, where a
        # gradient sums a thousand terms to values above 1 (up to 18 at (256, 4, 40))
        scale = max(1.0, float(np.abs(ref[name]).max()))
        np.testing.assert_allclose(grad, ref[name], atol=1e-5 * scale, err_msg=name)


@pytest.mark.parametrize("shape", SHORT_SHAPES)
def test_fused_matches_reference_implementation(shape):
    arrays, grad_h = lstm_inputs(*shape, seed=7)
    fused = _tinygrad_run("fused", arrays, grad_h)
    reference = _tinygrad_run("reference", arrays, grad_h)
    np.testing.assert_allclose(fused[0], reference[0], atol=1e-5)
    for a, b in zip(fused[1], reference[1]):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_unknown_implementation_is_refused():
    arrays, _ = lstm_inputs(1, 2, 3)
    with pytest.raises(ValueError, match="unknown LSTM implementation"):
        lstm(*(Tensor(a) for a in arrays), impl="nope")


# hidden 6, and 128 (the weight gradients' column form)
@pytest.mark.parametrize("shape", [(5, 7, 6), (16, 3, 128)])
def test_matches_pytorch_lstm(shape):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install '.[torch]')")
    arrays, grad_h = lstm_inputs(*shape, seed=11)
    h, grads = _tinygrad_run("fused", arrays, grad_h)
    module = torch.nn.LSTM(2, shape[2], batch_first=True)
    with torch.no_grad():
        for name, value in zip(["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"], arrays[1:]):
            getattr(module, name).copy_(torch.from_numpy(value))
    x = torch.from_numpy(arrays[0]).requires_grad_(True)
    _, (h_n, _) = module(x)
    (h_n[0] * torch.from_numpy(grad_h)).sum().backward()
    np.testing.assert_allclose(h, h_n[0].detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(grads[0], x.grad.numpy(), atol=1e-5)
    for grad, torch_grad in ((grads[1], module.weight_ih_l0.grad), (grads[2], module.weight_hh_l0.grad)):
        # float32 both: 1e-5 of the array's scale (its sums have up to B x T terms)
        scale = max(1.0, float(torch_grad.abs().max()))
        np.testing.assert_allclose(grad, torch_grad.numpy(), atol=1e-5 * scale)
