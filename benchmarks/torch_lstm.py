"""PyTorch's nn.LSTM trained like spiralctl trains, on the same files: the benchmark's baseline.

Usage: python benchmarks/torch_lstm.py DATA_DIR --hidden H --batch-size B --epochs E --lr LR
Prints one JSON object with per-epoch training seconds (the loop and the output: peer.py).
"""

from __future__ import annotations

import argparse

import numpy as np
import peer
import torch

from spiralctl.data import Dataset


def build(args: argparse.Namespace, train: Dataset) -> peer.Model:
    torch.manual_seed(args.seed)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y.astype(np.float32))
    lstm = torch.nn.LSTM(2, args.hidden, batch_first=True)
    head = torch.nn.Linear(args.hidden, 1)
    optimizer = torch.optim.Adam([*lstm.parameters(), *head.parameters()], lr=args.lr)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")

    def step(index: np.ndarray, mask: np.ndarray) -> torch.Tensor:
        mask = torch.from_numpy(mask)
        optimizer.zero_grad()
        _, (h, _) = lstm(x[index])
        loss = (loss_fn(head(h[0]).reshape(-1), y[index]) * mask).sum() / mask.sum()
        loss.backward()
        optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def predict(xs: np.ndarray) -> np.ndarray:
        _, (h, _) = lstm(torch.from_numpy(xs))
        return (head(h[0]).reshape(-1) > 0).numpy()

    return peer.Model(step, predict)


if __name__ == "__main__":
    peer.run(build)
