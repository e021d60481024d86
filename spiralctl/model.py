"""The sequence classifier: an LSTM over the points and a linear head on the last hidden state."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tinygrad import Tensor

from spiralctl.kernels.family import kernel_family
from spiralctl.kernels.layout import PackedBatch
from spiralctl.kernels.lstm import lstm_reference

# PyTorch's names for nn.LSTM(input, hidden, batch_first=True) + nn.Linear(hidden, rows): one row
# (a single logit, binary cross-entropy) for two classes, K rows (softmax cross-entropy) for K >= 3.
PARAMETER_NAMES = (
    "lstm.weight_ih_l0",
    "lstm.weight_hh_l0",
    "lstm.bias_ih_l0",
    "lstm.bias_hh_l0",
    "head.weight",
    "head.bias",
)


@dataclass(frozen=True)
class ModelConfig:
    input_size: int = 2
    hidden: int = 8
    classes: int = 2

    @property
    def head_rows(self) -> int:
        """The head's outputs: one logit for two classes, one per class from three up."""
        return 1 if self.classes == 2 else self.classes

    def shapes(self) -> dict[str, tuple[int, ...]]:
        h, d, k = self.hidden, self.input_size, self.head_rows
        return {
            "lstm.weight_ih_l0": (4 * h, d),
            "lstm.weight_hh_l0": (4 * h, h),
            "lstm.bias_ih_l0": (4 * h,),
            "lstm.bias_hh_l0": (4 * h,),
            "head.weight": (k, h),
            "head.bias": (k,),
        }

    def parameter_count(self) -> int:
        return sum(int(np.prod(shape)) for shape in self.shapes().values())


def init_parameters(config: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """PyTorch's default init (uniform in +-1/sqrt(hidden)), from a numpy generator.

    numpy, not tinygrad's RNG, so the same seed gives the same weights on every device.
    """
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(config.hidden)
    return {
        name: rng.uniform(-bound, bound, size=shape).astype(np.float32)
        for name, shape in config.shapes().items()
    }


class SpiralClassifier:
    """Maps x: [B, T, D] to one logit per sequence for two classes (positive means the second
    class: anticlockwise for spirals), or to K logits [B, K] for K >= 3 classes."""

    def __init__(self, config: ModelConfig, weights: dict[str, np.ndarray], device: str) -> None:
        self.config = config
        self.device = device
        self.kernels = kernel_family(device)  # the CPU or the GPU kernels, by device
        self.parameters = {
            name: Tensor(weights[name], device=device).contiguous().realize() for name in PARAMETER_NAMES
        }

    def __call__(self, x: Tensor, impl: str = "fused") -> Tensor:
        """The logits of x: [B, T, D]: [B] for a one-row head (two classes), [B, K] for K rows.
        Differentiable by tinygrad's autograd: the fused kernels ("fused") or the plain
        recurrence ("reference")."""
        if impl not in ("fused", "reference"):
            raise ValueError(f"unknown LSTM implementation {impl!r}; use fused or reference")
        lstm = self.kernels.lstm_fused if impl == "fused" else lstm_reference
        p = self.parameters
        h = lstm(x, *(p[name] for name in PARAMETER_NAMES[:4]))
        logits = h @ p["head.weight"].T + p["head.bias"]
        return logits.reshape(-1) if p["head.weight"].shape[0] == 1 else logits

    def logits_packed(self, packed: Tensor, layout: PackedBatch, state: Tensor) -> tuple[Tensor, Tensor]:
        """Logits of the sequences in a packed batch ([1, layout.size]) after its chunk of time
        steps: the fused forward kernel and the head. state [2, H, B] carries (h, c) from the
        chunk before (when the packed start is above 0) to the next. Returns (logits: [B] for a
        one-row head, [B, K] for K rows; the state as the kernel left it)."""
        p, batch, length = self.parameters, layout.batch, layout.length
        weights = (p[name] for name in PARAMETER_NAMES[:4])
        out = self.kernels.sequence_forward(
            packed, *weights, batch, length, lengths=layout.lengths, state=state
        )
        hs, state = out[0], out[5]
        logits = hs[length, :, :batch].permute(1, 0) @ p["head.weight"].T + p["head.bias"]
        return (logits.reshape(-1) if p["head.weight"].shape[0] == 1 else logits), state

    def state_dict(self) -> dict[str, np.ndarray]:
        return {name: t.numpy() for name, t in self.parameters.items()}
