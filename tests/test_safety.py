"""Never lose a model, never trust a bad file: fuzzed headers, permissions, signals, locks, determinism."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spiralctl.checkpoint import load_checkpoint
from spiralctl.data import DataConfig, generate, save_datasets
from spiralctl.errors import SpiralError
from spiralctl.files import read_safetensors, write_safetensors
from spiralctl.train import TrainConfig, run_lock, train_job

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
        train_job(
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
            train_job(
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


def _wait_for_epochs(run: Path, count: int, proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= count:
            return
        time.sleep(0.02)
    raise AssertionError("training did not reach the expected epoch")


@pytest.fixture(scope="module")
def straight(many_steps_data, tmp_path_factory) -> Path:
    """The run the interrupted-and-resumed runs must match, trained in one go."""
    run = tmp_path_factory.mktemp("straight") / "run"
    done = _spiralctl("train", "--data", many_steps_data, "--epochs", 3, "--out", run, *TRAIN)
    assert done.wait(300) == 0, done.stderr.read()
    return run


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_that_resumes_exactly(tmp_path, many_steps_data, straight, sig):

    run = tmp_path / "run"
    proc = _spiralctl("train", "--data", many_steps_data, "--epochs", 3, "--out", run, *TRAIN)
    _wait_for_epochs(run, 1, proc)
    time.sleep(0.05)  # land inside epoch 2
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    message = err.strip().splitlines()[-1]
    assert message.startswith("error: ") and "--resume" in message and "Traceback" not in err
    interrupted = load_checkpoint(run / "last.safetensors")
    assert interrupted.epoch >= 1

    resumed = _spiralctl(
        "train", "--resume", run / "last.safetensors", "--epochs", 3, "--data", many_steps_data
    )
    assert resumed.wait(300) == 0, resumed.stderr.read()
    a, b = load_checkpoint(straight / "last.safetensors"), load_checkpoint(run / "last.safetensors")
    for name in a.weights:
        np.testing.assert_array_equal(a.weights[name], b.weights[name])
    for name in a.optimizer:
        np.testing.assert_array_equal(a.optimizer[name], b.optimizer[name])
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_kill_9_leaves_every_checkpoint_loadable(tmp_path, many_steps_data):
    rng = np.random.default_rng(0)
    for attempt in range(2):
        run = tmp_path / f"run{attempt}"
        proc = _spiralctl("train", "--data", many_steps_data, "--epochs", 50, "--out", run, *TRAIN)
        _wait_for_epochs(run, 1, proc)
        time.sleep(float(rng.uniform(0, 0.5)))
        proc.kill()
        proc.wait()
        for name in ("last.safetensors", "best.safetensors"):
            load_checkpoint(run / name)  # raises if damaged
        leftovers = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
        assert all(name.startswith(".") for name in leftovers)  # only hidden temporaries, never a real name


def _damaged_files(folder: Path, small_data: Path, trained_run: Path) -> dict[str, Path]:
    """Every kind of bad file, by name, as files in `folder`."""
    from test_files import BAD_FILES

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
            started = time.monotonic()
            result = runner.invoke(app, [str(a) for a in args])
            lines = [line for line in result.output.splitlines() if line.strip()]
            assert result.exit_code == 2, (name, args, result.output)
            assert len(lines) == 1 and lines[0].startswith("error: "), (name, args, result.output)
            assert "Traceback" not in result.output
            assert named in lines[0], (name, lines[0])
            assert time.monotonic() - started < 30
