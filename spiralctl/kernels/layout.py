"""The packed batch: everything one training step or forward pass reads, in one float32 buffer.

One copy uploads it, and the kernels read each part where it lies: the sequences
[B, T, D] (batch-first, as the data is stored), the labels [B], the mask [B] (1 for a real
sequence, 0 for padding), the lengths [B] (points of each sequence, counted from the start of
the whole sequence), `start` [1] (the time step that this buffer's first point is: 0 for a
training step, k*T for the k-th chunk of a long sequence) and Adam's three step numbers
[lr, 1/(1-b1^t), 1/(1-b2^t)]. Inference stages its sequences in a buffer of the same size, so
validation during training runs the forward kernel that the training step compiled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCALARS = 3  # Adam's learning rate and two bias corrections


@dataclass(frozen=True)
class PackedBatch:
    batch: int
    length: int  # time steps in the buffer (a chunk of T points, or every point in training)
    inputs: int = 2  # coordinates per point

    @property
    def labels(self) -> int:
        """Where the labels start."""
        return self.batch * self.length * self.inputs

    @property
    def mask(self) -> int:
        """Where the mask starts."""
        return self.labels + self.batch

    @property
    def lengths(self) -> int:
        """Where the sequences' lengths start; `start` follows them at lengths + batch."""
        return self.mask + self.batch

    @property
    def start(self) -> int:
        """Where the time step of the buffer's first point is."""
        return self.lengths + self.batch

    @property
    def scalars(self) -> int:
        """Where Adam's step numbers start."""
        return self.start + 1

    @property
    def size(self) -> int:
        """Floats in the whole buffer."""
        return self.scalars + SCALARS

    def empty(self) -> np.ndarray:
        return np.zeros(self.size, dtype=np.float32)

    def pack(
        self,
        x: np.ndarray,
        y: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        scalars: np.ndarray | None = None,
        out: np.ndarray | None = None,
        lengths: np.ndarray | None = None,
        start: int = 0,
    ) -> np.ndarray:
        """Fill `out` (or a new buffer): x [n <= B, T, D] from the start, the rest where given.

        Lengths not given are the full length T for the n rows of x (and 0 for the rest)."""
        out = self.empty() if out is None else out
        flat = np.asarray(x, dtype=np.float32).reshape(-1)
        out[: flat.size] = flat
        for begin, part in ((self.labels, y), (self.mask, mask), (self.scalars, scalars)):
            if part is not None:
                out[begin : begin + len(part)] = part
        return self.place_lengths(out, np.full(len(x), x.shape[1]) if lengths is None else lengths, start)

    def place_lengths(self, out: np.ndarray, lengths: np.ndarray, start: int = 0) -> np.ndarray:
        """Write the lengths of n <= B sequences (0 for the rest) and `start` into `out`."""
        out[self.lengths : self.lengths + self.batch] = 0.0
        out[self.lengths : self.lengths + len(lengths)] = lengths
        out[self.start] = start
        return out
