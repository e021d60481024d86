"""What the benchmark's peer scripts (torch_lstm.py, jax_lstm.py) share: their command line, the
data, the batches and their order, the epoch clock and the JSON they print. Each script brings
only its model, so every peer trains on the same thing in the same way and reports alike.

Command line: DATA_DIR --hidden H --batch-size B --epochs E --lr LR --seed S
Output: one JSON object: epoch_seconds, train (sequences), batches, val_accuracy, seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from spiralctl.data import Dataset, epoch_order, load_split, padded_batches


@dataclass
class Model:
    """A peer's model and optimiser, as the training loop drives them."""

    step: Callable[[np.ndarray, np.ndarray], object]  # (batch's row index, float32 mask) -> loss
    predict: Callable[[np.ndarray], np.ndarray]  # x: float32[N, T, 2] -> logit > 0, bool[N]
    wait: Callable[[], None] = lambda: None  # returns when every step taken so far is done


def run(build: Callable[[argparse.Namespace, Dataset], Model]) -> None:
    """Parse the command line, train `build(args, train)`'s model, print the JSON result."""
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--hidden", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    started = time.perf_counter()
    train, val = load_split(args.data, "train"), load_split(args.data, "val")
    model = build(args, train)
    n, batch = len(train), args.batch_size
    epoch_seconds = []
    for epoch in range(1, args.epochs + 1):
        order = epoch_order(args.seed, epoch, n)
        t0 = time.perf_counter()
        for index, count in padded_batches(n, batch, order):
            mask = np.zeros(batch, np.float32)
            mask[:count] = 1
            loss = model.step(index, mask)
        model.wait()
        float(loss)  # the last step's loss, read back
        epoch_seconds.append(time.perf_counter() - t0)
    accuracy = float((model.predict(val.x) == (val.y == 1)).mean())
    print(
        json.dumps(
            {
                "epoch_seconds": epoch_seconds,
                "train": n,
                "batches": math.ceil(n / batch),
                "val_accuracy": accuracy,
                "seconds": time.perf_counter() - started,
            }
        )
    )
