"""Use spiralctl as a library: generate data, train, evaluate and predict without the CLI."""

from pathlib import Path

import numpy as np

from spiralctl.checkpoint import load_checkpoint
from spiralctl.data import DataConfig, generate
from spiralctl.inference import Predictor, classification_report, sigmoid
from spiralctl.model import SpiralClassifier
from spiralctl.train import TrainConfig, fit


def main() -> None:
    splits = generate(DataConfig(sequences=1000, test_fraction=0.2, seed=1))
    run_dir = Path("runs/library-example")
    run_dir.mkdir(parents=True, exist_ok=True)

    def show(event: str, info: dict) -> None:
        if event == "epoch":
            loss, accuracy = info["val_loss"], info["val_accuracy"]
            print(f"epoch {info['epoch']:2d}  val loss {loss:.4f}  val acc {accuracy:.3f}")

    fit(splits["train"], splits["val"], TrainConfig(epochs=15), run_dir, device="CPU", on_progress=show)

    checkpoint = load_checkpoint(run_dir / "best.safetensors")
    model = SpiralClassifier(checkpoint.model, checkpoint.weights, device="CPU")
    predictor = Predictor(model)
    test = splits["test"]
    report = classification_report(predictor.logits(test.x), test.y)
    print(f"test accuracy {report['accuracy']:.3f} on {report['n']} sequences")

    # one anticlockwise spiral of 30 points, built by hand
    i = np.arange(30)
    angle, radius = 1.0 - i * np.pi / 16, 6.5 * (104 - i) / 104
    spiral = np.stack([radius * np.sin(angle), radius * np.cos(angle)], axis=-1).astype(np.float32)
    print(f"P(anticlockwise) = {sigmoid(predictor.logits(spiral[None]))[0]:.3f}")


if __name__ == "__main__":
    main()
