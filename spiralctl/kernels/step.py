"""One training step of the classifier as four custom kernels, without tinygrad's autograd.

forward (the LSTM over the batch) -> head (logits, the masked mean BCE loss, the count of
right answers, the head's gradients and the gradient into h_T) -> backward through time ->
weight gradients; then the Adam kernel reads the gradients where these kernels left them.
Every input (sequences, labels, mask, Adam's step numbers) is read from the one packed
buffer that a step uploads. The autograd path (`lstm_fused` + `loss.backward()`) computes
the same numbers with more, smaller kernels; the tests hold the two together.
"""

from __future__ import annotations

import functools
import itertools
from typing import TYPE_CHECKING

from tinygrad import Tensor, UOp, dtypes
from tinygrad.dtype import AddrSpace
from tinygrad.uop.ops import AxisType, KernelInfo

from spiralctl.kernels.layout import PackedBatch

if TYPE_CHECKING:
    from spiralctl.kernels.family import KernelFamily

LN2 = 0.6931471805599453


def _head_kernel(
    out: UOp,
    dh_last: UOp,
    d_head: UOp,
    per_sequence: UOp,
    hs: UOp,
    w_head: UOp,
    b_head: UOp,
    packed: UOp,
    *,
    batch: int,
    offset: int,
) -> UOp:
    """The linear head and the loss on h_T, and their gradients.

    packed holds the labels y[b] at `offset + b` and the mask at `offset + batch + b` (1 for a
    real sequence, 0 for padding). Writes out = [mean loss over real sequences, right
    answers], d_head = [dL/dw_head (H), dL/db_head], dh_last: [H, B] = dL/dh_T (zero for
    padding sequences); per_sequence: [3, B] is scratch (dL/dlogit, loss, right).
    """
    _, hidden, _ = hs.shape
    steps = hs.shape[0] - 1
    packed = packed.flatten()
    ids = itertools.count()

    # LOOP, not WEAK: on GPUs tinygrad turns a kernel's outermost WEAK loops into the launch
    # grid, and every thread of it would then run this whole kernel
    def rng(size: int, axis: AxisType = AxisType.LOOP) -> UOp:
        return UOp.range(size, next(ids), axis)

    def total(size: int, term, *deps: UOp) -> UOp:
        """term(0) + ... + term(size - 1) in a register, after `deps`."""
        acc = UOp.placeholder((1,), dtypes.float, next(ids), addrspace=AddrSpace.REG)
        acc = acc.after(*deps)[0].set(0.0) if deps else acc[0].set(0.0)
        i = rng(size, AxisType.REDUCE)
        return acc[0].set(acc.after(i)[0] + term(i), end=i)[0]

    def label(b: UOp) -> UOp:
        return packed[offset + b]

    def mask(b: UOp) -> UOp:
        return packed[offset + batch + b]

    count = total(batch, mask)
    b = rng(batch)
    logit = total(hidden, lambda n: w_head[0, n] * hs[steps, n, b], b) + b_head[0]
    y, m = label(b), mask(b)
    # loss = max(z, 0) - z*y + log(1 + exp(-|z|)); sigmoid(z) from the same exp(-|z|)
    e = (logit * (logit < 0).where(1.0, -1.0)).exp()
    p = (logit < 0).where(e, 1.0) / (1.0 + e)
    loss = (logit < 0).where(0.0, logit) - logit * y + (1.0 + e).log2() * LN2
    right = ((logit > 0).where(1.0, 0.0) - y).abs() < 0.5
    stored = UOp.group(
        per_sequence[0, b].store((p - y) * m / count),
        per_sequence[1, b].store(loss * m),
        per_sequence[2, b].store(right.where(m, 0.0)),
    ).end(b)
    seq = per_sequence.after(stored)
    results = UOp.group(
        out[0, 0].store(total(batch, lambda i: seq[1, i], stored) / count),
        out[0, 1].store(total(batch, lambda i: seq[2, i], stored)),
    )
    n = rng(hidden)
    weights = d_head[n].store(total(batch, lambda i: seq[0, i] * hs[steps, n, i], n, stored)).end(n)
    bias = d_head[hidden].store(total(batch, lambda i: seq[0, i], stored))
    n, b = rng(hidden), rng(batch)
    dh = dh_last[n, b].store(seq[0, b] * w_head[0, n]).end(b, n)
    return UOp.group(results, weights, bias, dh).sink(arg=KernelInfo(name="lstm_head", opts_to_apply=()))


def _head(
    hs: Tensor, w_head: Tensor, b_head: Tensor, packed: Tensor, batch: int, offset: int
) -> list[Tensor]:
    _, hidden, _ = hs.shape
    device = hs.device
    return Tensor.custom_kernel(
        Tensor.empty(1, 2, device=device),
        Tensor.empty(hidden, batch, device=device),
        Tensor.empty(hidden + 1, device=device),
        Tensor.empty(3, batch, device=device),
        hs,
        w_head,
        b_head,
        packed,
        fxn=functools.partial(_head_kernel, batch=batch, offset=offset),
    )


def _columns(width: int, first: int, count: int):
    """Flat index n of a [rows, count] array -> its index in a [rows, width] array from column `first`."""
    return lambda n: (n // count) * width + first + n % count


def _row_start(width: int, column: int):
    """Flat index n of a [rows] array -> column `column` of row n in a [rows, width] array."""
    return lambda n: n * width + column


def _offset(first: int):
    return lambda n: n + first


def step_gradients(
    packed: Tensor, parameters: list[Tensor], layout: PackedBatch, family: KernelFamily
) -> tuple[Tensor, list[Tensor], list[tuple]]:
    """One step's loss and right answers ([1, 2]) and gradients, from a packed batch, with the
    kernels of `family` (kernels/family.py).

    packed: [1, layout.size], as `PackedBatch` lays it out: each sequence ends at its own
    length (layout.lengths; start 0), and the loss is on h at its last point.
    parameters: W_ih, W_hh, b_ih, b_hh, head weight, head bias (PyTorch's order).
    Returns (results, gradient buffers, sources for `FusedAdam.update`).
    """
    w_ih, w_hh, b_ih, b_hh, w_head, b_head = parameters
    hidden, inputs, batch = w_hh.shape[1], layout.inputs, layout.batch
    forward = family.sequence_forward(
        packed, w_ih, w_hh, b_ih, b_hh, batch, layout.length, lengths=layout.lengths
    )
    hs, cs, tanh_cs, gates, xa = forward[:5]
    results, dh_last, d_head = family.head(hs, w_head, b_head, packed, batch, layout.labels)[:3]
    _, d_w_hh, d_w_in = family.sequence_backward(dh_last, hs, cs, tanh_cs, gates, xa, w_hh)
    sources = [
        (0, _columns(inputs + 1, 0, inputs)),  # W_ih: the first D columns of dW_in
        (1, _offset(0)),  # W_hh
        (0, _row_start(inputs + 1, inputs)),  # b_ih: dW_in's last column
        (0, _row_start(inputs + 1, inputs)),  # b_hh: the same
        (2, _offset(0)),  # head weight: d_head[:H]
        (2, _offset(hidden)),  # head bias: d_head[H]
    ]
    return results, [d_w_in, d_w_hh, d_head], sources


def step_bytes(layout: PackedBatch, hidden: int) -> int:
    """About how much memory one training step's buffers take (float32)."""
    batch, steps, inputs = layout.batch, layout.length, layout.inputs
    # per time step, 10 x hidden: h, the gates and their gradients (9 x hidden), and h's
    # batch-major copy for the weight gradients' column form (H >= 128)
    per_column = 3 * (steps + 1) * hidden + steps * (10 * hidden + inputs + 1) + 2 * hidden
    return 4 * (batch * per_column + layout.size)
