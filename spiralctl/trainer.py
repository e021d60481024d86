"""Training: the jitted step (Trainer) and fit(), which runs epochs, validates and checkpoints.

fit() reads top to bottom: for each epoch, `train_epoch` runs the steps, `end_of_epoch`
validates and keeps score, and the checkpoints and metrics are written. A `ResumeState`
holds everything a checkpoint carries forward, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import functools
import math
import signal
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tinygrad import Tensor, TinyJit

from spiralctl.checkpoint import Checkpoint, save_checkpoint
from spiralctl.config import LrSegment, TrainConfig, check_segments, config_record, parse_segments
from spiralctl.data import Dataset, Normalization, epoch_order, feature_statistics, normalized, padded_batches
from spiralctl.errors import EXIT_FAILURE, Interrupted, SpiralError
from spiralctl.kernels.adam import BETAS, FusedAdam, adam_scalars
from spiralctl.kernels.layout import PackedBatch
from spiralctl.kernels.replay import direct_replay
from spiralctl.kernels.staging import download, staging_tensor, upload
from spiralctl.kernels.step import step_gradients
from spiralctl.model import PARAMETER_NAMES, ModelConfig, SpiralClassifier, init_parameters
from spiralctl.predictor import Predictor, classification_report
from spiralctl.runs import append_metrics

ProgressCallback = Callable[[str, dict], None]
# an untrained classifier's loss is ln K; a mean loss this many times above it is a diverged run
DIVERGED_FACTOR = 100


def uses_normalization(config: TrainConfig, train: Dataset) -> bool:
    """--normalize auto z-scores imported data and leaves generated spirals as they are."""
    if config.normalize == "auto":
        return "imported" in train.metadata
    return config.normalize == "on"


def class_weights(config: TrainConfig, train: Dataset) -> np.ndarray:
    """Each class's weight in the loss: 1 for all, or n / (K n_k) from the training split
    (--class-weight balanced; a class without training sequences is an error)."""
    k = len(train.classes)
    if config.class_weight == "none":
        return np.ones(k, dtype=np.float32)
    counts = np.bincount(train.y, minlength=k)
    if (counts == 0).any():
        missing = ", ".join(repr(train.classes[i]) for i in np.flatnonzero(counts == 0))
        raise SpiralError(
            f"balanced needs training sequences of every class, and {missing} has none; "
            "import data with every class in its training split, or use {class_weight} none",
            option="class_weight",
        )
    return (len(train) / (k * counts)).astype(np.float32)


def no_progress(event: str, info: dict) -> None:
    pass


class Trainer:
    """A model, its Adam optimizer and the jitted training step on one device."""

    def __init__(self, model: SpiralClassifier, config: TrainConfig, total_steps: int = 1) -> None:
        self.model = model
        self.config = config
        self.optimizer = FusedAdam(
            [model.parameters[name] for name in PARAMETER_NAMES], kernel=model.kernels.adam_kernel
        )
        self.step_count = 0
        self.total_steps = total_steps  # for the learning-rate schedule
        self._jits: dict[PackedBatch, TinyJit] = {}
        self._inputs: dict[PackedBatch, Tensor] = {}
        self._replays: dict[PackedBatch, tuple] = {}

    def _kernel_step(self, packed: Tensor, layout: PackedBatch) -> Tensor:
        """One step as the model's kernel family runs it (spiralctl.kernels.step: the loss and the
        gradients, then Adam), all reading the packed batch directly. Returns [1, 2]."""
        parameters = [self.model.parameters[name] for name in PARAMETER_NAMES]
        result, grads, sources = step_gradients(packed, parameters, layout, self.model.kernels)
        # one schedule: Adam needs every gradient, so it runs after all the kernels that read
        # the old parameters, and all the step's kernels compile together
        Tensor.realize(result, *self.optimizer.update(grads, sources, packed, offset=layout.scalars))
        return result

    def step(
        self, x: np.ndarray, y: np.ndarray, mask: np.ndarray, lengths: np.ndarray | None = None
    ) -> tuple[float, float]:
        """One optimizer step on x: [B, T, D], y and mask: [B] (each sequence's weight in the loss:
        0 for padding rows, 1 or its class's weight for real ones), lengths: [B] (points of each
        sequence, zero-padded past its end in x; default: all T).

        Returns the batch's mean loss and how many of its sequences were classified right, both
        from the forward pass that the step's gradients come from.
        """
        layout = PackedBatch(*x.shape)
        number = self.step_count + 1
        scalars = adam_scalars(self.learning_rate(number), number)
        packed = layout.pack(x, y, mask, scalars, lengths=lengths)
        if layout not in self._jits:
            self._inputs[layout] = staging_tensor((1, layout.size), self.model.device)
            self._jits[layout] = TinyJit(functools.partial(self._kernel_step, layout=layout))
        inputs = upload(self._inputs[layout], packed)
        if (replay := self._replays.get(layout)) is not None:
            replay[0]()  # the captured launches, called directly (kernels/replay.py)
            result = download(replay[1])
        else:
            returned = self._jits[layout](inputs)
            result = download(returned)
            if (launches := direct_replay(self._jits[layout], inputs)) is not None:
                self._replays[layout] = (launches, returned)
        self.step_count = number
        return float(result[0, 0]), float(result[0, 1])

    def learning_rate(self, step: int) -> float:
        return self.config.learning_rate(step, self.total_steps)

    def optimizer_state(self) -> dict[str, np.ndarray]:
        b1, b2 = BETAS
        state: dict[str, np.ndarray] = {
            "step": np.array([self.step_count], dtype=np.int64),
            "b1_power": np.array([b1**self.step_count], dtype=np.float32),
            "b2_power": np.array([b2**self.step_count], dtype=np.float32),
        }
        opt = self.optimizer
        for name, m, v in zip(PARAMETER_NAMES, opt.exp_avg, opt.exp_avg_sq):
            state[f"{name}.exp_avg"] = download(m)
            state[f"{name}.exp_avg_sq"] = download(v)
        return state

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        needed = ["step"] + [f"{n}.{s}" for n in PARAMETER_NAMES for s in ("exp_avg", "exp_avg_sq")]
        missing = [k for k in needed if k not in state]
        if missing:
            raise SpiralError(
                f"the checkpoint has no optimizer state to resume from (no optimizer.{missing[0]})"
            )
        self.step_count = int(state["step"].reshape(-1)[0])
        self.optimizer.load(
            [state[f"{n}.exp_avg"] for n in PARAMETER_NAMES],
            [state[f"{n}.exp_avg_sq"] for n in PARAMETER_NAMES],
        )


@dataclass(frozen=True)
class ResumeState:
    """Where a run stands: what a checkpoint carries into the next process."""

    epoch: int = 0  # epochs finished
    step: int = 0  # steps of the next epoch already taken (a run stopped inside an epoch)
    loss_sum: float = 0.0  # those steps' summed loss
    correct: float = 0.0  # and right answers
    best_val_loss: float = math.inf
    best_epoch: int = 0
    last: dict = field(default_factory=dict)  # the metrics of epoch `epoch`

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> ResumeState:
        saved = checkpoint.metrics
        return cls(
            epoch=checkpoint.epoch,
            step=int(saved.get("partial_steps", 0)),
            loss_sum=float(saved.get("partial_loss_sum", 0.0)),
            correct=float(saved.get("partial_correct", 0.0)),
            best_val_loss=float(saved.get("best_val_loss", math.inf)),
            best_epoch=int(saved.get("best_epoch", checkpoint.epoch)),
            last={
                k: v for k, v in saved.items() if not k.startswith("partial_") and not k.startswith("best_")
            },
        )

    def after_epoch(self, metrics: dict) -> tuple[ResumeState, bool]:
        """The state once an epoch with these metrics is done, and whether it is the best yet."""
        improved = metrics["val_loss"] < self.best_val_loss
        best = (metrics["val_loss"], metrics["epoch"]) if improved else (self.best_val_loss, self.best_epoch)
        return ResumeState(
            metrics["epoch"], best_val_loss=best[0], best_epoch=best[1], last=metrics
        ), improved

    def metrics(self) -> dict:
        """What a checkpoint stores of this state."""
        position = (
            {"partial_steps": self.step, "partial_loss_sum": self.loss_sum, "partial_correct": self.correct}
            if self.step
            else {}
        )
        return {**self.last, "best_val_loss": self.best_val_loss, "best_epoch": self.best_epoch, **position}


@dataclass
class FitResult:
    run_dir: Path
    epochs_run: int
    history: list[dict]
    best: dict
    last: dict
    best_epoch: int = 0
    stopped_early: bool = False


class StopOnSignal:
    """While training, Ctrl-C and SIGTERM ask the loop to stop after the current step."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Saver:
    """Writes a run's checkpoints: the model and optimizer as they are, with a state's metrics."""

    def __init__(
        self,
        run_dir: Path,
        model_config: ModelConfig,
        trainer: Trainer,
        record: dict,
        train: Dataset,
        normalization: Normalization | None,
    ) -> None:
        self.run_dir, self.model_config, self.trainer = run_dir, model_config, trainer
        self.record, self.fingerprint = record, train.fingerprint()
        self.classes, self.features, self.normalization = train.classes, train.features, normalization

    def save(self, names: list[str], state: ResumeState, on_progress: ProgressCallback) -> None:
        checkpoint = Checkpoint(
            model=self.model_config,
            weights=self.trainer.model.state_dict(),
            epoch=state.epoch,
            train_config=self.record,
            metrics=state.metrics(),
            data_fingerprint=self.fingerprint,
            optimizer=self.trainer.optimizer_state(),
            classes=self.classes,
            features=self.features,
            normalization=self.normalization,
        )
        for name in names:
            save_checkpoint(self.run_dir / name, checkpoint)
            on_progress("checkpoint", {"path": str(self.run_dir / name), "epoch": state.epoch})


class Diverged(SpiralError):
    """The loss became infinite, NaN or absurdly large: the run failed (exit code 1)."""

    def __init__(self, what: str) -> None:
        super().__init__(what, exit_code=EXIT_FAILURE)


def train_epoch(
    trainer: Trainer,
    data: Dataset,
    epoch: int,
    state: ResumeState,
    stop: StopOnSignal,
    on_progress: ProgressCallback,
    weights: np.ndarray | None = None,
) -> ResumeState:
    """The steps of `epoch` from state.step on. Returns the state after them: state.step is the
    number of steps taken (all of them unless a signal arrived), with their sums. `weights`
    gives each class's weight in the loss (default: 1 each)."""
    n, batch = len(data), trainer.config.batch_size
    batches = math.ceil(n / batch)
    index = np.stack([i for i, _ in padded_batches(n, batch, epoch_order(trainer.config.seed, epoch, n))])
    real = (np.arange(batches * batch).reshape(batches, batch) < n).astype(np.float32)
    # the kernels weigh each sequence's loss by its mask entry: 0 for padding rows
    mask = real if weights is None else real * weights[data.y[index]]
    started, first = time.perf_counter(), state.step
    sums, done = np.array([state.loss_sum, state.correct]), first
    for step in range(first, batches):
        rows = index[step]
        loss, right = trainer.step(data.x[rows], data.y[rows], mask[step], data.lengths[rows])
        if not math.isfinite(loss):
            raise Diverged(f"training loss became {loss} in epoch {epoch}")
        sums += [loss * mask[step].sum(), right]  # the batch's weighted mean loss times its weight
        done = step + 1
        on_progress(
            "batch",
            {
                "epoch": epoch,
                "batch": done,
                "batches": batches,
                "loss": loss,
                "sequences_per_second": min((done - first) * batch, n)
                / max(time.perf_counter() - started, 1e-9),
            },
        )
        if stop.received is not None and done < batches:
            break
    return replace(state, step=done, loss_sum=float(sums[0]), correct=float(sums[1]))


def end_of_epoch(
    trainer: Trainer, predictor: Predictor, val: Dataset, epoch: int, state: ResumeState, timing: dict
) -> dict:
    """The epoch's metrics: training loss and accuracy from its steps, validation on `val`."""
    n = timing["sequences"]
    report = classification_report(predictor.logits(val.x, val.lengths), val.y, classes=val.classes)
    metrics = {
        "epoch": epoch,
        "train_loss": state.loss_sum / n,
        "train_accuracy": state.correct / n,
        "val_loss": report["loss"],
        "val_accuracy": report["accuracy"],
        "lr": trainer.learning_rate(trainer.step_count),
        "train_seconds": timing["train_seconds"],
        "sequences_per_second": timing["trained"] / timing["train_seconds"],
        "seconds": time.perf_counter() - timing["started"],
    }
    counts = np.bincount(val.y, minlength=len(val.classes))
    if counts.min() != counts.max():  # unequal classes: plain accuracy flatters the largest
        metrics["val_balanced_accuracy"] = report["balanced_accuracy"]
    if not (math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_loss"])):
        raise Diverged(
            f"the loss became {metrics['train_loss']} (validation {metrics['val_loss']}) in epoch {epoch}"
        )
    untrained = math.log(len(val.classes))
    if max(metrics["train_loss"], metrics["val_loss"]) > DIVERGED_FACTOR * untrained:
        raise Diverged(
            f"training diverged: train loss {metrics['train_loss']:.4g}, validation loss "
            f"{metrics['val_loss']:.4g} in epoch {epoch} (an untrained model scores {untrained:.3f})"
        )
    return metrics


def checkpoint_names(config: TrainConfig, epoch: int, improved: bool) -> list[str]:
    """The files an epoch's checkpoint is saved as."""
    names = ["last.safetensors"] + (["best.safetensors"] if improved else [])
    if config.save_every and epoch % config.save_every == 0:
        names.append(f"epoch-{epoch}.safetensors")
    return names


def check_resume(config: TrainConfig, resume: Checkpoint) -> None:
    """Refuse to resume a run that has nothing left to do under `config`."""
    start_epoch = resume.epoch
    if start_epoch >= config.epochs:
        raise SpiralError(
            f"{config.epochs}: the checkpoint has already run {start_epoch} "
            f"epoch{'' if start_epoch == 1 else 's'}; ask for more than {start_epoch}",
            option="epochs",
        )
    best_epoch = int(resume.metrics.get("best_epoch", start_epoch))
    stopped_between_epochs = not resume.metrics.get("partial_steps")
    if config.patience and stopped_between_epochs and start_epoch - best_epoch >= config.patience:
        raise SpiralError(
            f"{config.patience}: this run stopped early at epoch {start_epoch} "
            f"(best epoch {best_epoch}); pass a larger {{patience}}, or {{patience}} 0, to go on",
            option="patience",
        )


def resumed_schedule(config: TrainConfig, resume: Checkpoint, batches: int) -> TrainConfig:
    """`config` with the learning-rate schedule of the run `resume` continues, `batches` steps an
    epoch: the segments its checkpoint holds (none: one cosine over the epochs it was started
    with), and a new one from the resumed step when `config.epochs` moves a cosine run's end
    (TrainConfig.resumed)."""
    if config.lr_schedule != "cosine":
        return replace(config, lr_segments=())
    saved = resume.train_config
    try:
        if "lr_segments" in saved:
            segments = parse_segments(saved["lr_segments"], "the checkpoint's training config: ")
            check_segments(segments, config.lr_schedule, "the checkpoint's training config: ")
        else:
            planned = int(saved.get("epochs", config.epochs))
            segments = (LrSegment(0, planned * batches, config.lr),)
    except SpiralError as exc:
        raise SpiralError(exc.message, option="resume") from None
    except (TypeError, ValueError):
        raise SpiralError("the checkpoint's training config is incomplete", option="resume") from None
    if "step" in resume.optimizer:
        steps = int(np.asarray(resume.optimizer["step"]).reshape(-1)[0])
    else:  # no optimizer state: load_optimizer_state refuses it
        steps = resume.epoch * batches + int(resume.metrics.get("partial_steps", 0))
    return config.resumed(segments, steps, config.epochs * batches)


def fit(
    train: Dataset,
    val: Dataset,
    config: TrainConfig,
    run_dir: Path,
    device: str,
    *,
    resume: Checkpoint | None = None,
    data_source: str = "",
    threads: int = 1,
    stop: StopOnSignal | None = None,
    on_progress: ProgressCallback = no_progress,
) -> FitResult:
    """Train for `config.epochs` epochs in total, validating and checkpointing after each one.

    Appends each epoch to the run folder's metrics files (which the caller has set up). Stops
    early when `config.patience` epochs in a row bring no better validation loss. Ctrl-C or
    SIGTERM finishes the current step, saves last.safetensors (with the position inside the
    epoch, so a resume continues exactly there) and raises Interrupted; `stop` is the caller's
    own handler when it installed one earlier (a signal before the first step then stops the
    run after that step).
    """
    config.check()
    run_dir = Path(run_dir)
    model_config = ModelConfig(input_size=train.x.shape[2], hidden=config.hidden, classes=len(train.classes))
    raw_train = train  # the data as stored: its fingerprint and names go into the checkpoints
    if resume is not None:
        statistics = resume.normalization  # exactly what the run started with
    else:
        statistics = feature_statistics(train) if uses_normalization(config, train) else None
    loss_weights = None if config.class_weight == "none" else class_weights(config, train)
    if statistics is not None:  # the training steps read normalised data; validation normalises its own
        train = Dataset(
            normalized(train.x, train.lengths, statistics), train.y, train.metadata, train.lengths
        )
    weights = resume.weights if resume else init_parameters(model_config, config.seed)
    model = SpiralClassifier(model_config, weights, device)
    n, batches = len(train), math.ceil(len(train) / config.batch_size)
    if resume is not None:
        check_resume(config, resume)
        config = resumed_schedule(config, resume, batches)
    config.check_steps(config.epochs * batches)
    trainer = Trainer(model, config, total_steps=config.epochs * batches)
    state = ResumeState()
    if resume is not None:
        trainer.load_optimizer_state(resume.optimizer)
        state = ResumeState.from_checkpoint(resume)
    # chunks of the training length: validation runs the forward kernel the training step compiled
    predictor = Predictor(model, config.batch_size, chunk=train.length, normalization=statistics)
    record = {**config_record(config), "device": device, "data": data_source}
    saver = _Saver(run_dir, model_config, trainer, record, raw_train, statistics)
    last_checkpoint = str(run_dir / "last.safetensors")
    on_progress(
        "start",
        {
            "epochs": config.epochs,
            "start_epoch": state.epoch,
            "batches": batches,
            "train": n,
            "val": len(val),
            "device": device,
            "threads": threads,
            "run_dir": str(run_dir),
            "config": config_record(config),
            "data": data_source,
            "parameters": int(sum(w.size for w in weights.values())),
            "classes": train.classes,
            "features": train.x.shape[2],
            "normalized": statistics is not None,
        },
    )
    history: list[dict] = []
    stopped_early = False
    with nullcontext(stop) if stop is not None else StopOnSignal() as stop:
        for epoch in range(state.epoch + 1, config.epochs + 1):
            started, first = time.perf_counter(), state.step
            stepped = train_epoch(trainer, train, epoch, state, stop, on_progress, loss_weights)
            if stepped.step < batches:  # a signal: save the position inside the epoch
                saver.save(["last.safetensors"], stepped, on_progress)
                where = f"in epoch {epoch} after step {stepped.step} of {batches}"
                raise Interrupted(stop.received, where, last_checkpoint, config.epochs)
            timing = {
                "started": started,
                "train_seconds": time.perf_counter() - started,
                "sequences": n,
                "trained": float(n - min(n, first * config.batch_size)),
            }
            metrics = end_of_epoch(trainer, predictor, val, epoch, stepped, timing)
            state, improved = state.after_epoch(metrics)
            # the checkpoints first: a resume restores a metrics line a checkpoint holds
            saver.save(checkpoint_names(config, epoch, improved), state, on_progress)
            append_metrics(run_dir, metrics)
            history.append(metrics)
            on_progress("epoch", {**metrics, "epochs": config.epochs, "best": improved})
            if config.patience and epoch - state.best_epoch >= config.patience and epoch < config.epochs:
                stopped_early = True
                info = {"epoch": epoch, "best_epoch": state.best_epoch, "patience": config.patience}
                on_progress("early_stop", info)
                break
            if stop.received is not None and epoch < config.epochs:
                raise Interrupted(stop.received, f"after epoch {epoch}", last_checkpoint, config.epochs)
    return FitResult(
        run_dir=run_dir,
        epochs_run=len(history),
        history=history,
        best=next((m for m in history if m["epoch"] == state.best_epoch), {}),
        last=history[-1],
        best_epoch=state.best_epoch,
        stopped_early=stopped_early,
    )
