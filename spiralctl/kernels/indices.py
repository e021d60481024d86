"""64-bit index arithmetic in the code tinygrad generates for the CPU, whichever clang compiles it.

tinygrad 0.14 writes a kernel's indices as 32-bit ints wherever they fit. clang 14 and 15 (Debian
12's `clang`) vectorise the kernels' inner loops all the same; clang 19 does not. Its
loop-access analysis gives up on the 32-bit index once it is sign-extended to an address, calls
the recurrent product's read-modify-write of the gate rows an "unsafe indirect dependence", and
the inner loops of the forward and backward kernels run one float at a time: at H = 512, B = 128
a training step took 1150 ms instead of 107. With 64-bit indices clang 19's kernels run as fast
as clang 14's (106 ms a step with either), and clang 14's are unchanged.

`install()` makes tinygrad's index lowering choose 64-bit integers while it generates code for a
CPU renderer (C for clang, or LLVM IR), and leaves every other renderer's code as it was (a GPU
pays for 64-bit integer arithmetic). The index width is not part of tinygrad's program cache key:
programs/FORMAT changed with it, so programs made before are not reused.
"""

from __future__ import annotations

import threading

_state = threading.local()  # wide: the code being generated on this thread is for the CPU


def _cpu_renderer(renderer) -> bool:
    from tinygrad.renderer.cstyle import ClangRenderer
    from tinygrad.renderer.llvmir import CPULLVMRenderer

    return isinstance(renderer, (ClangRenderer, CPULLVMRenderer))


def install() -> None:
    """Patch tinygrad's code generator (once per process; forked workers inherit it)."""
    import tinygrad.codegen as codegen
    import tinygrad.uop.weak as weak
    from tinygrad.dtype import dtypes

    if getattr(codegen.full_rewrite_to_sink, "wide_cpu_indices", False):
        return
    rewrite, default_dtype = codegen.full_rewrite_to_sink, weak.default_dtype

    def index_dtype(u):
        if getattr(_state, "wide", False) and u.dtype is not dtypes.weakfloat:
            return dtypes.long
        return default_dtype(u)

    def full_rewrite_to_sink(ast, ren, optimize: bool = True):
        before = getattr(_state, "wide", False)
        _state.wide = _cpu_renderer(ren)
        try:
            return rewrite(ast, ren, optimize)
        finally:
            _state.wide = before

    full_rewrite_to_sink.wide_cpu_indices = True
    weak.default_dtype = index_dtype
    codegen.full_rewrite_to_sink = full_rewrite_to_sink
