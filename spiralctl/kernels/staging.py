"""Device buffers that are filled from numpy without going through tinygrad's scheduler.

`Tensor(array)` schedules and realizes a copy every time (about 10 ms on the CPU device);
copying into a buffer that already exists costs well under a millisecond. Jitted functions
then see the same input buffers on every call.
"""

from __future__ import annotations

import numpy as np
from tinygrad import Device, Tensor
from tinygrad.device import Buffer


def staging_tensor(shape: tuple[int, ...], device: str) -> Tensor:
    """A realized float32 tensor whose buffer `upload` fills."""
    tensor = Tensor.empty(*shape, device=device).contiguous().realize()
    tensor.uop.buffer.ensure_allocated()
    return tensor


def upload(tensor: Tensor, array: np.ndarray) -> Tensor:
    """Copy `array` (same number of float32 elements) into `tensor`'s buffer."""
    buffer = tensor.uop.buffer
    data = np.ascontiguousarray(array, dtype=np.float32)
    if data.size != buffer.size:
        raise ValueError(f"upload of {data.size} values into a buffer of {buffer.size}")
    if hasattr(buffer.allocator, "_as_buffer"):
        # device memory the host can address (the CPU device): once the device is idle, write
        # into it directly (about 30 microseconds for a seed-sized batch; a scheduled copy: 700)
        view = buffer.as_memoryview(allow_zero_copy=True)
        if not view.readonly:
            np.frombuffer(view, dtype=np.float32, count=buffer.size)[:] = data.reshape(-1)
            return tensor
    buffer.copy_from(Buffer("PYTHON", buffer.size, buffer.dtype, opaque=memoryview(data).cast("B")))
    # the copy may only be queued (OpenCL, CUDA): wait for it, as `data` may be the caller's array,
    # which the caller then refills for the next chunk or batch
    Device[buffer.device].synchronize()
    return tensor


def download(tensor: Tensor) -> np.ndarray:
    """A copy of a realized float32 tensor's data, read straight from its buffer.

    `Tensor.numpy()` schedules a contiguous copy first (about 2 ms on the CPU device).
    """
    buffer = tensor.uop.buffer
    view = buffer.as_memoryview(allow_zero_copy=True)
    return np.frombuffer(view, dtype=np.float32, count=buffer.size).copy().reshape(tensor.shape)
