"""Helpers the tests share: a float64 numpy LSTM and an autograd training step to hold the kernels to."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import tinygrad.codegen as codegen
from tinygrad import Tensor
from tinygrad.helpers import Target
from tinygrad.renderer.cstyle import CUDARenderer, HIPRenderer, MetalRenderer
from tinygrad.renderer.ptx import PTXRenderer
from tinygrad.uop.ops import Ops, PatternMatcher, ProgramInfo, UOp, UPat, graph_rewrite

from spiralctl.kernels.adam import adam_scalars
from spiralctl.trainer import Trainer


def lstm_numpy(x, w_ih, w_hh, b_ih, b_hh, grad_h=None):
    """Reference LSTM in float64 numpy: returns h_T and, given dL/dh_T, the gradients of all inputs."""
    x, w_ih, w_hh, b_ih, b_hh = (np.asarray(a, dtype=np.float64) for a in (x, w_ih, w_hh, b_ih, b_hh))
    batch, steps, _ = x.shape
    hidden = w_hh.shape[1]

    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    h = [np.zeros((batch, hidden))]
    c = [np.zeros((batch, hidden))]
    gates = []
    for t in range(steps):
        z = x[:, t] @ w_ih.T + b_ih + h[-1] @ w_hh.T + b_hh
        i, f, g, o = np.split(z, 4, axis=1)
        i, f, g, o = sigmoid(i), sigmoid(f), np.tanh(g), sigmoid(o)
        c.append(f * c[-1] + i * g)
        h.append(o * np.tanh(c[-1]))
        gates.append((i, f, g, o))
    if grad_h is None:
        return h[-1]
    grads = {"x": np.zeros_like(x), "w_ih": np.zeros_like(w_ih), "w_hh": np.zeros_like(w_hh)}
    grads["b"] = np.zeros_like(b_ih)
    dh, dc = np.asarray(grad_h, dtype=np.float64), np.zeros((batch, hidden))
    for t in reversed(range(steps)):
        i, f, g, o = gates[t]
        tanh_c = np.tanh(c[t + 1])
        dc = dc + dh * o * (1 - tanh_c**2)
        dz = np.concatenate(
            [dc * g * i * (1 - i), dc * c[t] * f * (1 - f), dc * i * (1 - g**2), dh * tanh_c * o * (1 - o)],
            axis=1,
        )
        grads["x"][:, t] = dz @ w_ih
        grads["w_ih"] += dz.T @ x[:, t]
        grads["w_hh"] += dz.T @ h[t]
        grads["b"] += dz.sum(0)
        dh, dc = dz @ w_hh, dc * f
    return h[-1], grads


def bce_with_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-sequence binary cross-entropy on logits, stable for large |logits|."""
    return logits.maximum(0) - logits * targets + (-logits.abs()).exp().add(1).log()


class AutogradTrainer(Trainer):
    """The same training step through tinygrad's autograd (the model's `impl` LSTM and a plain
    loss) instead of the step kernels: the reference the kernels are tested against."""

    def __init__(self, *args, impl: str = "fused", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.impl = impl

    def step(self, x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
        number = self.step_count + 1
        scalars = Tensor(adam_scalars(self.learning_rate(number), number), device=self.model.device)
        xt, yt, mt = (Tensor(a.astype(np.float32), device=self.model.device) for a in (x, y, mask))
        self.optimizer.zero_grad()
        logits = self.model(xt, impl=self.impl)
        loss = (bce_with_logits(logits, yt) * mt).sum() / mt.sum()
        correct = (((logits > 0).float() == yt).float() * mt).sum()
        loss.backward()
        # the loss and the gradients in one schedule, before the update: the loss is this step's
        result = Tensor.stack(loss, correct)
        Tensor.realize(result, *(p.grad for p in self.optimizer.params))
        Tensor.realize(*self.optimizer.step(scalars))
        self.step_count = number
        values = result.numpy()
        return float(values[0]), float(values[1])


def _raw(header: dict, data: bytes = b"") -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


GOOD = {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
BAD_FILES = {
    "empty": b"",
    "short": b"\x01\x02",
    "header past end": struct.pack("<Q", 100) + b"{}",
    "absurd header length": struct.pack("<Q", 2**60) + b"{}",
    "not json": struct.pack("<Q", 5) + b"hello",
    "not an object": _raw([1, 2]),  # type: ignore[arg-type]
    "invalid utf-8": struct.pack("<Q", 4) + b"\xff\xfe{}",
    "missing field": _raw({"x": {"dtype": "F32", "shape": [2]}}, b"\0" * 8),
    "unknown dtype": _raw({"x": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
    "negative offset": _raw({"x": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, b"\0" * 8),
    "offset past end": _raw({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4),
    "reversed offsets": _raw({"x": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}, b"\0" * 8),
    "overlap": _raw(
        {
            "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        },
        b"\0" * 12,
    ),
    "size mismatch": _raw({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
    "trailing bytes": _raw(GOOD, b"\0" * 12),
    "non-string metadata": _raw({"__metadata__": {"a": 1}, **GOOD}, b"\0" * 8),
    "duplicate keys": struct.pack("<Q", 23) + b'{"__metadata__":{},"__metadata__":{}}'[:23],
    "deep nesting": (lambda b: struct.pack("<Q", len(b)) + b)(b"[" * 100000 + b"]" * 100000),
    "NaN constant": (lambda b: struct.pack("<Q", len(b)) + b)(b'{"__metadata__":{"a":NaN}}'),
}


# Kernels rendered for other backends without their compilers (not installed here): linearize
# and render, no compile.
RENDERERS = {
    "CUDA": (CUDARenderer, Target("CUDA", "CUDA", "sm_90")),
    "PTX": (PTXRenderer, Target("CUDA", "PTX", "sm_90")),
    "METAL": (MetalRenderer, Target("METAL", "METAL", "Apple9")),
    "AMD": (HIPRenderer, Target("AMD", "HIP", "gfx1100")),
}
_RENDER = PatternMatcher(
    [
        (UPat(Ops.PROGRAM, src=(UPat(Ops.SINK, name="sink"),), name="prg"), codegen.do_linearize),
        (UPat(Ops.PROGRAM, src=(UPat(), UPat(Ops.LINEAR, name="lin")), name="prg"), codegen.do_render),
    ]
)


def render(ast: UOp, backend: str) -> tuple[str, tuple, tuple]:
    """A kernel's source for `backend` and its launch: (source, global size, local size)."""
    cls, target = RENDERERS[backend]
    renderer = cls.__new__(cls)  # without __init__, which loads the vendor compiler
    renderer.target, renderer.tensor_cores = target, []
    sink = codegen.full_rewrite_to_sink(ast, renderer, optimize=ast.tag is None)
    program = UOp(Ops.PROGRAM, src=(sink,), arg=ProgramInfo.from_sink(sink, target))
    program = graph_rewrite(program, _RENDER, ctx=renderer, name="render")
    return program.src[-1].arg, tuple(program.arg.global_size), tuple(program.arg.local_size or (1, 1, 1))


def lstm_inputs(batch, steps, hidden, seed=0):
    """Random sequences, weights and biases for `lstm` (x, w_ih, w_hh, b_ih, b_hh), and dL/dh."""
    rng = np.random.default_rng(seed)
    shapes = [(batch, steps, 2), (4 * hidden, 2), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,)]
    arrays = [rng.standard_normal(s).astype(np.float32) * 0.6 for s in shapes]
    return arrays, rng.standard_normal((batch, hidden)).astype(np.float32)


def lstm_outputs(arrays, grad_h, device="CPU") -> list[Tensor]:
    """h and every input's gradient through the fused kernels (not realised)."""
    from spiralctl.kernels.lstm import lstm

    tensors = [Tensor(a, device=device) for a in arrays]
    h = lstm(*tensors)
    (h * Tensor(grad_h, device=device)).sum().backward()
    return [h, *(t.grad for t in tensors)]


def assert_like_lstm_numpy(outputs, arrays, grad_h, where: str = "") -> None:
    """outputs (h, then the gradients of x, w_ih, w_hh, b_ih, b_hh) against the float64 reference."""
    want_h, want = lstm_numpy(*arrays, grad_h)
    h, *grads = (np.asarray(o) for o in outputs)
    np.testing.assert_allclose(h, want_h, atol=1e-5, err_msg=f"{where} h".strip())
    for got, name in zip(grads, ("x", "w_ih", "w_hh", "b", "b")):
        np.testing.assert_allclose(got, want[name], atol=1e-4, err_msg=f"{where} {name}".strip())


def lstm_numpy_lengths(x, lengths, w_ih, w_hh, b_ih, b_hh, grad_h=None):
    """The reference on sequences of their own lengths: sequence b is x[b, :lengths[b]], run
    alone. Returns h at each sequence's last point and, given dL/dh, the summed gradients."""
    results = [
        lstm_numpy(
            x[b : b + 1, : int(length)], w_ih, w_hh, b_ih, b_hh, None if grad_h is None else grad_h[b : b + 1]
        )
        for b, length in enumerate(lengths)
    ]
    if grad_h is None:
        return np.concatenate(results)
    h = np.concatenate([r[0] for r in results])
    grads = {name: sum(r[1][name] for r in results) for name in ("w_ih", "w_hh", "b")}
    return h, grads


# the installed spiralctl command, as a user runs it
EXE = shutil.which("spiralctl") or os.path.join(os.path.dirname(sys.executable), "spiralctl")
installed = pytest.mark.skipif(
    not os.path.exists(EXE), reason="spiralctl is not installed in this environment"
)


def shell(command: str, **kwargs) -> subprocess.CompletedProcess:
    """`command` in bash with pipefail, the installed spiralctl first on PATH."""
    env = {**os.environ, "PATH": os.path.dirname(EXE) + os.pathsep + os.environ["PATH"]}
    return subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        **kwargs,
    )


def count_compiled(monkeypatch) -> list[str]:
    """The names of the programs tinygrad lowers from now on (in this process: PARALLEL=0)."""
    import tinygrad.codegen as codegen
    from tinygrad.helpers import ansistrip

    names: list[str] = []
    lower = codegen.do_to_program

    def capture(ast, renderer):
        program = lower(ast, renderer)
        names.append(ansistrip(program.src[0].arg.name))
        return program

    monkeypatch.setattr(codegen, "do_to_program", capture)
    return names


def head_numpy(h, w_head, b_head, y, weights):
    """The head and its weighted loss in float64 numpy, as the step kernels define them.

    One row of w_head is one logit with binary cross-entropy, K rows are K logits with softmax
    cross-entropy; the loss is sum_b w_b loss_b / sum_b w_b for the sequences' weights w, and
    `right` counts the sequences with w_b > 0 classified right (one row: z > 0 says class 1; K
    rows: np.argmax, the first of the largest logits). Returns (loss, right, dL/dz: [B, rows],
    the gradients {"head.weight", "head.bias", "h": dL/dh_T}).
    """
    h, w_head, b_head = (np.asarray(a, dtype=np.float64) for a in (h, w_head, b_head))
    y, w = np.asarray(y).astype(np.int64), np.asarray(weights, dtype=np.float64)
    z = h @ w_head.T + b_head
    if w_head.shape[0] == 1:
        z = z[:, 0]
        per_sequence = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
        d_z = (1 / (1 + np.exp(-z)) - y)[:, None]
        predicted = (z > 0).astype(np.int64)
    else:
        top = z.max(axis=1, keepdims=True)
        e = np.exp(z - top)
        per_sequence = np.log(e.sum(axis=1)) + top[:, 0] - z[np.arange(len(y)), y]
        d_z = e / e.sum(axis=1, keepdims=True) - np.eye(z.shape[1])[y]
        predicted = z.argmax(axis=1)
    d_z = d_z * (w / w.sum())[:, None]
    loss = float((w * per_sequence).sum() / w.sum())
    right = int(((predicted == y) & (w > 0)).sum())
    return loss, right, d_z, {"head.weight": d_z.T @ h, "head.bias": d_z.sum(axis=0), "h": d_z @ w_head}
