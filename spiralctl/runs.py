"""Run folders: where a training run writes (one training at a time), its config.json and metrics files."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from spiralctl.errors import SpiralError
from spiralctl.storage import atomic_output

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
# what a run writes besides its checkpoints
RUN_FILES = ("config.json", "metrics.jsonl", "metrics.csv", "loss.png", "accuracy.png", ".lock")
_CHECKPOINT = re.compile(r"(best|last|epoch-\d+)\.safetensors")


def next_run_dir(base: Path = Path("runs"), prefix: str = "train") -> Path:
    """runs/train-1, runs/train-2, ...: one past the highest number already there."""
    numbers = [
        int(m.group(1))
        for p in (base.iterdir() if base.is_dir() else [])
        if (m := re.fullmatch(rf"{prefix}-(\d+)", p.name))
    ]
    return base / f"{prefix}-{max(numbers, default=0) + 1}"


def checkpoints_in(folder: Path) -> list[str]:
    """The names of a run's checkpoints in `folder`."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if _CHECKPOINT.fullmatch(p.name))


def prepare_run_dir(run_dir: Path, exist_ok: bool) -> bool:
    """Make sure a new run can write into `run_dir`; returns whether this call created it.

    An existing folder with files needs `exist_ok`, and even then must hold nothing a run writes
    (checkpoints, config.json, metrics, plots): a new run never replaces a trained model (resume
    it instead), and a failed one removes only what it wrote.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise SpiralError(f"{run_dir} is a file; choose a folder for the run", option="out")
    existed = run_dir.exists()
    if existed and any(run_dir.iterdir()):
        # a run held there is said first: --exist-ok would not help
        held = checkpoints_in(run_dir) or [name for name in RUN_FILES[:-1] if (run_dir / name).exists()]
        if not exist_ok and not held:
            raise SpiralError(
                f"{run_dir} already exists; pass {{exist_ok}} to write into it, or choose another folder",
                option="out",
            )
        if held:
            raise SpiralError(
                f"{run_dir} holds a run ({', '.join(held)}); a new run does not replace it: "
                f"continue it with {{resume}} {run_dir / 'last.safetensors'}, choose another folder, "
                "or delete it first",
                option="out",
            )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpiralError(f"cannot create run folder {run_dir}: {exc.strerror}", option="out") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise SpiralError(
            f"cannot write into {run_dir} (permission denied); choose another folder", option="out"
        )
    return not existed


def remove_run(run_dir: Path, created: bool) -> None:
    """Undo a run that failed before saving any checkpoint: its own files, and the folder if this
    run created it and nothing else is in it. Nothing else is touched."""
    if checkpoints_in(run_dir):
        return
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    if created:
        try:
            run_dir.rmdir()
        except OSError:
            pass


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Only one training writes into a run folder at a time."""
    import fcntl

    try:
        handle = open(run_dir / ".lock", "w")
    except OSError as exc:
        raise SpiralError(f"cannot write into {run_dir}: {exc.strerror}; choose another folder") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SpiralError(
                f"{run_dir} is in use by another training; wait for it or choose another {{out}}"
            ) from None
        yield


def check_not_in_use(run_dir: Path) -> None:
    """Refuse at once a folder another training holds, before judging what is in it."""
    import fcntl

    lock = Path(run_dir) / ".lock"
    if not lock.is_file():
        return
    try:
        with open(lock) as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SpiralError(
            f"{run_dir} is in use by another training; wait for it or choose another {{out}}"
        ) from None
    except OSError:
        return


def remove_temporaries(run_dir: Path) -> None:
    """Remove the hidden temporary files (.NAME.XXXX.tmp) a killed run left; call under the lock."""
    for path in Path(run_dir).glob(".*.tmp"):
        path.unlink(missing_ok=True)


def write_config(run_dir: Path, options: dict) -> None:
    with atomic_output(run_dir / "config.json") as handle:
        handle.write((json.dumps(options, indent=2) + "\n").encode())


def _csv_row(metrics: dict) -> str:
    values = (metrics[c] for c in METRIC_COLUMNS)
    return ",".join(repr(v) if isinstance(v, float) else str(v) for v in values)


def metrics_hold(run_dir: Path, history: list[dict]) -> bool:
    """Do metrics.jsonl and metrics.csv hold exactly `history`?"""
    csv = Path(run_dir) / "metrics.csv"
    rows = csv.read_text().splitlines()[1:] if csv.exists() else []
    return read_metrics(run_dir) == history and rows == [_csv_row(m) for m in history]


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    """metrics.jsonl and metrics.csv holding exactly `history`, one line per epoch."""
    jsonl = "".join(json.dumps(m) + "\n" for m in history).encode()
    csv = CSV_HEADER + "".join(_csv_row(m) + "\n" for m in history).encode()
    for name, content in (("metrics.jsonl", jsonl), ("metrics.csv", csv)):
        with atomic_output(run_dir / name) as handle:
            handle.write(content)


def append_metrics(run_dir: Path, metrics: dict) -> None:
    """Add one epoch to metrics.jsonl and metrics.csv. Earlier lines are kept byte for byte: each
    file is copied with the new line into a temporary file that then replaces it, so a crash
    never leaves half a line."""
    for name, line in (("metrics.jsonl", json.dumps(metrics)), ("metrics.csv", _csv_row(metrics))):
        path = run_dir / name
        old = path.read_bytes() if path.exists() else b""
        if name == "metrics.csv" and not old:
            old = CSV_HEADER
        with atomic_output(path) as handle:
            handle.write(old + (line + "\n").encode())


def read_metrics(run_dir: Path) -> list[dict]:
    """Every epoch in a run folder's metrics.jsonl (all runs of it, resumes included); [] if none."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise SpiralError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return [json.loads(line) for line in lines if line.strip()]
    except ValueError:
        raise SpiralError(f"{path} is not JSON lines; it is damaged") from None


def resume_history(source_dir: Path, run_dir: Path, epoch: int, saved: dict) -> list[dict]:
    """The metrics a resume from a checkpoint of `epoch` continues: the source folder's epochs up
    to `epoch`, and the checkpoint's own record of `epoch` when the files lack it (a run stopped
    between saving the checkpoint and writing its metrics line).

    Refuses to continue in a folder whose run has gone past `epoch` (that would rewrite its
    history); branching into another folder is the way to start again from there.
    """
    history = read_metrics(source_dir)
    later = [m["epoch"] for m in history if m.get("epoch", 0) > epoch]
    if later and Path(run_dir).resolve() == Path(source_dir).resolve():
        raise SpiralError(
            f"the checkpoint is from epoch {epoch} but its run folder {source_dir} has gone on to "
            f"epoch {max(later)}; continuing there would rewrite that history: give {{out}} a new "
            "folder to branch a run from this checkpoint",
            option="resume",
        )
    kept = [m for m in history if m.get("epoch", 0) <= epoch]
    missing = not kept or kept[-1].get("epoch") != epoch
    if missing and saved.get("epoch") == epoch and all(c in saved for c in METRIC_COLUMNS):
        kept.append({c: saved[c] for c in METRIC_COLUMNS})
    return kept
