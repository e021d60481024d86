"""One training step of the classifier as four custom kernels, without tinygrad's autograd.

forward (the LSTM over the batch) -> head (logits, the weighted mean loss: binary cross-entropy
on one logit, softmax cross-entropy on K; the count of right answers, the head's gradients and
the gradient into h_T) -> backward through time -> weight gradients; then the Adam kernel
reads the gradients where these kernels left them.
Every input (sequences, labels, weights, Adam's step numbers) is read from the one packed
buffer that a step uploads. The autograd path (`lstm_fused` + `loss.backward()`) computes
the same numbers with more, smaller kernels; the tests hold the two together.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import TYPE_CHECKING

from tinygrad import Tensor, UOp, dtypes
from tinygrad.dtype import AddrSpace
from tinygrad.uop.ops import AxisType, KernelInfo

from spiralctl.kernels.layout import PackedBatch

if TYPE_CHECKING:
    from spiralctl.kernels.family import KernelFamily

LN2 = 0.6931471805599453


def _softmax_cross_entropy(logit, rows: int, y: UOp, rng, reg, *deps: UOp):
    """Softmax cross-entropy of `rows` logits z_k against the class y (an index held as a float),
    stable: with M = max_k z_k and S = sum_k exp(z_k - M), loss = log S + M - z_y and
    dloss/dz_k = exp(z_k - M) / S - [k == y].

    logit(k, *deps) builds z_k; it is built again in each of the three passes over k instead of
    kept (K x H multiply-adds a pass, against the recurrence's T x 4H x H). rng(size, axis) and
    reg(size) make the kernel's ranges and register arrays; the passes' registers are set after
    `deps` (the sequence's loop), so they start afresh for every sequence.
    Returns (loss, right, gradient): right holds where y is the first of the largest logits
    (numpy's and torch's argmax: a tie goes to the lowest class index), gradient(k) builds
    dloss/dz_k for a row range k.
    """
    # pass 1: M
    best = reg(1).after(*deps)[0].set(-math.inf)
    k = rng(rows, AxisType.REDUCE)
    largest = best[0].set(best.after(k)[0].maximum(logit(k, k)), end=k)[0]
    # pass 2: S, z_y and how many classes before y reach M, in one loop
    sums = reg(3).after(*deps)
    sums = sums.after(UOp.group(*(sums[q].store(0.0) for q in range(3))))
    k = rng(rows, AxisType.REDUCE)
    z, kf = logit(k, k), k.cast(dtypes.float)
    terms = ((z - largest).exp(), kf.eq(y).where(z, 0.0), ((kf < y) & (z >= largest)).where(1.0, 0.0))
    added = UOp.group(*(sums[q].store(sums.after(k)[q] + term) for q, term in enumerate(terms))).end(k)
    total, z_y, earlier = (sums.after(added)[q] for q in range(3))
    loss = total.log2() * LN2 + largest - z_y
    right = (z_y >= largest) & (earlier < 0.5)

    def gradient(k: UOp) -> UOp:
        return (logit(k, k) - largest).exp() / total - k.cast(dtypes.float).eq(y).where(1.0, 0.0)

    return loss, right, gradient


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

    w_head: [rows, H]. One row is one logit z per sequence with binary cross-entropy, labels
    0 or 1 (z > 0 says 1); K >= 2 rows are K logits with softmax cross-entropy
    (`_softmax_cross_entropy`), labels the class index 0..K-1. packed holds the labels y[b]
    (float32) at `offset + b` and each sequence's weight w[b] at `offset + batch + b` (0 for
    padding, 1 for an ordinary sequence, other positive values weigh classes). Writes out =
    [sum_b w[b] loss[b] / sum_b w[b], right answers (sequences with w[b] > 0 classified right,
    1 each)], d_head = [dL/dw_head (rows x H, row-major), dL/db_head (rows)], dh_last: [H, B] =
    dL/dh_T (zero where w[b] is 0); per_sequence: [rows + 2, B] is scratch (dL/dz for each row,
    w[b] loss[b], right). The one-row kernel is the one from before K classes but for the
    right answers, which count 1 where w[b] > 0 instead of w[b].
    """
    rows, (_, hidden, _) = w_head.shape[0], hs.shape
    steps = hs.shape[0] - 1
    packed = packed.flatten()
    ids = itertools.count()

    # LOOP, not WEAK: on GPUs tinygrad turns a kernel's outermost WEAK loops into the launch
    # grid, and every thread of it would then run this whole kernel
    def rng(size: int, axis: AxisType = AxisType.LOOP) -> UOp:
        return UOp.range(size, next(ids), axis)

    def reg(size: int) -> UOp:
        return UOp.placeholder((size,), dtypes.float, next(ids), addrspace=AddrSpace.REG)

    def total(size: int, term, *deps: UOp) -> UOp:
        """term(0) + ... + term(size - 1) in a register, after `deps`."""
        acc = reg(1)
        acc = acc.after(*deps)[0].set(0.0) if deps else acc[0].set(0.0)
        i = rng(size, AxisType.REDUCE)
        return acc[0].set(acc.after(i)[0] + term(i), end=i)[0]

    def label(b: UOp) -> UOp:
        return packed[offset + b]

    def weight(b: UOp) -> UOp:
        return packed[offset + batch + b]

    count = total(batch, weight)
    b = rng(batch)
    if rows == 1:
        logit = total(hidden, lambda n: w_head[0, n] * hs[steps, n, b], b) + b_head[0]
        y, m = label(b), weight(b)
        # loss = max(z, 0) - z*y + log(1 + exp(-|z|)); sigmoid(z) from the same exp(-|z|)
        e = (logit * (logit < 0).where(1.0, -1.0)).exp()
        p = (logit < 0).where(e, 1.0) / (1.0 + e)
        loss = (logit < 0).where(0.0, logit) - logit * y + (1.0 + e).log2() * LN2
        right = ((logit > 0).where(1.0, 0.0) - y).abs() < 0.5
        gradients = per_sequence[0, b].store((p - y) * m / count)
    else:
        y, m = label(b), weight(b)

        def logit(k: UOp, *deps: UOp) -> UOp:
            return total(hidden, lambda n: w_head[k, n] * hs[steps, n, b], b, *deps) + b_head[k]

        loss, right, gradient = _softmax_cross_entropy(logit, rows, y, rng, reg, b)
        k = rng(rows)
        gradients = per_sequence[k, b].store(gradient(k) * m / count).end(k)
    stored = UOp.group(
        gradients,
        per_sequence[rows, b].store(loss * m),
        per_sequence[rows + 1, b].store((right & (m > 0)).where(1.0, 0.0)),
    ).end(b)
    seq = per_sequence.after(stored)
    results = UOp.group(
        out[0, 0].store(total(batch, lambda i: seq[rows, i], stored) / count),
        out[0, 1].store(total(batch, lambda i: seq[rows + 1, i], stored)),
    )
    if rows == 1:
        n = rng(hidden)
        weights = d_head[n].store(total(batch, lambda i: seq[0, i] * hs[steps, n, i], n, stored)).end(n)
        bias = d_head[hidden].store(total(batch, lambda i: seq[0, i], stored))
        n, b = rng(hidden), rng(batch)
        dh = dh_last[n, b].store(seq[0, b] * w_head[0, n]).end(b, n)
    else:
        r, n = rng(rows), rng(hidden)
        term = total(batch, lambda i: seq[r, i] * hs[steps, n, i], n, stored)
        weights = d_head[r * hidden + n].store(term).end(n, r)
        r = rng(rows)
        bias = d_head[rows * hidden + r].store(total(batch, lambda i: seq[r, i], r, stored)).end(r)
        n, b = rng(hidden), rng(batch)
        dh = dh_last[n, b].store(total(rows, lambda k: seq[k, b] * w_head[k, n], b)).end(b, n)
    return UOp.group(results, weights, bias, dh).sink(arg=KernelInfo(name="lstm_head", opts_to_apply=()))


def _head(
    hs: Tensor, w_head: Tensor, b_head: Tensor, packed: Tensor, batch: int, offset: int
) -> list[Tensor]:
    rows, (_, hidden, _) = w_head.shape[0], hs.shape
    device = hs.device
    return Tensor.custom_kernel(
        Tensor.empty(1, 2, device=device),
        Tensor.empty(hidden, batch, device=device),
        Tensor.empty(rows * (hidden + 1), device=device),
        Tensor.empty(rows + 2, batch, device=device),
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
    hidden, inputs, batch, rows = w_hh.shape[1], layout.inputs, layout.batch, w_head.shape[0]
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
        (2, _offset(0)),  # head weight: d_head[:rows x H]
        (2, _offset(rows * hidden)),  # head bias: the rows after it
    ]
    return results, [d_w_in, d_w_hh, d_head], sources


def step_bytes(layout: PackedBatch, hidden: int) -> int:
    """About how much memory one training step's buffers take (float32)."""
    batch, steps, inputs = layout.batch, layout.length, layout.inputs
    # per time step, 10 x hidden: h, the gates and their gradients (9 x hidden), and h's
    # batch-major copy for the weight gradients' column form (H >= 128)
    per_column = 3 * (steps + 1) * hidden + steps * (10 * hidden + inputs + 1) + 2 * hidden
    return 4 * (batch * per_column + layout.size)
