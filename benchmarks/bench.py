"""Train spiralctl's LSTM, PyTorch's nn.LSTM and a JAX LSTM on the same generated data and compare.

Usage: python benchmarks/bench.py [--configs seed,long,wide,big,h256,h512] [--repeat 3] [--markdown FILE]
(`--configs tiny` checks that the script works, in seconds; its figures mean nothing.)

PyTorch and JAX are the peers (the optional extras `torch` and `jax`); a peer that is not
installed is left out, with a note on stderr. For each config, every tool runs as a fresh
process on the same dataset files, one after the other, `--repeat` times (spiralctl with an
empty kernel cache, spiralctl with a warm one, PyTorch, JAX; then again). Every figure is the
median over the repetitions; throughput and the ratios also show their range over the
repetitions: on a shared machine each tool's speed drifts by tens of percent over minutes, so
a ratio is taken within one repetition (its runs minutes apart at most). Reported per tool:
- steady training throughput: sequences per second over the epochs after the first, the
  training pass alone (with one epoch: that epoch, compilation included);
- first-epoch seconds (spiralctl: with an empty and with a warm tinygrad kernel cache);
- whole-process seconds (spiralctl: empty and warm kernel cache; the peers have no such cache);
- peak resident memory (the process's peak RSS) and validation accuracy;
- spiralctl's throughput over the best peer's (in each repetition the faster of PyTorch and
  JAX), and over each peer's.
Timing is not a test: this script asserts nothing.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {  # N sequences, T points, H hidden, B batch, E epochs
    "seed": dict(sequences=1000, length=50, hidden=8, batch=128, epochs=25),
    "long": dict(sequences=1000, length=500, hidden=8, batch=128, epochs=3),
    "wide": dict(sequences=4000, length=50, hidden=128, batch=256, epochs=3),
    "big": dict(sequences=100000, length=50, hidden=32, batch=512, epochs=1),
    "h256": dict(sequences=4000, length=50, hidden=256, batch=256, epochs=2),
    "h512": dict(sequences=2000, length=50, hidden=512, batch=128, epochs=2),
    # for checking the script itself: seconds per tool, figures that mean nothing
    "tiny": dict(sequences=256, length=20, hidden=8, batch=64, epochs=2),
}
DEFAULT_CONFIGS = "seed,long,wide,big,h256,h512"
HERE = Path(__file__).resolve().parent
# the peers: key in the results, the name in the table, the module they need, their script
PEERS = {
    "torch": ("PyTorch", "torch", "torch_lstm.py"),
    "jax": ("JAX", "jax", "jax_lstm.py"),
}


def run(cmd: list[str], env: dict | None = None) -> tuple[str, float, float]:
    """Run a command; return stdout, wall seconds and the child's peak memory in MB.

    Its output goes to files, not pipes: wait4 (for the peak RSS) reads nothing, so a child that
    wrote more than a pipe holds would wait forever.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr[-2000:]}")
    return stdout, wall, usage.ru_maxrss / 1024


SPIRALCTL = [sys.executable, "-m", "spiralctl"]


def make_data(name: str, cfg: dict, work: Path) -> Path:
    data = work / name / "data"
    run(
        [
            *SPIRALCTL,
            "gen-data",
            str(data),
            "--sequences",
            str(cfg["sequences"]),
            "--length",
            str(cfg["length"]),
            "--force",
            "--json",
        ]
    )
    return data


def run_peer(peer: str, data: Path, common: list[str]) -> dict:
    """One fresh process of a peer's script (torch_lstm.py, jax_lstm.py): its figures, keyed `peer_*`."""
    out, wall, peak = run([sys.executable, str(HERE / PEERS[peer][2]), str(data), *common])
    result = json.loads(out)
    seconds = result["epoch_seconds"]
    steady = seconds[1:] or seconds
    return {
        f"{peer}_seq_s": result["train"] * len(steady) / sum(steady),
        f"{peer}_first_epoch_s": seconds[0],
        f"{peer}_process_s": wall,
        f"{peer}_peak_mb": peak,
        f"{peer}_val_accuracy": result["val_accuracy"],
    }


def bench_once(name: str, cfg: dict, data: Path, work: Path, peers: list[str]) -> dict:
    """One repetition: spiralctl cold, spiralctl warm, then each peer."""
    common = [
        "--hidden",
        str(cfg["hidden"]),
        "--batch-size",
        str(cfg["batch"]),
        "--epochs",
        str(cfg["epochs"]),
    ]
    row: dict = {"config": name, **cfg}
    # cold means cold in every repetition: a new folder for tinygrad's binaries (cache.db and its
    # -wal, -shm) and spiralctl's finished programs
    cache_db = Path(tempfile.mkdtemp(prefix="cache-", dir=work / name)) / "cache.db"
    env = {**os.environ, "CACHEDB": str(cache_db)}
    for cache in ("cold", "warm"):
        out_dir = work / name / f"run-{cache}"
        shutil.rmtree(out_dir, ignore_errors=True)  # a new run each repetition (--exist-ok keeps a run)
        _, wall, peak = run(
            [
                *SPIRALCTL,
                "train",
                "--data",
                str(data),
                "--out",
                str(out_dir),
                "--exist-ok",
                "--device",
                "cpu",
                "--quiet",
                "--json",
                *common,
            ],
            env=env,
        )
        row[f"spiralctl_{cache}_s"] = wall
        metrics = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
        row[f"spiralctl_first_epoch_{cache}_s"] = metrics[0]["train_seconds"]
        if cache == "warm":
            steady = metrics[1:] or metrics
            row["spiralctl_seq_s"] = sum(
                m["sequences_per_second"] * m["train_seconds"] for m in steady
            ) / sum(m["train_seconds"] for m in steady)
            row["spiralctl_peak_mb"] = peak
            row["spiralctl_val_accuracy"] = metrics[-1]["val_accuracy"]
    for peer in peers:
        row.update(run_peer(peer, data, common))
        row[f"ratio_{peer}"] = row["spiralctl_seq_s"] / row[f"{peer}_seq_s"]
    if peers:
        row["ratio"] = row["spiralctl_seq_s"] / max(row[f"{peer}_seq_s"] for peer in peers)
    return row


def bench_config(name: str, cfg: dict, work: Path, peers: list[str], repeat: int) -> dict:
    """Medians over `repeat` repetitions; the range of each throughput and ratio as `*_min`, `*_max`."""
    data = make_data(name, cfg, work)
    runs = [bench_once(name, cfg, data, work, peers) for _ in range(repeat)]
    row = {}
    for key, value in runs[0].items():
        if not isinstance(value, float):
            row[key] = value
            continue
        values = [r[key] for r in runs]
        row[key] = statistics.median(values)
        if key.endswith("_seq_s") or key.startswith("ratio"):
            row[f"{key}_min"], row[f"{key}_max"] = min(values), max(values)
    row["repeat"] = repeat
    return row


def spread(r: dict, key: str, fmt: str, unit: str = "") -> str:
    """`key`'s median and, after more than one repetition, its range."""
    text = format(r[key], fmt) + unit
    if r["repeat"] > 1:
        text += f" [{r[key + '_min']:{fmt}}-{r[key + '_max']:{fmt}}]"
    return text


def markdown(rows: list[dict]) -> str:
    head = (
        "| config | N, T, H, B, E | tool | steady seq/s [range] | first epoch s (cold / warm) "
        "| process s (cold / warm) | peak MB | val acc | spiralctl / best peer [range] "
        "| spiralctl / PyTorch | spiralctl / JAX |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        shape = f"{r['sequences']}, {r['length']}, {r['hidden']}, {r['batch']}, {r['epochs']}"
        ratios = [spread(r, "ratio", ".2f", "x") if "ratio" in r else ""]
        ratios += [f"{r[key]:.2f}x" if key in r else "" for key in ("ratio_torch", "ratio_jax")]
        process = f"{r['spiralctl_cold_s']:.1f} / {r['spiralctl_warm_s']:.1f}"
        first = f"{r['spiralctl_first_epoch_cold_s']:.2f} / {r['spiralctl_first_epoch_warm_s']:.2f}"
        lines.append(
            f"| {r['config']} | {shape} | spiralctl | {spread(r, 'spiralctl_seq_s', '.0f')} | {first} "
            f"| {process} | {r['spiralctl_peak_mb']:.0f} | {r['spiralctl_val_accuracy']:.3f} "
            f"| {' | '.join(ratios)} |"
        )
        for peer, (label, _, _) in PEERS.items():
            if f"{peer}_seq_s" in r:
                lines.append(
                    f"| {r['config']} | {shape} | {label} | {spread(r, f'{peer}_seq_s', '.0f')} "
                    f"| {r[f'{peer}_first_epoch_s']:.2f} | {r[f'{peer}_process_s']:.1f} "
                    f"| {r[f'{peer}_peak_mb']:.0f} | {r[f'{peer}_val_accuracy']:.3f} | | | |"
                )
    return head + "\n".join(lines) + "\n"


def available_peers() -> list[str]:
    """The peers whose module imports, with a note on stderr for each that does not.

    Tried in a child process: a child's peak RSS as wait4 reports it is at least this process's
    (Linux carries the parent's high-water mark through fork and exec), so importing torch or
    jax here would raise every tool's measured peak to this process's size.
    """
    peers = []
    for peer, (label, module, _) in PEERS.items():
        if subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode:
            print(f"{module} is not importable (pip install '.[{peer}]'): no {label} rows", file=sys.stderr)
        else:
            peers.append(peer)
    return peers


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    """lscpu's "Model name", or what platform knows without it."""
    try:
        out = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True, env={**os.environ, "LC_ALL": "C"}
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"of {', '.join(CONFIGS)}")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per config (medians)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    names = args.configs.split(",")
    unknown = [name for name in names if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    peers = available_peers()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows.append(bench_config(name, CONFIGS[name], Path(tmp), peers, args.repeat))
            print(json.dumps(rows[-1]), file=sys.stderr)
    table = markdown(rows)
    machine = (
        f"{cpu_model()}, {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"tinygrad {version('tinygrad')}, torch {version('torch')}, jax {version('jax')}; "
        f"medians of {args.repeat} repetitions"
    )
    print(f"machine: {machine}\n\n{table}")
    if args.markdown:
        args.markdown.write_text(f"machine: {machine}\n\n{table}")


if __name__ == "__main__":
    main()
