"""What the GPU kernel tests share: the device they run on (OpenCL through pocl, or
SPIRALCTL_GPU_TEST_DEVICE), markers that skip without it, and a record of every OpenCL launch."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from tinygrad import Device


def _has_device(name: str) -> bool:
    try:
        Device[name]
    except (RuntimeError, OSError, AttributeError, KeyError):  # e.g. no libOpenCL, or no platform: no pocl
        return False
    return True


# the real-workgroup device: OpenCL (pocl), or SPIRALCTL_GPU_TEST_DEVICE on a machine with a GPU
GPU = os.environ.get("SPIRALCTL_GPU_TEST_DEVICE", "CL")
HAS_GPU = _has_device(GPU)
HAS_CL = GPU == "CL" and HAS_GPU
needs_gpu = pytest.mark.skipif(
    not HAS_GPU, reason=f"no {GPU} device (for CL: apt-get install pocl-opencl-icd)"
)
needs_cl = pytest.mark.skipif(not HAS_CL, reason="launch sizes are recorded on OpenCL only")


def cl(*case) -> object:
    """A test case on the real-workgroup device, skipped without it."""
    return pytest.param(GPU, *case, marks=needs_gpu)


GPU_KERNELS = {
    "lstm_forward_gpu",
    "lstm_backward_gpu",
    "lstm_weight_grad_hh_gpu",
    "lstm_weight_grad_in_gpu",
    "lstm_head_loss_gpu",
    "lstm_head_dh_gpu",
    "lstm_head_weights_gpu",
    "adam_gpu",
}

# every OpenCL launch: (kernel name, global size in workgroups, local size)
LAUNCHES: list[tuple[str, tuple, tuple]] = []


def _record_cl_launches() -> None:
    from tinygrad.runtime.ops_cl import CLProgram

    if getattr(CLProgram, "_recording", False):
        return
    init, call = CLProgram.__init__, CLProgram.__call__

    def named_init(self, device, obj) -> None:
        init(self, device, obj)
        self.recorded_name = obj.name

    def recorded_call(self, *bufs, global_size=(1, 1, 1), local_size=None, **kwargs):
        LAUNCHES.append(
            (getattr(self, "recorded_name", "?"), tuple(global_size), tuple(local_size or (1, 1, 1)))
        )
        return call(self, *bufs, global_size=global_size, local_size=local_size, **kwargs)

    CLProgram.__init__, CLProgram.__call__, CLProgram._recording = named_init, recorded_call, True


if HAS_CL:
    _record_cl_launches()


def _close(actual, expected, name: str) -> None:
    # float32 kernels against a float64 reference: 1e-5 of the array's scale (as tests/test_lstm.py)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, atol=1e-5 * scale, err_msg=name)


def _threads(global_size, local_size) -> int:
    return math.prod(global_size) * math.prod(local_size)
