"""The GPU kernel family against a float64 numpy LSTM and against the CPU family.

Runs on tinygrad's PYTHON device (a UOp interpreter with GPU launch semantics; tiny shapes only)
and on OpenCL through pocl (real workgroups, local memory and barriers; `./dev.sh test` installs
pocl where it can, and these cases are skipped without it). On OpenCL every launch's global x
local size is recorded, to hold the kernels to the parallelism a GPU needs. The kernels are also
rendered for CUDA, PTX, AMD and Metal, and compiled to sm_90 cubins with NVRTC where libnvrtc
loads. SPIRALCTL_GPU_TEST_DEVICE=CUDA (or NV, AMD, METAL) runs the OpenCL cases on that device.
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
from gpu_helpers import GPU, GPU_KERNELS, HAS_CL, LAUNCHES, _close, _threads, cl, needs_cl, needs_gpu
from helpers import RENDERERS, lstm_numpy, render
from tinygrad import Tensor
from tinygrad.renderer.cstyle import CUDARenderer
from tinygrad.renderer.ptx import PTXRenderer
from tinygrad.uop.ops import Ops, UOp

from spiralctl.kernels import gpu as gk
from spiralctl.kernels.adam import FusedAdam, adam_scalars
from spiralctl.kernels.family import CPU as CPU_FAMILY
from spiralctl.kernels.family import GPU as GPU_FAMILY
from spiralctl.kernels.layout import PackedBatch
from spiralctl.kernels.step import _columns, _offset, _row_start, step_gradients
from spiralctl.model import PARAMETER_NAMES, ModelConfig, SpiralClassifier, init_parameters

# (device, batch, steps, hidden): one column, odd sizes, several workgroups, a batch of 256,
# 128 hidden units (512 gate rows) and 512 (one column per workgroup of 512 threads)
LSTM_CASES = [
    ("PYTHON", 1, 2, 3),
    ("PYTHON", 6, 3, 8),
    cl(1, 2, 3),
    cl(32, 10, 12),
    cl(256, 4, 40),
    cl(8, 3, 128),
    cl(3, 2, 512),
]


@pytest.mark.parametrize("device, batch, steps, hidden", LSTM_CASES)
def test_recurrence_matches_numpy(device, batch, steps, hidden):
    rng = np.random.default_rng(batch + steps + hidden)
    shapes = [(batch, steps, 2), (4 * hidden, 2), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,)]
    arrays = [rng.standard_normal(s).astype(np.float32) * 0.6 for s in shapes]
    grad_h = rng.standard_normal((batch, hidden)).astype(np.float32)
    x, w_ih, w_hh, b_ih, b_hh = (Tensor(a, device=device).contiguous().realize() for a in arrays)
    hs, cs, tanh_cs, gates, xa = gk.sequence_forward_gpu(x, w_ih, w_hh, b_ih, b_hh, batch, steps)[:5]
    assert hs.shape[2] == batch  # one column per sequence, as in the CPU family
    dz, d_w_hh, d_w_in = gk.sequence_backward_gpu(
        Tensor(np.ascontiguousarray(grad_h.T), device=device), hs, cs, tanh_cs, gates, xa, w_hh
    )
    Tensor.realize(hs, xa, dz, d_w_hh, d_w_in)
    h_ref, ref = lstm_numpy(*arrays, grad_h=grad_h)
    np.testing.assert_allclose(hs.numpy()[steps, :, :batch].T, h_ref, atol=1e-5)
    xa_ref = np.concatenate([arrays[0].transpose(1, 2, 0), np.ones((steps, 1, batch), np.float32)], axis=1)
    np.testing.assert_array_equal(xa.numpy()[:, :, :batch], xa_ref)
    d_w_in = d_w_in.numpy()
    _close(d_w_hh.numpy(), ref["w_hh"], "w_hh")
    _close(d_w_in[:, :2], ref["w_ih"], "w_ih")
    _close(d_w_in[:, 2], ref["b"], "b")
    _close(np.einsum("jd,tjb->btd", arrays[1], dz.numpy()[:, :, :batch]), ref["x"], "x")


@pytest.mark.parametrize("device, batch, steps, hidden", [("PYTHON", 5, 3, 4), cl(20, 7, 16)])
def test_inference_logits_match_numpy(device, batch, steps, hidden):
    """The forward kernel as inference uses it: sequences at the start of a packed buffer."""
    weights = _init_parameters(hidden, seed=5)
    x, _ = _batch(batch, steps, seed=5)
    layout = PackedBatch(batch, steps)
    model = SpiralClassifier(ModelConfig(hidden=hidden), weights, device)
    assert model.kernels is GPU_FAMILY
    state = Tensor.zeros(2, hidden, batch, device=device).contiguous()  # start 0: not read
    logits, _ = model.logits_packed(Tensor(layout.pack(x)[None], device=device), layout, state)
    logits = logits.numpy()
    w_ih, w_hh, b_ih, b_hh, w_head, b_head = weights.values()
    expected = lstm_numpy(x, w_ih, w_hh, b_ih, b_hh) @ w_head[0].astype(np.float64) + b_head[0]
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def _init_parameters(hidden: int, seed: int) -> dict[str, np.ndarray]:
    return init_parameters(ModelConfig(hidden=hidden), seed)


def _batch(batch: int, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of points on spiral arcs turning either way (label 1: anticlockwise), with noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, batch).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi, (batch, 1)) + np.where(y[:, None] > 0, 1, -1) * 0.4 * np.arange(steps)
    radius = 0.3 + 0.1 * np.arange(steps)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1)
    return (x + rng.normal(0, 0.05, x.shape)).astype(np.float32), y


@pytest.mark.parametrize("device", ["PYTHON", pytest.param(GPU, marks=needs_gpu)])
def test_autograd_through_the_gpu_kernels(device):
    """lstm_fused_gpu under tinygrad's autograd (the path SpiralClassifier.__call__ takes)."""
    batch, steps, hidden = 3, 3, 4
    rng = np.random.default_rng(9)
    shapes = [(batch, steps, 2), (4 * hidden, 2), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,)]
    arrays = [rng.standard_normal(s).astype(np.float32) * 0.6 for s in shapes]
    grad_h = rng.standard_normal((batch, hidden)).astype(np.float32)
    tensors = [Tensor(a, device=device) for a in arrays]
    h = gk.lstm_fused_gpu(*tensors)
    (h * Tensor(grad_h, device=device)).sum().backward()
    h_ref, ref = lstm_numpy(*arrays, grad_h=grad_h)
    np.testing.assert_allclose(h.numpy(), h_ref, atol=1e-5)
    for tensor, name in zip(tensors, ("x", "w_ih", "w_hh", "b", "b")):
        _close(tensor.grad.numpy(), ref[name], name)


def _step(family: str, device: str, weights: dict, optimizer_state, x, y, mask, lr: float, step: int):
    """One training step as Trainer._kernel_step does it (without the jit), on either family.

    Returns (results, parameters, moments, gradient buffers) as numpy."""
    batch, steps, inputs = x.shape
    kernels = CPU_FAMILY if family == "cpu" else GPU_FAMILY
    params = [Tensor(w, device=device).contiguous().realize() for w in weights.values()]
    optimizer = FusedAdam(params, kernel=kernels.adam_kernel)
    if optimizer_state is not None:
        optimizer.load(*optimizer_state)
    layout = PackedBatch(batch, steps, inputs)
    row = Tensor(layout.pack(x, y, mask, adam_scalars(lr, step))[None], device=device).realize()
    result, grads, sources = step_gradients(row, params, layout, kernels)
    Tensor.realize(result, *optimizer.update(grads, sources, row, offset=layout.scalars))
    moments = ([m.numpy() for m in optimizer.exp_avg], [v.numpy() for v in optimizer.exp_avg_sq])
    return (
        result.numpy()[0],
        dict(zip(weights, (p.numpy() for p in params))),
        moments,
        [g.numpy() for g in grads],
    )


@pytest.mark.parametrize("device, hidden", [("PYTHON", 32), cl(5), cl(32)])
def test_adam_matches_cpu_family(device, hidden):
    """Adam alone, gradients read through `sources` as a step lays them out. At H = 32, W_ih has
    exactly one workgroup's worth of elements: the case where a gate that pins a thread range was
    dropped (see kernels/gpu.py's _flat) and every workgroup raced on it."""
    weights = _init_parameters(hidden, seed=0)
    rng = np.random.default_rng(1)
    grads = [
        rng.standard_normal(s).astype(np.float32)
        for s in [(4 * hidden, 3), (4 * hidden, hidden), (hidden + 1,)]
    ]
    sources = [
        (0, _columns(3, 0, 2)),
        (1, _offset(0)),
        (0, _row_start(3, 2)),
        (0, _row_start(3, 2)),
        (2, _offset(0)),
        (2, _offset(hidden)),
    ]
    results = {}
    for family in ("cpu", "gpu"):
        params = [Tensor(w, device=device).contiguous().realize() for w in weights.values()]
        kernels = CPU_FAMILY if family == "cpu" else GPU_FAMILY
        optimizer = FusedAdam(params, kernel=kernels.adam_kernel)
        on_device = [Tensor(g, device=device).realize() for g in grads]
        scalars = Tensor(adam_scalars(LR, 1), device=device).realize()
        Tensor.realize(*optimizer.update(on_device, sources, scalars))
        results[family] = [t.numpy() for t in (*params, *optimizer.exp_avg, *optimizer.exp_avg_sq)]
    for cpu, gpu in zip(results["cpu"], results["gpu"]):
        np.testing.assert_allclose(gpu, cpu, atol=1e-6)


def _per_parameter(grads: list[np.ndarray], hidden: int) -> dict[str, np.ndarray]:
    """Each parameter's gradient out of the buffers [dW_in, dW_hh, d_head] (as the `sources` map)."""
    d_w_in, d_w_hh, d_head = grads
    parts = (d_w_in[:, :-1], d_w_hh, d_w_in[:, -1], d_w_in[:, -1], d_head[None, :hidden], d_head[hidden:])
    return dict(zip(PARAMETER_NAMES, parts))


def _compare_steps(device: str, batch: int, steps: int, hidden: int, count: int, repeats: int = 2) -> None:
    """`repeats` GPU-family steps on `device` against the CPU family's on the CPU device."""
    x, y = _batch(batch, steps, seed=1)
    mask = (np.arange(batch) < count).astype(np.float32)
    weights = _init_parameters(hidden, seed=3)
    runs = {}
    for family, dev in (("cpu", "CPU"), ("gpu", device)):
        state, current, history = None, weights, []
        for k in range(repeats):
            result, current, state, grads = _step(family, dev, current, state, x, y, mask, LR, k + 1)
            history.append((result, current, state, grads))
        runs[family] = history
    sensitivity = {name: 0.0 for name in weights}
    for (cpu_result, cpu_params, cpu_moments, cpu_grads), (
        gpu_result,
        gpu_params,
        gpu_moments,
        gpu_grads,
    ) in zip(runs["cpu"], runs["gpu"]):
        np.testing.assert_allclose(gpu_result[0], cpu_result[0], atol=1e-5, err_msg="loss")
        assert gpu_result[1] == cpu_result[1]  # right answers: an exact count
        for name, cpu_g, gpu_g in zip(("dW_in", "dW_hh", "d_head"), cpu_grads, gpu_grads):
            _close(gpu_g, cpu_g, name)
        # Adam's first-order response to a gradient difference: lr * dg / (|g| + eps), up to 1e6 * dg
        # for a gradient near zero (see LR); everywhere else this adds nothing to the 1e-5
        cpu_g, gpu_g = _per_parameter(cpu_grads, hidden), _per_parameter(gpu_grads, hidden)
        for name in cpu_params:
            sensitivity[name] = sensitivity[name] + LR * np.abs(gpu_g[name] - cpu_g[name]) / (
                np.abs(cpu_g[name]) + 1e-8
            )
            excess = np.abs(gpu_params[name] - cpu_params[name]) - (1e-5 + sensitivity[name])
            assert excess.max() <= 0, f"{name}: {excess.max()} over 1e-5 + Adam's sensitivity"
        for kind, cpu_list, gpu_list in zip(("exp_avg", "exp_avg_sq"), cpu_moments, gpu_moments):
            for name, cpu_m, gpu_m in zip(cpu_params, cpu_list, gpu_list):
                np.testing.assert_allclose(gpu_m, cpu_m, atol=1e-5, err_msg=f"{kind} {name}")


# spiralctl's default. Adam divides each gradient by its own running size, so a gradient near zero
# (7e-9 at H = 128, equal in both families to 1e-11) can move its weight by a noticeable fraction of
# lr in either family; the updated weights then differ by up to ~4e-4 * lr, gradients by far less.
LR = 0.01
# (device, batch, steps, hidden, real sequences): masked rows in all but one
STEP_CASES = [
    ("PYTHON", 8, 3, 4, 5),
    cl(300, 5, 5, 257),  # the head: two columns per thread, the last ones masked
    cl(256, 3, 32, 200),  # masked rows; the kernels of the launch-size step
    cl(48, 3, 128, 40),
]


@pytest.mark.parametrize("device, batch, steps, hidden, count", STEP_CASES)
def test_training_step_matches_cpu_family(device, batch, steps, hidden, count):
    _compare_steps(device, batch, steps, hidden, count)


@needs_gpu
def test_jitted_steps_match_unjitted():
    """The GPU family inside TinyJit, the packed row re-uploaded into one staged buffer per step (as
    Trainer.steps does), against the same steps without the jit."""
    from tinygrad import TinyJit
    from tinygrad.device import Buffer

    batch, steps, hidden = 64, 6, 16
    x, y = _batch(batch, steps, seed=2)
    mask = (np.arange(batch) < 50).astype(np.float32)
    weights = _init_parameters(hidden, seed=1)
    layout = PackedBatch(batch, steps)
    runs = []
    for jit in (False, True):
        params = [Tensor(w, device=GPU).contiguous().realize() for w in weights.values()]
        optimizer = FusedAdam(params, kernel=GPU_FAMILY.adam_kernel)

        def step(row: Tensor, params=params, optimizer=optimizer) -> Tensor:
            result, grads, sources = step_gradients(row, params, layout, GPU_FAMILY)
            Tensor.realize(result, *optimizer.update(grads, sources, row, offset=layout.scalars))
            return result

        run = TinyJit(step) if jit else step
        staged = Tensor.empty(1, layout.size, device=GPU).contiguous().realize()
        buffer = staged.uop.buffer.ensure_allocated()
        results = []
        for k in range(4):
            packed = layout.pack(x, y, mask, adam_scalars(LR, k + 1))
            buffer.copy_from(Buffer("PYTHON", buffer.size, buffer.dtype, opaque=memoryview(packed).cast("B")))
            results.append(run(staged).numpy().copy())
        runs.append((np.array(results), [p.numpy() for p in params]))
    (plain, plain_params), (jitted, jitted_params) = runs
    np.testing.assert_array_equal(jitted, plain)
    for a, b in zip(jitted_params, plain_params):
        np.testing.assert_array_equal(a, b)


# the shape the parallelism requirement is stated for
LAUNCH_BATCH, LAUNCH_STEPS, LAUNCH_HIDDEN = 256, 3, 32


def _launch_step(device: str, hidden: int = LAUNCH_HIDDEN, run: bool = True) -> list[Tensor]:
    """One GPU-family step at B = 256 (H = 32 unless told) on `device`: realized (not read back) if
    `run`; returns the tensors that realize it."""
    weights = _init_parameters(hidden, seed=0)
    params = [Tensor(w, device=device).contiguous().realize() for w in weights.values()]
    x, y = _batch(LAUNCH_BATCH, LAUNCH_STEPS, seed=0)
    mask = np.ones(LAUNCH_BATCH, np.float32)
    layout = PackedBatch(LAUNCH_BATCH, LAUNCH_STEPS)
    row = Tensor(layout.pack(x, y, mask, adam_scalars(0.01, 1))[None], device=device)
    result, grads, sources = step_gradients(row, params, layout, GPU_FAMILY)
    optimizer = FusedAdam(params, kernel=GPU_FAMILY.adam_kernel)
    outputs = [result, *optimizer.update(grads, sources, row, offset=layout.scalars)]
    if run:
        Tensor.realize(*outputs)
    return outputs


@functools.cache
def _step_asts(hidden: int) -> dict[str, UOp]:
    """Each kernel of that step as tinygrad would hand it to lowering: scheduled on the CPU device and
    not run, so rendering for other backends needs no OpenCL."""
    outputs = _launch_step("CPU", hidden, run=False)
    linear = outputs[0].schedule_linear(*outputs[1:])
    asts = [call.src[0] for call in linear.toposort() if call.op is Ops.CALL and call.src[0].op is Ops.SINK]
    return {ast.arg.name: ast for ast in asts}


@pytest.fixture(scope="module")
def cl_launches() -> dict[str, tuple[tuple, tuple]]:
    """kernel name -> (global size in workgroups, local size) of that step's launches on OpenCL."""
    if not HAS_CL:
        return {}
    LAUNCHES.clear()
    _launch_step("CL")
    return {name: (g, loc) for name, g, loc in LAUNCHES if name in GPU_KERNELS}


@needs_cl
def test_launch_sizes_on_opencl(cl_launches):
    """At H = 32, B = 256: no kernel under 32 threads, the recurrences B x H or more."""
    sizes = cl_launches
    assert set(sizes) == GPU_KERNELS
    batch, hidden = LAUNCH_BATCH, LAUNCH_HIDDEN
    for name, (global_size, local_size) in sizes.items():
        assert _threads(global_size, local_size) >= 32, name
        assert math.prod(local_size) <= gk.MAX_BLOCK, name
    for name in ("lstm_forward_gpu", "lstm_backward_gpu"):
        assert _threads(*sizes[name]) >= batch * hidden, name
        assert sizes[name] == ((32, 1, 1), (8, 32, 1)), name  # 32 tiles of 8 columns, 8 x 32 threads
    assert _threads(*sizes["adam_gpu"]) == 4 * hidden * hidden  # one per element of W_hh
    # one workgroup per gate row, 16 threads sharing each output element's sum
    assert sizes["lstm_weight_grad_hh_gpu"] == ((4 * hidden, 1, 1), (16, hidden, 1))
    assert sizes["lstm_weight_grad_in_gpu"] == ((4 * hidden, 1, 1), (16, 3, 1))


BARRIERS = {"CUDA": "__syncthreads()", "PTX": "bar.sync", "METAL": "threadgroup_barrier", "AMD": "s_barrier"}


@pytest.mark.parametrize("hidden", [LAUNCH_HIDDEN, 512])
@pytest.mark.parametrize("backend", list(RENDERERS))
def test_kernels_render_with_sane_launch_dims(cl_launches, backend, hidden):
    """A step's kernels (B = 256) for each backend: under the block limit, the launch dims OpenCL used
    (at H = 32), and a barrier in every kernel that shares local memory."""
    captured, on_cl = _step_asts(hidden), cl_launches if hidden == LAUNCH_HIDDEN else {}
    assert GPU_KERNELS <= set(captured)
    for name in sorted(GPU_KERNELS):
        source, global_size, local_size = render(captured[name], backend)
        assert name in source
        assert math.prod(local_size) <= gk.MAX_BLOCK and max(global_size[1:]) < 65536, name
        assert _threads(global_size, local_size) >= 32, name
        if name in on_cl:
            assert (global_size, local_size) == on_cl[name], name
        if name not in ("lstm_head_dh_gpu", "lstm_head_weights_gpu", "adam_gpu"):
            assert BARRIERS[backend] in source, name  # the local-memory kernels synchronise


def _nvrtc():
    """tinygrad's NVRTC compiler for sm_90, or None where libnvrtc cannot be loaded."""
    from tinygrad.runtime.support.compiler_cuda import NVRTCCompiler

    try:
        compiler = NVRTCCompiler("sm_90", ptx=False)
        compiler.compile('extern "C" __global__ void probe() {}')
    except (OSError, AttributeError, RuntimeError):
        return None
    return compiler


@pytest.mark.parametrize("hidden", [LAUNCH_HIDDEN, 512])
def test_kernels_compile_for_sm_90_with_nvrtc(hidden):
    """The CUDA source of every kernel compiles to an sm_90 cubin (NVRTC runs without a GPU)."""
    compiler = _nvrtc()
    if compiler is None:
        pytest.skip("libnvrtc not loadable (pip install nvidia-cuda-nvrtc; put its lib/ on LD_LIBRARY_PATH)")
    for name, ast in sorted(_step_asts(hidden).items()):
        source, _, _ = render(ast, "CUDA")
        assert len(compiler.compile(source)) > 0, name


@pytest.mark.parametrize(
    "device, args",
    [
        pytest.param(GPU, ["--hidden", "8", "--batch-size", "32"], marks=needs_gpu),
        pytest.param(GPU, ["--hidden", "128", "--batch-size", "20"], marks=needs_gpu),  # padded batch
        ("PYTHON", ["--hidden", "3", "--batch-size", "16"]),
    ],
)
def test_the_cli_trains_and_predicts_on_a_gpu_device_as_on_the_cpu(run, tmp_path, device, args):
    """`spiralctl train --device <GPU>`: every epoch's train and validation loss within 1e-4 of
    the CPU's (same seed and data), then eval and predict of its checkpoint."""
    from spiralctl.data import DataConfig, generate, save_datasets

    data = tmp_path / "data"
    save_datasets(data, generate(DataConfig(sequences=48 if device == "PYTHON" else 120, length=5, seed=7)))
    runs = {}
    for name in ("CPU", device):
        result = run(
            "train",
            "--data",
            data,
            "--out",
            tmp_path / name,
            "--epochs",
            2,
            "--device",
            name,
            "--no-plots",
            "--json",
            *args,
        )
        assert result.exit_code == 0, result.stderr
        runs[name] = json.loads(result.stdout)["history"]
    for cpu, gpu in zip(runs["CPU"], runs[device]):
        for key in ("train_loss", "val_loss"):
            assert abs(cpu[key] - gpu[key]) < 1e-4, (key, cpu[key], gpu[key])
        assert cpu["val_accuracy"] == gpu["val_accuracy"]
    checkpoint = tmp_path / device / "last.safetensors"
    reports = {
        name: run("eval", checkpoint, data / "val.safetensors", "--device", name, "--json")
        for name in ("CPU", device)
    }
    losses = {name: json.loads(result.stdout)["loss"] for name, result in reports.items()}
    assert abs(losses["CPU"] - losses[device]) < 1e-5
    predictions = run("predict", checkpoint, data / "val.safetensors", "--device", device, "--json")
    assert predictions.exit_code == 0
    assert len(predictions.stdout.splitlines()) == json.loads(reports["CPU"].stdout)["n"]


def test_devices_say_which_renderer_and_kernels_a_device_uses(run):
    from spiralctl.devices import renderer_name

    rows = {row["device"]: row for row in json.loads(run("devices", "--json").stdout)["devices"]}
    assert rows["CPU"]["ok"] and rows["CPU"]["renderer"] == "Clang" and rows["CPU"]["kernels"] == "cpu"
    # what a working CUDA device reports: NVRTC, or PTX where tinygrad fell back to its PTX renderer
    assert renderer_name(CUDARenderer.__new__(CUDARenderer)) == "NVRTC"
    assert renderer_name(PTXRenderer.__new__(PTXRenderer)) == "PTX"
    assert SpiralClassifier(ModelConfig(hidden=2), _init_parameters(2, 0), "PYTHON").kernels is GPU_FAMILY
    assert SpiralClassifier(ModelConfig(hidden=2), _init_parameters(2, 0), "CPU").kernels is CPU_FAMILY


@pytest.mark.parametrize("device", ["cuda:0,cuda:1", "CPU,CPU:1"])
def test_several_devices_at_once_are_refused_clearly(run, device):
    result = run("train", "--device", device)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: --device {device}: spiralctl runs on one device at a time")


def test_the_gpu_check_says_when_its_device_does_not_work(tmp_path):
    """benchmarks/gpu_check.py on a machine without the GPU: one clear line and exit code 1."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
    result = subprocess.run(
        [sys.executable, str(script), "--device", "METAL", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "METAL does not work here" in result.stdout
    assert json.loads((tmp_path / "gpu_check.json").read_text())["devices"][0]["device"] == "CPU"
