"""Shared fixtures: every test works in its own temporary folder, kernels cache per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_configure(config):
    # One kernel cache for the whole session, outside the home folder. Set before tinygrad loads.
    cache = Path(config.rootpath) / ".pytest_cache" / "tinygrad-cache.db"
    cache.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CACHEDB", str(cache))
    os.environ.setdefault("DEV", "CPU")


@pytest.fixture(scope="session", autouse=True)
def _no_program_cache_in_process():
    """This process compiles for itself: tests count what tinygrad lowers, and programs loaded
    from the on-disk cache (spiralctl/kernels/programs.py) would hide it. Subprocesses use the
    cache; tests/test_programs.py switches it on where it tests it."""
    from spiralctl.kernels import programs

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(programs, "enabled", False)
        yield


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
    from spiralctl.commands import train
    from spiralctl.config import TrainConfig

    run = tmp_path_factory.mktemp("run") / "train-1"
    train(TrainConfig(epochs=2, batch_size=32, hidden=4, seed=1), data_dir=small_data, out=run, device="cpu")
    return run


@pytest.fixture
def run():
    """Run the CLI in-process: run(*args) -> Typer's Result, stdout and stderr kept apart."""
    from typer.testing import CliRunner

    from spiralctl.cli import app

    runner = CliRunner()

    def invoke(*args, input=None, env=None):
        return runner.invoke(app, [str(a) for a in args], input=input, env=env)

    return invoke
