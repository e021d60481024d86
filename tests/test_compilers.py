"""The CPU kernels' C code under every clang on this machine (clang-14 ... clang-24 on PATH).

Their indices are 64-bit (spiralctl/kernels/indices.py): with 32-bit ones clang 19 left the inner
loops of the forward and backward kernels scalar, ten times slower than clang 14's. Tests never
time anything: they check what each clang reports it vectorised, and the numbers its kernels give.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import shutil
import subprocess
import sys

import pytest
from helpers import assert_like_lstm_numpy, lstm_inputs, lstm_outputs, render
from tinygrad import Device
from tinygrad.codegen import to_program
from tinygrad.uop.ops import Ops

from spiralctl.kernels.threads import cpu_threads, use_cpu_threads

CLANGS = [f"clang-{n}" for n in range(14, 25) if shutil.which(f"clang-{n}")]
# the kernels whose inner loops carry the work; the head's small reductions are not vectorised
# by any clang, and need not be
VECTORISED = ("lstm_forward", "lstm_backward", "lstm_weight_grad")
# (batch, steps, hidden): the tiles (H < 128) and the weight gradients' column form (H >= 128)
SHAPES = [(64, 3, 32), (32, 2, 128)]


@functools.cache
def _kernels(batch, steps, hidden) -> dict:
    """The fused kernels' ASTs, as tinygrad hands them to code generation."""
    outputs = lstm_outputs(*lstm_inputs(batch, steps, hidden))
    linear = outputs[0].schedule_linear(*outputs[1:])
    asts = [call.src[0] for call in linear.toposort() if call.op is Ops.CALL and call.src[0].op is Ops.SINK]
    return {ast.arg.name: ast for ast in asts if ast.arg.name.startswith("lstm_")}


@functools.cache
def _cpu_sources(batch, steps, hidden) -> dict[str, str]:
    """Each fused kernel's C source for this CPU, as a run makes it (inside cpu_threads)."""
    try:
        with cpu_threads("CPU"):
            renderer = Device["CPU"].renderer
            kernels = _kernels(batch, steps, hidden)
            programs = {name: to_program(ast, renderer) for name, ast in kernels.items()}
    finally:
        use_cpu_threads(1)
    return {name: next(s.arg for s in p.src if s.op is Ops.SOURCE) for name, p in programs.items()}


LOOP = re.compile(r"for \((\w+) [LR]idx")


@pytest.mark.parametrize("batch, steps, hidden", SHAPES)
def test_cpu_code_indexes_with_64_bit_integers_and_gpu_code_with_32(batch, steps, hidden):
    sources = _cpu_sources(batch, steps, hidden)
    assert set(VECTORISED) <= set(sources)
    for name, source in sources.items():
        assert set(LOOP.findall(source)) == {"long"}, name
    cuda, _, _ = render(_kernels(batch, steps, hidden)["lstm_forward"], "CUDA")
    assert set(LOOP.findall(cuda)) <= {"int"} and "long" not in cuda


def _clang_flags() -> list[str]:
    """tinygrad's flags for this CPU's kernels (spiralctl's 512-bit vectors included)."""
    try:
        with cpu_threads("CPU"):
            args = list(Device["CPU"].compiler.args)
    finally:
        use_cpu_threads(1)
    return ["-c", "-x", "c", "-O2", "-fPIC", "-ffreestanding", "-fno-math-errno", "-nostdlib", *args]


def _innermost_loops(source: str) -> set[int]:
    """The lines (from 1) of the loops in `source` with no loop inside."""
    innermost, stack = set(), []  # stack: [line, is a loop, has a loop inside] per open brace
    for number, line in enumerate(source.splitlines(), 1):
        if line.rstrip().endswith("{"):
            loop = LOOP.search(line) is not None
            if loop:
                for block in stack:
                    block[2] = True
            stack.append([number, loop, False])
        elif line.strip().startswith("}") and stack:
            number_open, loop, inner = stack.pop()
            if loop and not inner:
                innermost.add(number_open)
    return innermost


@pytest.mark.skipif(not CLANGS, reason="no clang-N on PATH")
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 flags")
@pytest.mark.parametrize("clang", CLANGS)
@pytest.mark.parametrize("batch, steps, hidden", SHAPES)
def test_every_clang_vectorises_the_inner_loops(clang, batch, steps, hidden, tmp_path):
    flags = _clang_flags()
    vector_types = [
        f"typedef float float{n} __attribute__((aligned({4 * n}),ext_vector_type({n})));" for n in (2, 4)
    ]
    for name in VECTORISED:
        source = _cpu_sources(batch, steps, hidden)[name]
        lines = [line for line in source.splitlines() if not line.startswith("typedef ")]
        code = "\n".join(vector_types + lines) + "\n"
        path = tmp_path / f"{name}.c"
        path.write_text(code)
        result = subprocess.run(
            [
                clang,
                *flags,
                "-Rpass-missed=loop-vectorize",
                "-Rpass-analysis=loop-vectorize",
                "-o",
                os.devnull,
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        remark = rf"{name}\.c:(\d+):\d+: remark: loop not vectorized"
        missed = {int(line) for line in re.findall(remark, result.stderr)}
        innermost = _innermost_loops(code)
        assert len(innermost) >= 3, name
        assert not missed & innermost, (name, result.stderr[:3000])
        assert "unsafe" not in result.stderr, (name, result.stderr[:3000])  # the analysis' reason


# a process of its own, so that tinygrad runs CC (read once) and has a cache of its own: its
# binaries are keyed by the source, not by the compiler that built them (a process that runs the
# default compiler, as this one does, may use this session's cache). argv: the tests' folder, and
# "32" to generate code with tinygrad's own 32-bit indices
RUN_KERNELS = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from helpers import lstm_inputs, lstm_outputs
from test_compilers import SHAPES
from spiralctl.kernels import indices
from spiralctl.kernels.threads import cpu_threads

if sys.argv[2:] == ["32"]:
    indices._widened = lambda renderer: False
results = []
with cpu_threads("CPU"):
    for shape in SHAPES:
        arrays, grad_h = lstm_inputs(*shape)
        results.append([o.numpy().tolist() for o in lstm_outputs(arrays, grad_h)])
print(json.dumps(results))
"""


def _run_kernels(tmp_path, *args, **env) -> list:
    """The outputs of every shape's kernels, from a new process with a new kernel cache (with
    this session's, tmp_path None: only where CC is the default)."""
    cache = os.environ["CACHEDB"] if tmp_path is None else str(tmp_path / "cache.db")
    env = {**os.environ, "CACHEDB": cache, "PARALLEL": "0", "DEV": "CPU", **env}
    tests = os.path.dirname(os.path.abspath(__file__))
    result = subprocess.run(
        [sys.executable, "-c", RUN_KERNELS, tests, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.skipif(not CLANGS, reason="no clang-N on PATH")
@pytest.mark.parametrize("clang", CLANGS)
def test_every_clangs_kernels_give_the_reference_numbers(clang, tmp_path):
    for shape, outputs in zip(SHAPES, _run_kernels(tmp_path, CC=clang)):
        assert_like_lstm_numpy(outputs, *lstm_inputs(*shape), where=f"{clang} {shape}")


def test_64_bit_indices_give_the_same_bits_as_32(tmp_path):
    # the same compiler both times, this session's: its kernel cache then serves (the 32-bit
    # sources differ from the 64-bit ones, and so do their binaries' keys), unless CC names another
    shared = os.environ.get("CC", "clang") == "clang"
    assert _run_kernels(None if shared else tmp_path / "64") == _run_kernels(
        None if shared else tmp_path / "32", "32"
    )


# tinygrad's own compile workers (spiralctl's are not started): spawned, and given nothing of
# spiralctl's to unpickle but the initializer that kernels/indices.py puts in tinygrad's place
POOL = """
import json, re, sys
sys.path.insert(0, sys.argv[1])
from tinygrad import Tensor
from tinygrad.codegen import to_program_cache
from tinygrad.engine import worker
from tinygrad.uop.ops import Ops
from helpers import lstm_inputs, lstm_outputs
from test_compilers import LOOP

Tensor.realize(*lstm_outputs(*lstm_inputs(64, 3, 32)))
assert worker.worker_pool is not None  # the kernels were compiled in tinygrad's pool
loops = {}
for program in to_program_cache.values():
    name = program.src[0].arg.name
    if name.startswith("lstm_"):
        source = next(s.arg for s in program.src if s.op is Ops.SOURCE)
        loops[name] = sorted(set(LOOP.findall(source)))
print(json.dumps(loops))
"""


def test_tinygrads_own_spawned_workers_generate_64_bit_indices_too(tmp_path):
    env = {**os.environ, "CACHEDB": str(tmp_path / "cache.db"), "PARALLEL": "2", "DEV": "CPU"}
    tests = os.path.dirname(os.path.abspath(__file__))
    result = subprocess.run(
        [sys.executable, "-c", POOL, tests], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    loops = json.loads(result.stdout.splitlines()[-1])
    assert set(VECTORISED) <= set(loops)
    assert all(kinds == ["long"] for kinds in loops.values()), loops
