"""The installed `spiralctl` command, in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest
from helpers import EXE


def _run(*args, **kwargs):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=300, **kwargs)


@pytest.mark.skipif(not os.path.exists(EXE), reason="spiralctl is not installed in this environment")
def test_installed_command_end_to_end(small_data):
    assert _run("--version").stdout.strip().startswith("spiralctl ")
    result = _run(
        "train",
        "--data",
        small_data,
        "--epochs",
        1,
        "--hidden",
        4,
        "--batch-size",
        32,
        "--out",
        "run",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["last"]["epoch"] == 1
    assert "epoch 1/1" in result.stderr  # progress goes to stderr, the result to stdout
    result = _run("predict", "run/last.safetensors", "-", "--json", input="[[0, 1], [1, 0], [0, -1]]")
    assert result.returncode == 0 and json.loads(result.stdout)["points"] == 3
    result = _run("eval", "run/last.safetensors", "missing.safetensors")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_python_dash_m(small_data):
    result = subprocess.run([sys.executable, "-m", "spiralctl", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("spiralctl ")


@pytest.mark.skipif(not os.path.exists(EXE), reason="spiralctl is not installed in this environment")
def test_shell_completion_completes_commands_and_choices():
    for words, cword, expected in (
        ("spiralctl tr", 1, "train"),
        ("spiralctl train --lr-s", 2, "--lr-schedule"),
        ("spiralctl train --lr-schedule ", 3, "cosine"),
    ):
        env = {
            **os.environ,
            "_SPIRALCTL_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(cword),
        }
        result = _run(env=env)
        assert result.returncode == 0 and expected in result.stdout.split(), (words, result)
    # the shell named (Typer otherwise guesses it from the parent processes, which a test run varies)
    shown = _run(
        "--show-completion", "bash", env={**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    )
    assert "_spiralctl_completion" in shown.stdout, shown


@pytest.mark.skipif(not os.path.exists(EXE), reason="spiralctl is not installed in this environment")
def test_debug_keeps_stdout_for_results(tmp_path):
    np = pytest.importorskip("numpy")
    from spiralctl.checkpoint import Checkpoint, save_checkpoint
    from spiralctl.model import ModelConfig, init_parameters

    config = ModelConfig(hidden=3)
    save_checkpoint(tmp_path / "m.safetensors", Checkpoint(model=config, weights=init_parameters(config, 0)))
    points = "[[0, 1], [1, 0], [0, -1]]"
    result = _run("--debug", "predict", tmp_path / "m.safetensors", "-", "--json", input=points)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["points"] == 3  # stdout holds the result and nothing else
    assert "*** CPU" in result.stderr  # tinygrad's kernel lines went to stderr
    assert np.isfinite(json.loads(result.stdout)["probability"])


def test_a_wheel_holds_every_module_of_the_package(tmp_path):
    """`pip install .` (not editable) must bring every subpackage: build the wheel and compare its
    modules with the source tree's."""
    from pathlib import Path
    from zipfile import ZipFile

    root = Path(__file__).resolve().parent.parent
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(root),
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("spiralctl-*.whl")
    inside = {name for name in ZipFile(wheel).namelist() if name.endswith(".py")}
    source = {str(p.relative_to(root)) for p in (root / "spiralctl").rglob("*.py")}
    assert source <= inside, sorted(source - inside)


@pytest.mark.skipif(not os.path.exists(EXE), reason="spiralctl is not installed in this environment")
def test_the_command_ends_with_its_output_and_caches_whole(small_data, tmp_path):
    """The command skips the interpreter's teardown (spiralctl.entry.leave): its output and its
    caches must still be whole."""
    env = {**os.environ, "CACHEDB": str(tmp_path / "cache" / "cache.db")}
    args = ("train", "--data", small_data, "--epochs", 2, "--hidden", 4, "--batch-size", 32, "--json")
    result = _run(*args, "--out", tmp_path / "run", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["last"]["epoch"] == 2
    cache = tmp_path / "cache"
    assert any(cache.glob("spiralctl-programs-*.pkl"))  # the finished programs were saved
    # closed for good: the killed compile workers' write-ahead log folded into cache.db
    assert not list(cache.glob("cache.db-*")), list(cache.iterdir())
    with sqlite3.connect(cache / "cache.db") as db:  # and tinygrad's binaries are whole
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
    result = _run("eval", tmp_path / "run" / "last.safetensors", "missing.safetensors", env=env)
    assert result.returncode == 2 and result.stderr.startswith("error: ")  # exit codes carry through


# the command as its console script runs it, with os._exit watched
FAST = """
import os, sys
from spiralctl.entry import main

real = os._exit
def watched(code):
    sys.__stderr__.write(f"fast exit {code}\\n")
    sys.__stderr__.flush()
    real(code)
os._exit = watched
sys.argv = ["spiralctl", *sys.argv[1:]]
main()
"""


def test_a_training_ends_by_the_fast_exit(small_data, tmp_path):
    env = {**os.environ, "CACHEDB": str(tmp_path / "cache" / "cache.db")}
    args = [
        "train",
        "--data",
        str(small_data),
        "--epochs",
        "1",
        "--hidden",
        "4",
        "--out",
        str(tmp_path / "run"),
    ]
    result = subprocess.run(
        [sys.executable, "-c", FAST, *args, "--json"], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.endswith("fast exit 0\n")  # no other thread, every stream flushed
    assert json.loads(result.stdout)["last"]["epoch"] == 1
    again = subprocess.run(
        [sys.executable, "-c", FAST, *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert again.returncode == 2 and again.stderr.endswith("fast exit 2\n")  # the run folder exists


def test_a_profiler_still_gets_its_report(tmp_path):
    """`python -m cProfile -m spiralctl` writes its profile at exit: no fast exit under it."""
    out = tmp_path / "spiralctl.prof"
    result = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "spiralctl", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.startswith("spiralctl "), result.stderr
    import pstats

    assert pstats.Stats(str(out)).total_calls > 0


@pytest.mark.skipif(not os.path.exists(EXE), reason="spiralctl is not installed in this environment")
def test_a_damaged_kernel_cache_or_a_missing_cc_is_named(trained_run, small_data, tmp_path):
    args = ("eval", trained_run / "best.safetensors", small_data / "val.safetensors", "--device", "cpu")
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"not a database" * 100)
    result = _run(*args, env={**os.environ, "CACHEDB": str(damaged)})
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "kernel cache" in result.stderr and "is not a cache" in result.stderr
    assert "install clang" not in result.stderr
    assert damaged.read_bytes() == b"not a database" * 100  # not ours to touch
    missing = {**os.environ, "CACHEDB": str(tmp_path / "new" / "cache.db"), "CC": "clang-that-is-not-there"}
    result = _run(*args, env=missing)
    assert result.returncode == 2 and "CC names 'clang-that-is-not-there'" in result.stderr, result.stderr
    failing = {**missing, "CC": "false"}  # a compiler that fails, on a new cache
    result = _run(*args, env=failing)
    assert result.returncode == 2 and "the C compiler (false) failed with exit code 1" in result.stderr


def _leaving(script: str) -> subprocess.CompletedProcess:
    code = "import atexit, sys, threading\nfrom spiralctl.entry import leave\n" + script
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_leave_runs_the_atexit_handlers_flushes_and_exits_with_the_code():
    result = _leaving(
        "atexit.register(lambda: print('atexit ran'))\n"
        "sys.stdout.write('buffered, ')\n"  # a pipe: block-buffered, not yet written
        "leave(7)\n"
        "print('not reached')\n"
    )
    assert result.returncode == 7
    assert result.stdout == "buffered, atexit ran\n"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks a child from a -c script")
def test_leave_lets_python_exit_while_a_child_process_runs():
    """multiprocessing's atexit handler waits for it (tune's trial workers), and a Ctrl-C or
    SIGTERM must still be able to end that wait: Python's own exit does it."""
    result = _leaving(
        "import multiprocessing\n"
        "go = multiprocessing.Event()\n"
        "child = multiprocessing.get_context('fork').Process(target=go.wait)\n"
        "child.start()\n"
        "leave(0)\n"
        "print('returned', flush=True)\n"
        "go.set()\n"
    )
    assert result.returncode == 0 and result.stdout == "returned\n", result.stderr


def test_leave_lets_python_exit_while_another_thread_runs():
    result = _leaving(
        "go = threading.Event()\n"
        "worker = threading.Thread(target=lambda: (go.wait(), print('thread finished')))\n"
        "worker.start()\n"
        "leave(0)\n"
        "print('returned', flush=True)\n"
        "go.set()\n"
    )
    assert result.returncode == 0
    assert result.stdout == "returned\nthread finished\n"
