"""Resume and run folders: whose history a resume continues, what it may change, what a failed run leaves."""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from spiralctl import commands
from spiralctl.checkpoint import load_checkpoint
from spiralctl.config import LrSegment, TrainConfig, load_run_options, run_options
from spiralctl.errors import Interrupted, SpiralError
from spiralctl.kernels.layout import PackedBatch
from spiralctl.kernels.step import step_bytes
from spiralctl.runs import read_metrics

SMALL = ["--hidden", "4", "--batch-size", "32", "--seed", "1", "--device", "cpu", "--no-plots"]


def _epochs(run_dir: Path) -> list[int]:
    return [m["epoch"] for m in read_metrics(run_dir)]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture
def three_epochs(small_data, tmp_path) -> Path:
    """A 3-epoch run that kept every epoch's checkpoint."""
    run_dir = tmp_path / "run"
    config = TrainConfig(epochs=3, batch_size=32, hidden=4, seed=1, save_every=1)
    commands.train(config, data_dir=small_data, out=run_dir, device="cpu", plots=False)
    return run_dir


def test_resuming_an_older_checkpoint_in_its_folder_is_refused(run, three_epochs):
    before = _snapshot(three_epochs)
    result = run("train", "--resume", three_epochs / "epoch-1.safetensors", "--epochs", 4)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("error: --resume ") and "gone on to epoch 3" in result.stderr
    assert "--out" in result.stderr and len(result.stderr.splitlines()) == 1
    assert _snapshot(three_epochs) == before  # history untouched


def test_an_older_checkpoint_branches_into_a_new_folder(run, three_epochs, tmp_path):
    before = _snapshot(three_epochs)
    branch = tmp_path / "branch"
    result = run("train", "--resume", three_epochs / "epoch-1.safetensors", "--epochs", 3, "--out", branch)
    assert result.exit_code == 0, result.stderr
    assert _snapshot(three_epochs) == before
    assert _epochs(branch) == [1, 2, 3]
    assert read_metrics(branch)[0] == read_metrics(three_epochs)[0]  # the shared epoch, copied
    # the branch retrains epochs 2-3 from epoch 1's state: the same run, bit for bit
    a, b = load_checkpoint(three_epochs / "last.safetensors"), load_checkpoint(branch / "last.safetensors")
    for name in a.weights:
        np.testing.assert_array_equal(a.weights[name], b.weights[name])
    assert json.loads((branch / "config.json").read_text())["epochs"] == 3
    assert (branch / "best.safetensors").exists()  # the best epoch its history names


def test_a_copied_checkpoint_resumes_in_the_folder_it_is_in(three_epochs, tmp_path):
    elsewhere = tmp_path / "copy"
    elsewhere.mkdir()
    shutil.copy(three_epochs / "last.safetensors", elsewhere / "last.safetensors")
    commands.train(
        TrainConfig(epochs=4), resume_path=elsewhere / "last.safetensors", device="cpu", plots=False
    )
    assert _epochs(elsewhere) == [3, 4]  # its own epoch (from the checkpoint), then the new one
    assert (elsewhere / "config.json").exists() and _epochs(three_epochs) == [1, 2, 3]


def test_resume_refuses_settings_it_cannot_honour(run, trained_run, tmp_path):
    trained_run = Path(shutil.copytree(trained_run, tmp_path / "run"))  # a copy: the fixture is shared
    before = _snapshot(trained_run)
    args = ["train", "--resume", trained_run / "last.safetensors", "--epochs", 5]
    result = run(
        *args, "--hidden", 64, "--lr", 0.5, "--batch-size", 7, "--seed", 9, "--lr-schedule", "cosine"
    )
    assert result.exit_code == 2 and result.stdout == ""
    for option in ("--hidden 64", "--lr 0.5", "--batch-size 7", "--seed 9", "--lr-schedule cosine"):
        assert option in result.stderr, option
    assert _snapshot(trained_run) == before
    # the same values as the run's, and what a resume may change, are fine
    result = run(*args, "--hidden", 4, "--batch-size", 32, "--patience", 3, "--save-every", 2, "--no-plots")
    assert result.exit_code == 0, result.stderr
    assert json.loads((trained_run / "config.json").read_text())["save_every"] == 2
    assert (trained_run / "epoch-4.safetensors").exists() and _epochs(trained_run) == [1, 2, 3, 4, 5]


def test_a_run_that_fails_before_any_checkpoint_leaves_nothing(run, small_data, tmp_path):
    out = tmp_path / "run"
    result = run("train", "--data", small_data, "--out", out, "--lr", "1e38", "--epochs", 2, *SMALL)
    assert result.exit_code == 1 and "smaller --lr" in result.stderr
    assert not out.exists()
    result = run("train", "--data", small_data, "--out", out, "--epochs", 1, *SMALL)
    assert result.exit_code == 0, result.stderr


def test_a_diverging_loss_is_a_failed_run(small_data, tmp_path):
    """--lr 1e30 keeps every number finite but the loss astronomic: still a failure, exit code 1."""
    with pytest.raises(SpiralError, match="diverged") as info:
        config = TrainConfig(epochs=3, batch_size=32, hidden=4, lr=1e30)
        commands.train(config, data_dir=small_data, out=tmp_path / "run", device="cpu", plots=False)
    assert info.value.exit_code == 1 and "smaller lr" in str(info.value)


def test_exist_ok_never_replaces_a_trained_run(run, small_data, trained_run):
    before = _snapshot(trained_run)
    result = run("train", "--data", small_data, "--out", trained_run, "--exist-ok", *SMALL)
    assert (
        result.exit_code == 2
        and "--resume" in result.stderr
        and "holds a run (best.safetensors, last.safetensors)" in result.stderr
    )
    assert _snapshot(trained_run) == before


def test_a_batch_larger_than_the_data_is_capped(run, small_data, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", small_data, "--out", out, "--epochs", 1, "--hidden", "4", "--no-plots"]
    result = run(*args, "--batch-size", 100000, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert notes == ["note: --batch-size 100000 is more than the 60 training sequences; using 60"]
    assert json.loads((out / "config.json").read_text())["batch_size"] == 60


def _train_gib(batch: int, hidden: int) -> float:
    """What spiralctl estimates training takes on `small_data` (12 points, 2 inputs), in GiB: the
    step's buffers, and 5 float32 copies of the parameters."""
    parameters = 4 * hidden * (2 + hidden + 2) + hidden + 1
    return (step_bytes(PackedBatch(batch, 12, 2), hidden) + 20 * parameters) / 2**30


def test_a_step_that_cannot_fit_in_memory_names_the_batch_that_would(run, small_data, tmp_path, monkeypatch):
    monkeypatch.setattr(commands, "available_memory", lambda: int(_train_gib(25, 512) * 2**30))
    out = tmp_path / "run"
    result = run("train", "--data", small_data, "--out", out, "--hidden", 512, "--device", "cpu")
    assert result.exit_code == 2 and not out.exists()
    assert result.stderr == (
        f"error: --batch-size 60: training at hidden 512 on sequences of 12 points needs about "
        f"{_train_gib(60, 512):.1f} GiB of memory, and {_train_gib(25, 512):.1f} GiB is available; "
        "choose --batch-size 25 or less, or a smaller --hidden\n"
    )


@pytest.mark.parametrize("hidden, needs", [(2048, f"{_train_gib(1, 2048):.1f} GiB"), (10**9, "7.5e+10 GiB")])
def test_a_hidden_size_too_big_for_one_sequence_is_blamed(
    run, small_data, tmp_path, monkeypatch, hidden, needs
):
    monkeypatch.setattr(commands, "available_memory", lambda: 10**6)
    out = tmp_path / "run"
    result = run("train", "--data", small_data, "--out", out, "--hidden", hidden, "--device", "cpu")
    assert result.exit_code == 2 and not out.exists()
    assert result.stderr == (
        f"error: --hidden {hidden}: training on sequences of 12 points needs about {needs} of memory "
        "even at --batch-size 1, and 0.0 GiB is available; choose a smaller --hidden\n"
    )


def test_a_full_disk_keeps_the_run_resumable(small_data, tmp_path, monkeypatch):
    """The disk fills while epoch 2's metrics.csv line is written (after metrics.jsonl's): exit 1,
    the error says how to go on, and the resume puts both files right."""
    import spiralctl.storage

    fsync = os.fsync

    def full_disk(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if ".metrics.csv." in name and len(read_metrics(out)) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(spiralctl.storage.os, "fsync", full_disk)
    config = TrainConfig(epochs=3, batch_size=32, hidden=4, seed=1)
    out = tmp_path / "run"
    with pytest.raises(SpiralError) as info:
        commands.train(config, data_dir=small_data, out=out, device="cpu", plots=False)
    assert info.value.exit_code == 1
    message = str(info.value)
    assert "No space left on device" in message and f"resume {out / 'last.safetensors'}" in message
    monkeypatch.undo()
    csv_rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert len(csv_rows) == 1 and _epochs(out) == [1, 2]  # the csv line of epoch 2 is missing
    commands.train(config, resume_path=out / "last.safetensors", device="cpu", plots=False)
    assert _epochs(out) == [1, 2, 3]
    csv = (out / "metrics.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in csv[1:]] == [1, 2, 3]


def test_a_nan_validation_loss_is_a_failed_run(small_data, tmp_path):
    with pytest.raises(SpiralError) as info:
        config = TrainConfig(epochs=1, batch_size=32, hidden=4, lr=1e38)
        commands.train(config, data_dir=small_data, out=tmp_path / "run", device="cpu", plots=False)
    assert info.value.exit_code == 1 and not (tmp_path / "run").exists()


def test_exist_ok_leaves_files_it_did_not_write(run, small_data, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text('{"mine": true}')
    result = run("train", "--data", small_data, "--out", folder, "--exist-ok", *SMALL)
    assert result.exit_code == 2 and "config.json" in result.stderr
    assert (folder / "config.json").read_text() == '{"mine": true}'


COSINE = TrainConfig(
    epochs=2, batch_size=16, hidden=4, seed=1, lr=0.02, lr_schedule="cosine"
)  # 4 steps an epoch


def _assert_same_state(a: Path, b: Path) -> None:
    one, other = load_checkpoint(a), load_checkpoint(b)
    assert one.epoch == other.epoch and one.train_config == other.train_config
    for name in one.weights:
        np.testing.assert_array_equal(one.weights[name], other.weights[name])
    for name in one.optimizer:
        np.testing.assert_array_equal(one.optimizer[name], other.optimizer[name])


def _untimed_metrics(run_dir: Path) -> list[dict]:
    timing = ("train_seconds", "sequences_per_second", "seconds")
    return [{k: v for k, v in m.items() if k not in timing} for m in read_metrics(run_dir)]


def _stop_at(epoch: int, batch: int):
    """A progress callback that sends the run SIGINT at that step: the run stops right after it."""
    import signal

    def callback(event: str, info: dict) -> None:
        if event == "batch" and info["epoch"] == epoch and info["batch"] == batch:
            os.kill(os.getpid(), signal.SIGINT)

    return callback


def test_a_cosine_run_is_extended_by_a_new_cosine_segment(run, small_data, tmp_path):
    """The reported case: --epochs on resume of a finished cosine run. The run goes on with a
    second cosine, from --lr at the next step down to 0 at the new end, and its config.json and
    checkpoints say so."""
    out = tmp_path / "cos"
    args = ["--data", small_data, "--out", out, "--lr-schedule", "cosine", "--lr", 0.02, "--hidden", 4]
    assert (
        run("train", *args, "--batch-size", 16, "--epochs", 2, "--device", "cpu", "--no-plots").exit_code == 0
    )
    result = run("train", "--resume", out / "last.safetensors", "--epochs", 4, "--no-plots")
    assert result.exit_code == 0, result.stderr
    segments = [
        {"start_step": 0, "total_steps": 8, "lr": 0.02},
        {"start_step": 8, "total_steps": 16, "lr": 0.02},
    ]
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 4 and config["lr_segments"] == segments
    assert load_checkpoint(out / "last.safetensors").train_config["lr_segments"] == segments
    lr = [m["lr"] for m in read_metrics(out)]  # each epoch's last step: 4, 8, 12, 16
    cosine = [0.01 * (1 + np.cos(np.pi * step / 8)) for step in (3, 7, 3, 7)]
    np.testing.assert_allclose(lr, cosine, rtol=1e-12)
    # the run's end, once reached, is the end: a resume without --epochs has nothing left to do
    result = run("train", "--resume", out / "last.safetensors")
    assert result.exit_code == 2 and "already run 4 epochs" in result.stderr


def test_an_extended_cosine_run_stopped_inside_its_new_segment_resumes_bit_for_bit(small_data, tmp_path):
    """Extend 2 -> 4 epochs in one go, or extend, stop at step 2 of epoch 3, and resume (without
    --epochs, as the stop message says to, and once more with it): the same weights, optimizer
    state, metrics and config."""
    for name in ("once", "twice"):
        commands.train(COSINE, data_dir=small_data, out=tmp_path / name, device="cpu", plots=False)
    extended, given = replace(COSINE, epochs=4), frozenset({"epochs"})
    once, twice = tmp_path / "once" / "last.safetensors", tmp_path / "twice" / "last.safetensors"
    commands.train(extended, resume_path=once, given=given, device="cpu", plots=False)

    with pytest.raises(Interrupted):
        commands.train(
            extended, resume_path=twice, given=given, device="cpu", plots=False, on_progress=_stop_at(3, 2)
        )
    assert load_checkpoint(twice).metrics["partial_steps"] == 2
    with pytest.raises(Interrupted):  # no --epochs: the run's own, now 4
        commands.train(
            TrainConfig(), resume_path=twice, device="cpu", plots=False, on_progress=_stop_at(4, 1)
        )
    assert _epochs(twice.parent) == [1, 2, 3]  # stopped again, now inside epoch 4
    commands.train(extended, resume_path=twice, given=given, device="cpu", plots=False)

    _assert_same_state(once, twice)
    assert _untimed_metrics(once.parent) == _untimed_metrics(twice.parent)
    assert (tmp_path / "once" / "config.json").read_text() == (tmp_path / "twice" / "config.json").read_text()


def test_a_cosine_run_resumed_with_its_own_epochs_keeps_its_schedule(small_data, tmp_path):
    """Stopped inside epoch 2 of 3 and resumed without --epochs, or with the same --epochs: the run
    one straight run makes, bit for bit, and no segments anywhere (files as before)."""
    config = replace(COSINE, epochs=3)
    commands.train(config, data_dir=small_data, out=tmp_path / "straight", device="cpu", plots=False)
    for name, given in (("bare", frozenset()), ("same", frozenset({"epochs"}))):
        out = tmp_path / name
        with pytest.raises(Interrupted):
            commands.train(
                config, data_dir=small_data, out=out, device="cpu", plots=False, on_progress=_stop_at(2, 3)
            )
        resume = TrainConfig(epochs=3 if given else 25)
        commands.train(resume, resume_path=out / "last.safetensors", given=given, device="cpu", plots=False)
        _assert_same_state(tmp_path / "straight" / "last.safetensors", out / "last.safetensors")
        assert "lr_segments" not in load_checkpoint(out / "last.safetensors").train_config
        assert "lr_segments" not in json.loads((out / "config.json").read_text())


def test_a_cosine_run_stopped_mid_way_and_shortened_anneals_to_its_new_end(small_data, tmp_path):
    """--epochs may also move the end closer: a new segment from the resumed step (inside an epoch)
    down to 0 at the new end."""
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        commands.train(
            replace(COSINE, epochs=6),
            data_dir=small_data,
            out=out,
            device="cpu",
            plots=False,
            on_progress=_stop_at(2, 1),  # after step 5
        )
    commands.train(
        replace(COSINE, epochs=3),
        resume_path=out / "last.safetensors",
        given=frozenset({"epochs"}),
        device="cpu",
        plots=False,
    )
    config = json.loads((out / "config.json").read_text())
    assert config["lr_segments"] == [
        {"start_step": 0, "total_steps": 24, "lr": 0.02},
        {"start_step": 5, "total_steps": 12, "lr": 0.02},
    ]
    lr = [m["lr"] for m in read_metrics(out)]  # the steps 4, 8 and 12
    np.testing.assert_allclose(
        lr, [0.01 * (1 + np.cos(np.pi * 3 / 24)), *(0.01 * (1 + np.cos(np.pi * s / 7)) for s in (2, 6))]
    )


def test_the_learning_rate_of_segments():
    plain = TrainConfig(lr=0.1, lr_schedule="cosine")
    assert [plain.learning_rate(s, 4) for s in (1, 3)] == [0.1, 0.1 * 0.5 * (1 + np.cos(np.pi / 2))]
    extended = plain.resumed((LrSegment(0, 4, 0.1),), 4, 8)
    assert extended.lr_segments == (LrSegment(0, 4, 0.1), LrSegment(4, 8, 0.1))
    for step in range(1, 5):  # the first segment's steps are the plain schedule's, to the bit
        assert extended.learning_rate(step, 8) == plain.learning_rate(step, 4)
    assert extended.learning_rate(5, 8) == 0.1 and extended.learning_rate(7, 8) == plain.learning_rate(3, 4)
    assert plain.resumed((LrSegment(0, 4, 0.1),), 2, 4).lr_segments == ()  # the same end: as it was
    assert TrainConfig().resumed((LrSegment(0, 4, 0.01),), 4, 8).lr_segments == ()  # constant: none
    with pytest.raises(SpiralError, match="end after step 8, and this run has 12 steps"):
        extended.check_steps(12)
    with pytest.raises(SpiralError, match="not a segment"):
        replace(plain, lr_segments=(LrSegment(0, 4, 0.1), LrSegment(4, 3, 0.1))).check()


def test_config_json_of_an_extended_run_is_read_back(tmp_path):
    path = tmp_path / "config.json"
    segments = (LrSegment(0, 8, 0.02), LrSegment(8, 16, 0.02))
    config = TrainConfig(epochs=4, lr=0.02, lr_schedule="cosine", lr_segments=segments)
    path.write_text(json.dumps(run_options(config, None, "cpu")))
    assert load_run_options(path)["lr_segments"] == segments
    path.write_text(json.dumps({**run_options(config, None, "cpu"), "lr_segments": [{"start_step": 0}]}))
    with pytest.raises(SpiralError, match="lr_segments must be a list of"):
        load_run_options(path)


def test_a_checkpoint_without_optimizer_state_is_refused_up_front(run, trained_run, tmp_path):
    from spiralctl.checkpoint import Checkpoint, save_checkpoint

    held = load_checkpoint(trained_run / "last.safetensors")
    bare = tmp_path / "bare" / "weights.safetensors"
    bare.parent.mkdir()
    save_checkpoint(bare, Checkpoint(model=held.model, weights=held.weights, epoch=held.epoch))
    result = run("train", "--resume", bare, "--epochs", 5)
    assert result.exit_code == 2 and result.stderr.startswith(
        f"error: --resume {bare} holds no optimizer state"
    )
    assert sorted(p.name for p in bare.parent.iterdir()) == ["weights.safetensors"]


def test_a_signal_before_training_starts_still_stops_at_a_resumable_point(small_data, tmp_path):
    """SIGTERM while the run is being set up (here: as the batch-size note is shown, before the
    first step): the run stops after its first step with a checkpoint to resume from."""
    import signal

    from spiralctl.errors import Interrupted

    def terminate_on_note(event: str, info: dict) -> None:
        if event == "note":
            os.kill(os.getpid(), signal.SIGTERM)

    out = tmp_path / "run"
    with pytest.raises(Interrupted) as stopped:
        config = TrainConfig(epochs=3, batch_size=1000, hidden=4)
        commands.train(
            config, data_dir=small_data, out=out, device="cpu", plots=False, on_progress=terminate_on_note
        )
    assert stopped.value.exit_code == 143
    assert load_checkpoint(out / "last.safetensors").optimizer


def test_gpu_kernels_refuse_a_model_wider_than_a_workgroup(run, small_data, tmp_path):
    result = run(
        "train", "--data", small_data, "--out", tmp_path / "r", "--hidden", 2048, "--device", "PYTHON"
    )
    assert result.exit_code == 2 and result.stderr.startswith("error: --hidden 2048 is more than the 1024")
    assert not (tmp_path / "r").exists()
