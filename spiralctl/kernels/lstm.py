"""The LSTM recurrence on tinygrad: a plain reference and a fused fast path.

Both take x: [B, T, D] and PyTorch-layout weights (gate order i, f, g, o) and
return the last hidden state h_T: [B, H].

The fused path runs the whole time loop in one custom kernel (batch in
parallel, time sequential) and the whole backward pass through time in a
second one, with both weight gradients in a third (from H = 128 up after a copy of h
batch-major, which tinygrad makes as a kernel of its own); `grad_fxn` joins them to
tinygrad's autograd, so `lstm()` works like any tinygrad function. Training
calls the same kernels directly (`sequence_forward`, `sequence_backward`, see
spiralctl/kernels/step.py). Buffers are batch-last ([T, H, B]), so the innermost index
runs over the batch.
"""

from __future__ import annotations

import functools
import itertools
import math

from tinygrad import Tensor, UOp, dtypes
from tinygrad.dtype import AddrSpace
from tinygrad.uop.ops import AxisType, KernelInfo

from spiralctl.kernels.threads import current_threads

IMPLEMENTATIONS = ("fused", "reference")
LANES = 16  # batch columns per SIMD block (the recurrences' innermost loop spans up to 4 of them)


def lstm_reference(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
    """Textbook LSTM, one cell per time step, differentiated by tinygrad's autograd."""
    batch, steps, _ = x.shape
    hidden = w_hh.shape[1]
    h = Tensor.zeros(batch, hidden, device=x.device)
    c = Tensor.zeros(batch, hidden, device=x.device)
    for t in range(steps):
        z = x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        i, f, g, o = z.chunk(4, dim=1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        h = o.sigmoid() * c.tanh()
    return h


def _sigmoid(v: UOp) -> UOp:
    return 1 / (1 + (-v).exp())


def _tanh(v: UOp) -> UOp:
    return 1 - 2 / ((v * 2).exp() + 1)


ROW_BLOCK = 32
# backward's blocks of h rows: up to 256, so that one pass over the 4H rows of dz[t] serves that
# many rows (blocks of 32 re-read dz from L2 for every block: H = 128, B = 256: 35 -> 21 ms with
# 128; H = 512, B = 128: 112 ms with 128, 82 with 256, 159 with 512)
BACK_ROW_BLOCK = 256
# terms added per stored running sum (each store waits on the load of the one before)
UNROLL = 8


def _unroll(size: int, most: int = 5) -> int:
    """The largest number of terms up to `most` that divides a loop of `size` evenly and leaves
    it at least two iterations (a loop of one is folded away, and with it the order of the sums)."""
    return next(u for u in range(most, 0, -1) if size % u == 0 and (size // u >= 2 or u == 1))


def _terms(count: int, term) -> UOp:
    """term(0) + term(1) + ... + term(count - 1), written out."""
    return sum((term(u) for u in range(1, count)), term(0))


def _lanes(batch: int) -> int:
    """The innermost batch loop's length: clang turns it into SIMD when it is 8 or 16."""
    return math.gcd(batch, LANES)


# the most batch columns one pass over W_hh serves in the recurrent kernels
GROUP_COLUMNS = 64


# multiply-adds of one time step (B x 4H x H) below which a step's kernels stay on one core: the
# recurrence is sequential in time, and at the seed config's 32768 the handoff to a second
# thread costs more than it saves (1.27 ms a step on 2 threads, 0.98 on one; at 131072 (H = 16,
# B = 128 or H = 8, B = 512) two threads are 7-27% faster). All kernels of a step decide alike,
# so that each reads what it needs from its own core's cache.
PARALLEL_WORK = 65536


def _small(batch: int, hidden: int) -> bool:
    """A step below PARALLEL_WORK multiply-adds."""
    return batch * 4 * hidden * hidden < PARALLEL_WORK


def step_threads(batch: int, hidden: int) -> int:
    """The threads a step's kernels are split between (kernels/threads.py): 1 for small steps."""
    return 1 if _small(batch, hidden) else current_threads()


def _split(batch: int, hidden: int) -> AxisType:
    """The outermost loop's type: GLOBAL (slices run on several threads) or a plain loop."""
    return AxisType.GLOBAL if step_threads(batch, hidden) > 1 else AxisType.LOOP


def _group(batch: int, hidden: int) -> int:
    """How many blocks of lanes the recurrent kernels' innermost loop spans: each weight they load
    then serves all of them (H = 512, B = 128: forward 115 -> 71 ms, backward 184 -> 110 ms with
    4 blocks instead of 1). The most, up to GROUP_COLUMNS columns, that leaves every thread
    (kernels/threads.py) the same number of groups.

    With several threads, groups of at least half that width that give every thread two or more
    of them come first: one group of 64 columns per thread (B = 128 on 2 threads) made the
    backward kernel's time swing between 38 and 90 ms from step to step at H = 512, where two
    groups of 32 each take 32-33 ms every step (AMD Zen 5; H = 128 to 512, B = 128: steps 10-27%
    faster). Narrower groups are slower, so B = 64 keeps one group of 32 per thread."""
    lanes = _lanes(batch)
    blocks, threads = batch // lanes, step_threads(batch, hidden)
    fits = [g for g in (1, 2, 4, 8) if g * lanes <= GROUP_COLUMNS and blocks % (g * threads) == 0]
    wide = [g for g in fits if 2 * g * lanes >= GROUP_COLUMNS]
    shared = [g for g in wide if threads > 1 and blocks // (g * threads) >= 2]
    return max(shared or fits, default=1)


class _Loops:
    """Numbers one kernel's ranges and splits its batch into outer blocks and inner SIMD lanes."""

    def __init__(self, batch: int, hidden: int) -> None:
        self.lanes = _lanes(batch) * _group(batch, hidden)
        self._ids = itertools.count()
        self.outer = self.range(batch // self.lanes, _split(batch, hidden))

    def range(self, size: int, axis: AxisType = AxisType.WEAK) -> UOp:
        return UOp.range(size, next(self._ids), axis)

    def lane(self) -> tuple[UOp, UOp]:
        """A fresh innermost lane range and the batch index it gives."""
        inner = self.range(self.lanes)
        return inner, self.outer * self.lanes + inner

    def zero_row(self, row: int, rows: int, *buffers: UOp) -> UOp:
        """Store 0 into buffers[row, :, this batch block]."""
        j = self.range(rows)
        inner, b = self.lane()
        return UOp.group(*(buf[row, j, b].store(0.0) for buf in buffers)).end(inner, j)


def _forward_kernel(
    hs: UOp,
    cs: UOp,
    tanh_cs: UOp,
    gates: UOp,
    xa: UOp,
    *buffers: UOp,
    batch: int,
    lengths: int | None = None,
) -> UOp:
    """hs, cs: [T+1, H, B] (row 0 is the initial state); gates: [T, 4H, B] after activation.

    buffers: the state [2, H, B] when `lengths` is given, then x, W_ih, b_ih, b_hh, W_hh.
    x holds the sequences [B, T, D] at the start of its buffer. The kernel first copies them
    batch-last into xa: [T, D+1, B], with a last row that says whether step t is inside
    sequence b (1; the biases' input, for the weight gradients) or past its end (0); then W_ih,
    the summed biases and W_hh give the gate pre-activations. Every statement runs over an
    innermost loop of `lanes` batch columns, which clang vectorises; the pre-activations are
    summed in place in `gates`.

    With `lengths` (a flat position in x's buffer), x holds each sequence's length at
    lengths + b and the time step of its first point, `start`, at lengths + B. Step t is
    inside sequence b when start + t < length[b]; past the end, h and c are carried unchanged,
    so h_T is h at the sequence's own last point. The initial state is zero when start is 0
    and the state buffer's (h, c) otherwise, and (h_T, c_T) is written back to it at the end:
    a long sequence runs as chunks of T steps, one call each.
    """
    state, (x, w_ih, b_ih, b_hh, w_hh) = (None, buffers) if lengths is None else (buffers[0], buffers[1:])
    steps1, hidden, _ = hs.shape
    steps, loops = steps1 - 1, _Loops(batch, hidden)
    inputs = xa.shape[1] - 1
    x = x.flatten()
    t, d = loops.range(steps), loops.range(inputs)
    bi, b = loops.lane()
    copied = xa[t, d, b].store(x[b * (steps * inputs) + t * inputs + d]).end(bi).end(d)
    bi, b = loops.lane()
    if lengths is None:
        inside = 1.0
    else:
        inside = (t.cast(dtypes.float) + x[lengths + batch] < x[lengths + b]).where(1.0, 0.0)
    ones = xa[t, inputs, b].store(inside).end(bi)
    if state is None:
        first = loops.zero_row(0, hidden, hs, cs)
    else:
        j = loops.range(hidden)
        bi, b = loops.lane()
        carried = x[lengths + batch] > 0.5
        first = UOp.group(
            hs[0, j, b].store(carried.where(state[0, j, b], 0.0)),
            cs[0, j, b].store(carried.where(state[1, j, b], 0.0)),
        ).end(bi, j)
    init = UOp.group(first, UOp.group(copied, ones).end(t))
    hs0, cs0, xa = hs.after(init), cs.after(init), xa.after(init)

    t = loops.range(steps, AxisType.REDUCE)
    j = loops.range(4 * hidden)
    bi, b = loops.lane()
    # the input projection: D (2) terms and the biases, written out rather than looped
    projection = _terms(inputs, lambda d: w_ih[j, d] * xa[t, d, b]) + (b_ih[j] + b_hh[j])
    pre = gates.after(gates.after(t)[t, j, b].store(projection).end(bi).end(j))
    # gate rows in blocks of ROW_BLOCK with k outside the rows of a block: the running sums of one
    # k are independent (no wait on each other), and a block's sums stay in the L1 cache
    rows = math.gcd(4 * hidden, ROW_BLOCK)
    jo = loops.range(4 * hidden // rows)
    unroll = _unroll(hidden, UNROLL)
    k = loops.range(hidden // unroll, AxisType.REDUCE)
    ji = loops.range(rows)
    j = jo * rows + ji
    bi, b = loops.lane()
    hs_t = hs0.after(t)
    terms = _terms(unroll, lambda u: w_hh[j, k * unroll + u] * hs_t[t, k * unroll + u, b])
    pre = gates.after(pre[t, j, b].store(pre.after(k)[t, j, b] + terms).end(bi, ji, k, jo))
    # tanh(z) = 2*sigmoid(2z) - 1 for the g gate, sigmoid for the others: one expression, no branch
    j = loops.range(4 * hidden)
    scale = ((j >= 2 * hidden) & (j < 3 * hidden)).where(2.0, 1.0)
    bi, b = loops.lane()
    active = scale * _sigmoid(pre[t, j, b] * scale) - (scale - 1.0)
    gv = gates.after(gates[t, j, b].store(active).end(bi).end(j))

    n = loops.range(hidden)
    bi, b = loops.lane()
    i, f, g, o = (gv[t, q * hidden + n, b] for q in range(4))
    c_old = cs0.after(t)[t, n, b]
    c_new = f * c_old + i * g
    tanh_c = _tanh(c_new)
    h_new = o * tanh_c
    if state is not None:  # past the sequence's end: the state stays as it was
        inside = xa[t, inputs, b] > 0.5
        c_new, h_new = inside.where(c_new, c_old), inside.where(h_new, hs0.after(t)[t, n, b])
    stores = UOp.group(
        cs[t + 1, n, b].store(c_new), tanh_cs[t, n, b].store(tanh_c), hs[t + 1, n, b].store(h_new)
    )
    done = stores.end(bi, n).end(t)
    if state is not None:
        n = loops.range(hidden)
        bi, b = loops.lane()
        last_h, last_c = hs.after(done)[steps, n, b], cs.after(done)[steps, n, b]
        done = UOp.group(state[0, n, b].store(last_h), state[1, n, b].store(last_c)).end(bi, n)
    return done.end(loops.outer).sink(arg=KernelInfo(name="lstm_forward", opts_to_apply=()))


def _backward_kernel(
    dz: UOp, dc_carry: UOp, dh_carry: UOp, dh_last: UOp, cs: UOp, tanh_cs: UOp, gates: UOp, w_hh: UOp, xa: UOp
) -> UOp:
    """Backward through time. dz: [T, 4H, B] gradient of the gate pre-activations.

    dh_last: [H, B] is the loss's gradient with respect to h_T. dc_carry[t] and dh_carry[t]
    hold what step t passes back to step t-1; row T starts as (0, dh_last). xa's last row
    (the forward kernel's) says whether step t is inside the sequence: past its end the gate
    gradients are 0 and dh and dc pass back unchanged.
    """
    steps, hidden4, batch = dz.shape
    hidden = hidden4 // 4
    loops = _Loops(batch, hidden)
    inputs = xa.shape[1] - 1
    k = loops.range(hidden)
    bi, b = loops.lane()
    init = UOp.group(dc_carry[steps, k, b].store(0.0), dh_carry[steps, k, b].store(dh_last[k, b])).end(bi, k)
    dc0, dh0 = dc_carry.after(init), dh_carry.after(init)

    r = loops.range(steps, AxisType.REDUCE)
    t = (steps - 1) - r
    k = loops.range(hidden)
    bi, b = loops.lane()
    inside = xa[t, inputs, b] > 0.5
    dh, dc_next = dh0.after(r)[t + 1, k, b], dc0.after(r)[t + 1, k, b]
    i, f, g, o = (gates[t, q * hidden + k, b] for q in range(4))
    tanh_c = tanh_cs[t, k, b]
    dc = dc_next + dh * o * (1 - tanh_c * tanh_c)
    gate_grads = UOp.group(
        dz[t, k, b].store(inside.where(dc * g * i * (1 - i), 0.0)),
        dz[t, hidden + k, b].store(inside.where(dc * cs[t, k, b] * f * (1 - f), 0.0)),
        dz[t, 2 * hidden + k, b].store(inside.where(dc * i * (1 - g * g), 0.0)),
        dz[t, 3 * hidden + k, b].store(inside.where(dh * tanh_c * o * (1 - o), 0.0)),
        dc_carry[t, k, b].store(inside.where(dc * f, dc_next)),
    ).end(bi, k)
    dzv = dz.after(gate_grads)

    # dh_carry[t] = W_hh^T dz[t] (plus dh_carry[t+1] past the end), summed in place; rows in
    # blocks with j outside them, as in forward
    n = loops.range(hidden)
    bi, b = loops.lane()
    passed = (xa[t, inputs, b] > 0.5).where(0.0, dh0.after(r)[t + 1, n, b])
    acc = dh_carry.after(dh_carry.after(r)[t, n, b].store(passed).end(bi).end(n))
    rows = math.gcd(hidden, BACK_ROW_BLOCK)
    no = loops.range(hidden // rows)
    unroll = _unroll(4 * hidden, UNROLL)
    j = loops.range(4 * hidden // unroll, AxisType.REDUCE)
    ni = loops.range(rows)
    n = no * rows + ni
    bi, b = loops.lane()
    terms = _terms(unroll, lambda u: w_hh[j * unroll + u, n] * dzv[t, j * unroll + u, b])
    done = acc[t, n, b].store(acc.after(j)[t, n, b] + terms).end(bi, ni, j, no)
    return done.end(r).end(loops.outer).sink(arg=KernelInfo(name="lstm_backward", opts_to_apply=()))


def _registers(size: int, ids: itertools.count) -> UOp:
    """A kernel-local array of `size` floats (clang 14 keeps it in registers only when every index
    is a constant: lanes written out, not a loop)."""
    return UOp.placeholder((size,), dtypes.float, next(ids), addrspace=AddrSpace.REG)


def _tile(size: int, *choices: int) -> int:
    """The first of `choices` that divides `size` (1 when none does)."""
    return next((c for c in choices if size % c == 0), 1)


# a weight gradient's tile (H < 128, and W_ih's gradient at any H): rows x columns of running
# sums, each `lanes` wide
GRAD_ROWS, GRAD_COLS = (8, 4), (4, 2)
# ... and a small step's: a quarter of the code, which tinygrad and clang turn into a program in
# 0.16 s instead of 0.53 (a third of a cold seed run's code generation), at the same step time
# (H = 8, B = 128: 0.27 ms a step with either tile, T = 50 or 500)
SMALL_GRAD_ROWS, SMALL_GRAD_COLS = (4, 2), (2, 1)


def _blocked_dot(ids: itertools.count, jo: UOp, rows: int, out: UOp, a: UOp, b_in: UOp, cols: int) -> UOp:
    """Rows jo*rows .. +rows of out[j, k] = sum over t < T and b of a[t, j, b] * b_in[t, k, b];
    a: [T, J, B], b_in: [T', K, B].

    A blocked product: for each tile of `cols` columns k, rows x cols running sums, each a
    vector of L batch lanes (REG placeholders), over all T x B; each step of the (t, batch
    block) loop loads rows + cols vectors and does rows x cols multiply-adds. The lanes are
    added up once per tile. With the lanes a loop, clang 14 keeps the sums in a stack array and
    loads and stores one for every multiply-add, so that this form is bound by stores (H = 512:
    240 GFLOP/s on 2 Zen 5 cores); the column form below avoids that for H >= 128. jo: a range,
    or an expression of ranges.
    """
    steps, _, batch = a.shape
    lanes = _lanes(batch)

    def rng(size: int, axis: AxisType = AxisType.LOOP) -> UOp:
        return UOp.range(size, next(ids), axis)

    ko = rng(b_in.shape[1] // cols)
    sums = [_registers(lanes, ids) for _ in range(rows * cols)]
    li = rng(lanes)
    # after jo as well as ko: when jo is a plain loop (a small step, _split), a zeroing that did
    # not name it would run once, outside it, and every tile after the first would add to the last
    zeroed = UOp.group(*(s.after(*jo.ranges, ko)[li].store(0.0) for s in sums)).end(li)
    sums = [s.after(zeroed) for s in sums]
    # the lanes as a loop (the sums in a stack array, see above) are faster when the number of
    # batch blocks is a power of two; at other counts the lanes written out (UPCAST: the sums in
    # registers, their loads rebuilt from 4-wide parts) are (measured at H = 128, before the
    # column form took over there: B = 128, a loop 6.8 ms, written out 9.4; B = 96, a loop
    # 9.9 ms, written out 7.4)
    blocks = batch // lanes
    written_out = blocks & (blocks - 1) != 0
    t, bo = rng(steps, AxisType.REDUCE), rng(blocks, AxisType.REDUCE)
    li = rng(lanes, AxisType.UPCAST if written_out else AxisType.LOOP)
    b = bo * lanes + li
    left = [a[t, jo * rows + r, b] for r in range(rows)]
    right = [b_in[t, ko * cols + c, b] for c in range(cols)]
    added = UOp.group(
        *(s[li].store(s.after(t, bo)[li] + left[n // cols] * right[n % cols]) for n, s in enumerate(sums))
    ).end(li, bo, t)
    stores = []
    for n, s in enumerate(sums):
        total = UOp.placeholder((1,), dtypes.float, next(ids), addrspace=AddrSpace.REG)
        total = total.after(added)[0].set(0.0)
        li = rng(lanes, AxisType.REDUCE)
        total = total[0].set(total.after(li)[0] + s.after(added)[li], end=li)
        stores.append(out[jo * rows + n // cols, ko * cols + n % cols].store(total[0]))
    return UOp.group(*stores).end(ko)


# the column form (below) for the weight gradients from this many columns (H) up. Its
# innermost loop runs over H columns; below 128 it gains less than the copy of h batch-major
# costs (steady steps, kernel and step in ms: H = 64, B = 128: 1.0 -> 0.8, step the same within
# noise; H = 32, B = 512: 1.8 -> 1.6, the same; H = 128, B = 256: 7.6 -> 5.5, step 21.0 -> 20.1;
# H = 512, B = 128: 53.9 -> 33.1, step 126 -> 111; benchmarks/RESULTS.md)
COLUMN_FORM_WIDTH = 128
# its tiles of gate rows (_column_rows) and the rows that share each load of h inside the
# innermost loop (4 rows' broadcast values no longer fit in the vector registers)
COLUMN_ROWS, COLUMN_SHARED = 128, 2


def _column_rows(hidden4: int, threads: int) -> int:
    """The column form's tile of gate rows: the largest power of two up to COLUMN_ROWS that
    divides 4H and leaves every thread at least four tiles, but no fewer than 4 rows (which
    always divide 4H: with many threads and a small 4H, fewer tiles a thread)."""
    rows = COLUMN_ROWS
    while rows > 2 * COLUMN_SHARED and (hidden4 % rows or hidden4 // rows < 4 * threads):
        rows //= 2
    return rows


def _column_dot(ids: itertools.count, jo: UOp, rows: int, out: UOp, a: UOp, b_t: UOp) -> UOp:
    """Rows jo*rows .. +rows of out[j, k] = sum over t < T and b of a[t, j, b] * b_t[t, b, k];
    a: [T, J, B], b_t: [T', B, K] (the second operand with its columns innermost).

    The innermost loop runs over the K columns, which clang vectorises: for each t, each run of
    u batch columns (u: UNROLL, or the largest number below it that divides B) and each pair of
    rows, the pair's 2u values of a are loaded once (broadcast into vector registers), and every
    vector of K columns then does 2u multiply-adds for one load and store of out per row and u
    loads of b_t, shared by both rows. The tile's rows of out stay in the L2 cache; b_t streams
    through once per tile.
    """
    steps, _, batch = a.shape
    width = b_t.shape[2]

    def rng(size: int, axis: AxisType = AxisType.LOOP) -> UOp:
        return UOp.range(size, next(ids), axis)

    r, c = rng(rows), rng(width)
    out = out.after(out[jo * rows + r, c].store(0.0).end(c, r))
    unroll = _unroll(batch, UNROLL)
    t, bo = rng(steps, AxisType.REDUCE), rng(batch // unroll, AxisType.REDUCE)
    j, k = rng(rows // COLUMN_SHARED), rng(width)
    stores = []
    for p in range(COLUMN_SHARED):
        n = jo * rows + j * COLUMN_SHARED + p
        terms = _terms(unroll, lambda u, n=n: a[t, n, bo * unroll + u] * b_t[t, bo * unroll + u, k])
        stores.append(out[n, k].store(out.after(t, bo)[n, k] + terms))
    return UOp.group(*stores).end(k, j, bo, t)


def _weight_gradient_kernel(d_w_hh: UOp, d_w_in: UOp, dz: UOp, hs: UOp, xa: UOp, column_form: bool) -> UOp:
    """Both weight gradients in one kernel: dz[t] h[t]^T and dz[t] [x_t, 1]^T summed over t and b.
    hs: [T', H, B], or [T, B, H] (h batch-major, from `_weight_gradients`) in the column form.

    Tiles of gate rows are the outermost (GLOBAL) loop: each is independent work, split
    between cores (spiralctl/kernels/threads.py)."""
    ids = itertools.count()
    batch, hidden4 = dz.shape[2], dz.shape[1]
    hidden = hs.shape[2] if column_form else hs.shape[1]
    axis = _split(batch, hidden)
    if column_form:
        rows = _column_rows(hidden4, step_threads(batch, hidden))
        jo = UOp.range(hidden4 // rows, next(ids), axis)
        # W_ih's gradient (D + 1 columns) in tiles of the usual rows inside each tile
        in_rows = GRAD_ROWS[0] if rows % GRAD_ROWS[0] == 0 else rows
        ji = UOp.range(rows // in_rows, next(ids))
        both = UOp.group(
            _column_dot(ids, jo, rows, d_w_hh, dz, hs),
            _blocked_dot(ids, jo * (rows // in_rows) + ji, in_rows, d_w_in, dz, xa, 1).end(ji),
        )
    else:
        small = _small(batch, hidden)
        row_tiles, col_tiles = (SMALL_GRAD_ROWS, SMALL_GRAD_COLS) if small else (GRAD_ROWS, GRAD_COLS)
        rows = _tile(hidden4, *row_tiles)
        jo = UOp.range(hidden4 // rows, next(ids), axis)
        both = UOp.group(
            _blocked_dot(ids, jo, rows, d_w_hh, dz, hs, _tile(hidden, *col_tiles)),
            _blocked_dot(ids, jo, rows, d_w_in, dz, xa, 1),
        )
    return both.end(jo).sink(arg=KernelInfo(name="lstm_weight_grad", opts_to_apply=()))


def _weight_gradients(dz: Tensor, hs: Tensor, xa: Tensor) -> tuple[Tensor, Tensor]:
    steps, hidden4, _ = dz.shape
    hidden, device = hs.shape[1], dz.device
    column_form = hidden >= COLUMN_FORM_WIDTH  # never a small step (B x 4H x H >= 65536)
    if column_form:  # h batch-major: [T, B, H]
        hs = hs[:steps].permute(0, 2, 1).contiguous()
    d_w_hh, d_w_in, *_ = Tensor.custom_kernel(
        Tensor.empty(hidden4, hidden, device=device),
        Tensor.empty(hidden4, xa.shape[1], device=device),
        dz,
        hs,
        xa,
        fxn=functools.partial(_weight_gradient_kernel, column_form=column_form),
    )
    return d_w_hh, d_w_in


def forward_through_time(
    forward_kernel,
    x: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    batch: int,
    steps: int,
    grad_fxn=None,
    lengths: int | None = None,
    state: Tensor | None = None,
) -> list[Tensor]:
    """A family's forward kernel over `batch` sequences of `steps` points at the start of x's
    buffer (weights in PyTorch's order, as `lstm`).

    Returns hs, cs: [T+1, H, B], tanh(c): [T, H, B], activated gates: [T, 4H, B] and the
    inputs batch-last with a row of ones, xa: [T, D+1, B]. (Padding the batch to keep rows from
    being a multiple of 512 bytes apart once helped the forward kernel; with the batch blocks
    grouped (_group) it made every kernel slower: H = 128, B = 256: 51 -> 46 ms unpadded.)

    With `lengths` (the flat position in x's buffer of the lengths [B], followed by `start`,
    see PackedBatch), sequences end at their own lengths and xa's last row is 0 past the end;
    `state` ([2, H, B], a scratch buffer when not given) is then the initial (h, c) when start
    is above 0, and receives (h_T, c_T): it is the sixth tensor returned.
    """
    hidden, inputs, device = w_hh.shape[1], w_ih.shape[1], x.device
    outputs = [
        Tensor.empty(steps + 1, hidden, batch, device=device),  # h_0 .. h_T
        Tensor.empty(steps + 1, hidden, batch, device=device),  # c_0 .. c_T
        Tensor.empty(steps, hidden, batch, device=device),  # tanh(c_1) .. tanh(c_T), for backward
        Tensor.empty(steps, 4 * hidden, batch, device=device),  # activated gates, for backward
        Tensor.empty(steps, inputs + 1, batch, device=device),  # the inputs, batch-last
    ]
    if lengths is not None:
        outputs.append(Tensor.empty(2, hidden, batch, device=device) if state is None else state)
    return Tensor.custom_kernel(
        *outputs,
        x,
        w_ih,
        b_ih,
        b_hh,
        w_hh,
        fxn=functools.partial(forward_kernel, batch=batch, lengths=lengths),
        grad_fxn=grad_fxn,
    )


def backward_through_time(
    backward_kernel,
    weight_gradients,
    dh_last: Tensor,
    hs: Tensor,
    cs: Tensor,
    tanh_cs: Tensor,
    gates: Tensor,
    xa: Tensor,
    w_hh: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward through time from dh_last: [H, B], the gradient with respect to h_T, with a
    kernel family's backward kernel and weight-gradient function (this module's, or gpu.py's).

    xa's last row (1 inside a sequence, 0 past its end, as the forward kernel writes it) masks
    the steps past each sequence's end. Returns dz: [T, 4H, B] (the gate pre-activations'
    gradients), dW_hh: [4H, H] and dW_in: [4H, D+1] (W_ih's gradient, with the biases' as its
    last column).
    """
    steps1, hidden, batch = hs.shape
    steps, device = steps1 - 1, hs.device
    dz, *_ = Tensor.custom_kernel(
        Tensor.empty(steps, 4 * hidden, batch, device=device),
        Tensor.empty(steps1, hidden, batch, device=device),
        Tensor.empty(steps1, hidden, batch, device=device),
        dh_last,
        cs,
        tanh_cs,
        gates,
        w_hh,
        xa,
        fxn=backward_kernel,
    )
    d_w_hh, d_w_in = weight_gradients(dz, hs, xa)
    return dz, d_w_hh, d_w_in


def fused_lstm(forward, backward):
    """An LSTM h_T = f(x, W_ih, W_hh, b_ih, b_hh) that tinygrad's autograd differentiates, from a
    family's forward and backward (sequence_forward / sequence_backward or their GPU twins)."""

    def gradient(grad: UOp, call: UOp) -> tuple:
        outputs, (x, w_ih, _, _, w_hh) = call.src[1:6], call.src[6:]  # no state: lstm() has no lengths
        hs, cs, tanh_cs, gates, xa = (Tensor(u.after(call)) for u in outputs)
        batch, steps, inputs = x.shape
        hidden = hs.shape[1]
        dz, d_w_hh, d_w_in = backward(Tensor(grad)[steps], hs, cs, tanh_cs, gates, xa, Tensor(w_hh))
        # the inputs' gradient (scheduled only when something needs it) is W_ih^T dz[t]
        w = Tensor(w_ih).reshape(1, 4 * hidden, inputs, 1)
        d_x = (w * dz.reshape(steps, 4 * hidden, 1, -1)).sum(1)[:, :, :batch].permute(2, 0, 1)
        d_bias = d_w_in[:, inputs]
        return (
            None,
            None,
            None,
            None,
            None,
            d_x.uop,
            d_w_in[:, :inputs].uop,
            d_bias.uop,
            d_bias.uop,
            d_w_hh.uop,
        )

    def lstm_fused(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
        """The same LSTM as `lstm_reference`, as fused kernels (forward, backward, weight gradients)."""
        batch, steps, _ = x.shape
        hs, *_ = forward(x.contiguous(), w_ih, w_hh, b_ih, b_hh, batch, steps, grad_fxn=gradient)
        return hs[steps, :, :batch].permute(1, 0)

    return lstm_fused


sequence_forward = functools.partial(forward_through_time, _forward_kernel)
sequence_backward = functools.partial(backward_through_time, _backward_kernel, _weight_gradients)
lstm_fused = fused_lstm(sequence_forward, sequence_backward)


def lstm(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, impl: str = "fused") -> Tensor:
    if impl == "fused":
        return lstm_fused(x, w_ih, w_hh, b_ih, b_hh)
    if impl == "reference":
        return lstm_reference(x, w_ih, w_hh, b_ih, b_hh)
    raise ValueError(f"unknown LSTM implementation {impl!r}; use one of {IMPLEMENTATIONS}")
