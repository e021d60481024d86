"""One function per command, each returning its result as a value.

The CLI parses options, calls one of these and renders what it returns. This is the only
place that resolves devices, loads checkpoints and switches the CPU kernels' threads on.
"""

from __future__ import annotations

import importlib
import itertools
import json
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from spiralctl.checkpoint import CHECKPOINT_FORMAT, Checkpoint, load_checkpoint, normalization_fields
from spiralctl.config import InferenceOptions, TrainConfig, run_options
from spiralctl.data import (
    DATASET_FORMATS,
    DataConfig,
    Dataset,
    available_memory,
    generate,
    load_dataset,
    load_training_data,
)
from spiralctl.devices import list_backends, resolve_device
from spiralctl.errors import EXIT_FAILURE, Interrupted, SpiralError, WriteFailed
from spiralctl.inputs import read_blocks, read_sequences
from spiralctl.kernels.layout import PackedBatch
from spiralctl.kernels.lstm import step_threads
from spiralctl.kernels.programs import cached_programs, save_programs
from spiralctl.kernels.step import step_bytes
from spiralctl.kernels.threads import available_cores, cpu_threads, is_cpu, thread_count
from spiralctl.kernels.workers import start_compile_workers, while_compiling
from spiralctl.model import ModelConfig, SpiralClassifier
from spiralctl.predictor import (
    Predictor,
    accuracy_by_length,
    classification_report,
    predicted_labels,
    probabilities,
)
from spiralctl.runs import (
    check_not_in_use,
    metrics_hold,
    next_run_dir,
    prepare_run_dir,
    read_metrics,
    remove_run,
    remove_temporaries,
    resume_history,
    run_lock,
    write_config,
    write_metrics,
)
from spiralctl.storage import CHECKSUM_KEY, LEGACY_CHECKSUM_KEY, check_output, read_safetensors
from spiralctl.trainer import (
    Diverged,
    ProgressCallback,
    StopOnSignal,
    check_resume,
    class_weights,
    fit,
    no_progress,
    resumed_schedule,
)

# numpy computes each float type's limits once, when first asked. Asked on a thread that flushes
# denormals to zero (kernels/threads.py: the training loop, and the background import that
# starts under it), it finds no subnormal numbers and warns "The value of the smallest subnormal
# ... is zero" on stderr (matplotlib asks on import). Asked here first, the limits are right.
for _type in (np.float32, np.float64, np.longdouble):
    np.finfo(_type)


def gen_data(config: DataConfig, out_dir: Path | str, force: bool = False) -> dict:
    """Generate a dataset and write its splits into `out_dir`; returns what was written."""
    from spiralctl.data import save_datasets

    if not str(out_dir).strip():
        raise SpiralError("OUT_DIR is empty; give the folder to write the dataset into")
    out_dir = Path(out_dir)
    datasets = generate(config)
    paths = save_datasets(out_dir, datasets, force=force)
    return {"out_dir": str(out_dir), "generator": asdict(config), "splits": _split_rows(datasets, paths)}


def _labelled_dataset(read, classes: list[str]) -> Dataset:
    """A file's labelled sequences (inputs.LabelledSequences) as one dataset with `classes`."""
    from spiralctl.data import label_indices, padded_sequences

    x, lengths = padded_sequences(read.sequences)
    y = label_indices(read.labels, classes, read.source, read.names, read.lines)
    return Dataset(x, y, {}, lengths)


def feature_order(given: list[str] | None, expected: list[str] | None, source: str) -> list[int] | None:
    """Where both name their features: the input's columns in the expected order (a long CSV's
    columns may come in any order), or an error naming both lists when the names differ. None
    where either has no names: the columns are taken in their order."""
    if given is None or expected is None:
        return None
    if sorted(given) != sorted(expected) or len(set(given)) != len(given):
        raise SpiralError(
            f"{source} has the features {', '.join(given)} but the data trained on has "
            f"{', '.join(expected)}; give columns named as those (in any order)"
        )
    return [given.index(name) for name in expected]


def _check_like(read, train, option: str) -> None:
    """A --test or --val file must have TRAIN's features (named ones are put in TRAIN's order),
    and no class that TRAIN lacks."""
    order = feature_order(read.features, train.features, read.source)
    if order is not None:
        read.sequences = [points[:, order] for points in read.sequences]
        read.features = list(train.features)
    depth, train_depth = read.sequences[0].shape[1], train.sequences[0].shape[1]
    if depth != train_depth:
        raise SpiralError(
            f"{read.source} has {depth} feature(s) per point and {train.source} has {train_depth}; "
            "give files of the same data",
            option=option,
        )
    trained = {label.strip().lower() for label in train.labels}  # classes TRAIN has sequences of
    extra = sorted({label for label in read.labels if label.strip().lower() not in trained})
    if extra:
        raise SpiralError(
            f"{read.source} holds class(es) {', '.join(map(repr, extra[:5]))} that {train.source} has no "
            "sequences of; a model cannot learn a class it never sees: add them to the training file "
            "or leave those sequences out",
            option=option,
        )


def import_dataset(
    source: str,
    out_dir: Path,
    *,
    labels: Path | None = None,
    test: str | None = None,
    val: str | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    force: bool = False,
    given: frozenset[str] = frozenset(),
) -> dict:
    """Labelled sequences from a file (any format inputs.read_labelled reads) or an archive set
    named ucr:NAME, as a dataset in `out_dir`: the official test split (`test`, or the archive's
    own) kept whole, validation from `val` or carved from `source` (stratified, seeded;
    val_fraction 0: none), the rest to train on; returns what was written."""
    from spiralctl.data import class_names, imported_datasets, label_indices, save_datasets
    from spiralctl.inputs import read_archive, read_labelled

    archive = source.lower().startswith("ucr:")
    for option, other, what in (("val_fraction", val, "--val"), ("test_fraction", test, "--test")):
        if option in given and (other is not None or (option == "test_fraction" and archive)):
            brought = f"{what} {other}" if other is not None else f"{source}'s official test split"
            raise SpiralError(
                f"carves a split from TRAIN, and {brought} is that split already; give one of the two",
                option=option,
            )
    if archive:
        if test is not None:
            raise SpiralError(
                f"{source} brings its own official test split; leave {{test}} out", option="test"
            )
        train_read, test_read = read_archive(source[4:])
    else:
        train_read = read_labelled(source, labels)
        test_read = read_labelled(test) if test is not None else None
    val_read = read_labelled(val) if val is not None else None
    inputs = int(train_read.sequences[0].shape[1])
    classes = class_names(
        train_read.labels,
        train_read.classes,
        inputs=inputs,
        features=train_read.features,
        where=train_read.source,
    )
    given = {}
    for split, read, option in (("test", test_read, "test"), ("val", val_read, "val")):
        if read is not None:
            _check_like(read, train_read, option)
            given[split] = _labelled_dataset(read, classes)
    datasets = imported_datasets(
        train_read.sequences,
        label_indices(train_read.labels, classes, train_read.source, train_read.names, train_read.lines),
        source,
        0.0 if val is not None else val_fraction,
        0.0 if test_read is not None else test_fraction,
        seed,
        classes=classes,
        features=train_read.features,
        given=given,
    )
    for data in datasets.values():  # where each split came from, for info and for a reader
        options = json.loads(data.metadata["imported"])
        options.update({k: Path(v).name for k, v in (("test", test), ("val", val)) if v})
        data.metadata["imported"] = json.dumps(options, sort_keys=True)
    paths = save_datasets(out_dir, datasets, force=force)
    return {
        "out_dir": str(out_dir),
        "source": str(source),
        "classes": classes,
        "features": train_read.features,
        "inputs": int(train_read.sequences[0].shape[1]),
        "splits": _split_rows(datasets, paths),
    }


def _split_rows(datasets: dict[str, Dataset], paths: list[Path]) -> list[dict]:
    rows = []
    for (split, d), path in zip(datasets.items(), paths):
        counts = np.bincount(d.y, minlength=len(d.classes))
        rows.append(
            {
                "split": split,
                "sequences": len(d),
                "classes": {name: int(n) for name, n in zip(d.classes, counts)},
                "length": d.length,
                "min_length": int(d.lengths.min()),
                "file": str(path),
            }
        )
    return rows


@dataclass
class LoadedModel:
    """A checkpoint's model on a working device, with what inference needs beside the weights."""

    model: SpiralClassifier
    checkpoint: Checkpoint

    @property
    def classes(self) -> list[str]:
        return self.checkpoint.classes

    @property
    def device(self) -> str:
        return self.model.device


def load_model(checkpoint_path: Path, device: str) -> LoadedModel:
    """A checkpoint's model on a working device."""
    checkpoint = load_checkpoint(checkpoint_path)
    device = resolve_device(device)
    _check_fits_kernels(device, checkpoint.model.hidden)
    return LoadedModel(SpiralClassifier(checkpoint.model, checkpoint.weights, device), checkpoint)


# ---- train


def _resumed_config(config: TrainConfig, resume: Checkpoint, given: frozenset[str]) -> TrainConfig:
    """`config` with what the checkpoint's run fixed; settings given that differ are an error."""
    saved = resume.train_config
    try:
        fixed = {
            "batch_size": int(saved["batch_size"]),
            "hidden": resume.model.hidden,
            "lr": float(saved["lr"]),
            "seed": int(saved["seed"]),
            "lr_schedule": str(saved.get("lr_schedule", "constant")),
            "normalize": str(saved.get("normalize", "auto")),
            "class_weight": str(saved.get("class_weight", "none")),
        }
    except (KeyError, TypeError, ValueError):
        raise SpiralError("the checkpoint's training config is incomplete", option="resume") from None
    changed = [name for name in fixed if name in given and getattr(config, name) != fixed[name]]
    if changed:
        said = ", ".join(
            f"{{{name}}} {getattr(config, name)} (the run has {fixed[name]})" for name in changed
        )
        raise SpiralError(
            f"a resumed run keeps the settings it was trained with; cannot change {said}: "
            "leave them out to continue, or start a new run",
            option="resume",
        )
    if fixed["lr_schedule"] == "cosine" and "epochs" in saved and "epochs" not in given:
        # without --epochs a cosine run goes on to its own end; another --epochs moves the end
        # and starts a new segment of the schedule (trainer.resumed_schedule)
        fixed["epochs"] = int(saved["epochs"])
    return replace(config, **fixed)


def _resume_data_dir(resume: Checkpoint) -> Path | None:
    """The data folder a checkpoint was trained on (None: the generated default)."""
    source = resume.train_config.get("data", "")
    return None if not source or source.startswith("generated:") else Path(source)


def _training_data(data_dir: Path | None, seed: int) -> tuple[Dataset, Dataset, str, list[str]]:
    """The train and val splits, a description of where they come from, and warnings."""
    if data_dir is None:
        splits = generate(DataConfig(seed=seed))
        generated = json.dumps(asdict(DataConfig(seed=seed)), sort_keys=True)
        return splits["train"], splits["val"], f"generated: {generated}", []
    data = load_training_data(data_dir)
    train, val, warnings = data.train, data.val, data.warnings
    if val is None:
        warnings.append(
            f"{data_dir} has no validation split (imported with --val-fraction 0): training on all of "
            "train.safetensors; the val loss and accuracy shown are measured on the training sequences, "
            "so best.safetensors is the epoch that fits them best, not one chosen by validation"
        )
        val = train
    return train, val, str(data_dir), warnings


def _fit_batch(config: TrainConfig, train: Dataset, device: str) -> tuple[TrainConfig, list[str]]:
    """Cap the batch at the training set's size (and say so), and refuse a step that cannot fit
    in memory."""
    notes = []
    if config.batch_size > len(train):
        notes.append(
            f"{{batch_size}} {config.batch_size} is more than the {len(train)} training sequences; "
            f"using {len(train)}"
        )
        config = replace(config, batch_size=len(train))

    inputs = train.x.shape[2]
    # the initial weights, the parameters, their gradients and Adam's two moments, in float32
    state = 5 * 4 * ModelConfig(inputs, config.hidden, len(train.classes)).parameter_count()

    def needed(batch: int) -> int:
        return state + step_bytes(PackedBatch(batch, train.length, inputs), config.hidden)

    available = available_memory()
    if not is_cpu(device) or available is None or needed(config.batch_size) <= available:
        return config, notes
    have = f"{_gib(available)} is available"
    if needed(1) > available:
        raise SpiralError(
            f"{config.hidden}: training on sequences of {train.length} points needs about "
            f"{_gib(needed(1))} of memory even at {{batch_size}} 1, and {have}; choose a smaller {{hidden}}",
            option="hidden",
        )
    fits, over = 1, config.batch_size  # the largest batch that fits: needed() grows with the batch
    while over - fits > 1:
        middle = (fits + over) // 2
        fits, over = (middle, over) if needed(middle) <= available else (fits, middle)
    raise SpiralError(
        f"{config.batch_size}: training at hidden {config.hidden} on sequences of {train.length} "
        f"points needs about {_gib(needed(config.batch_size))} of memory, and {have}; "
        f"choose {{batch_size}} {fits} or less, or a smaller {{hidden}}",
        option="batch_size",
    )


def _gib(size: int) -> str:
    """A number of bytes in GiB for a message: 22.9 GiB, 1,234.5 GiB, 2.7e+16 GiB."""
    gib = size / 2**30
    return f"{gib:,.1f} GiB" if gib < 1e6 else f"{gib:.1e} GiB"


def _check_resumable(resume_path: Path, resume: Checkpoint) -> None:
    if not resume.optimizer:
        raise SpiralError(
            f"{resume_path} holds no optimizer state (spiralctl train did not save it), so it cannot "
            "be resumed; start a new run instead",
            option="resume",
        )


def _check_fits_kernels(device: str, hidden: int) -> None:
    """The GPU kernels keep a workgroup per column tile with a thread per hidden unit."""
    from spiralctl.kernels.family import kernel_family
    from spiralctl.kernels.gpu import MAX_BLOCK

    if kernel_family(device).name == "gpu" and hidden > MAX_BLOCK:
        raise SpiralError(
            f"{hidden} is more than the {MAX_BLOCK} hidden units the GPU kernels handle on {device}; "
            "use a smaller model, or {device} cpu",
            option="hidden",
        )


def _carry_best(resume: Checkpoint, resume_path: Path, source_dir: Path, run_dir: Path) -> None:
    """A branched run starts with the best checkpoint its history names (the source run's best,
    or the resumed checkpoint itself when that was the best epoch), so best.safetensors exists."""
    from spiralctl.storage import atomic_output

    best_epoch = int(resume.metrics.get("best_epoch", resume.epoch))
    for candidate in (source_dir / "best.safetensors", Path(resume_path)):
        if not candidate.is_file():
            continue
        held = load_checkpoint(candidate)
        if held.epoch == best_epoch and not held.metrics.get("partial_steps"):
            with atomic_output(run_dir / "best.safetensors") as handle:
                handle.write(candidate.read_bytes())
            return


def _failure(exc: BaseException, run_dir: Path, config: TrainConfig) -> SpiralError | None:
    """What a failed training says, with where it stands: the last good checkpoint and how to go on."""
    last = run_dir / "last.safetensors"
    if isinstance(exc, Diverged):
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written"
        return Diverged(f"{exc.message}; {kept}; try a smaller {{lr}} (now {config.lr})")
    if isinstance(exc, (OSError, WriteFailed)):  # a full disk, a folder made read-only under the run
        what = (
            exc.message
            if isinstance(exc, WriteFailed)
            else f"cannot write {exc.filename or run_dir}: {exc.strerror}"
        )
        hint = (
            f"; the last good checkpoint is {last}: continue with {{resume}} {last}" if last.exists() else ""
        )
        return SpiralError(f"{what}{hint}", exit_code=EXIT_FAILURE)
    return None


def _training_started(on_progress: ProgressCallback, hook) -> ProgressCallback:
    """`on_progress` that ends `while_compiling`'s hook at the first step done: after it, a
    compile (validation's kernels) would start the import in the middle of the epochs."""

    def forward(event: str, info: dict) -> None:
        if event == "batch":
            hook.done()
        on_progress(event, info)

    return forward


def _saving_programs(on_progress: ProgressCallback) -> ProgressCallback:
    """`on_progress` that also saves the compiled programs after the first epoch (all of a
    run's kernels exist by then), so that a run killed later still leaves them cached."""
    saved = False

    def forward(event: str, info: dict) -> None:
        nonlocal saved
        if event == "epoch" and not saved:
            saved = True
            save_programs()
        on_progress(event, info)

    return forward


class _BackgroundImport:
    """Imports `module` (if it is installed) in a thread of its own, started by `start()` at a
    moment when the main thread waits (train: while the kernels compile; an import in a thread
    holds Python's lock, and during the training loop it made the epochs it overlapped 15 times
    slower). `join()` before use; a module never started is imported by whoever needs it."""

    def __init__(self, module: str) -> None:
        self.module, self.thread = module, None

    def start(self) -> None:
        def load() -> None:
            try:
                importlib.import_module(self.module)
            except Exception:  # noqa: BLE001 - whoever needs the module imports it again and says why
                pass

        if self.thread is None:
            self.thread = threading.Thread(target=load, name="spiralctl-import", daemon=True)
            self.thread.start()

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()


def train(
    config: TrainConfig,
    *,
    data_dir: Path | None = None,
    out: Path | None = None,
    exist_ok: bool = False,
    resume_path: Path | None = None,
    device: str = "auto",
    plots: bool = True,
    given: frozenset[str] = frozenset(),
    on_progress: ProgressCallback = no_progress,
) -> dict:
    """What `spiralctl train` does: load or generate data, set up the run folder (config.json,
    metrics files), fit, draw loss.png and accuracy.png (when matplotlib is there), summarise.

    `given` names the settings the user chose (not defaults): a resume refuses to change any
    of those its checkpoint fixes. A resume continues in the checkpoint's folder, or branches
    into `out` when given. Ctrl-C or SIGTERM from the start on stops the run at a resumable
    point (Interrupted); a run that fails before its first checkpoint leaves nothing behind.
    """
    started = time.perf_counter()
    resume = None
    if resume_path is not None:
        resume = load_checkpoint(resume_path)
        _check_resumable(resume_path, resume)
        config = _resumed_config(config, resume, given)
        if data_dir is None:  # the data the run was trained on, as the checkpoint records it
            data_dir = _resume_data_dir(resume)
    config.check()
    if resume is not None:
        check_resume(config, resume)  # before anything in a run folder is touched
    tinygrad_device = resolve_device(device)
    _check_fits_kernels(tinygrad_device, config.hidden)
    train_set, val_set, source, warnings = _training_data(data_dir, config.seed)
    for warning in warnings:
        on_progress("warning", {"message": warning})
    if resume is not None and resume.data_fingerprint and resume.data_fingerprint != train_set.fingerprint():
        raise SpiralError(
            f"{resume_path}: the training data differs from the data this run started on; "
            "give the same {data} (or none, if the run used the generated default)",
            option="resume",
        )
    if config.class_weight != "none":
        class_weights(config, train_set)  # a class without training sequences: an error before anything else
    config, notes = _fit_batch(config, train_set, tinygrad_device)
    if resume is not None:  # the schedule's segments, for config.json (fit makes the same)
        config = resumed_schedule(config, resume, math.ceil(len(train_set) / config.batch_size))
    if is_cpu(tinygrad_device):
        threads = thread_count()  # a bad SPIRALCTL_THREADS is an error before anything is written
        if threads > (cores := available_cores()):
            notes.append(
                f"SPIRALCTL_THREADS={threads} is more than the {cores} cores this process may use; "
                "the threads share them"
            )
    if out is not None and not str(out).strip():
        raise SpiralError("is empty; give a folder for the run", option="out")
    source_dir = Path(resume_path).parent if resume_path is not None else None
    run_dir = Path(out) if out is not None else source_dir if source_dir is not None else next_run_dir()
    check_not_in_use(run_dir)
    continues = source_dir is not None and run_dir.resolve() == source_dir.resolve()
    history = resume_history(source_dir, run_dir, resume.epoch, resume.metrics) if resume else []
    # before any thread starts, so that the workers can be forked
    start_compile_workers(tinygrad_device)
    # matplotlib (0.4 s of a cold seed run) loads in the background while the kernels compile
    loading = _BackgroundImport("matplotlib.figure") if plots else None
    try:
        with StopOnSignal() as stop:  # from here on a signal stops the run at a resumable point
            created = False if continues else prepare_run_dir(run_dir, exist_ok)
            for note in notes:
                on_progress("note", {"message": note})
            with run_lock(run_dir):
                remove_temporaries(run_dir)  # what a killed run left half-written
                try:
                    write_config(run_dir, run_options(config, data_dir, device))
                    if not continues or not metrics_hold(run_dir, history):
                        write_metrics(run_dir, history)
                    if resume is not None and not continues:
                        _carry_best(resume, resume_path, source_dir, run_dir)
                    importing = loading.start if loading is not None else lambda: None
                    with (
                        cpu_threads(tinygrad_device) as threads,
                        cached_programs(),
                        while_compiling(importing) as hook,
                    ):
                        result = fit(
                            train_set,
                            val_set,
                            config,
                            run_dir,
                            tinygrad_device,
                            resume=resume,
                            data_source=source,
                            threads=min(threads, step_threads(config.batch_size, config.hidden)),
                            stop=stop,
                            on_progress=_saving_programs(_training_started(on_progress, hook)),
                        )
                except BaseException as exc:
                    if not continues and not isinstance(exc, Interrupted):
                        remove_run(run_dir, created)
                    failure = _failure(exc, run_dir, config)
                    if failure is not None:
                        raise failure from None
                    raise
    except BaseException:
        if loading is not None:
            loading.join()  # not left importing while the interpreter exits
        raise
    history = read_metrics(run_dir)
    best, last = run_dir / "best.safetensors", run_dir / "last.safetensors"
    summary = {
        "run_dir": str(run_dir),
        "device": tinygrad_device,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "best": next((m for m in history if m.get("epoch") == result.best_epoch), {}),
        "last": result.last,
        "best_checkpoint": str(best) if best.exists() else None,
        "last_checkpoint": str(last),
        "config": str(run_dir / "config.json"),
        "metrics": str(run_dir / "metrics.csv"),
        "history": history,
        "plots": [],
        "warnings": warnings,
    }
    if plots:
        from spiralctl.plots import PlotsUnavailable, training_plots

        loading.join()  # the import lock makes plots wait anyway; this makes it explicit

        try:
            summary["plots"] = [str(path) for path in training_plots(history, run_dir)]
        except (PlotsUnavailable, WriteFailed) as exc:  # the run itself is done and saved
            summary["plots_unavailable"] = str(exc)
    summary["seconds"] = time.perf_counter() - started
    return summary


# ---- eval, predict, plot


@contextmanager
def _predictor(loaded: LoadedModel, options: InferenceOptions) -> Iterator[Predictor]:
    with cpu_threads(loaded.device), cached_programs():
        start_compile_workers(loaded.device)
        yield Predictor(loaded.model, options.batch_size, normalization=loaded.checkpoint.normalization)


def _check_threshold(loaded: LoadedModel, options: InferenceOptions, given: bool) -> None:
    """--threshold picks between two classes; with three or more the most probable one wins."""
    if given and len(loaded.classes) > 2:
        raise SpiralError(
            f"applies to two-class models; this one has {len(loaded.classes)} classes and predicts the "
            "most probable one: leave --threshold out",
            option="threshold",
        )


def _in_model_order(loaded: LoadedModel, block, source: str):
    """`block` (inputs.SequenceBlock) with its named columns in the order of the model's features."""
    order = feature_order(block.features, loaded.checkpoint.features, source)
    if order is not None and order != list(range(len(order))):
        block.x = np.ascontiguousarray(block.x[:, :, order])
    return block


def _check_inputs(loaded: LoadedModel, inputs: int, source: str) -> None:
    expected = loaded.checkpoint.model.input_size
    if inputs != expected:
        raise SpiralError(
            f"{source} has {inputs} feature(s) per point but the model takes {expected}"
            f"{' (' + ', '.join(loaded.checkpoint.features) + ')' if loaded.checkpoint.features else ''}; "
            "give data of the kind the model was trained on"
        )


def _evaluation_data(source: str, loaded: LoadedModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, lengths and true labels (indices into the model's classes) of a labelled file of any
    format predict reads."""
    from spiralctl.data import label_indices, padded_sequences
    from spiralctl.inputs import read_blocks

    blocks = list(read_blocks(source))
    if any(block.labels is None for block in blocks):
        raise SpiralError(
            f"{source} holds no labels to score against; give a dataset or a labelled file "
            "(a label column, .ts, the archive's text formats, or .npz with y), or use predict"
        )
    _check_inputs(loaded, blocks[0].x.shape[2], source)
    blocks = [_in_model_order(loaded, block, source) for block in blocks]
    x, lengths = padded_sequences([points for block in blocks for points in block.sequences()])
    names = [name for block in blocks for name in block.names]
    labels = [label for block in blocks for label in block.labels]
    return x, lengths, label_indices(labels, loaded.classes, source, names)


def evaluate(
    checkpoint_path: Path,
    data_path: Path,
    options: InferenceOptions = InferenceOptions(),
    threshold_given: bool = False,
    confusion_png: Path | None = None,
    force: bool = False,
) -> dict:
    """Loss, accuracy, balanced accuracy, macro F1, per-class scores, confusion matrix and
    accuracy by length of a checkpoint on a dataset or any labelled file; the confusion matrix
    also drawn into `confusion_png` when given."""
    options.check()
    if confusion_png is not None:
        from spiralctl.plots import require_matplotlib

        if Path(confusion_png).suffix.lower() != ".png":
            raise SpiralError(f"{confusion_png}: give a name ending in .png", option="confusion")
        check_output(Path(confusion_png), force, option="confusion")
        require_matplotlib()
    loaded = load_model(checkpoint_path, options.device)
    _check_threshold(loaded, options, threshold_given)
    warnings = []
    if Path(data_path).suffix.lower() == ".safetensors":
        data = load_dataset(data_path)
        _check_inputs(loaded, data.x.shape[2], str(data_path))
        order = feature_order(data.features, loaded.checkpoint.features, str(data_path))
        x, lengths = (data.x if order is None else data.x[:, :, order]), data.lengths
        y = _dataset_labels(data, loaded, str(data_path))
        if loaded.checkpoint.data_fingerprint and data.fingerprint() == loaded.checkpoint.data_fingerprint:
            warnings.append(
                f"{data_path} is the training split this model was trained on, so this accuracy says "
                "nothing about new data; evaluate on the val or test split"
            )
    else:
        x, lengths, y = _evaluation_data(str(data_path), loaded)
    with _predictor(loaded, options) as predictor:
        logits = predictor.logits(x, lengths)
    report = classification_report(logits, y, options.threshold, loaded.classes)
    report["by_length"] = accuracy_by_length(logits, y, lengths, options.threshold)
    predicted = np.asarray(report["confusion"]).sum(axis=0)
    if len(y) > 1 and np.count_nonzero(predicted) == 1 and len(np.unique(y)) > 1:
        only = report["classes"][int(np.argmax(predicted))]
        warnings.append(
            f"the model predicts {only!r} for every sequence of {data_path}: it tells the classes apart "
            "no better than a constant guess; try more epochs, another --lr or --hidden (a plain LSTM on "
            "its last hidden state often fails on long series like this)"
        )
    if confusion_png is not None:
        from spiralctl.plots import confusion_plot

        title = f"{Path(data_path).name}: accuracy {report['accuracy']:.3f}"
        report["confusion_png"] = str(
            confusion_plot(report["confusion"], report["classes"], confusion_png, title)
        )
    return {
        **report,
        "checkpoint": str(checkpoint_path),
        "data": str(data_path),
        "device": loaded.device,
        "warnings": warnings,
    }


def check_accuracy_bound(min_accuracy: float) -> None:
    if not 0 <= min_accuracy <= 1:  # NaN too
        raise SpiralError(f"must be between 0 and 1 (got {min_accuracy})", option="min_accuracy")


def check_min_accuracy(report: dict, min_accuracy: float) -> None:
    """For CI pipelines: a run failure (exit 1) when the evaluated accuracy is too low."""
    check_accuracy_bound(min_accuracy)
    if report["accuracy"] < min_accuracy:
        raise SpiralError(
            f"accuracy {report['accuracy']:.4f} on {report['data']} is below {{min_accuracy}} {min_accuracy}",
            exit_code=EXIT_FAILURE,
        )


@dataclass
class PredictionBlock:
    """The predictions for a block of an input's sequences, as arrays (no dict per row)."""

    names: list[str]
    points: np.ndarray  # int [n]
    probabilities: np.ndarray  # float32 [n, K]: every class's probability
    label: np.ndarray  # int [n]: the predicted class
    classes: list[str]
    true_label: list[str] | None = None  # the label the input gives, where it gives one

    def __len__(self) -> int:
        return len(self.names)

    @property
    def probability(self) -> np.ndarray:
        """The predicted class's probability, [n]."""
        return self.probabilities[np.arange(len(self.label)), self.label]

    def rows(self) -> Iterator[dict]:
        """One dict per sequence: sequence, points, label, probability (of that label), every
        class's probability (and true_label where the input gives one)."""
        classes = self.classes
        for i, (name, points, p, label, every) in enumerate(
            zip(
                self.names,
                self.points.tolist(),
                self.probability.tolist(),
                self.label.tolist(),
                self.probabilities.tolist(),
            )
        ):
            row = {"sequence": name, "points": points, "label": classes[label], "probability": p}
            row["probabilities"] = dict(zip(classes, every))
            if self.true_label is not None:
                row["true_label"] = self.true_label[i]
            yield row


def _dataset_labels(data: Dataset, loaded: LoadedModel, source: str) -> np.ndarray:
    """A dataset's labels as indices into the model's classes: as they are where the class
    names are the model's (the usual case, no lookup per sequence), else by name."""
    from spiralctl.data import label_indices

    if data.classes == loaded.classes:
        return data.y.astype(np.int64)
    return label_indices([data.classes[i] for i in data.y], loaded.classes, source)


def _true_names(labels: list[str] | None, loaded: LoadedModel) -> list[str] | None:
    """The input's labels as the model's class names where they name one (another case, or 0/1
    for the spirals), else as the input writes them: predict shows them, it does not need them."""
    if labels is None:
        return None
    from spiralctl.data import class_index

    names: dict[str, str] = {}
    for label in set(labels):
        index = class_index(label, loaded.classes)
        names[label] = label if index is None else loaded.classes[index]
    return [names[label] for label in labels]


def predict_blocks(
    checkpoint_path: Path,
    source: str,
    options: InferenceOptions = InferenceOptions(),
    block: int | None = None,
    threshold_given: bool = False,
) -> Iterator[PredictionBlock]:
    """Classify the sequences of `source` (see inputs.read_blocks) a block at a time, each block
    as soon as it is read and classified: memory is bounded by the block, not by the input."""
    options.check()
    blocks = read_blocks(source, block)
    first = next(blocks)  # a bad input is reported before the model is loaded
    loaded = load_model(checkpoint_path, options.device)
    _check_threshold(loaded, options, threshold_given)
    where = "stdin" if source == "-" else source
    _check_inputs(loaded, first.x.shape[2], where)  # the readers give every block of a file one D
    with _predictor(loaded, options) as predictor:
        for block in itertools.chain([first], blocks):
            block = _in_model_order(loaded, block, where)
            logits = predictor.logits(block.x, block.lengths)
            yield PredictionBlock(
                block.names,
                block.lengths,
                probabilities(logits),
                predicted_labels(logits, options.threshold),
                loaded.classes,
                _true_names(block.labels, loaded),
            )


def predict(checkpoint_path: Path, source: str, options: InferenceOptions = InferenceOptions()) -> list[dict]:
    """Classify every sequence in `source`; one dict per sequence (predict_blocks streams)."""
    return [row for block in predict_blocks(checkpoint_path, source, options) for row in block.rows()]


def classify(
    checkpoint_path: Path,
    names: list[str],
    sequences: list[np.ndarray],
    labels: list[str] | None = None,
    options: InferenceOptions = InferenceOptions(),
    threshold_given: bool = False,
) -> list[dict]:
    """One dict per sequence as PredictionBlock.rows gives them, for sequences already read."""
    options.check()
    loaded = load_model(checkpoint_path, options.device)
    _check_threshold(loaded, options, threshold_given)
    with _predictor(loaded, options) as predictor:
        logits = predictor.logits_ragged(sequences)
    lengths = np.array([len(seq) for seq in sequences], dtype=np.int64)
    block = PredictionBlock(
        names,
        lengths,
        probabilities(logits),
        predicted_labels(logits, options.threshold),
        loaded.classes,
        _true_names(labels, loaded),
    )
    return list(block.rows())


def plot(
    source: str,
    out: Path,
    checkpoint: Path | None = None,
    options: InferenceOptions = InferenceOptions(),
    limit: int = 36,
    force: bool = False,
    threshold_given: bool = False,
) -> dict:
    """The first `limit` sequences of `source` (anything predict reads) drawn into a PNG, coloured
    by label, or by a checkpoint's predictions with the mistakes marked."""
    from spiralctl.plots import require_matplotlib, sequence_plot

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise SpiralError(f"{out}: plots are PNG files; give a name ending in .png", option="output")
    check_output(out, force)
    if limit < 1:
        raise SpiralError(f"must be at least 1 (got {limit})", option="limit")
    replace(options, batch_size=1).check()
    require_matplotlib()  # say that matplotlib is missing before reading anything
    names, sequences, labels = read_sequences(source)
    total = len(sequences)
    names, sequences = names[:limit], sequences[:limit]
    labels = labels[:limit] if labels is not None else None
    predictions = None
    if checkpoint is not None:
        predictions = classify(checkpoint, names, sequences, labels, options, threshold_given)
    title = Path(source).name if source != "-" else "stdin"
    drawn = sequence_plot(sequences, names, out, labels, predictions, title=title)
    return {
        **drawn,
        "source": source,
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "total": total,
    }


# ---- export, info, devices


def export(checkpoint_path: Path, out: Path, force: bool = False) -> dict:
    """Write an ONNX model of a checkpoint; returns what was written."""
    from spiralctl.export import check_onnx_output, export_onnx

    check_onnx_output(Path(out), force)
    return export_onnx(load_checkpoint(checkpoint_path), str(checkpoint_path), Path(out))


def _parsed(value: str) -> object:
    """Metadata values are strings; the structured ones hold JSON."""
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return parsed if isinstance(parsed, (dict, list)) else value


def info(path: Path) -> dict:
    """Kind, format, tensors, configs and checksum status of a dataset or checkpoint file.

    The file gets every check that loading it gets; a damaged file raises SpiralError.
    """
    path = Path(path)
    tensors, metadata = read_safetensors(path)  # verifies the stored checksum
    fmt = metadata.get("format", "")
    report: dict = {
        "file": str(path),
        "bytes": path.stat().st_size,
        "format": fmt or None,
        "kind": "safetensors",
        "checksum": "verified" if {CHECKSUM_KEY, LEGACY_CHECKSUM_KEY} & set(metadata) else "none stored",
        "tensors": [
            {"name": name, "dtype": str(array.dtype), "shape": list(array.shape)}
            for name, array in tensors.items()
        ],
        "metadata": {
            k: _parsed(v) for k, v in metadata.items() if k not in (CHECKSUM_KEY, LEGACY_CHECKSUM_KEY)
        },
    }
    if fmt in DATASET_FORMATS:
        data = load_dataset(path)
        counts = np.bincount(data.y, minlength=len(data.classes))
        report.update(
            kind="dataset",
            sequences=len(data),
            inputs=int(data.x.shape[2]),
            features=data.features,
            length=data.length,
            min_length=int(data.lengths.min()),
            classes={name: int(counts[i]) for i, name in enumerate(data.classes)},
        )
    elif fmt == CHECKPOINT_FORMAT:
        checkpoint = load_checkpoint(path)
        normalization = checkpoint.normalization
        report.update(
            kind="checkpoint",
            epoch=checkpoint.epoch,
            partial_steps=int(checkpoint.metrics.get("partial_steps", 0)),
            hidden=checkpoint.model.hidden,
            inputs=checkpoint.model.input_size,
            features=checkpoint.features,
            classes=checkpoint.classes,
            normalization=None if normalization is None else normalization_fields(normalization),
            parameters=int(sum(w.size for w in checkpoint.weights.values())),
            resumable=bool(checkpoint.optimizer),
        )
    return report


def devices() -> dict:
    """Every backend, the tinygrad devices behind it, and whether each works here (and why not)."""
    return {"devices": [asdict(row) for row in list_backends()]}
