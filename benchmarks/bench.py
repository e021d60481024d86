"""Train spiralctl's LSTM and PyTorch's nn.LSTM on the same generated data and compare.

Usage: python benchmarks/bench.py [--configs seed,long,wide,big] [--repeat 3] [--markdown FILE]

For each config, both run as fresh processes on the same dataset files, one after the other,
`--repeat` times (spiralctl with an empty kernel cache, spiralctl with a warm one, PyTorch;
then again). Every figure is the median over the repetitions, and the ratio is the median of
the ratios of each repetition (its two runs minutes apart at most), with their range: on a
shared machine either tool's speed drifts by tens of percent over minutes. Reported per tool:
- steady training throughput: sequences per second over the epochs after the first, the
  training pass alone (with one epoch: that epoch, compilation included);
- first-epoch seconds (spiralctl: with an empty and with a warm tinygrad kernel cache);
- whole-process seconds (spiralctl: empty and warm kernel cache; PyTorch has no such cache);
- peak resident memory, validation accuracy, and the spiralctl / PyTorch throughput ratio.
Timing is not a test: this script asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
}
HERE = Path(__file__).resolve().parent


def run(cmd: list[str], env: dict | None = None) -> tuple[str, float, float]:
    """Run a command; return stdout, wall seconds and the child's peak memory in MB."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    return out, wall, usage.ru_maxrss / 1024


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


def bench_once(name: str, cfg: dict, data: Path, work: Path, with_torch: bool) -> dict:
    """One repetition: spiralctl cold, spiralctl warm, PyTorch."""
    common = [
        "--hidden",
        str(cfg["hidden"]),
        "--batch-size",
        str(cfg["batch"]),
        "--epochs",
        str(cfg["epochs"]),
    ]
    row: dict = {"config": name, **cfg}
    cache_db = work / name / "cache.db"
    cache_db.unlink(missing_ok=True)  # cold means cold in every repetition
    env = {**os.environ, "CACHEDB": str(cache_db)}
    for cache in ("cold", "warm"):
        out_dir = work / name / f"run-{cache}"
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
    if with_torch:
        out, wall, peak = run([sys.executable, str(HERE / "torch_lstm.py"), str(data), *common])
        result = json.loads(out)
        seconds = result["epoch_seconds"]
        steady = seconds[1:] or seconds
        row.update(
            torch_seq_s=result["train"] * len(steady) / sum(steady),
            torch_first_epoch_s=seconds[0],
            torch_process_s=wall,
            torch_peak_mb=peak,
            torch_val_accuracy=result["val_accuracy"],
        )
        row["ratio"] = row["spiralctl_seq_s"] / row["torch_seq_s"]
    return row


def bench_config(name: str, cfg: dict, work: Path, with_torch: bool, repeat: int) -> dict:
    """Medians over `repeat` repetitions, and the range of the per-repetition ratios."""
    data = make_data(name, cfg, work)
    runs = [bench_once(name, cfg, data, work, with_torch) for _ in range(repeat)]
    row = {
        key: statistics.median(r[key] for r in runs) if isinstance(value, float) else value
        for key, value in runs[0].items()
    }
    if with_torch:
        row["ratio_min"] = min(r["ratio"] for r in runs)
        row["ratio_max"] = max(r["ratio"] for r in runs)
    row["repeat"] = repeat
    return row


def markdown(rows: list[dict]) -> str:
    head = (
        "| config | N, T, H, B, E | tool | steady seq/s | first epoch s (cold / warm) "
        "| process s (cold / warm) | peak MB | val acc | spiralctl / PyTorch (range) |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        shape = f"{r['sequences']}, {r['length']}, {r['hidden']}, {r['batch']}, {r['epochs']}"
        ratio = f"{r['ratio']:.2f}x ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})" if "ratio" in r else ""
        process = f"{r['spiralctl_cold_s']:.1f} / {r['spiralctl_warm_s']:.1f}"
        first = f"{r['spiralctl_first_epoch_cold_s']:.2f} / {r['spiralctl_first_epoch_warm_s']:.2f}"
        lines.append(
            f"| {r['config']} | {shape} | spiralctl | {r['spiralctl_seq_s']:.0f} | {first} | {process} | "
            f"{r['spiralctl_peak_mb']:.0f} | {r['spiralctl_val_accuracy']:.3f} | {ratio} |"
        )
        if "torch_seq_s" in r:
            lines.append(
                f"| {r['config']} | {shape} | PyTorch | {r['torch_seq_s']:.0f} | "
                f"{r['torch_first_epoch_s']:.2f} | {r['torch_process_s']:.1f} | {r['torch_peak_mb']:.0f} | "
                f"{r['torch_val_accuracy']:.3f} | |"
            )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="seed,long,wide,big")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per config (medians)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    try:
        import torch  # noqa: F401

        with_torch = True
    except ImportError:
        print("torch is not installed (pip install '.[torch]'): spiralctl only", file=sys.stderr)
        with_torch = False
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            rows.append(bench_config(name, CONFIGS[name], Path(tmp), with_torch, args.repeat))
            print(json.dumps(rows[-1]), file=sys.stderr)
    table = markdown(rows)
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"medians of {args.repeat} repetitions"
    )
    print(f"machine: {machine}\n\n{table}")
    if args.markdown:
        args.markdown.write_text(f"machine: {machine}\n\n{table}")


if __name__ == "__main__":
    main()
