"""Time one spiralctl training step and each of its kernels, and (optionally) PyTorch's step.

Usage: python benchmarks/step_time.py [--hidden 128] [--batch 256] [--length 50] [--steps 20]
                                      [--torch] [--repeat 3]

Each repetition is a fresh process: spiralctl's step (its steady wall time per step over
--steps steps after three warm-up steps; the median and minimum), then every kernel's own time
from a second run with tinygrad's DEBUG=2 timings (every step through tinygrad's jit there, not
the direct replay, each kernel waited for), then, with --torch, PyTorch's nn.LSTM step on the same sizes. The
repetitions alternate the tools, so a machine that slows down for a while slows both.
This is the measurement behind "kernel time" in benchmarks/RESULTS.md; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time

import numpy as np

KERNEL_LINE = re.compile(r"\*\*\* CPU\s+\d+\s+(\w+)\s.*?tm\s+([\d.]+)(us|ms)")


def spiralctl_steps(hidden: int, batch: int, length: int, steps: int) -> list[float]:
    import os

    from spiralctl import trainer as trainer_module
    from spiralctl.config import TrainConfig
    from spiralctl.kernels.threads import cpu_threads
    from spiralctl.model import ModelConfig, SpiralClassifier, init_parameters
    from spiralctl.trainer import Trainer

    if os.environ.get("DEBUG"):
        # per-kernel timings: every step through tinygrad's jit, which prints each kernel's time
        # (the direct replay of kernels/replay.py prints nothing)
        trainer_module.direct_replay = lambda *args: None

    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, length, 2)).astype(np.float32)
    y = (rng.random(batch) > 0.5).astype(np.float32)
    mask = np.ones(batch, np.float32)
    config = ModelConfig(hidden=hidden)
    with cpu_threads("CPU"):
        trainer = Trainer(
            SpiralClassifier(config, init_parameters(config, 0), "CPU"),
            TrainConfig(hidden=hidden, batch_size=batch),
        )
        for _ in range(3):
            trainer.step(x, y, mask)
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            trainer.step(x, y, mask)
            times.append(time.perf_counter() - started)
    return times


def torch_steps(hidden: int, batch: int, length: int, steps: int) -> list[float]:
    import torch

    torch.manual_seed(0)
    lstm, head = torch.nn.LSTM(2, hidden, batch_first=True), torch.nn.Linear(hidden, 1)
    optimizer = torch.optim.Adam([*lstm.parameters(), *head.parameters()], lr=0.01)
    x, y = torch.randn(batch, length, 2), (torch.rand(batch) > 0.5).float()

    def step() -> None:
        optimizer.zero_grad()
        _, (h, _) = lstm(x)
        torch.nn.functional.binary_cross_entropy_with_logits(head(h[0]).reshape(-1), y).backward()
        optimizer.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return times


def child(args: argparse.Namespace) -> None:
    run = torch_steps if args.child == "torch" else spiralctl_steps
    print(json.dumps(run(args.hidden, args.batch, args.length, args.steps)))


def in_child(tool: str, args: argparse.Namespace, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, __file__, "--child", tool, "--hidden", str(args.hidden)]
    command += ["--batch", str(args.batch), "--length", str(args.length), "--steps", str(args.steps)]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=True, timeout=1800)


def kernel_times(args: argparse.Namespace) -> dict[str, float]:
    """Median milliseconds of each kernel over the timed steps (DEBUG=2)."""
    import os

    result = in_child("spiralctl", args, env={**os.environ, "DEBUG": "2"})
    found: dict[str, list[float]] = {}
    for line in re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr).splitlines():
        if match := KERNEL_LINE.search(line):
            name, value, unit = match.groups()
            found.setdefault(name, []).append(float(value) / (1000 if unit == "us" else 1))
    return {name: statistics.median(values[-args.steps :]) for name, values in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--torch", action="store_true", help="also time PyTorch's step")
    parser.add_argument("--child", choices=("spiralctl", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    rows: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        tools = ("spiralctl", "torch") if args.torch else ("spiralctl",)
        for tool in tools:
            times = json.loads(in_child(tool, args).stdout)
            rows.setdefault(f"{tool} step", []).append(1000 * statistics.median(times))
        for name, ms in kernel_times(args).items():
            rows.setdefault(name, []).append(ms)
    print(f"H={args.hidden} B={args.batch} T={args.length}, {args.steps} steps, {args.repeat} repetitions")
    print("| what | median ms | range ms |\n|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f}-{max(values):.3f} |")
    if args.torch:
        ratio = [t / s for s, t in zip(rows["spiralctl step"], rows["torch step"], strict=True)]
        spread = f"{min(ratio):.2f}-{max(ratio):.2f}"
        print(f"\nPyTorch step / spiralctl step: {statistics.median(ratio):.2f}x ({spread})")


if __name__ == "__main__":
    main()
