"""The fused kernels' slices on several threads: same bits as one thread, and the thread setting."""

from __future__ import annotations

import numpy as np
import pytest
from tinygrad import Tensor
from tinygrad.runtime.ops_cpu import CPUProgram

from spiralctl.config import TrainConfig
from spiralctl.data import DataConfig, generate
from spiralctl.errors import SpiralError
from spiralctl.kernels.lstm import lstm
from spiralctl.kernels.threads import available_cores, cpu_threads, thread_count, use_cpu_threads
from spiralctl.model import ModelConfig, SpiralClassifier, init_parameters
from spiralctl.trainer import Trainer


@pytest.fixture
def restore_threads():
    yield
    use_cpu_threads(1)  # the default: tinygrad's own call until a command enters cpu_threads


def _lstm_run(arrays, grad_h):
    tensors = [Tensor(a) for a in arrays]
    h = lstm(*tensors)
    (h * Tensor(grad_h)).sum().backward()
    return [h.numpy()] + [t.grad.numpy() for t in tensors]


def _train_run(threads):
    use_cpu_threads(threads)
    data = generate(DataConfig(sequences=60, length=6, seed=2))["train"]
    config = ModelConfig(hidden=6)
    model = SpiralClassifier(config, init_parameters(config, seed=1), "CPU")
    trainer = Trainer(model, TrainConfig(hidden=6, batch_size=48))
    mask = np.ones(48, np.float32)
    results = [np.array(trainer.step(data.x[:48], data.y[:48], mask)) for _ in range(2)]
    return results, model.state_dict()


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_give_the_same_bits_as_one(threads, restore_threads):
    """Batch 48 = 3 blocks of 16 columns and 4H = 24 gradient rows: split evenly and unevenly."""
    rng = np.random.default_rng(5)
    shapes = [(48, 7, 2), (24, 2), (24, 6), (24,), (24,)]
    arrays = [rng.standard_normal(s).astype(np.float32) * 0.6 for s in shapes]
    grad_h = rng.standard_normal((48, 6)).astype(np.float32)
    use_cpu_threads(1)
    single = _lstm_run(arrays, grad_h)
    use_cpu_threads(threads)
    assert hasattr(CPUProgram.__call__, "__wrapped__")
    for a, b in zip(_lstm_run(arrays, grad_h), single):
        assert np.array_equal(a, b)
    (one_results, one_weights), (many_results, many_weights) = _train_run(1), _train_run(threads)
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


def test_threads_are_on_only_inside_their_context(restore_threads):
    import threading

    use_cpu_threads(1)
    with cpu_threads("CPU") as threads:
        assert threads == thread_count() and hasattr(CPUProgram.__call__, "__wrapped__") == (threads > 1)
    assert not hasattr(CPUProgram.__call__, "__wrapped__")
    assert not [t for t in threading.enumerate() if t.name.startswith("spiralctl-kernel")]  # pool ended
    with cpu_threads("PYTHON") as threads:
        assert threads == 1 and not hasattr(CPUProgram.__call__, "__wrapped__")
