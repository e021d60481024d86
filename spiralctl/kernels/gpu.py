"""GPU-shaped custom kernels for spiralctl's training step and inference.

The CPU family (kernels/lstm.py, step.py, adam.py) gives each thread a group of batch columns
and a whole recurrence, and runs the head and Adam as a single thread: right for clang's SIMD, a
handful of threads on a GPU. This family keeps the same buffers, layouts (batch-last, [T, rows, B])
and results, and spreads the work over threads instead:

- forward / backward recurrence: one workgroup per tile of batch columns, one thread per (hidden
  unit, column); the state that every thread of a column needs (h_t forward, dz_t backward) lives in
  local memory, with a workgroup barrier per time step.
- weight gradients: one thread per output element, summing over time x batch.
- head: one workgroup for the per-sequence loss and its reductions, then one thread per element of
  dL/dh_T and one per head-gradient entry.
- Adam: one thread per parameter element, every parameter in one launch.

Each function takes and returns what its CPU counterpart does (kernels/family.py pairs them), so
everything above the kernels is one code path; tests/test_gpu.py holds the two families together
on tinygrad's PYTHON device and on OpenCL.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

from tinygrad import Tensor, UOp, dtypes
from tinygrad.dtype import AddrSpace
from tinygrad.uop.ops import AxisType, KernelInfo, Ops

from spiralctl.kernels.adam import BETAS, EPS
from spiralctl.kernels.lstm import (
    _sigmoid,
    _tanh,
    backward_through_time,
    forward_through_time,
    fused_lstm,
)
from spiralctl.kernels.step import LN2, _softmax_cross_entropy

# threads per workgroup we aim for: enough to hide latency, well under every backend's limit (1024)
BLOCK = 256
MAX_BLOCK = 1024


def _pow2_divisor(size: int, most: int) -> int:
    """The largest power of two that divides `size` and is at most `most` (at least 1)."""
    tile = 1
    while size % (tile * 2) == 0 and tile * 2 <= most:
        tile *= 2
    return tile


def column_tile(width: int, hidden: int) -> int:
    """Batch columns per workgroup of the recurrence kernels: hidden x tile threads, about BLOCK.

    A power of two dividing the batch, so no workgroup holds a partial tile."""
    if hidden > MAX_BLOCK:
        raise ValueError(f"hidden size {hidden} exceeds {MAX_BLOCK} threads per workgroup")
    return _pow2_divisor(width, max(1, BLOCK // hidden))


class _Ids:
    """Numbers one kernel's ranges and register / local buffers.

    Serial loops are LOOP or REDUCE, never WEAK: tinygrad may turn a WEAK loop that is not inside
    a GLOBAL range into part of the launch grid, and every thread would then run the whole loop."""

    def __init__(self) -> None:
        self._ids = itertools.count()

    def range(self, size: int, axis: AxisType) -> UOp:
        return UOp.range(size, next(self._ids), axis)

    def reg(self, size: int) -> UOp:
        return UOp.placeholder((size,), dtypes.float, next(self._ids), addrspace=AddrSpace.REG)

    def local(self, shape: tuple[int, ...]) -> UOp:
        return UOp.placeholder(shape, dtypes.float, next(self._ids), addrspace=AddrSpace.LOCAL)

    def total(self, size: int, term: Callable[[UOp], UOp], *deps: UOp) -> UOp:
        """term(0) + ... + term(size - 1) summed serially in a register, after `deps`."""
        acc = self.reg(1)
        acc = acc.after(*deps)[0].set(0.0) if deps else acc[0].set(0.0)
        i = self.range(size, AxisType.REDUCE)
        return acc[0].set(acc.after(i)[0] + term(i), end=i)[0]


def _clamp(index: UOp, ok: UOp | None) -> UOp:
    """An index that is safe to load from where `ok` is false (the value is masked afterwards)."""
    return index if ok is None else ok.where(index, 0)


def _gated(index: UOp, ok: UOp | None) -> UOp:
    """An index whose store only happens where `ok` holds. Use it on a `_flat` buffer: see there."""
    return index if ok is None else index.valid(ok)


def _flat(buffer: UOp) -> UOp:
    """The buffer's flat PARAM, under the reshape that gives a custom-kernel buffer its shape.

    A gated index that goes through a reshape is rewritten by tinygrad 0.14's movement-op rules
    (schedule/indexing.py: pm_drop_and_clauses), which drop every clause of the gate whose ranges the
    new index does not contain. A gate that pins a thread range (i < numel, slice == 0) then vanishes
    and every thread stores: harmless for equal values, a race for Adam's read-modify-write.
    Indexing the flat PARAM keeps the gate."""
    while buffer.op is Ops.RESHAPE:
        buffer = buffer.src[0]
    return buffer


# ---------------------------------------------------------------------------------------------
# forward recurrence


def _forward_kernel_gpu(
    hs: UOp,
    cs: UOp,
    tanh_cs: UOp,
    gates: UOp,
    xa: UOp,
    *buffers: UOp,
    batch: int,
    lengths: int | None = None,
) -> UOp:
    """Same buffers and results as spiralctl.kernels.lstm._forward_kernel.

    buffers: the state [2, H, B] when `lengths` is given, then x, W_ih, b_ih, b_hh, W_hh.
    Grid: one workgroup per tile of batch columns; block: hidden x tile threads, thread (n, column)
    owns unit n's four gate rows and its cell state for that column. h_t of the tile sits in local
    memory, double-buffered by the parity of t so that one barrier per step (the one tinygrad puts
    at the end of a loop that stores and loads local memory) orders both the reads of h_t and the
    writes of h_{t+1}.

    With `lengths` (a flat position in x's buffer: the lengths [B], then `start` at lengths + B),
    step t is inside sequence b when start + t < length[b]: xa's last row holds 1 there and 0 past
    the end, and past the end the thread carries its h and c unchanged.
    The initial (h, c) is zero when start is 0 and the state buffer's otherwise; each thread writes
    its (h_T, c_T) back to the state at the end. Each thread computes the mask from x itself rather
    than reading xa's row, which another thread of the column writes.
    """
    state, (x, w_ih, b_ih, b_hh, w_hh) = (None, buffers) if lengths is None else (buffers[0], buffers[1:])
    steps1, hidden, width = hs.shape
    steps, inputs = steps1 - 1, xa.shape[1] - 1
    tile = column_tile(width, hidden)
    ids = _Ids()
    x = x.flatten()
    group = ids.range(width // tile, AxisType.GLOBAL)
    # the column first: it becomes the fastest thread index, so neighbouring threads touch neighbouring
    # batch columns of the [.., rows, B] buffers
    col = ids.range(tile, AxisType.LOCAL)
    n = ids.range(hidden, AxisType.LOCAL)
    b = group * tile + col

    def x_at(t: UOp, d: UOp | int) -> UOp:
        return x[b * (steps * inputs) + t * inputs + d]

    def inside_at(t: UOp) -> UOp | float:
        """1.0 where step t is inside column b's sequence (always without `lengths`), else 0.0."""
        if lengths is None:
            return 1.0
        return (t.cast(dtypes.float) + x[lengths + batch] < x[lengths + b]).where(1.0, 0.0)

    # xa (the weight gradients and backward read it): thread n writes rows n, n + H, ... of its column
    rows, per_thread = inputs + 1, -(-(inputs + 1) // hidden)
    t, j = ids.range(steps, AxisType.LOOP), ids.range(per_thread, AxisType.LOOP)
    r = n + j * hidden
    row_ok = None if per_thread * hidden == rows else r < rows
    value = (r < inputs).where(x_at(t, (r < inputs).where(r, 0)), inside_at(t))
    copied = _flat(xa)[_gated((t * rows + r) * width + b, row_ok)].store(value).end(j, t)

    h_local = ids.local((2, hidden, tile))
    if state is None:
        h0, c0 = 0.0, 0.0
    else:  # a later chunk (start > 0) goes on from the state the previous chunk left
        carried = x[lengths + batch] > 0.5
        h0, c0 = carried.where(state[0, n, b], 0.0), carried.where(state[1, n, b], 0.0)
    init = UOp.group(h_local[0, n, col].store(h0), hs[0, n, b].store(h0), cs[0, n, b].store(c0))
    h_prev, c_prev, h_own = h_local.after(init), cs.after(init), hs.after(init)

    t = ids.range(steps, AxisType.LOOP)
    xs = [x_at(t, d) for d in range(inputs)]
    projection = [
        sum(
            (w_ih[q * hidden + n, d] * xs[d] for d in range(inputs)),
            b_ih[q * hidden + n] + b_hh[q * hidden + n],
        )
        for q in range(4)
    ]
    acc = ids.reg(4).after(t)
    acc = acc.after(UOp.group(*(acc[q].store(projection[q]) for q in range(4))))
    k = ids.range(hidden, AxisType.REDUCE)
    h_k = h_prev.after(t)[t % 2, k, col]
    summed = UOp.group(*(acc[q].store(acc.after(k)[q] + w_hh[q * hidden + n, k] * h_k) for q in range(4)))
    acc = acc.after(summed.end(k))
    i, f, o = _sigmoid(acc[0]), _sigmoid(acc[1]), _sigmoid(acc[3])
    g = _tanh(acc[2])
    c_old = c_prev.after(t)[t, n, b]
    c_new = f * c_old + i * g
    tanh_c = _tanh(c_new)
    h_new = o * tanh_c
    if state is not None:  # past the sequence's end: the state stays as it was
        inside = inside_at(t) > 0.5
        c_new, h_new = inside.where(c_new, c_old), inside.where(h_new, h_own.after(t)[t, n, b])
    stores = UOp.group(
        *(gates[t, q * hidden + n, b].store(v) for q, v in enumerate((i, f, g, o))),
        cs[t + 1, n, b].store(c_new),
        tanh_cs[t, n, b].store(tanh_c),
        hs[t + 1, n, b].store(h_new),
        h_local[(t + 1) % 2, n, col].store(h_new),
    ).end(t)
    if state is not None:  # (h_T, c_T) for the next chunk: the thread's own last h and c
        last_h, last_c = hs.after(stores)[steps, n, b], cs.after(stores)[steps, n, b]
        stores = UOp.group(state[0, n, b].store(last_h), state[1, n, b].store(last_c))
    return (
        UOp.group(copied, stores)
        .end(n, col, group)
        .sink(arg=KernelInfo(name="lstm_forward_gpu", opts_to_apply=()))
    )


# the CPU family's call of the forward kernel (buffers, outputs, state), with this family's kernel
sequence_forward_gpu = functools.partial(forward_through_time, _forward_kernel_gpu)


# ---------------------------------------------------------------------------------------------
# backward through time


def _backward_kernel_gpu(
    dz: UOp, dc_carry: UOp, dh_carry: UOp, dh_last: UOp, cs: UOp, tanh_cs: UOp, gates: UOp, w_hh: UOp, xa: UOp
) -> UOp:
    """Same buffers and results as spiralctl.kernels.lstm._backward_kernel.

    Grid and block as the forward kernel. Thread (n, column) turns unit n's dh, dc into its four
    gate gradients, then dh_{t-1}[n] = sum_j W_hh[j, n] dz[j] needs every row of the column: dz_t of
    the tile goes through local memory (barrier after the writes, and one at the end of the step
    before the next step overwrites it). dc and dh stay in the thread's own rows of the carry
    buffers. xa's last row (the forward kernel's) says whether step t is inside the sequence: past
    its end the gate gradients are 0 and dh and dc pass back unchanged.
    """
    steps, hidden4, width = dz.shape
    hidden, inputs = hidden4 // 4, xa.shape[1] - 1
    tile = column_tile(width, hidden)
    ids = _Ids()
    group = ids.range(width // tile, AxisType.GLOBAL)
    col = ids.range(tile, AxisType.LOCAL)
    n = ids.range(hidden, AxisType.LOCAL)
    b = group * tile + col
    init = UOp.group(dc_carry[steps, n, b].store(0.0), dh_carry[steps, n, b].store(dh_last[n, b]))
    dc0, dh0 = dc_carry.after(init), dh_carry.after(init)

    r = ids.range(steps, AxisType.LOOP)
    t = (steps - 1) - r
    inside = xa[t, inputs, b] > 0.5
    dh, dc_next = dh0.after(r)[t + 1, n, b], dc0.after(r)[t + 1, n, b]
    i, f, g, o = (gates[t, q * hidden + n, b] for q in range(4))
    tanh_c = tanh_cs[t, n, b]
    dc = dc_next + dh * o * (1 - tanh_c * tanh_c)
    grads = tuple(
        inside.where(v, 0.0)
        for v in (
            dc * g * i * (1 - i),
            dc * cs[t, n, b] * f * (1 - f),
            dc * i * (1 - g * g),
            dh * tanh_c * o * (1 - o),
        )
    )
    dz_local = ids.local((hidden4, tile))
    written = UOp.group(
        *(dz[t, q * hidden + n, b].store(v) for q, v in enumerate(grads)),
        *(dz_local[q * hidden + n, col].store(v) for q, v in enumerate(grads)),
        dc_carry[t, n, b].store(inside.where(dc * f, dc_next)),
    )
    shared = dz_local.after(written)
    # past the end every dz of the column is 0 and dh passes back as it came (as the CPU family's
    # dh_carry[t+1] + W_hh^T 0)
    back = ids.total(hidden4, lambda j: w_hh[j, n] * shared[j, col], written)
    done = dh_carry[t, n, b].store(inside.where(back, dh)).end(r)
    return done.end(n, col, group).sink(arg=KernelInfo(name="lstm_backward_gpu", opts_to_apply=()))


def weight_gradient_slices(width: int, columns: int) -> int:
    """Threads that share one output element's sum over the batch: a power of two dividing the
    batch, at most 16 and at most what leaves columns x slices within MAX_BLOCK."""
    return _pow2_divisor(width, max(1, min(16, MAX_BLOCK // columns)))


def _batch_dot_kernel(out: UOp, a: UOp, b_in: UOp, *, name: str) -> UOp:
    """out[j, c] = sum over t < T and every batch column b of a[t, j, b] * b_in[t, c, b].

    Grid: one workgroup per row j. Block: `slices` x columns threads; slice s of column c sums the
    batch columns s, s + S, ... of every time step (neighbouring threads read neighbouring batch
    columns), then the slices' partial sums are added through local memory by slice 0.
    The batch sum of each time step is kept apart from the running total over time, which keeps
    float32 rounding near the CPU family's lane-split sums.
    """
    steps, rows, width = a.shape
    columns = b_in.shape[1]
    slices = weight_gradient_slices(width, columns)
    ids = _Ids()
    j = ids.range(rows, AxisType.GLOBAL)
    s = ids.range(slices, AxisType.LOCAL)
    c = ids.range(columns, AxisType.LOCAL)
    outer = ids.reg(1)
    outer = outer[0].set(0.0)
    t = ids.range(steps, AxisType.REDUCE)

    def term(i: UOp) -> UOp:
        b = i * slices + s
        return a[t, j, b] * b_in[t, c, b]

    inner = ids.total(width // slices, term, outer, t)
    partial = outer[0].set(outer.after(t)[0] + inner, end=t)[0]
    shared = ids.local((columns, slices))
    shared = shared.after(shared[c, s].store(partial))
    total = ids.total(slices, lambda k: shared[c, k])
    done = _flat(out)[_gated(j * columns + c, s < 1)].store(total)
    return done.end(c, s, j).sink(arg=KernelInfo(name=name, opts_to_apply=()))


def weight_gradients_gpu(dz: Tensor, hs: Tensor, xa: Tensor) -> tuple[Tensor, Tensor]:
    """Same arguments and return value as spiralctl.kernels.lstm._weight_gradients: (dW_hh: [4H, H],
    dW_in: [4H, D+1], W_ih's gradient with the biases' as its last column).

    Differs in that it is two kernels (one per output, so that no thread loads both operands and
    picks one) and has no partial-sum scratch buffers.
    """
    hidden4, device = dz.shape[1], dz.device
    d_w_hh, *_ = Tensor.custom_kernel(
        Tensor.empty(hidden4, hs.shape[1], device=device),
        dz,
        hs,
        fxn=functools.partial(_batch_dot_kernel, name="lstm_weight_grad_hh_gpu"),
    )
    d_w_in, *_ = Tensor.custom_kernel(
        Tensor.empty(hidden4, xa.shape[1], device=device),
        dz,
        xa,
        fxn=functools.partial(_batch_dot_kernel, name="lstm_weight_grad_in_gpu"),
    )
    return d_w_hh, d_w_in


# the CPU family's backward and autograd wrapper, with this family's kernels
sequence_backward_gpu = functools.partial(backward_through_time, _backward_kernel_gpu, weight_gradients_gpu)
lstm_fused_gpu = fused_lstm(sequence_forward_gpu, sequence_backward_gpu)


# ---------------------------------------------------------------------------------------------
# head and loss


def head_threads(batch: int) -> int:
    """Threads of the head's single workgroup: a power of two, 32 to BLOCK."""
    return min(BLOCK, max(32, 1 << (batch - 1).bit_length()))


def _head_loss_kernel(
    out: UOp, per_sequence: UOp, hs: UOp, w_head: UOp, b_head: UOp, packed: UOp, *, batch: int, offset: int
) -> UOp:
    """The loss part of the head: one workgroup, thread k takes columns k, k + K, ...

    The sum of the sequences' weights is reduced through local memory first (dL/dlogit divides
    by it), then the loss and the right answers; thread 0 writes out. per_sequence[:, b] and the
    loss for one row of w_head or several as the CPU head (step.py's `_head_kernel`).
    """
    rows, (_, hidden, _) = w_head.shape[0], hs.shape
    steps = hs.shape[0] - 1
    threads = head_threads(batch)
    per_thread = -(-batch // threads)
    packed = packed.flatten()
    ids = _Ids()
    k = ids.range(threads, AxisType.LOCAL)

    def columns() -> tuple[UOp, UOp, UOp | None]:
        j = ids.range(per_thread, AxisType.LOOP)
        b = k + j * threads
        ok = None if per_thread * threads == batch else b < batch
        return j, b, ok

    def weight(b: UOp, ok: UOp | None) -> UOp:
        m = packed[offset + batch + _clamp(b, ok)]
        return m if ok is None else ok.where(m, 0.0)

    # pass 1: this thread's share of the weights' sum
    j, b, ok = columns()
    part = ids.reg(1)
    part = part[0].set(0.0)
    part = part[0].set(part.after(j)[0] + weight(b, ok), end=j)
    counts = ids.local((threads,))
    counts = counts.after(counts[k].store(part[0]))
    count = ids.total(threads, lambda i: counts[i])

    # pass 2: per sequence, with the sum known
    j, b, ok = columns()
    bc = _clamp(b, ok)
    parts = ids.reg(2).after(count)
    parts = parts.after(UOp.group(parts[0].store(0.0), parts[1].store(0.0)))
    loop = parts.after(j)
    y, m = packed[offset + bc], weight(b, ok)
    flat = _flat(per_sequence)
    if rows == 1:
        logit = ids.total(hidden, lambda n: w_head[0, n] * hs[steps, n, bc], j) + b_head[0]
        # loss = max(z, 0) - z*y + log(1 + exp(-|z|)); sigmoid(z) from the same exp(-|z|)
        e = (logit * (logit < 0).where(1.0, -1.0)).exp()
        p = (logit < 0).where(e, 1.0) / (1.0 + e)
        loss = ((logit < 0).where(0.0, logit) - logit * y + (1.0 + e).log2() * LN2) * m
        right = ((logit > 0).where(1.0, 0.0) - y).abs() < 0.5
        gradients = flat[_gated(b, ok)].store((p - y) * m / count)
    else:

        def logit(r: UOp, *deps: UOp) -> UOp:
            return ids.total(hidden, lambda n: w_head[r, n] * hs[steps, n, bc], j, *deps) + b_head[r]

        loss, right, gradient = _softmax_cross_entropy(logit, rows, y, ids.range, ids.reg, j)
        loss = loss * m
        r = ids.range(rows, AxisType.LOOP)
        gradients = flat[_gated(r * batch + b, ok)].store(gradient(r) * m / count).end(r)
    right = (right & (m > 0)).where(1.0, 0.0)
    stored = UOp.group(
        gradients,
        flat[_gated(rows * batch + b, ok)].store(loss),
        flat[_gated((rows + 1) * batch + b, ok)].store(right),
        parts[0].store(loop[0] + loss),
        parts[1].store(loop[1] + right),
    ).end(j)
    parts = parts.after(stored)
    sums = ids.local((2, threads))
    sums = sums.after(UOp.group(sums[0, k].store(parts[0]), sums[1, k].store(parts[1])))
    first = k < 1
    loss_sum = ids.total(threads, lambda i: sums[0, i])
    right_sum = ids.total(threads, lambda i: sums[1, i])
    out = _flat(out)
    results = UOp.group(
        out[_gated(UOp.const(0, k.dtype), first)].store(loss_sum / count),
        out[_gated(UOp.const(1, k.dtype), first)].store(right_sum),
    )
    return results.end(k).sink(arg=KernelInfo(name="lstm_head_loss_gpu", opts_to_apply=()))


def _head_into_h_kernel(dh_last: UOp, per_sequence: UOp, w_head: UOp, *, batch: int) -> UOp:
    """dL/dh_T[n, b] = sum_k dL/dz_k[b] * w_head[k, n]: one thread per element."""
    hidden, width = dh_last.shape
    rows = w_head.shape[0]
    tile = _pow2_divisor(width, BLOCK)
    ids = _Ids()
    n = ids.range(hidden, AxisType.GLOBAL)
    group = ids.range(width // tile, AxisType.GLOBAL)
    col = ids.range(tile, AxisType.LOCAL)
    b = group * tile + col
    if rows == 1:
        into = per_sequence[0, b] * w_head[0, n]
    else:
        into = ids.total(rows, lambda r: per_sequence[r, b] * w_head[r, n])
    return (
        dh_last[n, b]
        .store(into)
        .end(col, group, n)
        .sink(arg=KernelInfo(name="lstm_head_dh_gpu", opts_to_apply=()))
    )


def _head_weights_kernel(d_head: UOp, per_sequence: UOp, hs: UOp, *, batch: int) -> UOp:
    """d_head[r H + n] = sum_b dL/dz_r[b] h_T[n, b] and d_head[rows H + r] = sum_b dL/dz_r[b]:
    one workgroup per row r of the head, one thread per entry of it (H weights and the bias)."""
    steps, hidden = hs.shape[0] - 1, hs.shape[1]
    rows = per_sequence.shape[0] - 2
    ids = _Ids()
    r = ids.range(rows, AxisType.GLOBAL)
    n = ids.range(hidden + 1, AxisType.LOCAL)
    is_w = n < hidden
    nc = is_w.where(n, 0)
    total = ids.total(batch, lambda b: per_sequence[r, b] * is_w.where(hs[steps, nc, b], 1.0))
    # one row: d_head[n] for n <= H, the kernel from before K classes
    index = n if rows == 1 else is_w.where(r * hidden + n, rows * hidden + r)
    return (
        d_head[index]
        .store(total)
        .end(n, r)
        .sink(arg=KernelInfo(name="lstm_head_weights_gpu", opts_to_apply=()))
    )


def head_gpu(
    hs: Tensor, w_head: Tensor, b_head: Tensor, packed: Tensor, batch: int, offset: int
) -> list[Tensor]:
    """Same arguments and return value as spiralctl.kernels.step._head: [out [1, 2] (weighted mean
    loss, right answers), dh_last: [H, B], d_head: [rows x (H + 1)], per_sequence: [rows + 2, B]].

    Differs in that it is three kernels (the loss, then dL/dh_T and the head gradients, which need
    every dL/dlogit), and returns only these four tensors, not the kernel's inputs after them.
    """
    rows, (_, hidden, width) = w_head.shape[0], hs.shape
    device = hs.device
    out, per_sequence, *_ = Tensor.custom_kernel(
        Tensor.empty(1, 2, device=device),
        Tensor.empty(rows + 2, batch, device=device),
        hs,
        w_head,
        b_head,
        packed,
        fxn=functools.partial(_head_loss_kernel, batch=batch, offset=offset),
    )
    dh_last, *_ = Tensor.custom_kernel(
        Tensor.empty(hidden, width, device=device),
        per_sequence,
        w_head,
        fxn=functools.partial(_head_into_h_kernel, batch=batch),
    )
    d_head, *_ = Tensor.custom_kernel(
        Tensor.empty(rows * (hidden + 1), device=device),
        per_sequence,
        hs,
        fxn=functools.partial(_head_weights_kernel, batch=batch),
    )
    return [out, dh_last, d_head, per_sequence]


# ---------------------------------------------------------------------------------------------
# Adam


def _adam_kernel_gpu(*buffers: UOp, count: int, sources: tuple, offset: int) -> UOp:
    """Same buffers, `sources` and results as spiralctl.kernels.adam._adam_kernel.

    One thread per element of the largest parameter; thread i updates element i of every parameter
    that has one (smaller parameters' stores are gated), so one launch covers them all and even the
    one-element head bias is not a kernel of its own.
    """
    params, exp_avg, exp_avg_sq = buffers[:count], buffers[count : 2 * count], buffers[2 * count : 3 * count]
    grads, scalars = buffers[3 * count : -1], buffers[-1].flatten()
    lr, correction1, correction2 = (scalars[offset + k] for k in range(3))
    b1, b2 = BETAS
    size = max(p.numel() for p in params)
    tile = _pow2_divisor(size, BLOCK)
    ids = _Ids()
    group = ids.range(size // tile, AxisType.GLOBAL)
    lane = ids.range(tile, AxisType.LOCAL)
    i = group * tile + lane
    updates = []
    for p, m, v, (g, index) in zip(params, exp_avg, exp_avg_sq, sources):
        p, m, v, g = _flat(p), _flat(m), _flat(v), grads[g].flatten()
        ok = None if p.numel() == size else i < p.numel()
        at = _clamp(i, ok)
        grad = g[index(at)]
        m_new = m[at] * b1 + grad * (1 - b1)
        v_new = v[at] * b2 + grad * grad * (1 - b2)
        step = lr * (m_new * correction1) / ((v_new * correction2).sqrt() + EPS)
        to = _gated(i, ok)
        updates.append(UOp.group(m[to].store(m_new), v[to].store(v_new), p[to].store(p[at] - step)))
    return UOp.group(*updates).end(lane, group).sink(arg=KernelInfo(name="adam_gpu", opts_to_apply=()))
