"""The settings of a training run and of inference, and a run's config.json."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from spiralctl.data import check_seed
from spiralctl.errors import SpiralError

LR_SCHEDULES = ("constant", "cosine")
# how inputs are scaled: auto z-scores each feature of imported data and leaves the generated
# spirals as they are (the tutorial's setting); on and off force it
NORMALIZE = ("auto", "on", "off")
# how the loss weighs the classes: none (every sequence alike) or balanced (n / (K n_k))
CLASS_WEIGHTS = ("none", "balanced")


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained. Defaults are the Lux tutorial's."""

    epochs: int = 25
    batch_size: int = 128
    hidden: int = 8
    lr: float = 0.01
    seed: int = 0
    lr_schedule: str = "constant"  # or "cosine": from lr down to 0 over all steps of all epochs
    patience: int = 0  # stop after this many epochs without a better validation loss (0: never)
    save_every: int = 0  # also keep epoch-N.safetensors every this many epochs (0: never)
    normalize: str = "auto"  # NORMALIZE
    class_weight: str = "none"  # CLASS_WEIGHTS

    def check(self) -> None:
        for option in ("epochs", "batch_size", "hidden"):
            if getattr(self, option) < 1:
                raise SpiralError(f"must be at least 1 (got {getattr(self, option)})", option=option)
        for option in ("patience", "save_every"):
            if getattr(self, option) < 0:
                raise SpiralError(f"must be 0 (off) or more (got {getattr(self, option)})", option=option)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise SpiralError(f"must be a positive number (got {self.lr})", option="lr")
        if self.lr_schedule not in LR_SCHEDULES:
            raise SpiralError(
                f"must be one of {', '.join(LR_SCHEDULES)} (got {self.lr_schedule!r})", option="lr_schedule"
            )
        for option, choices in (("normalize", NORMALIZE), ("class_weight", CLASS_WEIGHTS)):
            if getattr(self, option) not in choices:
                raise SpiralError(
                    f"must be one of {', '.join(choices)} (got {getattr(self, option)!r})", option=option
                )
        check_seed(self.seed)

    def learning_rate(self, step: int, total_steps: int) -> float:
        """The rate of the `step`-th update (from 1) of `total_steps`: a function of the step alone."""
        if self.lr_schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / max(total_steps, 1)))
        return self.lr


# What a run's checkpoint fixes: a resume cannot change these.
FIXED_ON_RESUME = ("batch_size", "hidden", "lr", "seed", "lr_schedule")


@dataclass(frozen=True)
class InferenceOptions:
    """How eval, predict and plot run a model."""

    device: str = "auto"
    batch_size: int = 128
    threshold: float = 0.5

    def check(self) -> None:
        if self.batch_size < 1:
            raise SpiralError(f"must be at least 1 (got {self.batch_size})", option="batch_size")
        if not 0 < self.threshold < 1:
            raise SpiralError(f"must be between 0 and 1 (got {self.threshold})", option="threshold")


# Options that define a run, as config.json stores them (the names of train's options).
RUN_OPTIONS = ("data", "device", *(f.name for f in fields(TrainConfig)))


def run_options(config: TrainConfig, data_dir: Path | str | None, device: str) -> dict:
    """config.json's content: every option of the run, so that `train --config` repeats it."""
    return {"data": None if data_dir is None else str(data_dir), "device": device, **asdict(config)}


def load_run_options(path: Path) -> dict:
    """Read a config.json for `train --config`: a JSON object with some of RUN_OPTIONS."""
    path = Path(path)
    try:
        options = json.loads(path.read_text())
    except OSError as exc:
        raise SpiralError(f"{path}: cannot read it ({exc.strerror})", option="config") from None
    except ValueError as exc:
        raise SpiralError(f"{path}: not valid JSON ({exc})", option="config") from None
    if not isinstance(options, dict):
        raise SpiralError(f"{path}: must hold a JSON object of train options", option="config")
    unknown = sorted(set(options) - set(RUN_OPTIONS))
    if unknown:
        raise SpiralError(
            f"{path}: unknown option {unknown[0]!r}; known: {', '.join(RUN_OPTIONS)}", option="config"
        )
    defaults = run_options(TrainConfig(), None, "auto")
    for key, value in options.items():
        expected = type(defaults[key]) if defaults[key] is not None else str
        ok = (
            (value is None and key == "data")
            or (expected is float and isinstance(value, (int, float)) and not isinstance(value, bool))
            or (type(value) is expected)
        )
        if not ok:
            article = "an" if expected.__name__[0] in "aeiou" else "a"
            raise SpiralError(
                f"{path}: {key!r} must be {article} {expected.__name__} (got {value!r})", option="config"
            )
    for key, known in (
        ("lr_schedule", LR_SCHEDULES),
        ("normalize", NORMALIZE),
        ("class_weight", CLASS_WEIGHTS),
    ):
        if options.get(key, known[0]) not in known:
            raise SpiralError(
                f"{path}: {key!r} must be one of {', '.join(known)} (got {options[key]!r})", option="config"
            )
    return {k: float(v) if k == "lr" else v for k, v in options.items()}
