"""spiralctl against a PyTorch nn.LSTM of the same size trained the same way, on archive sets that
aeon's wheel bundles, with aeon's 1-NN DTW beside them as a reference.

For each set and seed: `spiralctl import TRAIN.ts --test TEST.ts --val-fraction 0` (the
official split; all of TRAIN is trained on), `spiralctl train` (final-state head, Adam), `spiralctl
eval` of last.safetensors on the official test split, each as its own process; then PyTorch
(`nn.LSTM(D, H)`, the hidden state at each sequence's own last step, `Linear(H, 1)` with binary
cross-entropy for two classes or `Linear(H, K)` with cross-entropy, the same Adam, batches and
batch order, features z-scored with the training split's statistics, as spiralctl does) on the
same threads; and 1-NN DTW on the same z-scored data.

Usage: .venv/bin/python benchmarks/real_data.py [--sets GunPoint,BasicMotions,JapaneseVowels]
           [--seeds 0,1,2] [--hidden 64] [--batch-size 32] [--lr 0.01] [--epochs 100]
Prints a Markdown table (and --json FILE writes every figure).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from spiralctl.data import epoch_order, feature_statistics, load_dataset, normalized, padded_batches

SETS = ("GunPoint", "BasicMotions", "JapaneseVowels")
SPIRALCTL = [sys.executable, "-m", "spiralctl"]


def archive_file(name: str, split: str) -> Path:
    import aeon

    return Path(aeon.__file__).parent / "datasets" / "data" / name / f"{name}_{split}.ts"


def _run(args: list[str]) -> tuple[dict, float]:
    started = time.perf_counter()
    result = subprocess.run([*SPIRALCTL, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"spiralctl {' '.join(args)} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1]), seconds


def spiralctl(name: str, seed: int, args: argparse.Namespace, work: Path) -> dict:
    data, run = work / f"{name}-data", work / f"{name}-{seed}"
    if not data.exists():
        train, test = archive_file(name, "TRAIN"), archive_file(name, "TEST")
        _run(["import", str(train), str(data), "--test", str(test), "--val-fraction", "0", "--json"])
    summary, train_seconds = _run(
        [
            "train",
            "--data",
            str(data),
            "--hidden",
            str(args.hidden),
            "--batch-size",
            str(args.batch_size),
            "--lr",
            str(args.lr),
            "--epochs",
            str(args.epochs),
            "--seed",
            str(seed),
            "--out",
            str(run),
            "--no-plots",
            "--json",
            "-q",
            "--device",
            "cpu",
        ]  # fmt: skip
    )
    report, _ = _run(["eval", str(run / "last.safetensors"), str(data / "test.safetensors"), "--json"])
    loop = sum(m["train_seconds"] for m in summary["history"])
    return {
        "accuracy": report["accuracy"],
        "train_seconds": train_seconds,
        "loop_seconds": loop,
        "data": data,
    }


def pytorch_process(data: Path, seed: int, args: argparse.Namespace, same_init: bool) -> dict:
    """The PyTorch baseline as a fresh process of its own, as spiralctl train runs: its whole
    time (Python, torch's import, the data, the loop, the test split) and its loop's."""
    settings = {"--seed": seed, "--hidden": args.hidden, "--batch-size": args.batch_size, "--lr": args.lr}
    command = [sys.executable, __file__, "--torch", str(data), "--epochs", str(args.epochs)]
    command += [str(part) for pair in settings.items() for part in pair]
    if same_init:
        command.append("--same-init")
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return {**json.loads(result.stdout), "process_seconds": time.perf_counter() - started}


def pytorch(data: Path, seed: int, args: argparse.Namespace, same_init: bool = False) -> dict:
    import torch

    train, test = load_dataset(data / "train.safetensors"), load_dataset(data / "test.safetensors")
    statistics = feature_statistics(train)
    x = torch.from_numpy(normalized(train.x, train.lengths, statistics))
    x_test = torch.from_numpy(normalized(test.x, test.lengths, statistics))
    k, d = len(train.classes), train.x.shape[2]
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(d, args.hidden, batch_first=True)
    head = torch.nn.Linear(args.hidden, 1 if k == 2 else k)
    if same_init:  # spiralctl's initial weights for this seed: the runs differ only in arithmetic
        from spiralctl.model import ModelConfig, init_parameters

        weights = init_parameters(ModelConfig(d, args.hidden, k), seed)
        with torch.no_grad():
            for name, tensor in weights.items():
                module, _, parameter = name.partition(".")
                getattr({"lstm": lstm, "head": head}[module], parameter).copy_(torch.from_numpy(tensor))
    optimizer = torch.optim.Adam([*lstm.parameters(), *head.parameters()], lr=args.lr)
    y = torch.from_numpy(train.y.astype(np.int64))
    lengths = torch.from_numpy(train.lengths)

    def logits(xs: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        packed = torch.nn.utils.rnn.pack_padded_sequence(xs, lens, batch_first=True, enforce_sorted=False)
        _, (h, _) = lstm(packed)
        return head(h[-1])

    def loss_of(z: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if k == 2:
            each = torch.nn.functional.binary_cross_entropy_with_logits(
                z.reshape(-1), labels.float(), reduction="none"
            )
        else:
            each = torch.nn.functional.cross_entropy(z, labels, reduction="none")
        return (each * mask).sum() / mask.sum()

    started = time.perf_counter()
    n = len(train)
    for epoch in range(1, args.epochs + 1):
        for index, count in padded_batches(n, args.batch_size, epoch_order(seed, epoch, n)):
            mask = torch.zeros(len(index))
            mask[:count] = 1
            index = torch.from_numpy(index)
            optimizer.zero_grad()
            loss = loss_of(logits(x[index], lengths[index]), y[index], mask)
            loss.backward()
            optimizer.step()
    train_seconds = time.perf_counter() - started
    with torch.no_grad():
        z = logits(x_test, torch.from_numpy(test.lengths))
        predicted = (z.reshape(-1) > 0).long() if k == 2 else z.argmax(dim=1)
    accuracy = float((predicted.numpy() == test.y).mean())
    return {"accuracy": accuracy, "loop_seconds": train_seconds}


def dtw(data: Path) -> dict:
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier

    train, test = load_dataset(data / "train.safetensors"), load_dataset(data / "test.safetensors")
    statistics = feature_statistics(train)

    def collection(d):
        x = normalized(d.x, d.lengths, statistics)
        return [x[i, : d.lengths[i]].T.astype(np.float64) for i in range(len(d))]

    started = time.perf_counter()
    model = KNeighborsTimeSeriesClassifier(distance="dtw", n_neighbors=1)
    model.fit(collection(train), train.y)
    accuracy = float((model.predict(collection(test)) == test.y).mean())
    return {"accuracy": accuracy, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--torch", type=Path, help=argparse.SUPPRESS)  # one baseline run, in its own process
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--same-init", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch is not None:
        print(json.dumps(pytorch(args.torch, args.seed, args, args.same_init)))
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    import torch

    threads = torch.get_num_threads()
    rows = []
    tools = {"spiralctl": None, "pytorch": False, "pytorch_same_init": True}
    with tempfile.TemporaryDirectory() as work:
        env_threads = os.environ.get("SPIRALCTL_THREADS", "all cores")
        print(f"torch threads {threads}; spiralctl threads: {env_threads}", file=sys.stderr)
        for name in args.sets.split(","):
            runs = {tool: [] for tool in tools}
            for seed in seeds:
                ours = spiralctl(name, seed, args, Path(work))
                runs["spiralctl"].append(ours)
                for tool in ("pytorch", "pytorch_same_init"):
                    runs[tool].append(pytorch_process(ours["data"], seed, args, tools[tool]))
                theirs, same = runs["pytorch"][-1], runs["pytorch_same_init"][-1]
                print(
                    f"{name} seed {seed}: spiralctl {ours['accuracy']:.3f} in {ours['train_seconds']:.1f} s "
                    f"(loop {ours['loop_seconds']:.2f}), PyTorch {theirs['accuracy']:.3f} in "
                    f"{theirs['process_seconds']:.1f} s (loop {theirs['loop_seconds']:.2f}), PyTorch from "
                    f"spiralctl's initial weights {same['accuracy']:.3f}",
                    file=sys.stderr,
                )
            reference = dtw(ours["data"])
            row = {"set": name, "dtw": reference}
            for tool, results in runs.items():
                row[tool] = {
                    "accuracy": float(np.mean([r["accuracy"] for r in results])),
                    "accuracies": [r["accuracy"] for r in results],
                    "process_seconds": float(
                        np.mean([r.get("train_seconds", r.get("process_seconds")) for r in results])
                    ),
                    "loop_seconds": float(np.mean([r["loop_seconds"] for r in results])),
                }
            rows.append(row)

    def accuracy(cell: dict) -> str:
        return f"{cell['accuracy']:.3f} ({', '.join(f'{a:.3f}' for a in cell['accuracies'])})"

    columns = [
        f"spiralctl acc (seeds {args.seeds})",
        "PyTorch acc",
        "PyTorch acc, spiralctl's initial weights",
    ]
    columns += ["1-NN DTW acc", "spiralctl s: train process (its epochs' loop)", "PyTorch s: process (loop)"]
    print("| set | " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        ours, theirs = row["spiralctl"], row["pytorch"]
        print(
            f"| {row['set']} | {accuracy(ours)} | {accuracy(theirs)} | {accuracy(row['pytorch_same_init'])} "
            f"| {row['dtw']['accuracy']:.3f} | {ours['process_seconds']:.1f} ({ours['loop_seconds']:.2f}) "
            f"| {theirs['process_seconds']:.1f} ({theirs['loop_seconds']:.2f}) |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
