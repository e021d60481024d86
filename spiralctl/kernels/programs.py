"""Finished kernel programs kept on disk between processes.

tinygrad keeps only compiled binaries on disk (its cache.db); every new process generates
the code of its kernels again (linearize and render, about 1.5 s for a training step's
kernels). `tinygrad.codegen.to_program_cache` maps a kernel's compile key (its AST, the
renderer, the settings that change code) to the finished PROGRAM, binary included, and
tinygrad lowers nothing whose key is in it. This module saves those entries to a file next to
tinygrad's cache.db and merges them back in the next process: `cached_programs()` around the
work, or `load_programs()` before the first kernel runs and `save_programs()` after.

It is only a cache: a missing, corrupt, truncated or foreign file (another format, tinygrad
or Python version) is ignored and replaced, nothing here raises on an unwritable folder or a
full disk, and `CACHELEVEL=0` (tinygrad's switch for its own disk cache) turns it off. The file
is written to a temporary name and renamed, with Ctrl-C and SIGTERM held back meanwhile, so it
is always whole; a checksum guards its contents. It holds pickles, like tinygrad's cache.db,
and is trusted as much.

File: `spiralctl-programs-<format>-tinygrad-<version>-py<X.Y>.pkl`, the bytes MAGIC, the
SHA-256 of the rest, then a pickle of (header, [(pickled key, pickled program), ...]) oldest
first; at most MAX_ENTRIES entries and MAX_BYTES bytes, the oldest dropped first.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import platform
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import cache
from pathlib import Path

from spiralctl.kernels.threads import cpu_description

FORMAT = "spiralctl-programs/2"  # 2: CPU programs with 64-bit indices (kernels/indices.py)
MAGIC = FORMAT.encode() + b"\n"
PROTOCOL = pickle.HIGHEST_PROTOCOL
MAX_ENTRIES = 512  # loading costs about 1 ms an entry, on every run; a CLI run makes 5-20
MAX_BYTES = 64 * 2**20
STALE_SECONDS = 3600  # temporary files older than this are a killed writer's leftovers

# False: this process neither reads nor writes the cache (the tests of in-process compilation
# count what tinygrad lowers, which loaded programs would hide)
enabled = True

# the cache file -> the compile keys known to be in it (loaded from it or saved to it)
_known: dict[Path, set[tuple]] = {}
_loaded: set[Path] = set()  # the cache files this process has read
_damaged: set[bytes] = set()  # digests of the entries that did not load: left out of writes


@cache
def _versions() -> tuple[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        tinygrad = version("tinygrad")
    except PackageNotFoundError:  # a source checkout on the path
        tinygrad = "unknown"
    return tinygrad, f"{sys.version_info[0]}.{sys.version_info[1]}"


def _header() -> dict:
    tinygrad, python = _versions()
    return {"format": FORMAT, "tinygrad": tinygrad, "python": python}


def cache_path() -> Path | None:
    """The cache file, next to tinygrad's cache.db (CACHEDB); None when CACHELEVEL is 0 or the
    cache is switched off (`enabled`)."""
    from tinygrad import helpers

    if not enabled or helpers.CACHELEVEL.value < 1:
        return None
    return Path(os.path.dirname(os.path.abspath(helpers.CACHEDB))) / file_name()


def _machine() -> str:
    """A short fingerprint of this CPU (model and instruction-set flags): the binaries are built
    for it (-march=native), so a cache folder shared between machines keeps one file each."""
    text = cpu_description() or platform.processor() or platform.machine()
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def file_name() -> str:
    """The cache file's name: this format, tinygrad and Python version, and the CPU."""
    tinygrad, python = _versions()
    return f"spiralctl-programs-{FORMAT.rsplit('/', 1)[1]}-tinygrad-{tinygrad}-py{python}-{_machine()}.pkl"


def _read(path: Path) -> list[tuple[bytes, bytes]]:
    """The file's (pickled key, pickled program) pairs; [] when it is missing or not ours."""
    try:
        with open(path, "rb") as handle:
            # pickles run code when loaded: only a file this user owns and no one else may write
            status = os.fstat(handle.fileno())
            if hasattr(os, "getuid") and (status.st_uid != os.getuid() or status.st_mode & 0o022):
                return []
            if handle.read(len(MAGIC)) != MAGIC:
                return []
            digest = handle.read(32)
            payload = handle.read(MAX_BYTES + 2**20)
        if hashlib.sha256(payload).digest() != digest:
            return []  # truncated, torn, or changed
        header, pairs = pickle.loads(payload)
        if header != _header() or not isinstance(pairs, list):
            return []
        return [(k, p) for k, p in pairs if isinstance(k, bytes) and isinstance(p, bytes)]
    except Exception:  # missing, unreadable, not a pickle, the wrong shape: only a cache
        return []


def _digest(key_blob: bytes, program_blob: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(key_blob).digest() + program_blob).digest()


def _usable(program) -> bool:
    from tinygrad.uop.ops import Ops, UOp

    return isinstance(program, UOp) and program.op is Ops.PROGRAM and program.src[-1].op is Ops.BINARY


def load_programs() -> int:
    """Merge the cache file's programs into tinygrad's; returns how many it added.

    Reads the file once per process; entries that no longer unpickle are skipped."""
    from tinygrad.codegen import to_program_cache

    path = cache_path()
    if path is None or path in _loaded:
        return 0
    _loaded.add(path)
    known = _known.setdefault(path, set())
    added = 0
    for key_blob, program_blob in _read(path):
        try:
            key, program = pickle.loads(key_blob), pickle.loads(program_blob)
            if not (isinstance(key, tuple) and _usable(program)):
                _damaged.add(_digest(key_blob, program_blob))
                continue
            known.add(key)
        except Exception:  # a damaged entry, a class this process does not have
            _damaged.add(_digest(key_blob, program_blob))
            continue
        if key not in to_program_cache:
            to_program_cache[key] = program
            added += 1
    return added


def _pickled_new(known: set[tuple]) -> dict[tuple, tuple[bytes, bytes]]:
    """The programs made here that the file lacks: key -> (pickled key, pickled program)."""
    from tinygrad.codegen import to_program_cache

    new: dict[tuple, tuple[bytes, bytes]] = {}
    for key, program in list(to_program_cache.items()):
        if key in known:
            continue
        try:
            if _usable(program):
                new[key] = (pickle.dumps(key, PROTOCOL), pickle.dumps(program, PROTOCOL))
                continue
        except Exception:  # something in the key or program that does not pickle
            pass
        known.add(key)  # never tried again in this process
    return new


def _bounded(pairs: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The newest pairs within MAX_ENTRIES and MAX_BYTES."""
    kept, size = [], 0
    for pair in reversed(pairs[-MAX_ENTRIES:]):
        size += len(pair[0]) + len(pair[1])
        if size > MAX_BYTES:
            break
        kept.append(pair)
    return kept[::-1]


@contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done, then reach their handlers as sent."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if handler is not None:  # None: set outside Python, left alone
            previous[signum] = signal.signal(signum, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)


def _remove_stale(folder: Path, prefix: str) -> None:
    with suppress(OSError):
        for entry in os.scandir(folder):
            if entry.name.startswith(prefix) and entry.name.endswith(".tmp"):
                with suppress(OSError):
                    if time.time() - entry.stat().st_mtime > STALE_SECONDS:
                        os.unlink(entry.path)


def _write(path: Path, pairs: list[tuple[bytes, bytes]]) -> bool:
    payload = pickle.dumps((_header(), pairs), PROTOCOL)
    prefix = f".{path.name}."
    with _signals_held():
        temporary = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
            with os.fdopen(handle, "wb") as out:
                out.write(MAGIC + hashlib.sha256(payload).digest() + payload)
            # no fsync: a file torn by a power cut fails its checksum and is replaced
            os.replace(temporary, path)
            temporary = None
        except OSError:  # an unwritable folder, a full disk: only a cache
            return False
        finally:
            if temporary is not None:
                with suppress(OSError):
                    os.unlink(temporary)
    _remove_stale(path.parent, prefix)
    return True


def save_programs() -> int:
    """Add the programs this process made that the cache file lacks; returns how many.

    Writes nothing when there are none; keeps what other processes saved meanwhile. A failed
    write (an unwritable folder, a full disk) is tried again by the next call."""
    path = cache_path()
    if path is None:
        return 0
    known = _known.setdefault(path, set())
    new = _pickled_new(known)
    if not new:
        return 0
    blobs = dict(new.values())
    kept = [(k, p) for k, p in _read(path) if k not in blobs and _digest(k, p) not in _damaged]
    pairs = kept + list(blobs.items())
    pairs = list(dict(pairs).items())  # one per key, the first place it holds
    if not _write(path, _bounded(pairs)):
        return 0
    known.update(new)
    return len(new)


def before_cpu_device() -> None:
    """Call before tinygrad opens its CPU device. The device makes four small programs of its own
    as it opens (its queue's signal, wait, timestamp and worker loop), and tinygrad generates
    their code again in every process (0.15 s; 0.4 s where clang must compile them too), since
    it calls the code generator itself rather than `to_program`, which looks in
    `to_program_cache` first. Routed through that cache, they are saved and loaded with the
    kernels' programs."""
    from tinygrad import codegen
    from tinygrad.runtime import ops_cpu

    ops_cpu.do_to_program = codegen.to_program
    load_programs()


@contextmanager
def cached_programs() -> Iterator[None]:
    """Load the cached programs on entry; save the new ones on exit, also after an error."""
    load_programs()
    try:
        yield
    finally:
        save_programs()
