"""The on-disk cache of finished kernel programs (spiralctl/kernels/programs.py): a second
process lowers nothing the first one saved and trains to the same bits; a bad file is ignored
and replaced; CACHELEVEL=0, an unwritable folder, a full disk and a signal mid-write."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from spiralctl import commands
from spiralctl.config import TrainConfig
from spiralctl.kernels import programs

CONFIG = {"epochs": 2, "batch_size": 32, "hidden": 4, "seed": 1}  # trained_run's (conftest.py)

# a second process: loads the cache, trains, then lowers one new kernel (proof that the hook
# counting lowered programs works), and says what it loaded and lowered
SECOND = """
import json, sys
import numpy as np
import tinygrad.codegen as codegen
from tinygrad import Tensor
from tinygrad.helpers import ansistrip
from spiralctl import commands
from spiralctl.config import TrainConfig
from spiralctl.kernels.programs import load_programs

names = []
lower = codegen.do_to_program
def capture(ast, renderer):
    program = lower(ast, renderer)
    names.append(ansistrip(program.src[0].arg.name))
    return program
codegen.do_to_program = capture
loaded = load_programs()
config = TrainConfig(**json.loads(sys.argv[1]))
commands.train(config, data_dir=sys.argv[2], out=sys.argv[3], device="cpu", plots=False)
# the CPU device's own 4 programs are in the file only if this test's first process opened its
# device through spiralctl (test_the_cpu_devices_own_programs_are_cached_too)
runtime = ("signal_prog", "wait_prog", "timestamp_prog", "worker_prog")
trained, before = [name for name in names if name not in runtime], len(names)
(Tensor(np.arange(7919, dtype=np.float32), device="CPU") * 3.5).realize()
print(json.dumps({"loaded": loaded, "trained": trained, "control": names[before:]}))
"""


def _use_program_cache(patch: pytest.MonkeyPatch, cache: dict) -> None:
    """tinygrad's in-memory program cache (`to_program_cache`) is `cache` while `patch` holds."""
    import tinygrad.codegen as codegen
    import tinygrad.engine.realize as realize

    patch.setattr(codegen, "to_program_cache", cache)
    patch.setattr(realize, "to_program_cache", cache)


@pytest.fixture(scope="module")
def config_programs(tmp_path_factory, small_data) -> dict:
    """The programs a training of CONFIG makes, and no others. This process's own cache holds
    whatever the tests before made (in a whole run, more programs than the file keeps, OpenCL's
    among them), which once made these tests depend on what ran before them."""
    from tinygrad.runtime import ops_cpu

    programs_made: dict = {}
    with pytest.MonkeyPatch.context() as patch:
        _use_program_cache(patch, programs_made)
        run_dir = tmp_path_factory.mktemp("programs") / "run"
        commands.train(TrainConfig(**CONFIG), data_dir=small_data, out=run_dir, device="cpu", plots=False)
        # and the CPU device's own four, which a process makes as it opens the device through
        # spiralctl (this one may have opened it otherwise, before): a second device makes them
        programs.before_cpu_device()
        ops_cpu.CPUDevice("CPU")
    return programs_made


@pytest.fixture
def cache_file(tmp_path, monkeypatch, config_programs) -> Path:
    """This process reads and writes the program cache, in a folder of the test's own, and holds
    the programs of a training of CONFIG (a copy of its own), no others."""
    path = tmp_path / "cache" / programs.file_name()
    monkeypatch.setattr(programs, "enabled", True)
    monkeypatch.setattr(programs, "cache_path", lambda: path)
    monkeypatch.setattr(programs, "_known", {})
    monkeypatch.setattr(programs, "_loaded", set())
    monkeypatch.setattr(programs, "_damaged", set())
    _use_program_cache(monkeypatch, dict(config_programs))
    return path


def _losses(run_dir: Path) -> list[tuple]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
    return [tuple(m[k] for k in keys) for m in lines]


def _compiled_here() -> None:
    """Make sure this process holds the programs of a training of CONFIG (`cache_file` gave them)."""
    from tinygrad.codegen import to_program_cache

    assert len(to_program_cache) >= 5


def test_a_second_process_lowers_nothing_the_first_saved_and_trains_to_the_same_bits(
    cache_file, tmp_path, small_data
):
    first = tmp_path / "first"
    commands.train(TrainConfig(**CONFIG), data_dir=small_data, out=first, device="cpu", plots=False)
    saved = programs._read(cache_file)
    assert len(saved) >= 5
    env = {**os.environ, "CACHEDB": str(cache_file.parent / "cache.db"), "PARALLEL": "0", "DEV": "CPU"}
    result = subprocess.run(
        [sys.executable, "-c", SECOND, json.dumps(CONFIG), str(small_data), str(tmp_path / "second")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["loaded"] == len(saved)
    assert report["trained"] == [], report  # not one of the step's, validation's or set-up's kernels
    assert "E_7919" in report["control"], report  # the hook counts: a kernel the cache lacks
    assert _losses(tmp_path / "second") == _losses(first)
    assert programs._read(cache_file) == saved  # the second process had nothing new to add


OPEN_CPU = """
import json
import numpy as np
import tinygrad.codegen as codegen
from tinygrad import Tensor
from spiralctl.devices import probe
from spiralctl.kernels.programs import save_programs

names = []
lower = codegen.do_to_program
def capture(ast, renderer):
    program = lower(ast, renderer)
    names.append(program.src[0].arg.name)
    return program
codegen.do_to_program = capture
assert probe("CPU") == (True, "")
opened = list(names)
result = (Tensor(np.arange(5, dtype=np.float32), device="CPU") * 2).tolist()
print(json.dumps({"opened": opened, "saved": save_programs(), "result": result}))
"""


def test_the_cpu_devices_own_programs_are_cached_too(tmp_path):
    """tinygrad's CPU device makes four programs of its own as it opens; the second process loads
    them from the cache file rather than generating their code again."""
    env = {**os.environ, "CACHEDB": str(tmp_path / "cache" / "cache.db"), "PARALLEL": "0", "DEV": "CPU"}
    reports = []
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-c", OPEN_CPU], capture_output=True, text=True, env=env, timeout=300
        )
        assert result.returncode == 0, result.stderr
        reports.append(json.loads(result.stdout.splitlines()[-1]))
    first, second = reports
    assert sorted(first["opened"]) == ["signal_prog", "timestamp_prog", "wait_prog", "worker_prog"]
    assert first["saved"] >= 5  # the device's four and the multiplication
    assert second["opened"] == [] and second["saved"] == 0
    assert first["result"] == second["result"] == [0.0, 2.0, 4.0, 6.0, 8.0]


def _file_bytes(header: dict, pairs: list, *, digest: bytes | None = None) -> bytes:
    payload = pickle.dumps((header, pairs))
    return programs.MAGIC + (digest or hashlib.sha256(payload).digest()) + payload


def _bad_files(good: bytes, pairs: list) -> dict[str, bytes]:
    header = programs._header()
    return {
        "empty": b"",
        "garbage": os.urandom(4096),
        "truncated": good[: len(good) // 2],
        "a flipped byte": good[:-100] + bytes([good[-100] ^ 1]) + good[-99:],
        "another format": good.replace(programs.MAGIC, b"spiralctl-programs/0\n", 1),
        "another tinygrad": _file_bytes({**header, "tinygrad": "0.0.1"}, pairs),
        "another python": _file_bytes({**header, "python": "2.7"}, pairs),
        "not a pickle": programs.MAGIC + hashlib.sha256(b"junk").digest() + b"junk",
        "not a list": _file_bytes(header, {"a": "b"}),  # type: ignore[arg-type]
        "an unknown class": _file_bytes(header, [(b"\x80\x04cnowhere\nThing\n.", pairs[0][1])]),
    }


def test_a_corrupt_or_foreign_file_is_ignored_and_replaced(cache_file):
    _compiled_here()
    assert programs.save_programs() >= 5
    good = cache_file.read_bytes()
    pairs = programs._read(cache_file)
    for name, content in _bad_files(good, pairs).items():
        programs._known.clear()
        programs._loaded.clear()
        cache_file.write_bytes(content)
        assert programs.load_programs() == 0, name  # nothing new, nothing raised
        assert programs.save_programs() == len(pairs), name
        assert programs._read(cache_file) == pairs, name
    assert sorted(p.name for p in cache_file.parent.iterdir()) == [cache_file.name]


def test_a_file_others_may_write_is_not_loaded(cache_file):
    """Unpickling runs code: a cache file that anyone but its owner may change is not read."""
    _compiled_here()
    assert programs.save_programs() >= 5
    assert programs._read(cache_file)
    for mode in (0o664, 0o646):
        cache_file.chmod(mode)
        assert programs._read(cache_file) == [], oct(mode)
    cache_file.chmod(0o600)
    assert programs._read(cache_file)


def test_the_file_name_names_this_machine():
    assert programs._machine() in programs.file_name()
    assert programs._machine() == programs._machine()


def test_a_damaged_entry_is_skipped_the_others_load_and_the_next_write_drops_it(cache_file):
    from tinygrad.codegen import to_program_cache

    _compiled_here()
    programs.save_programs()
    pairs = programs._read(cache_file)
    cache_file.write_bytes(_file_bytes(programs._header(), [(pairs[0][0], b"junk"), *pairs[1:]]))
    programs._known.clear()
    programs._loaded.clear()
    saved = dict(to_program_cache)
    try:
        to_program_cache.clear()
        assert programs.load_programs() == len(pairs) - 1
        assert len(to_program_cache) == len(pairs) - 1
    finally:
        to_program_cache.update(saved)
    assert programs.save_programs() == 1  # compiled again here
    assert sorted(programs._read(cache_file)) == sorted(pairs)


def test_cachelevel_0_reads_and_writes_nothing(tmp_path, monkeypatch, small_data):
    from tinygrad import helpers
    from tinygrad.helpers import Context

    monkeypatch.setattr(programs, "enabled", True)
    monkeypatch.setattr(helpers, "CACHEDB", str(tmp_path / "cache" / "cache.db"))
    assert programs.cache_path() == tmp_path / "cache" / programs.file_name()  # follows CACHEDB
    with Context(CACHELEVEL=0):
        assert programs.cache_path() is None
        config = TrainConfig(**CONFIG)
        commands.train(config, data_dir=small_data, out=tmp_path / "r", device="cpu", plots=False)
        assert programs.load_programs() == programs.save_programs() == 0
    assert not (tmp_path / "cache").exists()


class _FailingOs:
    """os for programs.py, whose files fail after `size` bytes with `error` (a full disk)."""

    def __init__(self, error: BaseException, size: int = 1000, during=None) -> None:
        self.error, self.size, self.during = error, size, during

    def __getattr__(self, name):
        return getattr(os, name)

    def fdopen(self, fd, mode):
        handle = os.fdopen(fd, mode)
        outer = self

        class Failing:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                handle.close()

            def write(self, data):
                handle.write(data[: outer.size])
                handle.flush()
                if outer.during is not None:
                    outer.during()
                    return handle.write(data[outer.size :])
                raise outer.error

        return Failing()


def _entries_and_previous(cache_file) -> tuple[bytes, int]:
    """A valid cache file that lacks one of this process's programs: (its bytes, entries)."""
    _compiled_here()
    programs.save_programs()
    pairs = programs._read(cache_file)
    cache_file.write_bytes(_file_bytes(programs._header(), pairs[:-1]))
    programs._known.clear()
    programs._loaded.clear()
    assert programs.load_programs() == 0
    return cache_file.read_bytes(), len(pairs)


def test_an_unwritable_folder_fails_no_run(run, cache_file, tmp_path, monkeypatch, small_data):
    (tmp_path / "a file").write_text("")
    monkeypatch.setattr(programs, "cache_path", lambda: tmp_path / "a file" / "cache" / programs.file_name())
    args = ["--epochs", "1", "--hidden", "4", "--batch-size", "32", "--device", "cpu", "--no-plots"]
    result = run("train", "--data", small_data, "--out", "r", "--quiet", *args)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert programs.save_programs() == 0  # tried again, failed again, raised nothing


def test_a_full_disk_leaves_the_previous_file_whole(cache_file, monkeypatch):
    previous, _ = _entries_and_previous(cache_file)
    monkeypatch.setattr(programs, "os", _FailingOs(OSError(errno.ENOSPC, "No space left on device")))
    assert programs.save_programs() == 0
    assert cache_file.read_bytes() == previous
    assert sorted(p.name for p in cache_file.parent.iterdir()) == [cache_file.name]
    monkeypatch.setattr(programs, "os", os)
    assert programs.save_programs() >= 1  # space again: the next save writes


def test_ctrl_c_mid_write_leaves_no_partial_file(cache_file, monkeypatch):
    previous, _ = _entries_and_previous(cache_file)
    monkeypatch.setattr(programs, "os", _FailingOs(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        programs.save_programs()
    assert cache_file.read_bytes() == previous
    assert sorted(p.name for p in cache_file.parent.iterdir()) == [cache_file.name]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_write_waits_for_the_whole_file(cache_file, monkeypatch, signum):
    _, entries = _entries_and_previous(cache_file)
    received = []
    monkeypatch.setattr(programs, "os", _FailingOs(None, during=lambda: os.kill(os.getpid(), signum)))
    previous = signal.signal(signum, lambda number, frame: received.append(number))
    try:
        assert programs.save_programs() == 1
    finally:
        signal.signal(signum, previous)
    assert received == [signum]  # delivered, after the file was in place
    assert len(programs._read(cache_file)) == entries
    assert sorted(p.name for p in cache_file.parent.iterdir()) == [cache_file.name]


def test_the_file_keeps_the_newest_entries_and_what_others_saved(cache_file, monkeypatch):
    from tinygrad.codegen import to_program_cache

    _compiled_here()
    # another process saved a program after this one loaded the file
    assert programs.load_programs() == 0
    other = (pickle.dumps(("someone else's kernel",)), pickle.dumps(next(iter(to_program_cache.values()))))
    cache_file.parent.mkdir(parents=True)
    cache_file.write_bytes(_file_bytes(programs._header(), [other]))
    saved = programs.save_programs()
    pairs = programs._read(cache_file)
    assert len(pairs) == saved + 1 and pairs[0] == other
    # at most MAX_ENTRIES: the oldest go first
    programs._known.clear()
    monkeypatch.setattr(programs, "MAX_ENTRIES", 3)
    assert programs.save_programs() == saved
    assert programs._read(cache_file) == pairs[-3:]


def test_eval_and_predict_use_the_cache(cache_file, trained_run, small_data, run):
    result = run("eval", trained_run / "best.safetensors", small_data / "test.safetensors", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert len(programs._read(cache_file)) >= 1
    assert cache_file in programs._loaded
