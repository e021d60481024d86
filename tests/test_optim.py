"""The fused Adam kernel against a numpy Adam (PyTorch's formulation)."""

from __future__ import annotations

import numpy as np
from tinygrad import Tensor

from spiralctl.kernels.adam import BETAS, EPS, FusedAdam, adam_scalars


def test_fused_adam_matches_numpy_over_several_steps():
    rng = np.random.default_rng(0)
    shapes = [(6, 2), (6,), (1, 3), (1,)]
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    targets = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    params = [Tensor(a.copy()).realize() for a in start]
    adam = FusedAdam(params)
    ref = [a.astype(np.float64) for a in start]
    m = [np.zeros_like(a) for a in ref]
    v = [np.zeros_like(a) for a in ref]
    lr = 0.05
    for step in range(1, 6):
        adam.zero_grad()
        loss = sum(((p - Tensor(t)) ** 2).sum() for p, t in zip(params, targets))
        loss.backward()
        Tensor.realize(*adam.step(Tensor(adam_scalars(lr, step))))
        for i, target in enumerate(targets):
            grad = 2 * (ref[i] - target)
            m[i] = BETAS[0] * m[i] + (1 - BETAS[0]) * grad
            v[i] = BETAS[1] * v[i] + (1 - BETAS[1]) * grad**2
            m_hat, v_hat = m[i] / (1 - BETAS[0] ** step), v[i] / (1 - BETAS[1] ** step)
            ref[i] = ref[i] - lr * m_hat / (np.sqrt(v_hat) + EPS)
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p.numpy(), r, atol=1e-5)
    for mine, r in zip(adam.exp_avg, m):
        np.testing.assert_allclose(mine.numpy(), r, atol=1e-5)
