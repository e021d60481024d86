"""The training step's kernels render for the GPU backends, with the launch grid they need.

No GPU here: each kernel of a training step is captured as tinygrad lowers it for the CPU,
then generated for CUDA, Metal and AMD (HIP) with tinygrad's own renderers, stopping before
the vendor compiler. What is checked is the parallel structure: the forward and backward
kernels launch one thread per block of batch columns, the weight gradients one per gate
row, and the head and Adam, whose loops depend on each other, exactly one. (A loop left to
tinygrad's default turns into part of the grid on GPUs, which ran Adam's update once per
thread of a huge grid.)
"""

from __future__ import annotations

import numpy as np
import pytest
import tinygrad.codegen as codegen
from helpers import render
from tinygrad.helpers import Context, ansistrip
from tinygrad.uop.ops import UOp

from spiralctl.config import TrainConfig
from spiralctl.model import ModelConfig, SpiralClassifier, init_parameters
from spiralctl.trainer import Trainer


@pytest.fixture(scope="module")
def step_kernels(monkeypatch_module):
    """The ASTs of one training step's kernels (hidden 8, batch 128 = 8 blocks of 16 columns, which
    the recurrent kernels take 4 at a time; a step this small runs as one slice)."""
    captured: dict[str, UOp] = {}
    lower = codegen.do_to_program

    def capture(ast, renderer):
        program = lower(ast, renderer)
        captured.setdefault(ansistrip(program.src[0].arg.name), ast)
        return program

    monkeypatch_module.setattr(codegen, "do_to_program", capture)
    config = ModelConfig(hidden=8)
    model = SpiralClassifier(config, init_parameters(config, seed=0), "CPU")
    trainer = Trainer(model, TrainConfig(hidden=8, batch_size=128))
    # 7 points: a shape no other test compiles, so the kernels are lowered here
    x = np.random.default_rng(0).standard_normal((128, 7, 2)).astype(np.float32)
    with Context(PARALLEL=0):  # lower in this process, where the hook sees it
        trainer.step(x, (np.arange(128) % 2).astype(np.float32), np.ones(128, np.float32))
    return captured


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
