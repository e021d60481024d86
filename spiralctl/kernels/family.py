"""Kernel families: the CPU kernels (clang's SIMD, slices on threads) and the GPU kernels
(workgroups, local memory, barriers), with the same buffers in and out. The model picks one by
its device; the code above the kernels is the same for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from spiralctl.kernels import gpu, lstm, step
from spiralctl.kernels.adam import _adam_kernel
from spiralctl.kernels.threads import is_cpu


@dataclass(frozen=True)
class KernelFamily:
    name: str
    sequence_forward: Callable  # (x, w_ih, w_hh, b_ih, b_hh, batch, steps) -> hs, cs, tanh(c), gates, xa, ...
    sequence_backward: Callable  # (dh_T, hs, cs, tanh(c), gates, xa, w_hh) -> dz, dW_hh, dW_in
    head: Callable  # (hs, w_head, b_head, packed, batch, offset) -> results, dh_T, d_head, ...
    adam_kernel: Callable  # builds the Adam kernel: (*buffers, count, sources, offset) -> UOp
    lstm_fused: Callable  # (x, w_ih, w_hh, b_ih, b_hh) -> h_T, differentiable


CPU = KernelFamily(
    "cpu", lstm.sequence_forward, lstm.sequence_backward, step._head, _adam_kernel, lstm.lstm_fused
)
GPU = KernelFamily(
    "gpu",
    gpu.sequence_forward_gpu,
    gpu.sequence_backward_gpu,
    gpu.head_gpu,
    gpu._adam_kernel_gpu,
    gpu.lstm_fused_gpu,
)


def kernel_family(device: str) -> KernelFamily:
    """The CPU family on tinygrad's CPU device (any renderer); the GPU family on the others (CUDA,
    NV, AMD, HIP, METAL, CL, PYTHON, ...)."""
    return CPU if is_cpu(device) else GPU
