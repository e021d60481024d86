"""Forward passes for validation, eval and predict: jitted, one compiled shape per (batch, length)."""

from __future__ import annotations

import numpy as np
from tinygrad import Tensor, TinyJit

from spiralctl.data import LABELS, padded_batches
from spiralctl.model import SpiralClassifier, packed_length
from spiralctl.staging import download, staging_tensor, upload


def bce_with_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-sequence binary cross-entropy on logits, stable for large |logits|."""
    return logits.maximum(0) - logits * targets + (-logits.abs()).exp().add(1).log()


class Predictor:
    """Runs a model over many sequences in fixed-size padded batches.

    Each (batch size, sequence length) compiles once; later calls reuse the jitted kernels,
    so predicting one sequence in a warm process takes milliseconds.
    """

    def __init__(self, model: SpiralClassifier, batch_size: int = 128) -> None:
        self.model = model
        self.batch_size = batch_size
        self._jits: dict[tuple[int, int], TinyJit] = {}
        self._inputs: dict[tuple[int, int], Tensor] = {}

    def _forward(self, batch: int, length: int) -> tuple[TinyJit, Tensor]:
        """The jitted forward pass for this shape and the input buffer it reads."""
        key = (batch, length)
        if key not in self._jits:
            size = packed_length(batch, length, self.model.config.input_size)
            self._inputs[key] = staging_tensor((1, size), self.model.device)

            def forward(packed: Tensor) -> Tensor:
                return self.model.logits_packed(packed, batch, length).realize()

            self._jits[key] = TinyJit(forward)
        return self._jits[key], self._inputs[key]

    def logits(self, x: np.ndarray) -> np.ndarray:
        """x: float32[N, T, 2] -> float32[N] logits."""
        n, length = x.shape[0], x.shape[1]
        batch = min(self.batch_size, n)
        forward, staged = self._forward(batch, length)
        packed = np.zeros(staged.shape[1], dtype=np.float32)
        out = np.empty(n, dtype=np.float32)
        done = 0
        for index, count in padded_batches(n, batch):
            sequences = x[index].reshape(-1)
            packed[: sequences.size] = sequences
            out[done : done + count] = download(forward(upload(staged, packed)))[:count]
            done += count
        return out

    def logits_ragged(self, sequences: list[np.ndarray]) -> np.ndarray:
        """Sequences of any lengths: grouped by length, one compiled shape per length."""
        out = np.empty(len(sequences), dtype=np.float32)
        by_length: dict[int, list[int]] = {}
        for i, seq in enumerate(sequences):
            by_length.setdefault(len(seq), []).append(i)
        for ids in by_length.values():
            stacked = np.stack([sequences[i] for i in ids]).astype(np.float32)
            out[ids] = self.logits(stacked)
        return out


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))).astype(np.float32)  # no overflow


def bce_numpy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    y = labels.astype(np.float64)
    return np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))


def classification_report(logits: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict:
    """Loss, accuracy, confusion matrix and per-class precision/recall/F1."""
    probability = sigmoid(logits)
    predicted = (probability > threshold).astype(np.int64)
    truth = labels.astype(np.int64)
    confusion = np.zeros((2, 2), dtype=np.int64)  # rows: true class, columns: predicted class
    np.add.at(confusion, (truth, predicted), 1)
    per_class = {}
    for label, name in enumerate(LABELS):
        tp = int(confusion[label, label])
        predicted_n = int(confusion[:, label].sum())
        actual_n = int(confusion[label, :].sum())
        precision = tp / predicted_n if predicted_n else 0.0
        recall = tp / actual_n if actual_n else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual_n}
    return {
        "n": int(len(truth)),
        "loss": float(bce_numpy(logits, labels).mean()),
        "accuracy": float((predicted == truth).mean()),
        "threshold": threshold,
        "confusion": confusion.tolist(),
        "per_class": per_class,
    }


def check_inference_options(batch_size: int, threshold: float) -> None:
    """The options eval and predict share."""
    from spiralctl.errors import SpiralError

    if batch_size < 1:
        raise SpiralError(f"--batch-size must be at least 1 (got {batch_size})")
    if not 0 < threshold < 1:
        raise SpiralError(f"--threshold must be between 0 and 1 (got {threshold})")


def predict(
    checkpoint_path,
    source: str,
    device: str = "auto",
    batch_size: int = 128,
    threshold: float = 0.5,
) -> list[dict]:
    """Classify every sequence in `source` (see inputs.read_sequences); one dict per sequence."""
    from spiralctl.inputs import read_sequences

    check_inference_options(batch_size, threshold)
    names, sequences, labels = read_sequences(source)
    return classify(checkpoint_path, names, sequences, labels, device, batch_size, threshold)


def classify(
    checkpoint_path,
    names: list[str],
    sequences: list[np.ndarray],
    labels: np.ndarray | None = None,
    device: str = "auto",
    batch_size: int = 128,
    threshold: float = 0.5,
) -> list[dict]:
    """One dict per sequence: name, points, probability, label (and true_label when known)."""
    from spiralctl.checkpoint import load_checkpoint
    from spiralctl.devices import resolve_device

    check_inference_options(batch_size, threshold)
    checkpoint = load_checkpoint(checkpoint_path)
    model = SpiralClassifier(checkpoint.model, checkpoint.weights, resolve_device(device))
    probability = sigmoid(Predictor(model, batch_size).logits_ragged(sequences))
    rows = []
    for i, (name, seq, p) in enumerate(zip(names, sequences, probability)):
        row = {
            "sequence": name,
            "points": len(seq),
            "probability": float(p),
            "label": LABELS[int(p > threshold)],
        }
        if labels is not None:
            row["true_label"] = LABELS[int(labels[i])]
        rows.append(row)
    return rows
