"""Training: TrainConfig, the jitted train step, and fit() with validation and checkpoints."""

from __future__ import annotations

import json
import math
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from tinygrad import Tensor, TinyJit

from spiralctl.checkpoint import Checkpoint, save_checkpoint
from spiralctl.data import Dataset, check_seed, padded_batches
from spiralctl.errors import EXIT_FAILURE, EXIT_INTERRUPTED, SpiralError
from spiralctl.files import atomic_output
from spiralctl.inference import Predictor, bce_with_logits, check_inference_options, classification_report
from spiralctl.model import PARAMETER_NAMES, ModelConfig, SpiralClassifier, init_parameters
from spiralctl.optim import BETAS, FusedAdam, adam_scalars
from spiralctl.staging import download, staging_tensor, upload
from spiralctl.step import step_gradients

# Optimizer steps per jitted call. The machinery runs several (one upload and one read for
# all of them), but tinygrad's first-call scheduling grows with the steps captured: on a
# 2-core CPU one step per call gave the shortest runs (first epoch 2.8 s instead of 7.6 s).
STEPS_PER_CALL = 1


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

    def check(self) -> None:
        for option, value in (
            ("--epochs", self.epochs),
            ("--batch-size", self.batch_size),
            ("--hidden", self.hidden),
        ):
            if value < 1:
                raise SpiralError(f"{option} must be at least 1 (got {value})")
        for option, value in (("--patience", self.patience), ("--save-every", self.save_every)):
            if value < 0:
                raise SpiralError(f"{option} must be 0 (off) or more (got {value})")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise SpiralError(f"--lr must be a positive number (got {self.lr})")
        check_seed(self.seed)
        if self.lr_schedule not in LR_SCHEDULES:
            raise SpiralError(
                f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)} (got {self.lr_schedule!r})"
            )

    def learning_rate(self, step: int, total_steps: int) -> float:
        """The rate of the `step`-th update (from 1) of `total_steps`: a function of the step alone."""
        if self.lr_schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / max(total_steps, 1)))
        return self.lr


LR_SCHEDULES = ("constant", "cosine")


ProgressCallback = Callable[[str, dict], None]


def _no_progress(event: str, info: dict) -> None:
    pass


def next_run_dir(base: Path = Path("runs"), prefix: str = "train") -> Path:
    """runs/train-1, runs/train-2, ...: one past the highest number already there."""
    numbers = [
        int(m.group(1))
        for p in (base.iterdir() if base.is_dir() else [])
        if (m := re.fullmatch(rf"{prefix}-(\d+)", p.name))
    ]
    return base / f"{prefix}-{max(numbers, default=0) + 1}"


def prepare_run_dir(run_dir: Path, exist_ok: bool) -> Path:
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise SpiralError(f"--out {run_dir} is a file; choose a folder for the run")
    if run_dir.exists() and any(run_dir.iterdir()) and not exist_ok:
        raise SpiralError(
            f"--out {run_dir} already exists; pass --exist-ok to write into it, or choose another folder"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpiralError(f"cannot create run folder {run_dir}: {exc.strerror}") from exc
    return run_dir


class Trainer:
    """A model, its Adam optimizer and the jitted train step on one device."""

    def __init__(
        self, model: SpiralClassifier, config: TrainConfig, impl: str = "fused", autograd: bool = False
    ) -> None:
        """impl: the LSTM ("fused" or "reference"). The fused LSTM trains with the step kernels of
        spiralctl.step unless `autograd`; otherwise tinygrad's autograd differentiates the model."""
        self.model = model
        self.config = config
        self.impl = impl
        self.step_kernels = impl == "fused" and not autograd
        self.optimizer = FusedAdam([model.parameters[name] for name in PARAMETER_NAMES])
        self.step_count = 0
        self.total_steps = 1  # for the learning-rate schedule; fit() sets it
        self._jits: dict[tuple, TinyJit] = {}
        self._inputs: dict[tuple, Tensor] = {}

    def _train_steps(self, packed: Tensor, batch: int, steps: int) -> Tensor:
        """Run `packed.shape[0]` optimizer steps in one jitted call.

        Returns [steps, 2]: each step's mean loss and how many of its sequences were classified
        right, both from the forward pass that the step's gradients come from.

        Each row of `packed` holds one batch: its sequences [B, T, D], labels [B], mask [B]
        (1 for real rows, 0 for padding) and Adam's three step numbers, flattened into one
        buffer so that one copy uploads it.
        """
        size = packed.shape[1] - 2 * batch - 3
        one_step = self._kernel_step if self.step_kernels else self._autograd_step
        count = packed.shape[0]
        rows = [packed] if count == 1 else [packed[k : k + 1].contiguous() for k in range(count)]
        results = [one_step(row, batch, steps, size) for row in rows]
        return results[0] if len(results) == 1 else results[0].cat(*results[1:]).realize()

    def _kernel_step(self, row: Tensor, batch: int, steps: int, size: int) -> Tensor:
        """One step as the custom kernels of spiralctl.step (four for the loss and the gradients,
        one for Adam), all reading the packed row directly. Returns [1, 2]."""
        parameters = [self.model.parameters[name] for name in PARAMETER_NAMES]
        result, grads, sources = step_gradients(row, parameters, batch, steps, size // (batch * steps))
        # one schedule: Adam needs every gradient, so it runs after all the kernels that read
        # the old parameters, and the five kernels compile together
        Tensor.realize(result, *self.optimizer.update(grads, sources, row, offset=size + 2 * batch))
        return result

    def _autograd_step(self, row: Tensor, batch: int, steps: int, size: int) -> Tensor:
        """One step through tinygrad's autograd (the model's `impl` LSTM). Returns [1, 2]."""
        flat = row.reshape(-1)
        x = flat[:size].reshape(batch, steps, -1)
        y, mask, scalars = flat[size : size + batch], flat[size + batch : size + 2 * batch], flat[-3:]
        self.optimizer.zero_grad()
        logits = self.model(x, impl=self.impl)
        loss = (bce_with_logits(logits, y) * mask).sum() / mask.sum()
        correct = (((logits > 0).float() == y).float() * mask).sum()
        loss.backward()
        # the loss and the gradients in one schedule (the forward kernel then runs once),
        # before the update: the loss reported is this step's
        result = Tensor.stack(loss, correct).reshape(1, 2)
        Tensor.realize(result, *(p.grad for p in self.optimizer.params))
        Tensor.realize(*self.optimizer.step(scalars))
        return result

    def steps(self, x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """x: [K, B, T, D], y and mask: [K, B]. Uploads once, runs K steps, reads the results once.

        Returns float32[K, 2]: per step the mean loss and the count of right answers.
        """
        count, batch, steps = x.shape[:3]
        scalars = np.stack(
            [
                adam_scalars(self.learning_rate(self.step_count + k + 1), self.step_count + k + 1)
                for k in range(count)
            ]
        )
        packed = np.concatenate([x.reshape(count, -1), y.reshape(count, batch), mask, scalars], axis=1)
        key = x.shape
        if key not in self._jits:
            self._inputs[key] = staging_tensor(packed.shape, self.model.device)
            self._jits[key] = TinyJit(self._train_steps)
        results = self._jits[key](upload(self._inputs[key], packed), batch, steps)
        self.step_count += count
        return download(results)

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

    def load_optimizer_state(self, state: dict[str, np.ndarray], source: Path) -> None:
        needed = ["step"] + [f"{n}.{s}" for n in PARAMETER_NAMES for s in ("exp_avg", "exp_avg_sq")]
        missing = [k for k in needed if k not in state]
        if missing:
            raise SpiralError(f"{source}: no optimizer state to resume from (missing optimizer.{missing[0]})")
        self.step_count = int(state["step"].reshape(-1)[0])
        self.optimizer.load(
            [state[f"{n}.exp_avg"] for n in PARAMETER_NAMES],
            [state[f"{n}.exp_avg_sq"] for n in PARAMETER_NAMES],
        )


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffle of epoch `epoch`: a function of the seed and the epoch alone, so resume is exact."""
    return np.random.default_rng([seed, epoch]).permutation(n)


@dataclass
class FitResult:
    run_dir: Path
    epochs_run: int
    history: list[dict]
    best: dict
    last: dict
    stopped_early: bool = False


class _StopOnSignal:
    """While training, Ctrl-C and SIGTERM ask the loop to stop after the current step."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def error(self, where: str, run_dir: Path, epochs: int) -> SpiralError:
        checkpoint = run_dir / "last.safetensors"
        return SpiralError(
            f"{signal.Signals(self.received).name}: stopped {where}; saved {checkpoint}; "
            f"continue with: spiralctl train --resume {checkpoint} --epochs {epochs}",
            exit_code=EXIT_INTERRUPTED,
        )

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def fit(
    train: Dataset,
    val: Dataset,
    config: TrainConfig,
    run_dir: Path,
    device: str,
    *,
    resume: Checkpoint | None = None,
    data_source: str = "",
    impl: str = "fused",
    on_progress: ProgressCallback = _no_progress,
) -> FitResult:
    """Train for `config.epochs` epochs in total, validating and checkpointing after each one.

    Stops early when `config.patience` epochs in a row bring no better validation loss.
    Ctrl-C or SIGTERM finishes the current step, saves last.safetensors (with the position
    inside the epoch, so --resume continues exactly there) and raises SpiralError (exit 130).
    """
    config.check()
    run_dir = Path(run_dir)
    model_config = ModelConfig(input_size=2, hidden=config.hidden)
    weights = resume.weights if resume else init_parameters(model_config, config.seed)
    model = SpiralClassifier(model_config, weights, device)
    trainer = Trainer(model, config, impl=impl)
    n, batch = len(train), config.batch_size
    batches = math.ceil(n / batch)
    trainer.total_steps = config.epochs * batches
    start_epoch, skip_steps, partial = 0, 0, np.zeros(2)
    best_val_loss, best_epoch = math.inf, 0
    last_metrics: dict = {}
    if resume is not None:
        trainer.load_optimizer_state(resume.optimizer, run_dir / "last.safetensors")
        start_epoch = resume.epoch
        saved = resume.metrics
        best_val_loss = float(saved.get("best_val_loss", math.inf))
        best_epoch = int(saved.get("best_epoch", start_epoch))
        skip_steps = int(saved.get("partial_steps", 0))
        partial = np.array([saved.get("partial_loss_sum", 0.0), saved.get("partial_correct", 0.0)])
        last_metrics = {k: v for k, v in saved.items() if not k.startswith("partial_")}
        check_resume(config, resume)
    predictor = Predictor(model, config.batch_size)
    fingerprint = train.fingerprint()
    train_record = {**asdict(config), "device": device, "data": data_source, "impl": impl}
    chunk = min(batches, STEPS_PER_CALL)

    def checkpoint(epoch: int, metrics: dict) -> Checkpoint:
        return Checkpoint(
            model=model_config,
            weights=model.state_dict(),
            epoch=epoch,
            train_config=train_record,
            metrics={**metrics, "best_val_loss": best_val_loss, "best_epoch": best_epoch},
            data_fingerprint=fingerprint,
            optimizer=trainer.optimizer_state(),
        )

    def save(name: str, saved: Checkpoint) -> None:
        save_checkpoint(run_dir / name, saved)
        on_progress("checkpoint", {"path": str(run_dir / name), "epoch": saved.epoch})

    on_progress(
        "start",
        {
            "epochs": config.epochs,
            "start_epoch": start_epoch,
            "batches": batches,
            "train": n,
            "val": len(val),
            "device": device,
            "threads": model.threads,
            "run_dir": str(run_dir),
            "config": asdict(config),
            "data": data_source,
            "parameters": int(sum(w.size for w in weights.values())),
        },
    )
    history: list[dict] = []
    best: dict = {}
    stopped_early = False
    if resume is None:  # a fresh run starts its own metrics files; a resumed one appends
        start_metrics(run_dir)
    with _StopOnSignal() as stop:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            order = epoch_order(config.seed, epoch, n)
            started = time.perf_counter()
            index = np.stack([i for i, _ in padded_batches(n, batch, order)])
            mask = (np.arange(batches * batch).reshape(batches, batch) < n).astype(np.float32)
            xs, ys = train.x[index], train.y[index]
            sums, first_step = partial.copy(), skip_steps  # [loss sum, right answers]
            partial, skip_steps = np.zeros(2), 0
            for first in range(first_step, batches, chunk):
                done = min(first + chunk, batches)
                results = trainer.steps(xs[first:done], ys[first:done], mask[first:done])
                losses = results[:, 0]
                if not np.isfinite(losses).all():
                    kept = (
                        f"the last good checkpoint is {run_dir / 'last.safetensors'} (epoch {epoch - 1})"
                        if (run_dir / "last.safetensors").exists()
                        else "no checkpoint was written"
                    )
                    raise SpiralError(
                        f"training loss became {losses[~np.isfinite(losses)][0]} in epoch {epoch}; "
                        f"{kept}; try a smaller --lr (now {config.lr})",
                        exit_code=EXIT_FAILURE,
                    )
                sums += [float((losses * mask[first:done].sum(1)).sum()), float(results[:, 1].sum())]
                elapsed = time.perf_counter() - started
                on_progress(
                    "batch",
                    {
                        "epoch": epoch,
                        "batch": done,
                        "batches": batches,
                        "loss": float(losses[-1]),
                        "sequences_per_second": min((done - first_step) * batch, n) / max(elapsed, 1e-9),
                    },
                )
                if stop.received is not None and done < batches:
                    position = {
                        "partial_steps": done,
                        "partial_loss_sum": float(sums[0]),
                        "partial_correct": float(sums[1]),
                    }
                    save("last.safetensors", checkpoint(epoch - 1, {**last_metrics, **position}))
                    raise stop.error(
                        f"in epoch {epoch} after step {done} of {batches}", run_dir, config.epochs
                    )
            train_seconds = time.perf_counter() - started
            report = classification_report(predictor.logits(val.x), val.y)
            metrics = {
                "epoch": epoch,
                "train_loss": float(sums[0]) / n,
                "train_accuracy": float(sums[1]) / n,
                "val_loss": report["loss"],
                "val_accuracy": report["accuracy"],
                "lr": trainer.learning_rate(trainer.step_count),
                "train_seconds": train_seconds,
                "sequences_per_second": float(mask[first_step:].sum()) / train_seconds,
                "seconds": time.perf_counter() - started,
            }
            improved = metrics["val_loss"] < best_val_loss
            if improved:
                best_val_loss, best_epoch = metrics["val_loss"], epoch
            saved = checkpoint(epoch, metrics)
            save("last.safetensors", saved)
            if improved:
                save("best.safetensors", saved)
                best = metrics
            if config.save_every and epoch % config.save_every == 0:
                save(f"epoch-{epoch}.safetensors", saved)
            append_metrics(run_dir, metrics)
            history.append(metrics)
            last_metrics = metrics
            on_progress("epoch", {**metrics, "epochs": config.epochs, "best": improved})
            if config.patience and epoch - best_epoch >= config.patience and epoch < config.epochs:
                stopped_early = True
                on_progress(
                    "early_stop", {"epoch": epoch, "best_epoch": best_epoch, "patience": config.patience}
                )
                break
            if stop.received is not None and epoch < config.epochs:
                raise stop.error(f"after epoch {epoch}", run_dir, config.epochs)
    return FitResult(
        run_dir=run_dir,
        epochs_run=len(history),
        history=history,
        best=best,
        last=history[-1],
        stopped_early=stopped_early,
    )


def check_resume(config: TrainConfig, resume: Checkpoint) -> None:
    """Refuse to resume a run that has nothing left to do under `config`."""
    start_epoch = resume.epoch
    if start_epoch >= config.epochs:
        raise SpiralError(
            f"--epochs {config.epochs}: the checkpoint has already run {start_epoch} epochs; "
            f"ask for more than {start_epoch}"
        )
    best_epoch = int(resume.metrics.get("best_epoch", start_epoch))
    stopped_between_epochs = not resume.metrics.get("partial_steps")
    if config.patience and stopped_between_epochs and start_epoch - best_epoch >= config.patience:
        raise SpiralError(
            f"--patience {config.patience}: this run stopped early at epoch {start_epoch} "
            f"(best epoch {best_epoch}); pass a larger --patience, or --patience 0, to go on"
        )


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Only one training writes into a run folder at a time."""
    import fcntl

    with open(run_dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SpiralError(
                f"{run_dir} is in use by another training; wait for it or choose another --out"
            ) from None
        yield


# metrics.csv's columns: every number fit() records per epoch, in this order
METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "train_seconds",
    "sequences_per_second",
    "seconds",
)


CSV_HEADER = (",".join(METRIC_COLUMNS) + "\n").encode()


def start_metrics(run_dir: Path) -> None:
    """Empty metrics.jsonl and metrics.csv (with its header) for a fresh run."""
    for name, content in (("metrics.jsonl", b""), ("metrics.csv", CSV_HEADER)):
        with atomic_output(run_dir / name) as handle:
            handle.write(content)


def append_metrics(run_dir: Path, metrics: dict) -> None:
    """Add one epoch to metrics.jsonl and metrics.csv. Earlier lines are kept byte for byte: each
    file is copied with the new line into a temporary file that then replaces it, so a crash
    never leaves half a line."""
    row = ",".join(
        repr(metrics[c]) if isinstance(metrics[c], float) else str(metrics[c]) for c in METRIC_COLUMNS
    )
    for name, line in (("metrics.jsonl", json.dumps(metrics)), ("metrics.csv", row)):
        path = run_dir / name
        old = path.read_bytes() if path.exists() else b""
        if name == "metrics.csv" and not old:  # a run folder from before metrics.csv existed
            old = CSV_HEADER
        with atomic_output(path) as handle:
            handle.write(old + (line + "\n").encode())


def read_metrics(run_dir: Path) -> list[dict]:
    """Every epoch in a run folder's metrics.jsonl (all runs of it, resumes included)."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise SpiralError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return [json.loads(line) for line in lines if line.strip()]
    except ValueError:
        raise SpiralError(f"{path} is not JSON lines; it is damaged") from None


def train_job(
    config: TrainConfig,
    *,
    data_dir: Path | None = None,
    out: Path | None = None,
    exist_ok: bool = False,
    resume_path: Path | None = None,
    device: str = "auto",
    impl: str = "fused",
    plots: bool = True,
    on_progress: ProgressCallback = _no_progress,
) -> dict:
    """What `spiralctl train` does: load or generate data, set up the run folder, write its
    config.json, fit, draw loss.png and accuracy.png (when matplotlib is there), summarise."""
    from spiralctl.checkpoint import load_checkpoint
    from spiralctl.data import DataConfig, generate, load_training_data
    from spiralctl.devices import resolve_device

    started = time.perf_counter()
    resume = None
    if resume_path is not None:
        resume = load_checkpoint(resume_path)
        saved = resume.train_config
        try:
            # what defines the run comes from the checkpoint; how long and how to stop, from the caller
            config = TrainConfig(
                epochs=config.epochs,
                batch_size=int(saved["batch_size"]),
                hidden=resume.model.hidden,
                lr=float(saved["lr"]),
                seed=int(saved["seed"]),
                lr_schedule=str(saved.get("lr_schedule", "constant")),
                patience=config.patience,
                save_every=config.save_every,
            )
        except (KeyError, TypeError, ValueError):
            raise SpiralError(
                f"--resume {resume_path}: the checkpoint's training config is incomplete"
            ) from None
        out = Path(resume_path).parent
        exist_ok = True
        if data_dir is None:  # the data the run was trained on, as the checkpoint records it
            data_dir = resume_data_dir(resume)
    config.check()
    if resume is not None:
        check_resume(config, resume)  # before anything in the run folder is touched
    tinygrad_device = resolve_device(device)
    warnings: list[str] = []
    if data_dir is not None:
        data = load_training_data(data_dir)
        train, val, warnings = data.train, data.val, data.warnings
        for message in warnings:
            on_progress("warning", {"message": message})
        if train.length != val.length:
            raise SpiralError(f"--data {data_dir}: train and val sequences differ in length")
        source = str(data_dir)
    else:
        splits = generate(DataConfig(seed=config.seed))
        train, val = splits["train"], splits["val"]
        source = f"generated: {json.dumps(asdict(DataConfig(seed=config.seed)), sort_keys=True)}"
    if resume is not None and resume.data_fingerprint and resume.data_fingerprint != train.fingerprint():
        raise SpiralError(
            f"--resume {resume_path}: the training data differs from the data this run started on; "
            "give the same --data (or none, if the run used the generated default)"
        )
    run_dir = prepare_run_dir(out if out is not None else next_run_dir(), exist_ok)
    with run_lock(run_dir):
        with atomic_output(run_dir / "config.json") as handle:
            options = run_options(config, data_dir, device)
            handle.write((json.dumps(options, indent=2) + "\n").encode())
        result = fit(
            train,
            val,
            config,
            run_dir,
            tinygrad_device,
            resume=resume,
            data_source=source,
            impl=impl,
            on_progress=on_progress,
        )
    if not result.best and resume is not None:
        result.best = {k: v for k, v in resume.metrics.items() if k == "epoch" or k in result.last}
    summary = {
        "run_dir": str(result.run_dir),
        "device": tinygrad_device,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "best": result.best,
        "last": result.last,
        "best_checkpoint": str(result.run_dir / "best.safetensors"),
        "last_checkpoint": str(result.run_dir / "last.safetensors"),
        "config": str(result.run_dir / "config.json"),
        "metrics": str(result.run_dir / "metrics.csv"),
        "history": read_metrics(result.run_dir),
        "plots": [],
        "warnings": warnings,
    }
    if plots:
        from spiralctl.plots import PlotsUnavailable, training_plots

        try:
            summary["plots"] = [str(path) for path in training_plots(summary["history"], result.run_dir)]
        except PlotsUnavailable as exc:
            summary["plots_unavailable"] = str(exc)
    summary["seconds"] = time.perf_counter() - started
    return summary


# Options that define a run, as config.json stores them (the names of train's options).
RUN_OPTIONS = ("data", "device", *(f.name for f in fields(TrainConfig)))


def run_options(config: TrainConfig, data_dir: Path | str | None, device: str) -> dict:
    """config.json's content: every option of the run, so that `train --config` repeats it."""
    return {"data": None if data_dir is None else str(data_dir), "device": device, **asdict(config)}


def resume_data_dir(resume: Checkpoint) -> Path | None:
    """The --data a checkpoint was trained on (None: the generated default)."""
    source = resume.train_config.get("data", "")
    return None if not source or source.startswith("generated:") else Path(source)


def load_run_options(path: Path) -> dict:
    """Read a config.json for `train --config`: a JSON object with some of RUN_OPTIONS."""
    path = Path(path)
    try:
        options = json.loads(path.read_text())
    except OSError as exc:
        raise SpiralError(f"--config {path}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise SpiralError(f"--config {path}: not valid JSON ({exc})") from None
    if not isinstance(options, dict):
        raise SpiralError(f"--config {path}: must hold a JSON object of train options")
    unknown = sorted(set(options) - set(RUN_OPTIONS))
    if unknown:
        raise SpiralError(f"--config {path}: unknown option {unknown[0]!r}; known: {', '.join(RUN_OPTIONS)}")
    defaults = run_options(TrainConfig(), None, "auto")
    for key, value in options.items():
        expected = type(defaults[key]) if defaults[key] is not None else str
        ok = (
            (value is None and key == "data")
            or (expected is float and isinstance(value, (int, float)) and not isinstance(value, bool))
            or (type(value) is expected)
        )
        if not ok:
            raise SpiralError(f"--config {path}: {key!r} must be a {expected.__name__} (got {value!r})")
    return {k: float(v) if k == "lr" else v for k, v in options.items()}


def evaluate(
    checkpoint_path: Path,
    data_path: Path,
    device: str = "auto",
    batch_size: int = 128,
    threshold: float = 0.5,
) -> dict:
    """Loss, accuracy, per-class scores and confusion matrix of a checkpoint on a dataset file."""
    from spiralctl.checkpoint import load_checkpoint
    from spiralctl.data import load_dataset
    from spiralctl.devices import resolve_device

    check_inference_options(batch_size, threshold)
    checkpoint = load_checkpoint(checkpoint_path)
    data = load_dataset(data_path)
    tinygrad_device = resolve_device(device)
    model = SpiralClassifier(checkpoint.model, checkpoint.weights, tinygrad_device)
    report = classification_report(Predictor(model, batch_size).logits(data.x), data.y, threshold)
    return {
        **report,
        "checkpoint": str(checkpoint_path),
        "data": str(data_path),
        "device": tinygrad_device,
    }


def check_min_accuracy(report: dict, min_accuracy: float) -> None:
    """For CI pipelines: a run failure (exit 1) when the evaluated accuracy is too low."""
    if report["accuracy"] < min_accuracy:
        raise SpiralError(
            f"accuracy {report['accuracy']:.4f} on {report['data']} is below --min-accuracy {min_accuracy}",
            exit_code=EXIT_FAILURE,
        )
