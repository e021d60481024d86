"""The settings of a training run and of inference, and a run's config.json."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
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
class LrSegment:
    """One cosine of a cosine schedule: the steps after `start_step` up to `total_steps` (the
    run's step count where it reaches 0) go from `lr` down to 0. A run has one, from step 0 over
    all its steps, until a resume changes --epochs: that starts a new one (see TrainConfig)."""

    start_step: int
    total_steps: int
    lr: float

    def rate(self, step: int) -> float:
        """The rate of the `step`-th update (from 1) of the run, inside this segment."""
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * (step - 1 - self.start_step) / self.steps))

    @property
    def steps(self) -> int:
        return max(self.total_steps - self.start_step, 1)


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
    # a cosine run's segments, in order, once a resume changed its --epochs (empty: one cosine
    # from lr down to 0 over all steps); a run's history, not an option of train's command line
    lr_segments: tuple[LrSegment, ...] = ()

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
        check_segments(self.lr_segments, self.lr_schedule)

    def learning_rate(self, step: int, total_steps: int) -> float:
        """The rate of the `step`-th update (from 1) of `total_steps`: a function of the step alone.

        cosine: from lr down to 0 over all steps; with lr_segments, the segment the step is in
        (the last one starting before it) gives the rate."""
        if self.lr_schedule == "cosine":
            if not self.lr_segments:
                return self.lr * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / max(total_steps, 1)))
            inside = (s for s in reversed(self.lr_segments) if s.start_step < step)
            return next(inside, self.lr_segments[0]).rate(step)
        return self.lr

    def resumed(self, segments: tuple[LrSegment, ...], steps_taken: int, total_steps: int) -> TrainConfig:
        """This config for a run resumed after `steps_taken` steps, to end after `total_steps`:
        `segments` is the cosine schedule the run followed so far (its first segment, from
        step 0, included).

        A cosine run whose end moves (another --epochs on resume) gets a new segment: from the
        run's lr at the next step down to 0 at the new end (a warm restart; see the README). The
        segments already run stay as they were, so that a resume inside the new segment goes on
        exactly as one run would. A run whose end stays where it was keeps its schedule."""
        if self.lr_schedule != "cosine":
            return replace(self, lr_segments=())
        if segments[-1].total_steps != total_steps:
            kept = tuple(s for s in segments if s.start_step < steps_taken or s.start_step == 0)
            segments = (*kept, LrSegment(steps_taken, total_steps, self.lr))
        if segments == (LrSegment(0, total_steps, self.lr),):
            segments = ()  # one cosine over all steps: the plain schedule, stored as it always was
        return replace(self, lr_segments=tuple(segments))

    def check_steps(self, total_steps: int) -> None:
        """A run's segments must end where the run does."""
        if self.lr_segments and self.lr_segments[-1].total_steps != total_steps:
            raise SpiralError(
                f"the lr_segments end after step {self.lr_segments[-1].total_steps}, and this run has "
                f"{total_steps} steps ({{epochs}} {self.epochs}); the segments belong to another run: "
                "leave them out to train with one cosine over all steps"
            )


def check_segments(segments: tuple[LrSegment, ...], schedule: str, where: str = "") -> None:
    """A cosine run's segments: the first from step 0, each starting after the one before and
    ending after its start, each from a positive rate."""
    if not segments:
        return
    what = f"{where}lr_segments"
    if schedule != "cosine":
        raise SpiralError(f"{what}: only a cosine schedule has segments (this run's is {schedule})")
    previous = -1
    for segment in segments:
        ok = (
            type(segment.start_step) is int
            and type(segment.total_steps) is int
            and isinstance(segment.lr, (int, float))
            and not isinstance(segment.lr, bool)
            and math.isfinite(segment.lr)
            and segment.lr > 0
            and segment.start_step > previous
            and segment.total_steps > segment.start_step
        )
        if not ok or (previous < 0 and segment.start_step != 0):
            raise SpiralError(
                f"{what}: {segment_record(segment)} is not a segment of a cosine run (each starts "
                "after the one before, the first at step 0, and ends after its start, from a positive lr)"
            )
        previous = segment.start_step


def segment_record(segment: LrSegment) -> dict:
    return {"start_step": segment.start_step, "total_steps": segment.total_steps, "lr": segment.lr}


def parse_segments(value: object, where: str) -> tuple[LrSegment, ...]:
    """lr_segments as config.json and a checkpoint's training config store them: a list of
    {"start_step", "total_steps", "lr"}."""
    keys = {"start_step", "total_steps", "lr"}
    if not isinstance(value, list) or not all(isinstance(v, dict) and set(v) == keys for v in value):
        raise SpiralError(f"{where}lr_segments must be a list of {{start_step, total_steps, lr}} objects")
    segments = []
    for v in value:
        lr = v["lr"]
        if isinstance(lr, bool) or not isinstance(lr, (int, float)):
            raise SpiralError(f"{where}lr_segments: lr must be a number (got {lr!r})")
        segments.append(LrSegment(v["start_step"], v["total_steps"], float(lr)))
    return tuple(segments)


def config_record(config: TrainConfig) -> dict:
    """The config as config.json and a checkpoint store it: every field, lr_segments only where
    a resume made some (so that every other run's files stay as they were)."""
    record = asdict(config)
    segments = record.pop("lr_segments")
    if segments:
        record["lr_segments"] = [segment_record(s) for s in config.lr_segments]
    return record


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
RUN_OPTIONS = ("data", "device", *(f.name for f in fields(TrainConfig) if f.name != "lr_segments"))


def run_options(config: TrainConfig, data_dir: Path | str | None, device: str) -> dict:
    """config.json's content: every option of the run, so that `train --config` repeats it, and
    the segments of an extended cosine run (its history: see TrainConfig.lr_segments)."""
    return {"data": None if data_dir is None else str(data_dir), "device": device, **config_record(config)}


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
    unknown = sorted(set(options) - {*RUN_OPTIONS, "lr_segments"})
    if unknown:
        raise SpiralError(
            f"{path}: unknown option {unknown[0]!r}; known: {', '.join(RUN_OPTIONS)}", option="config"
        )
    defaults = run_options(TrainConfig(), None, "auto")
    if "lr_segments" in options:
        segments = parse_segments(options["lr_segments"], f"{path}: ")
        check_segments(segments, options.get("lr_schedule", "constant"), f"{path}: ")
    for key, value in options.items():
        if key == "lr_segments":
            continue
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
    options = {k: float(v) if k == "lr" else v for k, v in options.items()}
    if "lr_segments" in options:
        options["lr_segments"] = segments
    return options
