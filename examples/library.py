"""Use spiralctl as a library: generate data, train, evaluate and predict without the CLI."""

import tempfile
from pathlib import Path

import numpy as np

from spiralctl.checkpoint import load_checkpoint
from spiralctl.config import TrainConfig
from spiralctl.data import DataConfig, generate
from spiralctl.kernels.threads import cpu_threads
from spiralctl.model import SpiralClassifier
from spiralctl.predictor import Predictor, classification_report, sigmoid
from spiralctl.trainer import fit


def main() -> None:
    splits = generate(DataConfig(sequences=1000, test_fraction=0.2, seed=1))
    run_dir = Path(tempfile.mkdtemp(prefix="spiralctl-example-"))

    def show(event: str, info: dict) -> None:
        if event == "epoch":
            loss, accuracy = info["val_loss"], info["val_accuracy"]
            print(f"epoch {info['epoch']:2d}  val loss {loss:.4f}  val acc {accuracy:.3f}")

    with cpu_threads("CPU") as threads:  # the CPU kernels on every core
        config = TrainConfig(epochs=15)
        fit(splits["train"], splits["val"], config, run_dir, "CPU", threads=threads, on_progress=show)

    checkpoint = load_checkpoint(run_dir / "best.safetensors")
    model = SpiralClassifier(checkpoint.model, checkpoint.weights, device="CPU")
    predictor = Predictor(model)
    test = splits["test"]
    report = classification_report(predictor.logits(test.x), test.y)
    print(f"checkpoints in {run_dir}; test accuracy {report['accuracy']:.3f} on {report['n']} sequences")

    # one anticlockwise spiral of 30 points, built by hand
    i = np.arange(30)
    angle, radius = 1.0 - i * np.pi / 16, 6.5 * (104 - i) / 104
    spiral = np.stack([radius * np.sin(angle), radius * np.cos(angle)], axis=-1).astype(np.float32)
    print(f"P(anticlockwise) = {sigmoid(predictor.logits(spiral[None]))[0]:.3f}")


if __name__ == "__main__":
    main()
