"""Shared fixtures: every test works in its own temporary folder, kernels cache per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


def pytest_configure(config):
    # One kernel cache for the whole session, outside the home folder. Set before tinygrad loads.
    cache = Path(config.rootpath) / ".pytest_cache" / "tinygrad-cache.db"
    cache.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CACHEDB", str(cache))
    os.environ.setdefault("DEV", "CPU")


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """A small direction dataset with train, val and test splits."""
    from spiralctl.data import DataConfig, generate, save_datasets

    folder = tmp_path_factory.mktemp("data")
    config = DataConfig(sequences=120, length=12, val_fraction=0.25, test_fraction=0.25, seed=3)
    save_datasets(folder, generate(config))
    return folder


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, small_data) -> Path:
    """A run folder with a small model trained for 2 epochs on `small_data`."""
    from spiralctl.train import TrainConfig, train_job

    run = tmp_path_factory.mktemp("run") / "train-1"
    train_job(
        TrainConfig(epochs=2, batch_size=32, hidden=4, seed=1), data_dir=small_data, out=run, device="cpu"
    )
    return run


def lstm_numpy(x, w_ih, w_hh, b_ih, b_hh, grad_h=None):
    """Reference LSTM in float64 numpy: returns h_T and, given dL/dh_T, the gradients of all inputs."""
    x, w_ih, w_hh, b_ih, b_hh = (np.asarray(a, dtype=np.float64) for a in (x, w_ih, w_hh, b_ih, b_hh))
    batch, steps, _ = x.shape
    hidden = w_hh.shape[1]

    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    h = [np.zeros((batch, hidden))]
    c = [np.zeros((batch, hidden))]
    gates = []
    for t in range(steps):
        z = x[:, t] @ w_ih.T + b_ih + h[-1] @ w_hh.T + b_hh
        i, f, g, o = np.split(z, 4, axis=1)
        i, f, g, o = sigmoid(i), sigmoid(f), np.tanh(g), sigmoid(o)
        c.append(f * c[-1] + i * g)
        h.append(o * np.tanh(c[-1]))
        gates.append((i, f, g, o))
    if grad_h is None:
        return h[-1]
    grads = {"x": np.zeros_like(x), "w_ih": np.zeros_like(w_ih), "w_hh": np.zeros_like(w_hh)}
    grads["b"] = np.zeros_like(b_ih)
    dh, dc = np.asarray(grad_h, dtype=np.float64), np.zeros((batch, hidden))
    for t in reversed(range(steps)):
        i, f, g, o = gates[t]
        tanh_c = np.tanh(c[t + 1])
        dc = dc + dh * o * (1 - tanh_c**2)
        dz = np.concatenate(
            [dc * g * i * (1 - i), dc * c[t] * f * (1 - f), dc * i * (1 - g**2), dh * tanh_c * o * (1 - o)],
            axis=1,
        )
        grads["x"][:, t] = dz @ w_ih
        grads["w_ih"] += dz.T @ x[:, t]
        grads["w_hh"] += dz.T @ h[t]
        grads["b"] += dz.sum(0)
        dh, dc = dz @ w_hh, dc * f
    return h[-1], grads
