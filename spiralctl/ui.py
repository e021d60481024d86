"""Rendering: Rich progress and tables on a console that is passed in, and JSON output."""

from __future__ import annotations

import itertools
import json
import json.encoder
import math
import os
import sys
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import IO

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from spiralctl.errors import OutputFailed, render_settings

# class colours in label order (the spirals: clockwise cyan, anticlockwise magenta)
CLASS_STYLES = ("cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan", "bright_magenta")


def styled(name: str, classes: list[str]) -> str:
    """A class name in its colour, escaped for Rich markup."""
    from rich.markup import escape

    style = CLASS_STYLES[classes.index(name) % len(CLASS_STYLES)] if name in classes else "default"
    return f"[{style}]{escape(name)}[/]"


# Output that is not a terminal (a file, a pipe) keeps every value whole: no wrapping at 80 columns.
# Tables are as wide as what they hold (none expands to the console's width); the tables of
# named values are `name: value` lines there (key_values).
PIPE_WIDTH = 10_000


def _to_devnull(fd: int) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def stdout_closed() -> None:
    """The reader of stdout went away (`| head`): send the rest to /dev/null and carry on, so a
    training in progress finishes and saves its checkpoints."""
    _to_devnull(sys.stdout.fileno())


def stderr_closed() -> None:
    """Standard error cannot be written (a full disk, a reader that went away): the rest goes to
    /dev/null, so that no later line, nor Python's last flush at exit, fails on it again."""
    with suppress(OSError, ValueError):
        _to_devnull(2)


def output_failed(file: IO[str] | None, exc: OSError) -> OutputFailed:
    """The error for a write to `file` that failed with `exc` (not a broken pipe). Standard
    output then goes to /dev/null, so that Python's last flush at exit does not fail again."""
    if file is None or file is sys.stdout or file is sys.__stdout__:
        stream = "standard output"
        stdout_closed()
    else:
        named = getattr(file, "name", "the output")
        stream = "standard error" if file in (sys.stderr, sys.__stderr__) else named
    return OutputFailed(stream, exc.strerror or str(exc))


def write_plain(file: IO[str], text: str, on_end: Callable[[], None]) -> None:
    """Write `text` to `file` and flush it. When the output is over for good, `on_end()` runs
    first: the reader of stdout went away (`| head`: the rest goes to /dev/null), or the write
    failed otherwise, which raises OutputFailed."""
    try:
        file.write(text)
        file.flush()
    except BrokenPipeError:
        on_end()
        stdout_closed()
    except OSError as exc:
        on_end()
        raise output_failed(file, exc) from None


class SpiralConsole(Console):
    """A Rich console that follows spiralctl's output rules: when the reader of stdout goes away
    (`| head`) the rest goes to /dev/null and the command goes on (Rich's own exits with 1), and a
    write that fails otherwise (a full disk) raises OutputFailed (one `error:` line, exit 1)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        stdout_closed()

    def _check_buffer(self) -> None:
        try:
            super()._check_buffer()
        except OSError as exc:  # Rich itself handles a broken pipe
            self.quiet = True
            raise output_failed(self.file, exc) from None


def make_console(stderr: bool = False, file: IO[str] | None = None) -> Console:
    console = SpiralConsole(stderr=stderr, file=file, highlight=False, soft_wrap=True)
    if not console.is_terminal:  # also when COLUMNS is set: a file or a pipe has no width
        console.width = PIPE_WIDTH
    return console


def print_json(console: Console, value: object) -> None:
    """One JSON object on one line, written as plain text (no Rich markup or wrapping)."""
    if console.quiet:
        return
    write_plain(console.file, json.dumps(value) + "\n", lambda: setattr(console, "quiet", True))


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def epoch_line(m: dict) -> str:
    return (
        f"epoch {m['epoch']}/{m['epochs']}  train loss {m['train_loss']:.4f}  val loss {m['val_loss']:.4f}  "
        f"val acc {m['val_accuracy']:.4f}  "
        + (f"val bal acc {m['val_balanced_accuracy']:.4f}  " if "val_balanced_accuracy" in m else "")
        + f"{m['sequences_per_second']:.0f} seq/s  {m['seconds']:.1f}s"
        + ("  *best" if m.get("best") else "")
    )


def trial_epoch_line(info: dict) -> str:
    """tune -v: an epoch of a trial, as it ends."""
    return (
        f"  trial {info['trial']} epoch {info['epoch']}/{info['epochs']}  val loss {info['val_loss']:.4f}  "
        f"val acc {info['val_accuracy']:.4f}"
    )


class TrainProgress:
    """Renders fit()'s progress events on stderr.

    In a terminal: a live bar over all batches with loss, validation accuracy, speed and time
    left, and one line that stays after each epoch. Elsewhere (a log file, CI): one plain line
    per epoch. Quiet: nothing. Verbose: also the settings, every step and every file saved.
    """

    def __init__(
        self,
        console: Console,
        quiet: bool = False,
        verbose: bool = False,
        setting: Callable[[str], str] = str,
    ) -> None:
        self.console = console
        self.quiet = quiet
        self.verbose = verbose and not quiet
        self.live = console.is_terminal and not quiet
        self.setting = setting  # how a setting named in a note is written
        self.progress: Progress | None = None
        self.task = None

    def __call__(self, event: str, info: dict) -> None:
        if event == "warning":
            warning(render_settings(info["message"], self.setting))
        if self.quiet:
            return
        if event == "note":
            self._line(f"note: {render_settings(info['message'], self.setting)}")
        if event == "start":
            self._start(info)
        elif event == "batch" and self.verbose and self.progress is None:
            self.console.print(
                f"  epoch {info['epoch']} step {info['batch']}/{info['batches']}  loss {info['loss']:.4f}  "
                f"{info['sequences_per_second']:.0f} seq/s",
                markup=False,
            )
        elif event == "checkpoint" and self.verbose:
            self._line(f"  saved {info['path']} (epoch {info['epoch']})")
        elif event == "early_stop":
            self._line(
                f"stopping early: no lower validation loss for {plural(info['patience'], 'epoch')} "
                f"(best epoch {info['best_epoch']})"
            )
        elif event == "batch" and self.progress is not None:
            self.progress.update(
                self.task,
                total=info["batches"],
                completed=info["batch"],
                loss=f"{info['loss']:.4f}",
                speed=f"{info['sequences_per_second']:.0f}",
                description=f"epoch {info['epoch']}/{self.epochs}",
            )
        elif event == "epoch":
            if self.progress is not None:
                self.progress.update(self.task, val_accuracy=f"{info['val_accuracy']:.3f}")
                self.progress.console.print(epoch_line(info))
            else:
                self.console.print(epoch_line(info), markup=False)

    def _line(self, text: str) -> None:
        (self.progress.console if self.progress is not None else self.console).print(text, markup=False)

    def _start(self, info: dict) -> None:
        self.epochs = info["epochs"]
        threads = info.get("threads", 1)
        device = f"{info['device']} ({threads} threads)" if threads > 1 else info["device"]
        self.console.print(
            f"training on {device}: {info['train']} sequences, validating on {info['val']}, "
            f"epochs {info['start_epoch'] + 1}-{info['epochs']} -> {info['run_dir']}",
            markup=False,
        )
        if self.verbose:
            settings = "  ".join(f"{k} {v}" for k, v in info["config"].items())
            self.console.print(f"  settings: {settings}", markup=False)
            self.console.print(f"  data: {info['data']}", markup=False)
            self.console.print(
                f"  model: LSTM(2, {info['config']['hidden']}) + Linear, {info['parameters']} parameters; "
                f"{info['batches']} steps per epoch",
                markup=False,
            )
        if not self.live:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("val acc {task.fields[val_accuracy]}"),
            TextColumn("{task.fields[speed]} seq/s"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.task = self.progress.add_task(
            f"epoch {info['start_epoch'] + 1}/{self.epochs}",
            total=info["batches"],
            loss="-",
            val_accuracy="-",
            speed="-",
        )
        self.progress.start()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], log: bool = False) -> str:
    """One character per value, from ▁ (lowest) to █ (highest); log scale for losses."""
    if not values:
        return ""
    points = [math.log10(max(v, 1e-12)) if log else v for v in values]
    low, high = min(points), max(points)
    span = (high - low) or 1.0
    return "".join(SPARK[round((v - low) / span * (len(SPARK) - 1))] for v in points)


def _curve(values: list[float], log: bool, digits: int = 4) -> str:
    if len(values) > 60:  # keep it one line: every k-th epoch, and the last
        step = math.ceil(len(values) / 60)
        values = values[::step] + ([values[-1]] if (len(values) - 1) % step else [])
    return f"{sparkline(values, log)}  {values[0]:.{digits}f} -> {values[-1]:.{digits}f}"


def key_values(console: Console, title: str | None, rows: list[tuple[str, str]], justify="left") -> None:
    """Named values (info, eval's and train's summaries). In a terminal: a table of two columns,
    the values folded to its width. Elsewhere (a file, a pipe): the title and one `name: value`
    line each, every value whole on its line, for people and for grep, cut and awk alike."""
    from rich.markup import escape

    if not console.is_terminal:
        lines = ([title] if title else []) + [f"{name}: {value}" for name, value in rows]
        console.print("\n".join(lines), markup=False, highlight=False)
        return
    table = Table(title=escape(title) if title else None, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify=justify, overflow="fold")
    for name, value in rows:
        table.add_row(escape(name), escape(value))
    console.print(table)


def train_summary(console: Console, result: dict) -> None:
    best, last = result["best"], result["last"]
    rows = [("run folder", result["run_dir"])]
    stopped = " (stopped early: --patience)" if result.get("stopped_early") else ""
    rows.append(("epochs", f"{last['epoch']}{stopped}"))
    for name, metrics in (("best", best), ("last", last)):
        if metrics:
            scores = f"val loss {metrics['val_loss']:.4f}, val acc {metrics['val_accuracy']:.4f}"
            rows.append((name, f"epoch {metrics['epoch']}: {scores}"))
    history = result.get("history", [])
    if len(history) > 1:
        for key, label, log in (
            ("train_loss", "train loss", True),
            ("val_loss", "val loss", True),
            ("val_accuracy", "val acc", False),
        ):
            rows.append((label, _curve([m[key] for m in history if key in m], log)))
    checkpoints = [path for path in (result["best_checkpoint"], result["last_checkpoint"]) if path]
    rows.append(("checkpoints", ", ".join(checkpoints)))
    files = ["config.json", "metrics.csv", *(Path(p).name for p in result.get("plots", []))]
    rows.append(("files", ", ".join(files)))
    rows.append(("time", f"{result['seconds']:.1f}s on {result['device']}"))
    key_values(console, "training finished", rows)


def _stderr_line(text: str) -> None:
    """One line on stderr. When its reader went away the rest goes to /dev/null and the command
    goes on, as for stdout; a write that fails otherwise (a full disk) is OutputFailed, as on
    the stderr console."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except BrokenPipeError:
        stderr_closed()
    except OSError as exc:
        stderr_closed()
        raise output_failed(sys.stderr, exc) from None


def note(message: str) -> None:
    """A remark on stderr that is not an error."""
    _stderr_line(f"note: {message}\n")


def warning(message: str) -> None:
    """Something that looks wrong but does not stop the command, on stderr."""
    _stderr_line(f"warning: {message}\n")


def plot_report(console: Console, report: dict) -> None:
    colour = "unlabelled" if report["coloured_by"] == "none" else f"coloured by {report['coloured_by']}"
    what = f"{report['sequences']} of {report['total']} sequences, {colour}"
    if report["mistakes"] is not None:
        what += f", {report['mistakes']} wrong"
    console.print(f"wrote {report['file']}: {what}", markup=False)


def export_report(console: Console, report: dict) -> None:
    def shapes(names: dict) -> str:
        return ", ".join(f"{k} float32[{', '.join(map(str, v))}]" for k, v in names.items())

    inputs, outputs = shapes(report["inputs"]), shapes(report["outputs"])
    console.print(
        f"wrote {report['file']} ({report['bytes']} bytes, ONNX opset {report['opset']}, LSTM hidden "
        f"{report['hidden']}); input {inputs}; outputs {outputs}",
        markup=False,
    )


def eval_report(console: Console, report: dict) -> None:
    for message in report.get("warnings", []):
        warning(message)
    classes = report["classes"]
    rows = [
        ("accuracy", f"{report['accuracy']:.4f}"),
        ("balanced accuracy", f"{report['balanced_accuracy']:.4f}"),
        ("macro F1", f"{report['macro_f1']:.4f}"),
        ("loss", f"{report['loss']:.4f}"),
    ]
    if "threshold" in report:
        rows.append(("threshold", f"{report['threshold']}"))
    title = f"{report['data']} ({report['n']} sequences, {len(classes)} classes)"
    key_values(console, title, rows, justify="right")

    per_class = Table(title="per class", title_justify="left")
    for column in ("class", "precision", "recall", "F1", "support"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for name, row in report["per_class"].items():
        per_class.add_row(
            styled(name, classes),
            f"{row['precision']:.4f}",
            f"{row['recall']:.4f}",
            f"{row['f1']:.4f}",
            str(row["support"]),
        )
    console.print(per_class)

    confusion = Table(title="confusion (rows: true, columns: predicted)", title_justify="left")
    confusion.add_column("")
    for name in classes:
        confusion.add_column(styled(name, classes), justify="right")
    for name, row in zip(classes, report["confusion"]):
        confusion.add_row(styled(name, classes), *(str(v) for v in row))
    console.print(confusion)
    if report.get("confusion_png"):
        console.print(f"confusion matrix drawn into {report['confusion_png']}", markup=False)

    if len(report.get("by_length", [])) > 1:
        by_length = Table(title="accuracy by length (points)", title_justify="left")
        for column in ("points", "sequences", "accuracy"):
            by_length.add_column(column, justify="right")
        for row in report["by_length"]:
            points = str(row["shortest"]) if row["shortest"] == row["longest"] else _span(row)
            by_length.add_row(points, str(row["n"]), f"{row['accuracy']:.4f}")
        console.print(by_length)


def _span(row: dict) -> str:
    return f"{row['shortest']}-{row['longest']}"


def predictions_table(console: Console, rows: list[dict]) -> None:
    from rich.markup import escape

    classes = list(rows[0]["probabilities"]) if rows else []
    table = Table(title_justify="left")
    table.add_column("sequence")
    table.add_column("points", justify="right")
    table.add_column("label")
    table.add_column("probability", justify="right")
    has_truth = any("true_label" in row for row in rows)
    if has_truth:
        table.add_column("true label")
    for row in rows:
        cells = [
            escape(row["sequence"]),
            str(row["points"]),
            styled(row["label"], classes),
            f"{row['probability']:.4f}",
        ]
        if has_truth:
            cells.append(escape(row.get("true_label", "")))
        table.add_row(*cells)
    console.print(table)


TABLE_ROWS = 50  # predict's table in a terminal: this many rows, then a summary line


def _prediction_columns(block) -> tuple[list, list]:
    """A predict block's values column by column (lists, not a dict per row: 100,000 rows a
    second and more), with the names of the classes: sequence, points, label, probability, each
    class's probability, and true_label where the input gives one."""
    classes = block.classes
    columns = [block.names, block.points.tolist(), [classes[i] for i in block.label.tolist()]]
    columns.append(block.probability.tolist())
    columns += [list(column) for column in block.probabilities.T.tolist()]
    if block.true_label is not None:
        columns.append(block.true_label)
    return columns, classes


def prediction_csv_lines(block, header: bool = False) -> str:
    """A predict block as CSV: sequence, points, label, probability (of that label), one
    probability column per class (probability_<class>), and true_label when the input gives
    one; the header line first when `header`."""
    import csv
    import io

    columns, classes = _prediction_columns(block)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        names = ["sequence", "points", "label", "probability", *(f"probability_{name}" for name in classes)]
        writer.writerow(names + (["true_label"] if block.true_label is not None else []))
    writer.writerows(zip(*columns))
    return buffer.getvalue()


def prediction_json_lines(block) -> str:
    """One JSON object per sequence of a predict block, each on its own line: sequence, points,
    label, probability (of that label), probabilities (every class's) and true_label; the same
    text as json.dumps of PredictionBlock.rows() gives, written column by column."""
    encode = json.encoder.encode_basestring_ascii
    columns, classes = _prediction_columns(block)
    names, points, labels, probability = columns[:4]
    every = columns[4 : 4 + len(classes)]
    keys = [encode(name) for name in classes]
    label_text = {name: encode(name) for name in classes}
    truth = [f', "true_label": {encode(t)}}}\n' for t in block.true_label] if block.true_label else None
    lines = []
    for i, (name, count, label, p) in enumerate(zip(names, points, labels, probability)):
        spread = ", ".join(f"{key}: {values[i]!r}" for key, values in zip(keys, every))
        end = truth[i] if truth is not None else "}\n"
        lines.append(
            f'{{"sequence": {encode(name)}, "points": {count}, "label": {label_text[label]}, '
            f'"probability": {p!r}, "probabilities": {{{spread}}}{end}'
        )
    return "".join(lines)


class PredictionStream:
    """predict's rows on stdout as each block arrives: JSON lines (--json), CSV lines (stdout is
    not a terminal), or in a terminal a table of the first TABLE_ROWS rows and a summary line."""

    def __init__(self, console: Console, json_output: bool, csv_lines: Callable) -> None:
        self.console = console
        self.mode = "json" if json_output else "table" if console.is_terminal else "csv"
        self.csv_lines = csv_lines
        self.shown: list[dict] = []
        self.total, self.counts, self.classes = 0, {}, []
        self.closed = console.quiet  # nothing more to write: quiet, or the reader went away
        self._table_printed = False

    def add(self, block) -> None:
        self.total += len(block)
        self.classes = block.classes
        for label, n in enumerate(np.bincount(block.label, minlength=len(block.classes)).tolist()):
            self.counts[label] = self.counts.get(label, 0) + n
        if self.mode == "table":
            if len(self.shown) < TABLE_ROWS:
                self.shown.extend(itertools.islice(block.rows(), TABLE_ROWS - len(self.shown)))
            if len(self.shown) == TABLE_ROWS and not self._table_printed:
                self._print_table()
            return
        text = (
            prediction_json_lines(block)
            if self.mode == "json"
            else self.csv_lines(block, self.total == len(block))
        )
        self._write(text)

    def _print_table(self) -> None:
        predictions_table(self.console, self.shown)
        self._table_printed = True

    def _write(self, text: str) -> None:
        if not self.closed:
            write_plain(self.console.file, text, lambda: setattr(self, "closed", True))

    def finish(self) -> None:
        if self.mode != "table":
            return
        if not self._table_printed:
            self._print_table()
        more = self.total - len(self.shown)
        if more:
            counts = sorted(self.counts.items())
            counted = ", ".join(f"{n} {self.classes[label]}" for label, n in counts if n)
            self.console.print(
                f"... and {more} more rows; all {self.total}: {counted} "
                "(--json or -o FILE.csv for every row)",
                highlight=False,
                markup=False,
            )


def datasets_table(console: Console, summary: dict) -> None:
    from rich.markup import escape

    rows = summary["splits"]
    classes = list(rows[0]["classes"]) if rows else []
    table = Table(title_justify="left")
    if "inputs" in summary:
        features = summary.get("features")
        named = f" ({', '.join(features)})" if features else ""
        counted = f"{len(classes)} classes, {plural(summary['inputs'], 'feature')}{named}"
        table.title = escape(f"{summary.get('source', '')}: {counted}")
    columns = ["split", "sequences"] + classes + ["length", "file"]
    for i, column in enumerate(columns):
        header = styled(column, classes) if 2 <= i < 2 + len(classes) else column
        table.add_column(header, justify="left" if column in ("split", "file") else "right", overflow="fold")
    for row in rows:
        table.add_row(
            row["split"],
            str(row["sequences"]),
            *(str(row["classes"][name]) for name in classes),
            str(row["length"]) if row.get("min_length", row["length"]) == row["length"] else _lengths(row),
            escape(row["file"]),
        )
    console.print(table)


def _lengths(row: dict) -> str:
    return f"{row['min_length']}-{row['length']}"


def file_info(console: Console, report: dict) -> None:
    rows = [
        ("kind", report["kind"]),
        ("format", str(report["format"])),
        ("size", f"{report['bytes']} bytes"),
        ("checksum", report["checksum"]),
    ]
    if report["kind"] == "dataset":
        classes = ", ".join(f"{n} {name}" for name, n in report["classes"].items())
        points = (
            report["length"]
            if report.get("min_length", report["length"]) == report["length"]
            else _lengths(report)
        )
        rows.append(("sequences", f"{report['sequences']} of {points} points ({classes})"))
        rows.append(("features", _features(report)))
    if report["kind"] == "checkpoint":
        steps = report.get("partial_steps", 0)
        position = f" finished, and {plural(steps, 'step')} of epoch {report['epoch'] + 1}" if steps else ""
        rows.append(("epoch", f"{report['epoch']}{position}"))
        rows.append(("network", f"LSTM hidden {report['hidden']}, {report['parameters']} parameters"))
        rows.append(("classes", f"{len(report['classes'])}: {', '.join(report['classes'])}"))
        rows.append(("features", _features(report)))
        normalization = report.get("normalization")
        rows.append(
            (
                "normalization",
                "none (inputs as they are)"
                if normalization is None
                else "per feature: mean "
                + ", ".join(f"{v:.4g}" for v in normalization["mean"])
                + "; std "
                + ", ".join(f"{v:.4g}" for v in normalization["std"]),
            )
        )
        rows.append(("resumable", "yes (optimizer state stored)" if report["resumable"] else "no"))
    for key, value in report["metadata"].items():
        if key not in ("format", "epoch", "normalization"):  # shown above
            rows.append((key, json.dumps(value) if isinstance(value, (dict, list)) else str(value)))
    key_values(console, report["file"], rows)
    tensors = Table(title="tensors", title_justify="left")
    for column in ("name", "dtype", "shape"):
        tensors.add_column(column)
    for tensor in report["tensors"]:
        tensors.add_row(tensor["name"], tensor["dtype"], str(tensor["shape"]))
    console.print(tensors)


def _features(report: dict) -> str:
    names = report.get("features")
    return f"{report['inputs']}" + (f": {', '.join(names)}" if names else "")


def devices_table(console: Console, report: dict) -> None:
    rows = report["devices"]
    table = Table(title_justify="left")
    for column in ("backend", "tinygrad device", "works", "renderer", "kernels", "why not"):
        table.add_column(column)
    for row in rows:
        works = "[green]yes[/]" if row["ok"] else "[red]no[/]"
        table.add_row(row["name"], row["device"], works, row["renderer"], row["kernels"], row["reason"])
    console.print(table)


def error_line(message: str) -> None:
    """The command's last word, on stderr. A stderr that cannot be written changes nothing: the
    exit code still says what happened (2 for a missing file, also with `2>/dev/full`)."""
    try:
        _stderr_line(f"error: {message}\n")
    except OutputFailed:
        pass
