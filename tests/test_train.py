"""Training: the reported loss, run-folder contents, exact resume, padding, failures."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from helpers import AutogradTrainer
from tinygrad import Tensor

from spiralctl import commands
from spiralctl.checkpoint import load_checkpoint
from spiralctl.config import TrainConfig
from spiralctl.data import DataConfig, epoch_order, generate, padded_batches, save_datasets
from spiralctl.errors import SpiralError
from spiralctl.model import ModelConfig, SpiralClassifier, init_parameters
from spiralctl.predictor import bce_numpy
from spiralctl.runs import next_run_dir
from spiralctl.trainer import Trainer


def test_padded_batches_use_every_sequence_once():
    order = np.arange(10)[::-1]
    batches = list(padded_batches(10, 4, order))
    assert [count for _, count in batches] == [4, 4, 2]
    assert all(len(index) == 4 for index, _ in batches)
    seen = np.concatenate([index[:count] for index, count in batches])
    assert sorted(seen) == list(range(10))


def test_first_step_reports_the_loss_of_its_own_forward_pass():
    """The jitted step must return the loss before the update (a tinygrad pitfall), and how many of
    the real (unpadded) sequences that same forward pass classified right."""
    data = generate(DataConfig(sequences=40, length=8, seed=1))["train"]
    config = ModelConfig(hidden=5)
    weights = init_parameters(config, seed=4)
    x, y = data.x[:16], data.y[:16]
    expected = []
    for count in (16, 11):  # a full batch and a padded one
        model = SpiralClassifier(config, weights, "CPU")
        logits = model(Tensor(x)).numpy()
        expected.append(bce_numpy(logits[:count], y[:count]).mean())
        right = int(((logits[:count] > 0) == (y[:count] == 1)).sum())
        trainer = Trainer(model, TrainConfig(hidden=5, batch_size=16))
        mask = (np.arange(16) < count).astype(np.float32)
        loss, correct = trainer.step(x, y, mask)
        assert loss == pytest.approx(expected[-1], abs=1e-5)
        assert correct == right


@pytest.mark.parametrize(
    "batch, steps, hidden, count, reference",
    [
        (16, 3, 5, 11, "reference"),
        (16, 9, 5, 16, "fused"),
        (32, 10, 12, 29, "fused"),
        (256, 4, 8, 200, "fused"),
    ],
)
def test_step_kernels_match_autograd(batch, steps, hidden, count, reference):
    """The training step's own kernels (head, loss and gradients without autograd, Adam reading the
    gradients in place) against tinygrad's autograd through the plain recurrence (short, it
    compiles slowly) or through the fused LSTM's grad_fxn: three steps of results, parameters
    and Adam moments. (256, ...) runs with padded batch columns; all but one with masked-out
    sequences."""
    data = generate(DataConfig(sequences=max(2 * batch, 40), length=steps, seed=1))["train"]
    config = ModelConfig(hidden=hidden)
    weights = init_parameters(config, seed=3)
    x, y = data.x[:batch], data.y[:batch]
    mask = (np.arange(batch) < count).astype(np.float32)
    runs = []
    train_config = TrainConfig(hidden=hidden, batch_size=batch, lr=0.05)
    for make in (Trainer, functools.partial(AutogradTrainer, impl=reference)):
        model = SpiralClassifier(config, weights, "CPU")
        trainer = make(model, train_config)
        results = np.array([trainer.step(x, y, mask) for _ in range(3)])
        moments = [m.numpy() for m in trainer.optimizer.exp_avg + trainer.optimizer.exp_avg_sq]
        runs.append((results, model.state_dict(), moments))
    (fused, fused_weights, fused_moments), (expected, expected_weights, expected_moments) = runs
    np.testing.assert_allclose(fused, expected, atol=1e-5)
    assert fused[:, 1].tolist() == expected[:, 1].tolist()  # right answers: exact counts
    for name in fused_weights:
        np.testing.assert_allclose(fused_weights[name], expected_weights[name], atol=1e-5, err_msg=name)
    for a, b in zip(fused_moments, expected_moments):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_run_folder_holds_checkpoints_and_metrics(trained_run):
    lines = (trained_run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    for number, line in enumerate(lines, start=1):
        metrics = json.loads(line)
        assert metrics["epoch"] == number
        for key in ("train_loss", "val_loss", "val_accuracy", "train_seconds", "sequences_per_second"):
            assert np.isfinite(metrics[key])
    last = load_checkpoint(trained_run / "last.safetensors")
    assert last.epoch == 2 and last.model.hidden == 4
    assert last.train_config["batch_size"] == 32
    assert int(last.optimizer["step"][0]) == 2 * 2  # 60 sequences / 32 per batch = 2 steps per epoch
    best = load_checkpoint(trained_run / "best.safetensors")
    best_epoch = min((json.loads(line) for line in lines), key=lambda m: m["val_loss"])["epoch"]
    assert best.epoch == best_epoch


def test_resume_is_bit_identical_to_one_run(tmp_path, small_data):
    config = TrainConfig(epochs=3, batch_size=32, hidden=4, seed=2)
    commands.train(config, data_dir=small_data, out=tmp_path / "once", device="cpu")
    commands.train(
        TrainConfig(epochs=1, batch_size=32, hidden=4, seed=2),
        data_dir=small_data,
        out=tmp_path / "twice",
        device="cpu",
    )
    commands.train(
        TrainConfig(epochs=3),
        data_dir=small_data,
        resume_path=tmp_path / "twice" / "last.safetensors",
        device="cpu",
    )
    once = load_checkpoint(tmp_path / "once" / "last.safetensors")
    twice = load_checkpoint(tmp_path / "twice" / "last.safetensors")
    assert twice.epoch == 3
    for name in once.weights:
        np.testing.assert_array_equal(once.weights[name], twice.weights[name])
    for name in once.optimizer:
        np.testing.assert_array_equal(once.optimizer[name], twice.optimizer[name])
    lines = (tmp_path / "twice" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_resume_refuses_other_data_and_finished_runs(tmp_path, small_data, trained_run):
    with pytest.raises(SpiralError, match="already run 2 epochs"):
        commands.train(
            TrainConfig(epochs=2),
            data_dir=small_data,
            resume_path=trained_run / "last.safetensors",
            device="cpu",
        )
    other = tmp_path / "other"
    save_datasets(other, generate(DataConfig(sequences=120, length=12, seed=9)))
    with pytest.raises(SpiralError, match="differs"):
        commands.train(
            TrainConfig(epochs=5), data_dir=other, resume_path=trained_run / "last.safetensors", device="cpu"
        )


def test_epoch_order_depends_on_seed_and_epoch_only():
    assert np.array_equal(epoch_order(1, 3, 50), epoch_order(1, 3, 50))
    assert not np.array_equal(epoch_order(1, 3, 50), epoch_order(1, 4, 50))


def test_next_run_dir_counts_up(tmp_path):
    assert next_run_dir(tmp_path / "runs").name == "train-1"
    (tmp_path / "runs" / "train-1").mkdir(parents=True)
    (tmp_path / "runs" / "train-7").mkdir()
    assert next_run_dir(tmp_path / "runs").name == "train-8"


def test_existing_run_folder_needs_exist_ok(small_data, trained_run, tmp_path):
    # a folder holding a run says so first: --exist-ok would not help there
    with pytest.raises(SpiralError, match="holds a run") as info:
        commands.train(TrainConfig(epochs=1), data_dir=small_data, out=trained_run, device="cpu")
    assert "exist_ok" not in info.value.message
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SpiralError, match="exist_ok"):
        commands.train(TrainConfig(epochs=1), data_dir=small_data, out=tmp_path / "other", device="cpu")


def test_diverging_loss_stops_with_exit_code_1(tmp_path, small_data):
    # Adam moves each weight by about lr per step: 1e38 overflows float32 within the first epoch
    with pytest.raises(SpiralError, match="smaller lr") as info:
        commands.train(
            TrainConfig(epochs=3, batch_size=32, hidden=4, lr=1e38),
            data_dir=small_data,
            out=tmp_path / "run",
            device="cpu",
        )
    assert info.value.exit_code == 1
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_direct_replay_gives_the_jits_bits(monkeypatch):
    """After the jit captures (its second call), steps run as direct program calls
    (kernels/replay.py): losses and weights bit for bit those of tinygrad's own jitted calls."""
    from spiralctl import trainer as trainer_module

    data = generate(DataConfig(sequences=200, length=9, seed=4))["train"]
    mask = np.ones(32, np.float32)

    def run(replay: bool):
        if not replay:
            monkeypatch.setattr(trainer_module, "direct_replay", lambda *a: None)
        config = ModelConfig(hidden=6)
        model = SpiralClassifier(config, init_parameters(config, seed=3), "CPU")
        trainer = Trainer(model, TrainConfig(hidden=6, batch_size=32))
        losses = [trainer.step(data.x[i : i + 32], data.y[i : i + 32], mask) for i in range(0, 160, 32)]
        return losses, model.state_dict(), bool(trainer._replays)

    replayed, replayed_weights, used = run(replay=True)
    jitted, jitted_weights, unused = run(replay=False)
    assert used and not unused
    assert replayed == jitted
    for name in replayed_weights:
        assert np.array_equal(replayed_weights[name], jitted_weights[name]), name
