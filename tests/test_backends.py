"""The training step's kernels render for the GPU backends, with the launch grid they need.

No GPU here: each kernel of a training step is captured as tinygrad lowers it for the CPU,
then generated for CUDA, Metal and AMD (HIP) with tinygrad's own renderers, stopping before
the vendor compiler. What is checked is the parallel structure: where a step is big enough to
be split, the forward and backward kernels launch one thread per group of batch blocks and the
weight gradients one per tile of gate rows; a small step's kernels, and the head and Adam,
whose loops depend on each other, exactly one. (A loop left to
tinygrad's default turns into part of the grid on GPUs, which ran Adam's update once per
thread of a huge grid.)
"""

from __future__ import annotations

import numpy as np
import pytest
import tinygrad.codegen as codegen
import tinygrad.engine.realize as realize
from helpers import render
from tinygrad.helpers import Context, ansistrip
from tinygrad.uop.ops import UOp

from spiralctl.config import TrainConfig
from spiralctl.kernels.threads import use_cpu_threads
from spiralctl.model import ModelConfig, SpiralClassifier, init_parameters
from spiralctl.trainer import Trainer


def _capture_step(monkeypatch_module, hidden: int, threads: int) -> dict[str, UOp]:
    """The ASTs of one training step's kernels at batch 128 (8 blocks of 16 columns), built for
    `threads` kernel threads."""
    captured: dict[str, UOp] = {}
    lower = codegen.do_to_program

    def capture(ast, renderer):
        program = lower(ast, renderer)
        captured.setdefault(ansistrip(program.src[0].arg.name), ast)
        return program

    monkeypatch_module.setattr(codegen, "do_to_program", capture)
    # every kernel is lowered here, also one that another test compiled in this process first
    fresh: dict = {}
    monkeypatch_module.setattr(realize, "to_program_cache", fresh)
    monkeypatch_module.setattr(codegen, "to_program_cache", fresh)
    config = ModelConfig(hidden=hidden)
    model = SpiralClassifier(config, init_parameters(config, seed=0), "CPU")
    trainer = Trainer(model, TrainConfig(hidden=hidden, batch_size=128))
    x = np.random.default_rng(0).standard_normal((128, 7, 2)).astype(np.float32)
    use_cpu_threads(threads)
    try:
        with Context(PARALLEL=0):  # lower in this process, where the hook sees it
            trainer.step(x, (np.arange(128) % 2).astype(np.float32), np.ones(128, np.float32))
    finally:
        use_cpu_threads(1)
    return captured


@pytest.fixture(scope="module")
def step_kernels(monkeypatch_module):
    """Hidden 8: a step this small (B x 4H x H = 32768) runs each kernel as one slice."""
    return _capture_step(monkeypatch_module, hidden=8, threads=1)


@pytest.fixture(scope="module")
def split_step_kernels(monkeypatch_module):
    """Hidden 16 on two threads: the recurrences take the 8 blocks 2 at a time (4 slices, two for
    each thread), the weight gradients one slice per tile of 8 of the 64 gate rows."""
    return _capture_step(monkeypatch_module, hidden=16, threads=2)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.parametrize("backend", ["CUDA", "METAL", "AMD"])
def test_step_kernels_render_with_their_launch_grid(step_kernels, backend):
    grids = {
        "lstm_forward": (1, 1, 1),
        "lstm_backward": (1, 1, 1),
        "lstm_weight_grad": (1, 1, 1),
        "lstm_head": (1, 1, 1),
        "adam": (1, 1, 1),
    }
    assert set(grids) <= set(step_kernels)
    for name, grid in grids.items():
        source, global_size, _ = render(step_kernels[name], backend)
        assert name in source
        assert global_size == grid, name


@pytest.mark.parametrize("backend", ["CUDA", "METAL", "AMD"])
def test_split_step_kernels_launch_their_slices(split_step_kernels, backend):
    grids = {"lstm_forward": (4, 1, 1), "lstm_backward": (4, 1, 1), "lstm_weight_grad": (8, 1, 1)}
    for name, grid in grids.items():
        source, global_size, _ = render(split_step_kernels[name], backend)
        assert name in source
        assert global_size == grid, name
