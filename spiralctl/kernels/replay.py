"""A captured TinyJit step replayed as direct calls of its compiled programs.

tinygrad 0.14's jitted call checks its inputs and rewrites each captured kernel call into a
launch every time (about 0.3 ms of Python for the five kernels of a training step, against
0.5 ms of kernel time at the seed config). A training step calls the same programs on the same
buffers every time, so once the jit has captured them, the launches are resolved once here
and replayed as they are (seed config: 1.02 -> 0.60 ms a step). Only plain kernel launches on
the CPU device, which runs them as they are called, are replayed; anything else (copies,
graphs, GPUs, several devices) stays with tinygrad's jit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from tinygrad import Tensor
from tinygrad.engine.jit import TinyJit, _prepare_jit_inputs
from tinygrad.engine.realize import get_runtime, resolve_params
from tinygrad.uop.ops import Ops


def direct_replay(jit: TinyJit, *inputs: Tensor) -> Callable[[], None] | None:
    """The launches `jit` captured, bound to their buffers, as one function; None when the jit
    has not captured yet or holds something other than kernel launches on one device."""
    captured = jit.captured
    if captured is None:
        return None
    input_uops, var_vals, _, _ = _prepare_jit_inputs(inputs, {})
    if var_vals or any(u in captured._written_uops for u in input_uops):
        return None
    launches = []
    for call in captured.linear.src:
        program = call.src[0]
        device = call.src[1].device if len(call.src) > 1 else None
        if program.op is not Ops.PROGRAM or not isinstance(device, str) or device.split(":")[0] != "CPU":
            return None  # GPUs queue their launches: they keep tinygrad's own synchronisation
        resolved = resolve_params(call, tuple(input_uops))
        buffers = [resolved[i].buffer for i in program.arg.globals]
        if not all(hasattr(b, "ensure_allocated") for b in buffers):  # a MultiBuffer
            return None
        runtime = get_runtime(device, program)
        global_size, local_size = program.arg.launch_dims({})
        raw = [b.ensure_allocated().get_buf(device) for b in buffers]
        vals = program.arg.vals({})
        launches.append(
            functools.partial(runtime, *raw, global_size=global_size, local_size=local_size, vals=vals)
        )

    def run() -> None:
        for launch in launches:
            launch()

    return run
