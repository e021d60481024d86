"""Run the slices of a threaded tinygrad CPU kernel on several cores at once.

The fused kernels of a step big enough to split (kernels/lstm.py, `_split`) mark their
outermost loop (independent groups of batch blocks, or tiles of the weight gradient's rows)
as a GLOBAL axis; a small step's kernels keep it a plain loop and run on the calling thread.
tinygrad's C renderer turns a GLOBAL axis into a `core_id`
argument, and tinygrad 0.14's CPU runtime then calls the compiled function once per value,
one after the other, on the calling thread. This module wraps that call so the values are
split between worker threads: a ctypes call releases Python's interpreter lock, so the
slices run on separate cores. Each slice writes its own part of every output, so the
result is the same in any order, and bit for bit the same as one thread.

`SPIRALCTL_THREADS=N` sets the number of threads (default: the cores this process may use;
1 turns the wrapping off). Nothing is wrapped until a caller asks: `cpu_threads(device)` is the
context the application layer enters around its work on a device. Inside it, CPU kernels also
compile for 512-bit vectors where the CPU has them and run with denormal floats flushed to zero.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import platform
import sys
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
            _state["pool"] = ThreadPoolExecutor(
                threads - 1, thread_name_prefix="spiralctl-kernel", initializer=_flush_denormals_here
            )
        _state["threads"] = threads
        CPUProgram.__call__ = _threaded_call(original) if threads > 1 else original
    return threads


def is_cpu(device: str) -> bool:
    return device.split(":")[0].upper() == "CPU"


@functools.cache
def cpu_description() -> str:
    """This CPU's model name and instruction-set flags, as /proc/cpuinfo gives them ("" where
    there is none): read once per process."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            return "".join(
                [line for line in info if line.startswith(("model name", "flags", "Features"))][:2]
            )
    except OSError:
        return ""


def _has_avx512() -> bool:
    return any(line.startswith("flags") and " avx512f" in line for line in cpu_description().splitlines())


WIDE_VECTORS = "prefer-vector-width=512"


def wide_vector_arch(arch: str) -> str | None:
    """tinygrad's CPU target `arch` ("x86_64,native", ...) with clang told to use 512-bit vectors,
    on x86-64 with AVX-512.

    clang's -march=native prefers 256-bit vectors even where the CPU has 512-bit ones; the
    kernels' 16-lane running sums then take two registers each. With 512-bit vectors one step
    at H = 128, B = 256 took 62-67 ms instead of 70. None where it does not apply.
    """
    if not arch.startswith("x86_64") or WIDE_VECTORS in arch.split(",") or not _has_avx512():
        return None
    return f"{arch},{WIDE_VECTORS}"


@contextmanager
def wide_vectors(device: str) -> Iterator[None]:
    """While inside, CPU kernels compile for 512-bit vectors where the CPU has them: only with
    tinygrad's clang renderer (its LLVM one takes no such flag), and not when the DEV environment
    variable names a CPU target of its own."""
    from tinygrad import Device
    from tinygrad.renderer.cstyle import ClangRenderer

    cpu = Device[device] if is_cpu(device) else None
    arch = None
    if cpu is not None and cpu.arch and isinstance(cpu.renderer, ClangRenderer):
        arch = wide_vector_arch(cpu.arch)
    if arch is None:
        yield
        return
    before, cpu.arch = cpu.arch, arch
    try:
        yield
    finally:
        cpu.arch = before


@contextmanager
def cpu_threads(device: str) -> Iterator[int]:
    """While inside, threaded CPU kernels run on thread_count() threads when `device` is the CPU,
    compiled for the widest vectors (`wide_vectors`), with denormal floats flushed to zero
    (`flush_denormals`); yields the number of threads kernels on `device` run on. Leaving
    restores one thread and the floating-point mode."""
    if not is_cpu(device):
        yield 1
        return
    threads = use_cpu_threads()
    try:
        with wide_vectors(device), flush_denormals():
            yield threads
    finally:
        use_cpu_threads(1)


# x86-64 machine code (System V calling convention) for reading and writing this thread's SSE
# control register, MXCSR: Python has no other way to reach it.
#   get: stmxcsr [rsp-4]; mov eax, [rsp-4]; ret      set(edi): mov [rsp-4], edi; ldmxcsr [rsp-4]; ret
_GET_MXCSR = bytes.fromhex("0fae5c24fc 8b4424fc c3".replace(" ", ""))
_SET_MXCSR = bytes.fromhex("897c24fc 0fae5424fc c3".replace(" ", ""))
FLUSH_TO_ZERO, DENORMALS_ARE_ZERO = 0x8000, 0x0040


@functools.cache
def _mxcsr_functions():
    """(get, set) for MXCSR, or None where they cannot be had (not x86-64 System V, or a system
    that refuses executable memory)."""
    if platform.machine().lower() not in ("x86_64", "amd64") or sys.platform == "win32":
        return None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError, AttributeError):
        return None
    page.write(_GET_MXCSR.ljust(32, b"\xcc") + _SET_MXCSR)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    get = ctypes.CFUNCTYPE(ctypes.c_uint32)(address)
    put = ctypes.CFUNCTYPE(None, ctypes.c_uint32)(address + 32)
    _keep.append(page)
    return get, put


_keep: list = []  # the code page lives as long as the process


def _flush_denormals_here() -> int | None:
    """Set flush-to-zero and denormals-are-zero on the calling thread; returns the mode before
    (None where MXCSR cannot be reached)."""
    functions = _mxcsr_functions()
    if functions is None:
        return None
    get, put = functions
    before = get()
    put(before | FLUSH_TO_ZERO | DENORMALS_ARE_ZERO)
    return before


@contextmanager
def flush_denormals() -> Iterator[None]:
    """While inside, this thread (and the kernel threads, set when they start) treat floats below
    1.2e-38 as zero, as XLA's CPU runtime does. Values that small arise in training (the cell
    state's gradient shrinks by a forget gate each step back through time) and cost x86 CPUs a
    microcode assist per operation: on 500-point sequences one training step took 35-60 ms with
    them and 6.7 ms without. Leaving restores the thread's mode."""
    before = _flush_denormals_here()
    try:
        yield
    finally:
        if before is not None:
            _mxcsr_functions()[1](before)
