"""64-bit index arithmetic in the code tinygrad generates for the CPU, whichever clang compiles it.

tinygrad 0.14 writes a kernel's indices as 32-bit ints wherever they fit. clang 14 (Debian 12's
`clang`) and 15 vectorise the kernels' inner loops all the same; clang 19 does not. Its
loop-access analysis gives up on the 32-bit index once it is sign-extended to an address, calls
the recurrent product's read-modify-write of the gate rows an "unsafe indirect dependence", and
the inner loops of the forward and backward kernels run one float at a time: at H = 512, B = 128
a training step took 1150 ms instead of 107. With 64-bit indices clang 19's kernels run as fast
as clang 14's (106 ms a step with either), and clang 14's are unchanged.

`install()` makes tinygrad's index lowering choose 64-bit integers while it generates code for a
CPU renderer (C for clang, or LLVM IR), and leaves every other renderer's code as it was (a GPU
pays for 64-bit integer arithmetic). It applies in every process that imports spiralctl's
kernels, a library user's own tinygrad CPU kernels included; the numbers are the same bits. The
index width is not part of tinygrad's program cache key: programs/FORMAT changed with it, so
programs made before are not reused.
"""

from __future__ import annotations

import threading

_state = threading.local()  # wide: the code being generated on this thread is for the CPU
_tinygrad_worker_init = None  # tinygrad's own initializer of its compile workers


def _widened(renderer) -> bool:
    """Is `renderer` tinygrad's C or LLVM renderer for the CPU, with 64-bit ints not emulated
    (EMULATED_DTYPES=long, a debugging setting, would need 64-bit indices as pairs of ints)?"""
    from tinygrad.dtype import dtypes
    from tinygrad.helpers import EMULATED_DTYPES
    from tinygrad.renderer.cstyle import ClangRenderer
    from tinygrad.renderer.llvmir import CPULLVMRenderer

    return (
        isinstance(renderer, (ClangRenderer, CPULLVMRenderer))
        and getattr(renderer.target, "device", None) == "CPU"  # not the DSP's subclass of the C one
        and dtypes.long not in EMULATED_DTYPES.tolist(dtypes)
    )


def init_compile_worker() -> None:
    """tinygrad's own compile workers' initializer, in their place: a spawned worker that
    unpickles it imports spiralctl.kernels, which installs the patch there too."""
    install()
    _tinygrad_worker_init()


def install() -> None:
    """Patch tinygrad's code generator, once per process (forked workers inherit it, and
    tinygrad's spawned ones get it through `init_compile_worker`)."""
    global _tinygrad_worker_init
    import tinygrad.codegen as codegen
    import tinygrad.uop.weak as weak
    from tinygrad.dtype import dtypes
    from tinygrad.engine import worker

    if getattr(codegen.full_rewrite_to_sink, "wide_cpu_indices", False):
        return
    rewrite, default_dtype = codegen.full_rewrite_to_sink, weak.default_dtype

    def index_dtype(u):
        if getattr(_state, "wide", False) and u.dtype is not dtypes.weakfloat:
            return dtypes.long
        return default_dtype(u)

    def full_rewrite_to_sink(ast, ren, optimize: bool = True):
        before = getattr(_state, "wide", False)
        _state.wide = _widened(ren)
        try:
            return rewrite(ast, ren, optimize)
        finally:
            _state.wide = before

    full_rewrite_to_sink.wide_cpu_indices = True
    weak.default_dtype = index_dtype
    codegen.full_rewrite_to_sink = full_rewrite_to_sink
    _tinygrad_worker_init, worker._init_worker = worker._init_worker, init_compile_worker
