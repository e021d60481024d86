"""The LSTM recurrence on tinygrad: a plain reference and a fused fast path.

Both take x: [B, T, D] and PyTorch-layout weights (gate order i, f, g, o) and
return the last hidden state h_T: [B, H].

The fused path runs the whole time loop in one custom kernel (batch in
parallel, time sequential) and the whole backward pass through time in a
second one, joined by `grad_fxn`, so a training step has a handful of kernels
whatever the sequence length. Its buffers are batch-last, ([T, H, B]), so the
innermost index runs over the batch.
"""

from __future__ import annotations

from tinygrad import Tensor, UOp, dtypes
from tinygrad.dtype import AddrSpace
from tinygrad.uop.ops import AxisType, KernelInfo

IMPLEMENTATIONS = ("fused", "reference")


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


def _forward_kernel(hs: UOp, cs: UOp, gates: UOp, xp: UOp, w_hh: UOp) -> UOp:
    """hs, cs: [T+1, H, B] (row 0 is the zero state); gates: [T, 4H, B] after activation.

    xp: [T, 4H, B] is the input projection plus both biases, computed before the loop.
    """
    steps1, hidden, batch = hs.shape
    steps = steps1 - 1
    b = UOp.range(batch, 0)
    j0 = UOp.range(hidden, 1)
    init = UOp.group(hs[0, j0, b].store(0.0), cs[0, j0, b].store(0.0)).end(j0)
    hs0, cs0 = hs.after(init), cs.after(init)

    t = UOp.range(steps, 2, AxisType.REDUCE)
    j = UOp.range(4 * hidden, 3)
    k = UOp.range(hidden, 4, AxisType.REDUCE)
    acc = UOp.placeholder((1,), dtypes.float, 0, addrspace=AddrSpace.REG)
    acc = acc.after(t, j)[0].set(xp[t, j, b])
    acc = acc[0].set(acc.after(k)[0] + w_hh[j, k] * hs0.after(t)[t, k, b], end=k)
    # tanh(z) = 2*sigmoid(2z) - 1 for the g gate, sigmoid for the others: one expression, no branch
    scale = ((j >= 2 * hidden) & (j < 3 * hidden)).where(2.0, 1.0)
    active = scale * _sigmoid(acc[0] * scale) - (scale - 1.0)
    gv = gates.after(gates[t, j, b].store(active).end(j))

    n = UOp.range(hidden, 5)
    i, f, g, o = (gv[t, q * hidden + n, b] for q in range(4))
    c_new = f * cs0.after(t)[t, n, b] + i * g
    stores = UOp.group(cs[t + 1, n, b].store(c_new), hs[t + 1, n, b].store(o * _tanh(c_new)))
    return stores.end(n).end(t).end(b).sink(arg=KernelInfo(name="lstm_forward", opts_to_apply=()))


def _backward_kernel(dz: UOp, dc_carry: UOp, dh_carry: UOp, dhs: UOp, cs: UOp, gates: UOp, w_hh: UOp) -> UOp:
    """Backward through time. dz: [T, 4H, B] gradient of the gate pre-activations.

    dc_carry[t] and dh_carry[t] hold what step t passes back to step t-1; row T is zero.
    """
    steps, hidden4, batch = dz.shape
    hidden = hidden4 // 4
    b = UOp.range(batch, 0)
    j0 = UOp.range(hidden, 1)
    init = UOp.group(dc_carry[steps, j0, b].store(0.0), dh_carry[steps, j0, b].store(0.0)).end(j0)
    dc0, dh0 = dc_carry.after(init), dh_carry.after(init)

    r = UOp.range(steps, 2, AxisType.REDUCE)
    t = (steps - 1) - r
    k = UOp.range(hidden, 3)
    dh = dhs[t + 1, k, b] + dh0.after(r)[t + 1, k, b]
    i, f, g, o = (gates[t, q * hidden + k, b] for q in range(4))
    tanh_c = _tanh(cs[t + 1, k, b])
    dc = dc0.after(r)[t + 1, k, b] + dh * o * (1 - tanh_c * tanh_c)
    gate_grads = UOp.group(
        dz[t, k, b].store(dc * g * i * (1 - i)),
        dz[t, hidden + k, b].store(dc * cs[t, k, b] * f * (1 - f)),
        dz[t, 2 * hidden + k, b].store(dc * i * (1 - g * g)),
        dz[t, 3 * hidden + k, b].store(dh * tanh_c * o * (1 - o)),
        dc_carry[t, k, b].store(dc * f),
    ).end(k)
    dzv = dz.after(gate_grads)

    n = UOp.range(hidden, 4)
    j = UOp.range(4 * hidden, 5, AxisType.REDUCE)
    acc = UOp.placeholder((1,), dtypes.float, 0, addrspace=AddrSpace.REG)
    acc = acc.after(r, n)[0].set(0.0)
    acc = acc[0].set(acc.after(j)[0] + w_hh[j, n] * dzv[t, j, b], end=j)
    done = dh_carry[t, n, b].store(acc[0]).end(n).end(r).end(b)
    return done.sink(arg=KernelInfo(name="lstm_backward", opts_to_apply=()))


def _fused_gradient(grad: UOp, call: UOp) -> tuple:
    hs_buf, cs_buf, gates_buf, _xp, w_hh = call.src[1:]
    hs, cs, gates = (Tensor(u.after(call)) for u in (hs_buf, cs_buf, gates_buf))
    steps1, hidden, batch = hs.shape
    steps, device = steps1 - 1, hs.device
    dz, *_ = Tensor.custom_kernel(
        Tensor.empty(steps, 4 * hidden, batch, device=device),
        Tensor.empty(steps1, hidden, batch, device=device),
        Tensor.empty(steps1, hidden, batch, device=device),
        Tensor(grad),
        cs,
        gates,
        Tensor(w_hh),
        fxn=_backward_kernel,
    )
    # weight gradient over all time steps at once: sum_t,b dz[t, j, b] * h[t, k, b]
    d_w_hh = (dz.reshape(steps, 4 * hidden, 1, batch) * hs[:steps].reshape(steps, 1, hidden, batch)).sum(
        (0, 3)
    )
    return (None, None, None, dz.uop, d_w_hh.uop)


def lstm_fused(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
    """The same LSTM as `lstm_reference`, as two fused kernels (forward and backward)."""
    batch, steps, inputs = x.shape
    hidden = w_hh.shape[1]
    # the input projection for all time steps, batch-last: [T, 4H, B]
    x_tdb = x.permute(1, 2, 0).reshape(steps, 1, inputs, batch)
    xp = (w_ih.reshape(1, 4 * hidden, inputs, 1) * x_tdb).sum(2) + (b_ih + b_hh).reshape(1, 4 * hidden, 1)
    device = x.device
    hs, *_ = Tensor.custom_kernel(
        Tensor.empty(steps + 1, hidden, batch, device=device),
        Tensor.empty(steps + 1, hidden, batch, device=device),
        Tensor.empty(steps, 4 * hidden, batch, device=device),
        xp.contiguous(),
        w_hh,
        fxn=_forward_kernel,
        grad_fxn=_fused_gradient,
    )
    return hs[steps].permute(1, 0)


def lstm(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, impl: str = "fused") -> Tensor:
    if impl == "fused":
        return lstm_fused(x, w_ih, w_hh, b_ih, b_hh)
    if impl == "reference":
        return lstm_reference(x, w_ih, w_hh, b_ih, b_hh)
    raise ValueError(f"unknown LSTM implementation {impl!r}; use one of {IMPLEMENTATIONS}")
