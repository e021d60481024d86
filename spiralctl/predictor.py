"""Forward passes for validation, eval and predict, and the classification report.

Sequence length is data, not a compiled shape: every call of the forward kernel runs a chunk of
`chunk` time steps, with each sequence's own length in the packed buffer and (h, c) carried
from one chunk to the next on the device. One compiled program per (device, batch, hidden,
chunk) serves sequences of every length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from tinygrad import Tensor, TinyJit

from spiralctl.data import LABELS, Normalization, normalized
from spiralctl.kernels.layout import PackedBatch
from spiralctl.kernels.staging import download, staging_tensor, upload
from spiralctl.model import SpiralClassifier

# time steps per forward call: long sequences run as several calls of the same program, and a
# sequence shorter than its batch's longest costs at most a chunk's padding
CHUNK = 64


class Predictor:
    """Runs a model over many sequences of any lengths in fixed-size padded batches.

    Sequences are sorted by length into batches, so a batch's sequences have about the same
    length; a batch whose longest sequence has L points takes ceil(L / chunk) calls. Each
    (batch size, chunk) compiles once; later calls reuse the jitted kernels, so predicting one
    sequence in a warm process takes milliseconds. `chunk`, when not given, is CHUNK or the
    longest sequence of the first call, whichever is shorter; validation during training gives
    the training length, so that it runs the kernel the training step compiled. A later call
    reuses a program already built when its batch is large enough (a stream of blocks, the last
    one short, compiles once).
    """

    def __init__(
        self,
        model: SpiralClassifier,
        batch_size: int = 128,
        chunk: int | None = None,
        normalization: Normalization | None = None,
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.chunk = chunk
        self.normalization = normalization  # applied to every batch before the model sees it
        self.rows = model.config.head_rows  # logits per sequence: 1 (two classes) or K
        self._jits: dict[PackedBatch, TinyJit] = {}
        self._inputs: dict[PackedBatch, tuple[Tensor, np.ndarray]] = {}

    @property
    def compiled(self) -> int:
        """How many forward programs (one per batch size and chunk) this predictor has built."""
        return len(self._jits)

    def _forward(self, layout: PackedBatch) -> tuple[TinyJit, Tensor, np.ndarray]:
        """The jitted forward pass for this layout, the input buffer it reads and its host copy."""
        if layout not in self._jits:
            device, hidden = self.model.device, self.model.config.hidden
            self._inputs[layout] = (staging_tensor((1, layout.size), device), layout.empty())
            state = staging_tensor((2, hidden, layout.batch), device)

            def forward(packed: Tensor) -> Tensor:
                logits, carried = self.model.logits_packed(packed, layout, state)
                state.replace(carried)  # the kernel wrote (h, c) into the state's buffer
                Tensor.realize(logits, state)
                return logits

            self._jits[layout] = TinyJit(forward)
        return self._jits[layout], *self._inputs[layout]

    def _layout(self, n: int, longest: int) -> PackedBatch:
        batch, ideal = min(self.batch_size, n), self.chunk or min(CHUNK, longest)
        for layout in self._jits:  # padding a few rows costs less than compiling another program
            if self.chunk:
                fits = layout.length == self.chunk
            else:  # and a few more calls of shorter chunks too, but not many more
                fits = -(-longest // layout.length) <= 2 * -(-longest // ideal)
            if layout.batch >= batch and fits:
                return layout
        return PackedBatch(batch, ideal, self.model.config.input_size)

    def _batch_logits(self, layout: PackedBatch, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """x: [n <= B, L, D] (zero past each sequence's length), lengths: [n] -> logits [n] (or
        [n, K]), with the predictor's normalisation applied first."""
        x = normalized(x, lengths, self.normalization)
        forward, staged, packed = self._forward(layout)
        n, steps = len(x), layout.length
        view = packed[: layout.labels].reshape(layout.batch, steps, layout.inputs)
        longest = max(int(lengths.max()), 1)
        for first in range(0, longest, steps):
            part = x[:, first : first + steps]
            view[:] = 0.0
            view[:n, : part.shape[1]] = part
            layout.place_lengths(packed, lengths, first)
            result = forward(upload(staged, packed))
        return download(result)[:n]

    def _run(
        self, lengths: np.ndarray, gather: Callable[[np.ndarray, int], np.ndarray]
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(indices, logits) per batch, batches of sequences sorted by length; gather(indices, L)
        gives those sequences as [n, L, D]."""
        n = len(lengths)
        if n == 0:
            return
        layout = self._layout(n, int(lengths.max()))
        order = np.argsort(lengths, kind="stable")
        for begin in range(0, n, layout.batch):
            index = order[begin : begin + layout.batch]
            batch_lengths = lengths[index]
            longest = int(batch_lengths.max())
            yield index, self._batch_logits(layout, gather(index, longest), batch_lengths)

    def logits(self, x: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """x: float32[N, T, D] (zero-padded past each sequence's length), lengths: [N] (default:
        all T) -> float32[N] logits (two classes) or [N, K]."""
        lengths = np.full(len(x), x.shape[1], dtype=np.int64) if lengths is None else np.asarray(lengths)
        out = self._out(len(x))
        for index, logits in self._run(lengths, lambda index, longest: x[index, :longest]):
            out[index] = logits
        return out

    def logits_ragged(self, sequences: list[np.ndarray]) -> np.ndarray:
        """Sequences of any lengths ([T_i, D] each), batched by length through one program."""
        out = self._out(len(sequences))
        for index, logits in self.iter_ragged(sequences):
            out[index] = logits
        return out

    def _out(self, n: int) -> np.ndarray:
        return np.empty((n,) if self.rows == 1 else (n, self.rows), dtype=np.float32)

    def iter_ragged(self, sequences: list[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(indices, logits) per batch as each finishes, for sequences of any lengths."""
        lengths = np.array([len(seq) for seq in sequences], dtype=np.int64)
        inputs = self.model.config.input_size

        def gather(index: np.ndarray, longest: int) -> np.ndarray:
            x = np.zeros((len(index), longest, inputs), dtype=np.float32)
            for row, i in enumerate(index):
                x[row, : lengths[i]] = sequences[i]
            return x

        yield from self._run(lengths, gather)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))).astype(np.float32)  # no overflow


def bce_numpy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    y = labels.astype(np.float64)
    return np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Every class's probability, [N, K]: from one logit (two classes: [1 - p, p]) or K."""
    if logits.ndim == 1:
        p = sigmoid(logits)
        return np.stack([1 - p, p], axis=1)
    return np.exp(log_softmax(logits)).astype(np.float32)


def predicted_labels(logits: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The class of each sequence: for one logit, class 1 when its probability is above
    `threshold`; for K logits the most probable class (the first of equals)."""
    if logits.ndim == 1:
        return (sigmoid(logits) > threshold).astype(np.int64)
    return np.argmax(logits, axis=1).astype(np.int64)


def losses(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each sequence's loss: binary cross-entropy on one logit, softmax cross-entropy on K."""
    if logits.ndim == 1:
        return bce_numpy(logits, labels)
    return -log_softmax(logits)[np.arange(len(labels)), labels.astype(np.int64)]


def classification_report(
    logits: np.ndarray, labels: np.ndarray, threshold: float = 0.5, classes: list[str] | None = None
) -> dict:
    """Loss, accuracy, balanced accuracy, macro F1, the K x K confusion matrix (rows: true class,
    columns: predicted) and per-class precision / recall / F1 / support, keyed by class name."""
    classes = list(LABELS) if classes is None else list(classes)
    k = len(classes)
    predicted = predicted_labels(logits, threshold)
    truth = labels.astype(np.int64)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    per_class = {}
    for label, name in enumerate(classes):
        tp = int(confusion[label, label])
        predicted_n = int(confusion[:, label].sum())
        actual_n = int(confusion[label, :].sum())
        precision = tp / predicted_n if predicted_n else 0.0
        recall = tp / actual_n if actual_n else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual_n}
    # as scikit-learn defines them: balanced accuracy over the classes the data holds, macro F1
    # over the classes the data holds or the model predicted
    actual = [row for row in per_class.values() if row["support"]]
    seen = [row for i, row in enumerate(per_class.values()) if confusion[:, i].sum() or confusion[i].sum()]
    report = {
        "n": int(len(truth)),
        "loss": float(losses(logits, labels).mean()),
        "accuracy": float((predicted == truth).mean()),
        "balanced_accuracy": float(np.mean([row["recall"] for row in actual])) if actual else 0.0,
        "macro_f1": float(np.mean([row["f1"] for row in seen])) if seen else 0.0,
        "classes": classes,
        "confusion": confusion.tolist(),
        "per_class": per_class,
    }
    if logits.ndim == 1:
        report["threshold"] = threshold
    return report


LENGTH_BUCKETS = 4


def length_buckets(lengths: np.ndarray, most: int = LENGTH_BUCKETS) -> list[tuple[int, int]]:
    """Inclusive (shortest, longest) ranges: one per length when there are at most `most`
    lengths, else `most` ranges of equal width from the shortest to the longest length."""
    distinct = np.unique(lengths)
    if len(distinct) <= most:
        return [(int(v), int(v)) for v in distinct]
    low, high = int(distinct[0]), int(distinct[-1])
    edges = np.linspace(low, high + 1, most + 1)
    bounds = [int(np.ceil(e)) for e in edges]
    return [(bounds[k], bounds[k + 1] - 1) for k in range(most) if bounds[k + 1] > bounds[k]]


def accuracy_by_length(
    logits: np.ndarray, labels: np.ndarray, lengths: np.ndarray, threshold: float = 0.5
) -> list[dict]:
    """Accuracy per length bucket (see length_buckets): shortest, longest, n, accuracy."""
    right = predicted_labels(logits, threshold) == labels.astype(np.int64)
    rows = []
    for low, high in length_buckets(lengths):
        inside = (lengths >= low) & (lengths <= high)
        n = int(inside.sum())
        if n:
            rows.append({"shortest": low, "longest": high, "n": n, "accuracy": float(right[inside].mean())})
    return rows
