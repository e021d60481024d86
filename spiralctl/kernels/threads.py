"""Run the slices of a threaded tinygrad CPU kernel on several cores at once.

The fused kernels mark their outermost loop (independent blocks of the batch, or of the
weight gradient's rows) as a GLOBAL axis. tinygrad's C renderer turns it into a `core_id`
argument, and tinygrad 0.14's CPU runtime then calls the compiled function once per value,
one after the other, on the calling thread. This module wraps that call so the values are
split between worker threads: a ctypes call releases Python's interpreter lock, so the
slices run on separate cores. Each slice writes its own part of every output, so the
result is the same in any order, and bit for bit the same as one thread.

`SPIRALCTL_THREADS=N` sets the number of threads (default: the cores this process may use;
1 turns the wrapping off). Nothing is wrapped until a caller asks: `cpu_threads(device)` is the
context the application layer enters around its work on a device.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from spiralctl.errors import SpiralError

_lock = threading.Lock()
_state: dict = {"threads": 1, "pool": None}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def thread_count() -> int:
    """The number of threads kernels run on (SPIRALCTL_THREADS, else every usable core)."""
    value = os.environ.get("SPIRALCTL_THREADS", "").strip()
    if not value:
        return available_cores()
    if not (value.isdigit() and int(value) >= 1):
        raise SpiralError(
            f"SPIRALCTL_THREADS must be a whole number of at least 1 (got {value!r}); "
            "unset it to use every core"
        )
    return int(value)


def _threaded_call(original):
    def call(self, *bufs, global_size=(1, 1, 1), local_size=(1, 1, 1), vals=(), wait=False, timeout=None):
        slot = getattr(self, "runtimevars", {}).get("core_id")
        slices, threads = global_size[0], _state["threads"]
        if slot is None or threads < 2 or slices < 2 or getattr(self, "lvp", False):
            sizes = {"global_size": global_size, "local_size": local_size}
            return original(self, *bufs, **sizes, vals=vals, wait=wait, timeout=timeout)
        started = time.perf_counter()
        args = [*(b.va_addr for b in bufs), *(0 if v is None else v for v in vals)]  # core_id: None

        def run(first: int, last: int) -> None:
            own = [ctypes.c_uint64(x) for x in args]
            for tid in range(first, last):
                own[slot] = ctypes.c_uint64(tid)
                self.fxn(*own)

        parts = min(threads, slices)
        bounds = [slices * i // parts for i in range(parts + 1)]
        others = [_state["pool"].submit(run, bounds[i], bounds[i + 1]) for i in range(1, parts)]
        run(bounds[0], bounds[1])
        for future in others:
            future.result()
        return time.perf_counter() - started if wait else None

    call.__wrapped__ = original
    return call


def current_threads() -> int:
    """The number of threads CPU kernels run on now (1 outside `cpu_threads`)."""
    return _state["threads"]


def use_cpu_threads(threads: int | None = None) -> int:
    """Split threaded CPU kernels over `threads` threads (default: thread_count()); returns
    the number in use. Safe to call again; 1 restores tinygrad's one-thread calls."""
    from tinygrad.runtime.ops_cpu import CPUProgram

    threads = thread_count() if threads is None else max(1, threads)
    with _lock:
        current = CPUProgram.__call__
        original = getattr(current, "__wrapped__", current)
        if _state["threads"] != threads and _state["pool"] is not None:
            _state["pool"].shutdown(wait=True)  # idle threads: ends at once
            _state["pool"] = None
        if threads > 1 and _state["pool"] is None:
            _state["pool"] = ThreadPoolExecutor(threads - 1, thread_name_prefix="spiralctl-kernel")
        _state["threads"] = threads
        CPUProgram.__call__ = _threaded_call(original) if threads > 1 else original
    return threads


def is_cpu(device: str) -> bool:
    return device.split(":")[0].upper() == "CPU"


def _has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            return any(line.startswith("flags") and " avx512f" in line for line in info)
    except OSError:
        return False


def wide_vector_arch() -> str | None:
    """tinygrad's CPU target with clang told to use 512-bit vectors, on x86-64 with AVX-512.

    clang's -march=native prefers 256-bit vectors even where the CPU has 512-bit ones; the
    kernels' 16-lane running sums then take two registers each. With 512-bit vectors one step
    at H = 128, B = 256 took 62-67 ms instead of 70. None where it does not apply.
    """
    if platform.machine().lower() not in ("x86_64", "amd64") or not _has_avx512():
        return None
    return "x86_64,native,prefer-vector-width=512"


@contextmanager
def wide_vectors(device: str) -> Iterator[None]:
    """While inside, CPU kernels compile for 512-bit vectors where the CPU has them (unless the
    DEV environment variable names a CPU target of its own)."""
    from tinygrad import Device

    arch = wide_vector_arch() if is_cpu(device) else None
    if arch is None:
        yield
        return
    cpu = Device[device]
    before, cpu.arch = cpu.arch, arch
    try:
        yield
    finally:
        cpu.arch = before


@contextmanager
def cpu_threads(device: str) -> Iterator[int]:
    """While inside, threaded CPU kernels run on thread_count() threads when `device` is the CPU,
    compiled for the widest vectors (`wide_vectors`); yields the number of threads kernels on
    `device` run on. Leaving restores one thread."""
    if not is_cpu(device):
        yield 1
        return
    threads = use_cpu_threads()
    try:
        with wide_vectors(device):
            yield threads
    finally:
        use_cpu_threads(1)
