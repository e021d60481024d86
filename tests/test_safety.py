"""Never lose a model, never trust a bad file: fuzzed headers, permissions, signals, locks, determinism."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import BAD_FILES, EXE, installed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spiralctl import commands
from spiralctl.checkpoint import load_checkpoint
from spiralctl.config import TrainConfig
from spiralctl.data import DataConfig, generate, save_datasets
from spiralctl.errors import Interrupted, SpiralError
from spiralctl.runs import run_lock
from spiralctl.storage import read_safetensors, write_safetensors

VALID = None


def _valid_file(tmp_path_factory) -> bytes:
    global VALID
    if VALID is None:
        path = tmp_path_factory.mktemp("valid") / "v.safetensors"
        write_safetensors(
            path,
            {"x": np.arange(12, dtype=np.float32).reshape(3, 4), "y": np.ones(3, np.uint8)},
            {"format": "spiralctl-dataset/1"},
        )
        VALID = path.read_bytes()
    return VALID


def _read_bytes(tmp_path: Path, raw: bytes):
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(raw)
    try:
        read_safetensors(path)
    except SpiralError:
        pass  # the only exception allowed to escape


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_spiral_errors(tmp_path, raw):
    _read_bytes(tmp_path, raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_files_only_raise_spiral_errors(tmp_path, tmp_path_factory, data):
    raw = bytearray(_valid_file(tmp_path_factory))
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if kind == "flip" and raw:
            raw[at] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del raw[at : at + data.draw(st.integers(1, 16))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    _read_bytes(tmp_path, bytes(raw))


def _as_nobody(function) -> str:
    """Run `function` in a forked child that has dropped root; return what it reports."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        try:
            os.setgid(65534)
            os.setuid(65534)
            result = function()
        except SpiralError as exc:
            result = f"SpiralError: {exc.message}"
        except BaseException as exc:  # report anything else as a failure
            result = f"{type(exc).__name__}: {exc}"
        os.write(write_fd, result.encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as handle:
        out = handle.read()
    os.waitpid(pid, 0)
    return out


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs to start as root")


@needs_root
def test_permissions_as_an_unprivileged_user():
    # pytest's own temporary folders are private to root: use one that others may enter
    tmp_path = Path(tempfile.mkdtemp(prefix="spiralctl-perm-"))
    tmp_path.chmod(0o755)
    readable = tmp_path / "readonly.safetensors"
    write_safetensors(readable, {"a": np.ones(3, np.float32)}, {})
    readable.chmod(0o444)
    secret = tmp_path / "secret.safetensors"
    write_safetensors(secret, {"a": np.ones(3, np.float32)}, {})
    secret.chmod(0o000)
    assert _as_nobody(lambda: str(len(read_safetensors(readable)[0]))) == "1"  # read-only files load
    out = _as_nobody(lambda: str(read_safetensors(secret)))
    assert out.startswith("SpiralError: cannot read") and str(secret) in out
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    out = _as_nobody(
        lambda: str(write_safetensors(locked / "x.safetensors", {"a": np.ones(1, np.float32)}, {}))
    )
    assert out.startswith("SpiralError: cannot write")
    assert list(locked.iterdir()) == []
    out = _as_nobody(lambda: str(read_safetensors(locked / "inside" / "x.safetensors")))
    assert out.startswith("SpiralError")
    for path in (readable, secret):
        path.chmod(0o644)
    shutil.rmtree(tmp_path)


def test_same_seed_same_checkpoint_tensors(tmp_path, small_data):
    for name in ("a", "b"):
        commands.train(
            TrainConfig(epochs=2, batch_size=32, hidden=4, seed=5),
            data_dir=small_data,
            out=tmp_path / name,
            device="cpu",
        )
    a, _ = read_safetensors(tmp_path / "a" / "last.safetensors")
    b, _ = read_safetensors(tmp_path / "b" / "last.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_a_second_training_on_the_same_folder_is_refused(tmp_path, small_data):
    run = tmp_path / "run"
    run.mkdir()
    with run_lock(run):
        with pytest.raises(SpiralError, match="in use"):
            commands.train(
                TrainConfig(epochs=1, batch_size=32, hidden=4),
                data_dir=small_data,
                out=run,
                exist_ok=True,
                device="cpu",
            )


@pytest.fixture(scope="module")
def many_steps_data(tmp_path_factory) -> Path:
    """Enough batches per epoch (40 of 8) that a signal lands in the middle of an epoch."""
    folder = tmp_path_factory.mktemp("many")
    save_datasets(folder, generate(DataConfig(sequences=400, length=10, val_fraction=0.2, seed=4)))
    return folder


TRAIN = ["--hidden", "4", "--batch-size", "8", "--seed", "3"]


def _spiralctl(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "spiralctl", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _wait_for_epoch(proc, epoch: int) -> None:
    """Read the run's --json-progress lines until it reports `epoch` done: the point to act at,
    as the process itself says it has reached it."""
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("event") == "epoch" and event["epoch"] >= epoch:
            return
    raise AssertionError(f"training ended before epoch {epoch}: {proc.stderr.read()}")


def _train(data, run, epochs, *more, **kwargs):
    """A training that, at --epochs 1000, is still running whenever a test acts on it."""
    args = ["train", "--data", data, "--epochs", epochs, "--out", run, "--json-progress", *TRAIN, *more]
    return _spiralctl(*args, **kwargs)


def _assert_same_run(a: Path, b: Path) -> None:
    one, other = load_checkpoint(a / "last.safetensors"), load_checkpoint(b / "last.safetensors")
    assert one.epoch == other.epoch
    for name in one.weights:
        np.testing.assert_array_equal(one.weights[name], other.weights[name])
    for name in one.optimizer:
        np.testing.assert_array_equal(one.optimizer[name], other.optimizer[name])
    epochs = [json.loads(line)["epoch"] for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, one.epoch + 1))


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_that_resumes_exactly(tmp_path, many_steps_data, sig, code):
    run = tmp_path / "run"
    proc = _train(many_steps_data, run, 1000)
    _wait_for_epoch(proc, 1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    message = err.strip().splitlines()[-1]
    assert message.startswith("error: ") and "--resume" in message and "Traceback" not in err
    interrupted = load_checkpoint(run / "last.safetensors")
    assert interrupted.epoch >= 1
    # wherever the signal landed, the resumed run and a straight one to the next epoch agree
    target = interrupted.epoch + 1
    resumed = _spiralctl("train", "--resume", run / "last.safetensors", "--epochs", target)
    straight = _spiralctl(
        "train", "--data", many_steps_data, "--epochs", target, "--out", run.parent / "straight", *TRAIN
    )
    assert resumed.wait(300) == 0, resumed.stderr.read()
    assert straight.wait(300) == 0, straight.stderr.read()
    _assert_same_run(run.parent / "straight", run)


def test_a_signal_inside_an_epoch_resumes_from_that_step(tmp_path, many_steps_data):
    """The signal arrives at step 5 of epoch 2 (sent from the progress callback, so always there):
    the checkpoint holds that position and the resumed run matches one straight run."""
    config = TrainConfig(epochs=3, batch_size=8, hidden=4, seed=3)

    def signal_at_step_5(event: str, info: dict) -> None:
        if event == "batch" and info["epoch"] == 2 and info["batch"] == 5:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted) as stopped:
        commands.train(
            config, data_dir=many_steps_data, out=tmp_path / "run", device="cpu", on_progress=signal_at_step_5
        )
    assert stopped.value.exit_code == 130 and "in epoch 2 after step 5 of 40" in str(stopped.value)
    interrupted = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert interrupted.epoch == 1 and interrupted.metrics["partial_steps"] == 5
    commands.train(config, resume_path=tmp_path / "run" / "last.safetensors", device="cpu")
    commands.train(config, data_dir=many_steps_data, out=tmp_path / "straight", device="cpu")
    _assert_same_run(tmp_path / "straight", tmp_path / "run")


def test_sigterm_to_the_whole_process_group_exits_with_a_resumable_checkpoint(tmp_path, many_steps_data):
    """What timeout, Slurm and container runtimes do: tinygrad's compile workers get the signal too."""
    run = tmp_path / "run"
    proc = _train(many_steps_data, run, 1000, start_new_session=True)
    _wait_for_epoch(proc, 1)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "SIGTERM" in err.strip().splitlines()[-1]
    assert load_checkpoint(run / "last.safetensors").optimizer  # resumable


def _opened_by(fifo: Path, proc: subprocess.Popen):
    """`fifo` opened for writing, which returns once `proc` has opened it to read: the point to
    act at, as the process itself reaches it. A process that ends before it fails the test."""
    opened: list = []
    opener = threading.Thread(target=lambda: opened.append(open(fifo, "w")), daemon=True)
    opener.start()
    while opener.is_alive():
        opener.join(timeout=0.1)
        if opener.is_alive() and proc.poll() is not None:
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # lets the opener go
            opener.join()
            raise AssertionError(f"spiralctl ended before it read {fifo}: {proc.communicate()}")
    return opened[0]


@installed
@pytest.mark.parametrize(
    "sig, code, message", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_a_signal_before_training_starts_is_one_line_and_its_exit_code(tmp_path, sig, code, message):
    """The installed spiralctl, stopped while it reads `train --config` (a FIFO it waits on),
    before any training, run folder or signal handler of the training's own: as a Ctrl-C does."""
    config = tmp_path / "config.json"
    os.mkfifo(config)
    proc = subprocess.Popen(
        [EXE, "train", "--config", config, "--out", tmp_path / "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with _opened_by(config, proc):
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, (proc.returncode, err)
    assert err == f"error: {message}\n" and out == ""
    assert not (tmp_path / "run").exists()


def test_kill_9_leaves_every_checkpoint_loadable(tmp_path, many_steps_data):
    rng = np.random.default_rng(0)
    for attempt in range(2):
        run = tmp_path / f"run{attempt}"
        proc = _train(many_steps_data, run, 1000)
        _wait_for_epoch(proc, 1)
        time.sleep(float(rng.uniform(0, 0.5)))  # a random moment of the run, not a wait for one
        proc.kill()
        proc.wait()
        for name in ("last.safetensors", "best.safetensors"):
            load_checkpoint(run / name)  # raises if damaged
        leftovers = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
        assert all(name.startswith(".") for name in leftovers)  # only hidden temporaries, never a real name


def _damaged_files(folder: Path, small_data: Path, trained_run: Path) -> dict[str, Path]:
    """Every kind of bad file, by name, as files in `folder`."""
    files = {}
    for name, raw in BAD_FILES.items():
        files[name] = folder / f"{name.replace(' ', '-')}.safetensors"
        files[name].write_bytes(raw)
    files["zeros"] = folder / "zeros.safetensors"
    files["zeros"].write_bytes(bytes(4096))
    files["huge header"] = folder / "huge.safetensors"
    header = b'{"__metadata__":{"pad":"' + b"x" * (17 * 1024 * 1024) + b'"}}'
    files["huge header"].write_bytes(len(header).to_bytes(8, "little") + header)
    files["directory"] = folder / "dir.safetensors"
    files["directory"].mkdir()
    files["dataset for checkpoint"] = small_data / "val.safetensors"
    files["checkpoint for dataset"] = trained_run / "best.safetensors"
    tensors, metadata = read_safetensors(trained_run / "best.safetensors")
    tensors["lstm.weight_hh_l0"] = np.full_like(tensors["lstm.weight_hh_l0"], np.nan)
    files["NaN weights"] = folder / "nan-weights.safetensors"
    write_safetensors(files["NaN weights"], tensors, metadata)
    flipped = bytearray((trained_run / "best.safetensors").read_bytes())
    flipped[-3] ^= 0x10
    files["flipped byte"] = folder / "flipped.safetensors"
    files["flipped byte"].write_bytes(bytes(flipped))
    return files


def test_every_bad_file_gets_one_line_and_exit_2_everywhere(tmp_path, small_data, trained_run):
    from typer.testing import CliRunner

    from spiralctl.cli import app

    runner = CliRunner()
    files = _damaged_files(tmp_path, small_data, trained_run)
    checkpoint, dataset = trained_run / "best.safetensors", small_data / "val.safetensors"
    for name, bad in files.items():
        uses = []  # (arguments, the file the error line must name)
        if name != "checkpoint for dataset":
            uses += [(["eval", bad, dataset], bad.name), (["train", "--resume", bad], bad.name)]
        if name != "dataset for checkpoint":
            uses += [(["eval", checkpoint, bad], bad.name), (["predict", checkpoint, bad], bad.name)]
            data_dir = tmp_path / "data" / name.replace(" ", "-")
            data_dir.mkdir(parents=True)
            (data_dir / "train.safetensors").symlink_to(bad)
            (data_dir / "val.safetensors").symlink_to(dataset)
            out = tmp_path / "runs" / name.replace(" ", "-")
            uses.append((["train", "--data", data_dir, "--out", out], f"{data_dir.name}/train.safetensors"))
        for args, named in uses:
            result = runner.invoke(app, [str(a) for a in args])
            lines = [line for line in result.output.splitlines() if line.strip()]
            assert result.exit_code == 2, (name, args, result.output)
            assert len(lines) == 1 and lines[0].startswith("error: "), (name, args, result.output)
            assert "Traceback" not in result.output
            assert named in lines[0], (name, lines[0])
