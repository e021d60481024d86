"""Adam as one custom tinygrad kernel that updates every parameter and both moments in place.

tinygrad's own Adam schedules several kernels per parameter and step; on the CPU device each
kernel launch costs tens of microseconds, which for this small model is more than the update.
The step-dependent numbers (learning rate and the bias corrections) come in as a tensor, so
a jitted step reads them fresh every call and the same step count always gives the same
numbers (exact resume).
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
from tinygrad import Tensor, UOp
from tinygrad.uop.ops import AxisType, KernelInfo

from spiralctl.kernels.staging import staging_tensor, upload

BETAS = (0.9, 0.999)
EPS = 1e-8


def _adam_kernel(*buffers: UOp, count: int, sources: tuple, offset: int) -> UOp:
    """buffers: the parameters, first moments and second moments (`count` each), the gradient
    buffers, and last the buffer holding [lr, 1/(1-b1^t), 1/(1-b2^t)] at `offset`.

    sources[i] = (g, index): parameter i's gradient at flat position n is gradient buffer g at
    index(n), so a gradient can be part of a larger buffer without a copy.
    """
    params, exp_avg, exp_avg_sq = buffers[:count], buffers[count : 2 * count], buffers[2 * count : 3 * count]
    grads, scalars = buffers[3 * count : -1], buffers[-1].flatten()
    lr, correction1, correction2 = (scalars[offset + k] for k in range(3))
    b1, b2 = BETAS
    ids = itertools.count()
    updates = []
    for p, m, v, (g, index) in zip(params, exp_avg, exp_avg_sq, sources):
        p, m, v, g = p.flatten(), m.flatten(), v.flatten(), grads[g].flatten()
        # LOOP: a WEAK loop would become part of a GPU launch grid shared by all the parameters'
        # loops, and each update would run once per thread of it
        i = UOp.range(p.numel(), next(ids), AxisType.LOOP)
        grad = g[index(i)]
        m_new = m[i] * b1 + grad * (1 - b1)
        v_new = v[i] * b2 + grad * grad * (1 - b2)
        step = lr * (m_new * correction1) / ((v_new * correction2).sqrt() + EPS)
        updates.append(UOp.group(m[i].store(m_new), v[i].store(v_new), p[i].store(p[i] - step)).end(i))
    return UOp.group(*updates).sink(arg=KernelInfo(name="adam", opts_to_apply=()))


def _same(i: UOp) -> UOp:
    return i


def adam_scalars(lr: float, step: int) -> np.ndarray:
    """[lr, 1/(1-b1^step), 1/(1-b2^step)] for the `step`-th update (counting from 1)."""
    b1, b2 = BETAS
    return np.array([lr, 1.0 / (1.0 - b1**step), 1.0 / (1.0 - b2**step)], dtype=np.float32)


class FusedAdam:
    """Adam (PyTorch's defaults: betas 0.9, 0.999, eps 1e-8) over a list of parameter tensors."""

    def __init__(self, params: list[Tensor], kernel=None) -> None:
        """kernel: what builds the update kernel (a kernel family's adam_kernel; default the CPU's)."""
        self.params = params
        self.kernel = kernel or _adam_kernel
        # filled from numpy: no kernel to compile before the first step
        self.exp_avg = [upload(staging_tensor(p.shape, p.device), np.zeros(p.shape)) for p in params]
        self.exp_avg_sq = [upload(staging_tensor(p.shape, p.device), np.zeros(p.shape)) for p in params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self, scalars: Tensor) -> list[Tensor]:
        """Update in place from the parameters' .grad; returns the tensors to realize."""
        grads = [p.grad for p in self.params]
        Tensor.realize(*grads)  # the gradients read the old parameters: finish them first
        return self.update(grads, [(k, _same) for k in range(len(grads))], scalars.contiguous())

    def update(
        self, grads: list[Tensor], sources: list[tuple], scalars: Tensor, offset: int = 0
    ) -> list[Tensor]:
        """Update in place from realized gradient buffers; parameter i's gradient at flat position
        n is grads[g][index(n)] for (g, index) = sources[i]. scalars holds [lr, 1/(1-b1^t),
        1/(1-b2^t)] at flat position `offset`. Returns the tensors to realize."""
        count = len(self.params)
        states = [*self.params, *self.exp_avg, *self.exp_avg_sq]
        fxn = functools.partial(self.kernel, count=count, sources=tuple(sources), offset=offset)
        outputs = Tensor.custom_kernel(*states, *grads, scalars, fxn=fxn)
        for tensor, updated in zip(states, outputs):
            tensor.replace(updated)  # the kernel wrote into the same buffers
        return states

    def load(self, exp_avg: list[np.ndarray], exp_avg_sq: list[np.ndarray]) -> None:
        for tensor, value in zip(self.exp_avg + self.exp_avg_sq, exp_avg + exp_avg_sq):
            upload(tensor, value)
