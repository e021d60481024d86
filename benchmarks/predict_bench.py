"""How fast and how lean `spiralctl predict` is on many sequences, and on many lengths.

Usage: python benchmarks/predict_bench.py [--sequences 1000000] [--length 50] [--csv-sequences 100000]
                                          [--repeat 3]

Each measurement is one fresh `python -m spiralctl predict` process (the kernel cache warm, as
after a first run): its wall time and its peak resident memory (ru_maxrss of that process,
started from a small launcher process). Every figure is the median of `--repeat` runs.

1. `--sequences` sequences of `--length` points in a .npy file, in every output form: JSON
   lines (`--json`), CSV lines on a pipe, `-o FILE.csv`, and the table in a terminal (a
   pseudo-terminal: the first 50 rows and a summary line).
2. The same in a CSV input of `--csv-sequences` sequences (CSV is read line by line in Python,
   so it is slower per point than .npy), JSON lines out.
3. 200 sequences of 200 different lengths (2..201 points) against 200 sequences of one length:
   101 points (the same number of points in all) and 201 (the longest). Timing is not a
   test: this script asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import pty
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SPIRALCTL = [sys.executable, "-m", "spiralctl"]


# Runs the command and writes its exit status and peak memory into the file named first. A
# small launcher process of its own: a child's ru_maxrss on Linux starts from the memory of the
# process that forked it (this script holds the big arrays it generated), not from zero.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as handle:
    handle.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def measure(cmd: list[str], terminal: bool = False) -> tuple[float, float]:
    """Wall seconds and peak memory (MB) of one run of `cmd`, stdout to /dev/null or a terminal."""
    report = Path(tempfile.mkstemp(suffix=".txt")[1])
    cmd = [sys.executable, "-c", LAUNCHER, str(report), *cmd]
    started = time.perf_counter()
    if terminal:
        leader, follower = pty.openpty()
        proc = subprocess.Popen(cmd, stdout=follower, stderr=subprocess.PIPE)
        os.close(follower)

        def drain() -> None:
            try:
                while os.read(leader, 65536):
                    pass
            except OSError:
                pass

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
    else:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, stderr = proc.communicate()
    wall = time.perf_counter() - started
    if terminal:
        os.close(leader)
    code, peak_kb = (int(v) for v in report.read_text().split())
    report.unlink()
    if code != 0:
        raise SystemExit(f"{' '.join(cmd[3:])} failed:\n{stderr.decode()[-2000:]}")
    return wall, peak_kb / 1024


def median_of(repeat: int, cmd: list[str], terminal: bool = False) -> tuple[float, float]:
    runs = [measure(cmd, terminal) for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def make_checkpoint(path: Path) -> None:
    from spiralctl.checkpoint import Checkpoint, save_checkpoint
    from spiralctl.model import ModelConfig, init_parameters

    config = ModelConfig()
    save_checkpoint(path, Checkpoint(model=config, weights=init_parameters(config, 0)))


def make_npy(path: Path, sequences: int, length: int) -> None:
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(sequences, length, 2))
    rng = np.random.default_rng(0)
    for first in range(0, sequences, 100_000):
        count = min(100_000, sequences - first)
        array[first : first + count] = rng.standard_normal((count, length, 2), dtype=np.float32)
    array.flush()
    del array


def make_csv(path: Path, lengths: list[int], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w") as handle:
        handle.write("sequence,x,y\n")
        for index, length in enumerate(lengths):
            points = rng.standard_normal((length, 2))
            handle.write("".join(f"s{index},{x:.5f},{y:.5f}\n" for x, y in points))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sequences", type=int, default=1_000_000)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--csv-sequences", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="predict-bench-"))
    checkpoint = work / "model.safetensors"
    make_checkpoint(checkpoint)
    many = work / "many.npy"
    make_npy(many, args.sequences, args.length)
    predict = [*SPIRALCTL, "predict", str(checkpoint)]
    measure([*predict, str(many), "--json"])  # the kernel cache warm for every run below
    rows = []
    forms = [
        ("JSON lines (--json)", [str(many), "--json"], False),
        ("CSV lines on a pipe", [str(many)], False),
        ("-o FILE.csv", [str(many), "-o", str(work / "out.csv"), "--force"], False),
        ("table in a terminal", [str(many)], True),
    ]
    for name, extra, terminal in forms:
        wall, memory = median_of(args.repeat, [*predict, *extra], terminal)
        rows.append((f"{args.sequences} x {args.length}, .npy", name, wall, memory))
    csv_input = work / "many.csv"
    make_csv(csv_input, [args.length] * args.csv_sequences)
    wall, memory = median_of(args.repeat, [*predict, str(csv_input), "--json"])
    rows.append((f"{args.csv_sequences} x {args.length}, .csv", "JSON lines (--json)", wall, memory))
    print("| input | output | seconds | peak MB |")
    print("|---|---|---|---|")
    for source, name, wall, memory in rows:
        print(f"| {source} | {name} | {wall:.1f} | {memory:.0f} |")

    lengths = list(range(2, 202))
    np.random.default_rng(1).shuffle(lengths)
    inputs = {"200 lengths (2..201)": lengths, "one length, 101": [101] * 200, "one length, 201": [201] * 200}
    times = {}
    for name, these in inputs.items():
        make_csv(work / "lengths.csv", these, seed=2)
        measure([*predict, str(work / "lengths.csv"), "--json"])  # warm
        times[name] = median_of(args.repeat, [*predict, str(work / "lengths.csv"), "--json"])[0]
    print()
    print("| 200 sequences | seconds | 200 lengths / this |")
    print("|---|---|---|")
    for name, wall in times.items():
        print(f"| {name} | {wall:.2f} | {times['200 lengths (2..201)'] / wall:.2f}x |")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
