"""The fused kernels' slices on several threads: same bits as one thread, and the thread setting."""

from __future__ import annotations

import platform

import numpy as np
import pytest
from helpers import assert_like_lstm_numpy, lstm_inputs, lstm_outputs
from tinygrad.runtime.ops_cpu import CPUProgram

from spiralctl.config import TrainConfig
from spiralctl.data import DataConfig, generate
from spiralctl.errors import SpiralError
from spiralctl.kernels import threads as kernel_threads
from spiralctl.kernels.threads import available_cores, cpu_threads, thread_count, use_cpu_threads
from spiralctl.model import ModelConfig, SpiralClassifier, init_parameters
from spiralctl.trainer import Trainer


@pytest.fixture
def restore_threads():
    yield
    use_cpu_threads(1)  # the default: tinygrad's own call until a command enters cpu_threads


def _lstm_run(arrays, grad_h):
    return [o.numpy() for o in lstm_outputs(arrays, grad_h)]


# the time steps of both runs below: the training step's recurrences and weight gradients are
# then the kernels `_lstm_run` made already (at B = 48, H = 20 the weight gradients' code takes
# tinygrad about 4 s to generate, each time its shape is new)
STEPS = 7


def _train_run(threads, batch, hidden):
    use_cpu_threads(threads)
    data = generate(DataConfig(sequences=2 * batch, length=STEPS, seed=2))["train"]
    config = ModelConfig(hidden=hidden)
    model = SpiralClassifier(config, init_parameters(config, seed=1), "CPU")
    trainer = Trainer(model, TrainConfig(hidden=hidden, batch_size=batch))
    mask = np.ones(batch, np.float32)
    lengths = 2 + np.arange(batch) % (STEPS - 1)  # sequences of 2 to 7 points
    results = [np.array(trainer.step(data.x[:batch], data.y[:batch], mask, lengths)) for _ in range(2)]
    return results, model.state_dict()


# (batch, hidden): 48 = 3 blocks of 16 columns, so the recurrences split unevenly, and 4H = 80
# gradient rows, 10 tiles of 8; 128 = 8 blocks, which 2 threads take in groups of 2, two each (3 threads:
# one block each, unevenly); H = 128 takes the weight gradients' column form, in tiles of 128,
# 64 and 32 gate rows on 1, 2 and 3 threads. All have B x 4H x H >= 65536 multiply-adds a time
# step, enough to be split at all.
SPLIT_SHAPES = [(48, 20), (128, 16), (32, 128)]


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("batch, hidden", SPLIT_SHAPES)
def test_threads_give_the_same_bits_as_one(threads, batch, hidden, restore_threads, monkeypatch):
    rng = np.random.default_rng(5)
    shapes = [(batch, STEPS, 2), (4 * hidden, 2), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,)]
    arrays = [rng.standard_normal(s).astype(np.float32) * 0.6 for s in shapes]
    grad_h = rng.standard_normal((batch, hidden)).astype(np.float32)
    use_cpu_threads(1)
    single = _lstm_run(arrays, grad_h)
    use_cpu_threads(threads)
    assert hasattr(CPUProgram.__call__, "__wrapped__")
    pool, handed = kernel_threads._state["pool"], []
    submit = pool.submit
    monkeypatch.setattr(pool, "submit", lambda *a: handed.append(a) or submit(*a))
    for a, b in zip(_lstm_run(arrays, grad_h), single):
        assert np.array_equal(a, b)
    assert handed  # slices did run on the other threads
    one_results, one_weights = _train_run(1, batch, hidden)
    many_results, many_weights = _train_run(threads, batch, hidden)
    for a, b in zip(one_results, many_results):
        assert np.array_equal(a, b)
    for name in one_weights:
        assert np.array_equal(one_weights[name], many_weights[name]), name


def test_one_thread_restores_tinygrads_call(restore_threads):
    use_cpu_threads(2)
    use_cpu_threads(1)
    assert not hasattr(CPUProgram.__call__, "__wrapped__")


@pytest.mark.parametrize("value, expected", [("3", 3), ("1", 1), ("", None), (" ", None)])
def test_thread_count_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("SPIRALCTL_THREADS", value)
    assert thread_count() == (expected or available_cores())


@pytest.mark.parametrize("value", ["zero", "abc", "0", "-1", "2.5"])
def test_a_bad_thread_count_is_refused(monkeypatch, run, small_data, trained_run, value):
    monkeypatch.setenv("SPIRALCTL_THREADS", value)
    with pytest.raises(SpiralError, match="SPIRALCTL_THREADS"):
        thread_count()
    result = run("eval", trained_run / "best.safetensors", small_data / "val.safetensors", "--device", "cpu")
    assert result.exit_code == 2 and result.stdout == ""
    assert (
        result.stderr.startswith("error: SPIRALCTL_THREADS must be a whole number")
        and repr(value) in result.stderr
    )


def test_more_threads_than_cores_gets_a_note(run, small_data, tmp_path, monkeypatch):
    from spiralctl import commands

    monkeypatch.setattr(commands, "available_cores", lambda: 2)
    args = [
        "train",
        "--data",
        small_data,
        "--out",
        tmp_path / "run",
        "--epochs",
        1,
        "--hidden",
        4,
        "--batch-size",
        32,
    ]
    result = run(*args, "--no-plots", "--device", "cpu", env={"SPIRALCTL_THREADS": "5"})
    assert result.exit_code == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: SPIRALCTL_THREADS=5 is more than the 2 cores this process may use; the threads share them"
    ]


def test_threads_are_on_only_inside_their_context(restore_threads):
    import threading

    use_cpu_threads(1)
    with cpu_threads("CPU") as threads:
        assert threads == thread_count() and hasattr(CPUProgram.__call__, "__wrapped__") == (threads > 1)
    assert not hasattr(CPUProgram.__call__, "__wrapped__")
    assert not [t for t in threading.enumerate() if t.name.startswith("spiralctl-kernel")]  # pool ended
    with cpu_threads("PYTHON") as threads:
        assert threads == 1 and not hasattr(CPUProgram.__call__, "__wrapped__")


def test_wide_vectors_only_on_x86_with_avx512(monkeypatch):
    monkeypatch.setattr(kernel_threads.platform, "machine", lambda: "aarch64")
    assert kernel_threads.wide_vector_arch("arm64,native") is None
    monkeypatch.setattr(kernel_threads.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(kernel_threads, "_has_avx512", lambda: False)
    assert kernel_threads.wide_vector_arch("x86_64,native") is None
    monkeypatch.setattr(kernel_threads, "_has_avx512", lambda: True)
    assert kernel_threads.wide_vector_arch("x86_64,native") == "x86_64,native,prefer-vector-width=512"
    assert kernel_threads.wide_vector_arch("x86_64,znver4") == "x86_64,znver4,prefer-vector-width=512"
    assert kernel_threads.wide_vector_arch("x86_64,native,prefer-vector-width=512") is None  # once


X86 = platform.machine().lower() in ("x86_64", "amd64")


@pytest.mark.skipif(
    not X86 or not kernel_threads._has_avx512(), reason="512-bit vectors: x86-64 with AVX-512"
)
def test_cpu_kernels_compile_for_wide_vectors_inside_the_context(restore_threads):
    from tinygrad import Device

    cpu = Device["CPU"]
    before = cpu.renderer.target.arch
    with cpu_threads("CPU"):
        assert cpu.renderer.target.arch == f"{before},prefer-vector-width=512"
        assert "-mprefer-vector-width=512" in cpu.compiler.args
        # the kernels still give the float64 reference's numbers (batch 20: 5 blocks of 4 lanes)
        arrays, grad_h = lstm_inputs(20, 5, 5, seed=3)
        assert_like_lstm_numpy(_lstm_run(arrays, grad_h), arrays, grad_h)
    assert cpu.renderer.target.arch == before


def test_a_cpu_target_in_dev_wins(monkeypatch, restore_threads):
    from tinygrad import Device
    from tinygrad.helpers import DEV, Target

    monkeypatch.setattr(kernel_threads, "_has_avx512", lambda: True)
    monkeypatch.setattr(DEV, "_value", [Target(device="CPU", renderer="CLANG", arch="x86_64,native")])
    with cpu_threads("CPU"):
        assert Device["CPU"].renderer.target.arch == "x86_64,native"


@pytest.mark.skipif(kernel_threads._mxcsr_functions() is None, reason="MXCSR is x86-64 only")
def test_denormals_flush_to_zero_only_inside_the_context(restore_threads):
    tiny = np.float32(1e-39)  # below float32's smallest normal number, 1.2e-38
    assert tiny * np.float32(1.0) == tiny
    with cpu_threads("CPU") as threads:
        assert tiny * np.float32(1.0) == 0.0
        if threads > 1:  # the kernel threads too
            pool = kernel_threads._state["pool"]
            assert pool.submit(lambda: float(tiny * np.float32(1.0))).result() == 0.0
    assert tiny * np.float32(1.0) == tiny  # the caller's mode is back


@pytest.mark.parametrize(
    ("hidden", "header"), [(4, "training on CPU: "), (32, "training on CPU (2 threads): ")]
)
def test_the_training_header_names_the_threads_the_steps_use(run, small_data, tmp_path, hidden, header):
    # B x 4H x H: 32 x 16 x 4 = 2048 multiply-adds a time step stay on one core; 32 x 128 x 32 split
    result = run(
        "train", "--data", small_data, "--out", tmp_path / f"run{hidden}", "--epochs", 1,
        "--hidden", hidden, "--batch-size", 32, "--no-plots", env={"SPIRALCTL_THREADS": "2"},
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines()[0].startswith(header)
