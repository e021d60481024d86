"""PyTorch's nn.LSTM trained like spiralctl trains, on the same files: the benchmark's baseline.

Usage: python benchmarks/torch_lstm.py DATA_DIR --hidden H --batch-size B --epochs E --lr LR
Prints one JSON object with per-epoch training seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from spiralctl.data import load_split, padded_batches
from spiralctl.trainer import epoch_order


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--hidden", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    started = time.perf_counter()
    torch.manual_seed(args.seed)
    train, val = load_split(args.data, "train"), load_split(args.data, "val")
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y.astype(np.float32))
    lstm = torch.nn.LSTM(2, args.hidden, batch_first=True)
    head = torch.nn.Linear(args.hidden, 1)
    optimizer = torch.optim.Adam([*lstm.parameters(), *head.parameters()], lr=args.lr)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
    n, batch = len(train), args.batch_size
    batches = math.ceil(n / batch)
    epoch_seconds, losses = [], []
    for epoch in range(1, args.epochs + 1):
        order = epoch_order(args.seed, epoch, n)
        t0 = time.perf_counter()
        for index, count in padded_batches(n, batch, order):
            mask = torch.zeros(batch)
            mask[:count] = 1
            optimizer.zero_grad()
            _, (h, _) = lstm(x[index])
            loss = (loss_fn(head(h[0]).reshape(-1), y[index]) * mask).sum() / mask.sum()
            loss.backward()
            optimizer.step()
        losses.append(float(loss))
        epoch_seconds.append(time.perf_counter() - t0)
    with torch.no_grad():
        _, (h, _) = lstm(torch.from_numpy(val.x))
        accuracy = float(((head(h[0]).reshape(-1) > 0).numpy() == (val.y == 1)).mean())
    print(
        json.dumps(
            {
                "epoch_seconds": epoch_seconds,
                "train": n,
                "batches": batches,
                "val_accuracy": accuracy,
                "seconds": time.perf_counter() - started,
            }
        )
    )


if __name__ == "__main__":
    main()
