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
    _, train_seconds = _run(
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
    return {"accuracy": report["accuracy"], "train_seconds": train_seconds, "data": data}


def pytorch(data: Path, seed: int, args: argparse.Namespace) -> dict:
    import torch

    train, test = load_dataset(data / "train.safetensors"), load_dataset(data / "test.safetensors")
    statistics = feature_statistics(train)
    x = torch.from_numpy(normalized(train.x, train.lengths, statistics))
    x_test = torch.from_numpy(normalized(test.x, test.lengths, statistics))
    k, d = len(train.classes), train.x.shape[2]
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(d, args.hidden, batch_first=True)
    head = torch.nn.Linear(args.hidden, 1 if k == 2 else k)
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
    return {"accuracy": accuracy, "train_seconds": train_seconds}


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
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    import torch

    threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        env_threads = os.environ.get("SPIRALCTL_THREADS", "all cores")
        print(f"torch threads {threads}; spiralctl threads: {env_threads}", file=sys.stderr)
        for name in args.sets.split(","):
            runs = {"spiralctl": [], "pytorch": []}
            for seed in seeds:
                ours = spiralctl(name, seed, args, Path(work))
                runs["spiralctl"].append(ours)
                runs["pytorch"].append(pytorch(ours["data"], seed, args))
                theirs = runs["pytorch"][-1]
                print(
                    f"{name} seed {seed}: spiralctl {ours['accuracy']:.3f} in {ours['train_seconds']:.1f} s, "
                    f"PyTorch {theirs['accuracy']:.3f} in {theirs['train_seconds']:.1f} s",
                    file=sys.stderr,
                )
            reference = dtw(ours["data"])
            row = {"set": name, "dtw": reference}
            for tool, results in runs.items():
                row[tool] = {
                    "accuracy": float(np.mean([r["accuracy"] for r in results])),
                    "accuracies": [r["accuracy"] for r in results],
                    "train_seconds": float(np.mean([r["train_seconds"] for r in results])),
                }
            rows.append(row)
    print(f"| set | spiralctl acc (seeds {args.seeds}) | PyTorch acc | 1-NN DTW acc | spiralctl train s "
          "(whole process) | PyTorch train s (loop only) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for row in rows:
        ours, theirs = row["spiralctl"], row["pytorch"]
        print(
            f"| {row['set']} | {ours['accuracy']:.3f} ({', '.join(f'{a:.3f}' for a in ours['accuracies'])}) "
            f"| {theirs['accuracy']:.3f} ({', '.join(f'{a:.3f}' for a in theirs['accuracies'])}) "
            f"| {row['dtw']['accuracy']:.3f} | {ours['train_seconds']:.1f} | {theirs['train_seconds']:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
