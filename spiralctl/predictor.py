"""Forward passes for validation, eval and predict (jitted, one compiled shape per (batch, length)),
and the classification report."""

from __future__ import annotations

import numpy as np
from tinygrad import Tensor, TinyJit

from spiralctl.data import LABELS, padded_batches
from spiralctl.kernels.layout import PackedBatch
from spiralctl.kernels.staging import download, staging_tensor, upload
from spiralctl.model import SpiralClassifier


class Predictor:
    """Runs a model over many sequences in fixed-size padded batches.

    Each (batch size, sequence length) compiles once; later calls reuse the jitted kernels,
    so predicting one sequence in a warm process takes milliseconds.
    """

    def __init__(self, model: SpiralClassifier, batch_size: int = 128) -> None:
        self.model = model
        self.batch_size = batch_size
        self._jits: dict[PackedBatch, TinyJit] = {}
        self._inputs: dict[PackedBatch, Tensor] = {}

    def _forward(self, layout: PackedBatch) -> tuple[TinyJit, Tensor]:
        """The jitted forward pass for this layout and the input buffer it reads."""
        if layout not in self._jits:
            self._inputs[layout] = staging_tensor((1, layout.size), self.model.device)

            def forward(packed: Tensor) -> Tensor:
                return self.model.logits_packed(packed, layout).realize()

            self._jits[layout] = TinyJit(forward)
        return self._jits[layout], self._inputs[layout]

    def logits(self, x: np.ndarray) -> np.ndarray:
        """x: float32[N, T, 2] -> float32[N] logits."""
        n, length = x.shape[0], x.shape[1]
        layout = PackedBatch(min(self.batch_size, n), length, self.model.config.input_size)
        forward, staged = self._forward(layout)
        packed = layout.empty()
        out = np.empty(n, dtype=np.float32)
        done = 0
        for index, count in padded_batches(n, layout.batch):
            layout.pack(x[index], out=packed)
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
