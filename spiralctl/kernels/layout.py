"""The packed batch: everything one training step or forward pass reads, in one float32 buffer.

One copy uploads it, and the kernels read each part where it lies: the sequences
[B, T, D] (batch-first, as the data is stored), the labels [B], the mask [B] (1 for a real
sequence, 0 for padding) and Adam's three step numbers [lr, 1/(1-b1^t), 1/(1-b2^t)].
Inference stages its sequences in a buffer of the same size, so validation during training
runs the forward kernel that the training step compiled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCALARS = 3  # Adam's learning rate and two bias corrections


@dataclass(frozen=True)
class PackedBatch:
    batch: int
    length: int  # points per sequence
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
    def scalars(self) -> int:
        """Where Adam's step numbers start."""
        return self.mask + self.batch

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
    ) -> np.ndarray:
        """Fill `out` (or a new buffer): x [n <= B, T, D] from the start, the rest where given."""
        out = self.empty() if out is None else out
        flat = np.asarray(x, dtype=np.float32).reshape(-1)
        out[: flat.size] = flat
        for start, part in ((self.labels, y), (self.mask, mask), (self.scalars, scalars)):
            if part is not None:
                out[start : start + len(part)] = part
        return out
