"""Pictures: training curves (loss.png, accuracy.png) and sequences coloured by label or prediction.

matplotlib is an optional extra (`pip install "spiralctl[plot]"`). It is used through its
object-oriented API (a Figure with the Agg canvas), so no window opens and no global pyplot
state is touched. Files are written atomically, like every other file spiralctl writes.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from spiralctl.errors import SpiralError
from spiralctl.storage import atomic_output

INSTALL = 'pip install "spiralctl[plot]"'
# the colours the terminal tables use for the two classes, and one for mistakes
COLOURS = {"clockwise": "#1f9bb4", "anticlockwise": "#c2399b", "mistake": "#d62728"}
# other classes' colours, in the order they first appear (matplotlib's tab10 without its red)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
TRAIN_COLOUR, VAL_COLOUR = "#1f77b4", "#ff7f0e"


class PlotsUnavailable(SpiralError):
    """matplotlib is not installed."""


def require_matplotlib():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotsUnavailable(f"plots need matplotlib; install it with: {INSTALL}") from None
    return Figure


def _figure(width: float, height: float, layout: str | None = "constrained"):
    return require_matplotlib()(figsize=(width, height), dpi=100, layout=layout)


def _save(figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    with atomic_output(path) as handle:
        handle.write(buffer.getvalue())
    return path


def _curves(history: list[dict], path: Path, key: str, title: str, best_epoch: int | None) -> Path:
    # fixed margins: the automatic layout would cost training half a second per run
    figure = _figure(6.4, 4.0, layout=None)
    figure.subplots_adjust(left=0.12, right=0.97, top=0.92, bottom=0.12)
    axes = figure.add_subplot()
    epochs = [m["epoch"] for m in history]
    for split, colour in (("train", TRAIN_COLOUR), ("val", VAL_COLOUR)):
        points = [(e, m[f"{split}_{key}"]) for e, m in zip(epochs, history) if f"{split}_{key}" in m]
        if points:
            xs, ys = zip(*points)
            name = "train (mean over the epoch)" if split == "train" else "validation (after the epoch)"
            axes.plot(xs, ys, marker="o", markersize=3, color=colour, label=name)
    if best_epoch is not None:
        axes.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch ({best_epoch})")
    axes.set_xlabel("epoch")
    axes.set_ylabel(key)
    axes.set_title(title)
    if key == "loss" and all(m.get("train_loss", 1) > 0 and m.get("val_loss", 1) > 0 for m in history):
        from matplotlib.ticker import LogFormatterSciNotation

        class Plain(LogFormatterSciNotation):
            """The ticks matplotlib labels, written 0.6 and 0.02 rather than 6x10^-1 (narrow
            enough for the fixed left margin)."""

            def __call__(self, x, pos=None):
                return f"{x:g}" if super().__call__(x, pos) else ""

        axes.set_yscale("log")
        axes.yaxis.set_major_formatter(Plain())
        axes.yaxis.set_minor_formatter(Plain(labelOnlyBase=False))
    if key == "accuracy":
        axes.set_ylim(min(0.4, *(m.get("val_accuracy", 1) for m in history)) - 0.02, 1.02)
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, path)


def training_plots(history: list[dict], run_dir: Path) -> list[Path]:
    """loss.png and accuracy.png in `run_dir`: train and validation per epoch."""
    if not history:
        return []
    run_dir = Path(run_dir)
    best = min(history, key=lambda m: m["val_loss"])["epoch"]
    name = run_dir.name
    return [
        _curves(history, run_dir / "loss.png", "loss", f"{name}: binary cross-entropy", best),
        _curves(history, run_dir / "accuracy.png", "accuracy", f"{name}: accuracy", best),
    ]


def confusion_plot(confusion: list[list[int]], classes: list[str], out: Path, title: str = "") -> Path:
    """The K x K confusion matrix as a PNG: rows the true class, columns the predicted one, each
    cell's count written in it and shaded by its share of its row (the class's recall there)."""
    counts = np.array(confusion, dtype=np.float64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    k = len(classes)
    size = min(max(3.2, 0.55 * k + 2.2), 16)
    figure = _figure(size + 0.6, size)
    axes = figure.add_subplot()
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(k), labels=classes, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    axes.set_yticks(range(k), labels=classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for row in range(k):
        for column in range(k):
            dark = shares[row, column] > 0.5
            axes.text(column, row, str(int(counts[row, column])), ha="center", va="center",
                      color="white" if dark else "black", fontsize=8 if k > 12 else 10)  # fmt: skip
    axes.set_title(title or "confusion", fontsize=9)
    return _save(figure, Path(out))


def sequence_plot(
    sequences: list[np.ndarray],
    names: list[str],
    out: Path,
    labels: list[str] | None = None,
    predictions: list[dict] | None = None,
    title: str = "",
) -> dict:
    """A grid of small panels, one per sequence: the path, a dot where it starts and an arrow where
    it ends. Coloured by the true label, or by the predicted one when `predictions` is given; a
    wrong prediction gets a red frame and a cross. Returns what was drawn."""
    count = len(sequences)
    columns = max(1, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / columns)
    figure = _figure(max(1.7 * columns + 0.4, 5.2), 1.8 * rows + 0.9)
    mistakes = 0
    colours = dict(COLOURS)

    def colour_of(label: str | None) -> str:
        if label is None:
            return "black"
        if label not in colours:
            colours[label] = PALETTE[(len(colours) - len(COLOURS)) % len(PALETTE)]
        return colours[label]

    for i, (seq, name) in enumerate(zip(sequences, names)):
        axes = figure.add_subplot(rows, columns, i + 1)
        truth = labels[i] if labels is not None else None
        if predictions is not None:
            # the label as the model names its classes (the file may write "0" for "clockwise")
            truth = predictions[i].get("true_label", truth)
            label = predictions[i]["label"]
            wrong = truth is not None and label != truth
            caption = f"{name}: p={predictions[i]['probability']:.2f}"
        else:
            label, wrong, caption = truth, False, str(name)
        colour = colour_of(label)
        if seq.shape[1] != 2:  # not a 2-D path: each feature over time
            for feature in range(seq.shape[1]):
                axes.plot(seq[:, feature], color=colour, linewidth=0.9, alpha=1.0 if feature == 0 else 0.5)
        else:
            axes.plot(seq[:, 0], seq[:, 1], color=colour, linewidth=1.2)
            axes.plot(seq[0, 0], seq[0, 1], "o", color=colour, markersize=3)
        if len(seq) >= 2 and seq.shape[1] == 2:
            axes.annotate(
                "",
                xy=seq[-1],
                xytext=seq[-2],
                arrowprops={"arrowstyle": "-|>", "color": colour, "lw": 1.2},
            )
        if wrong:
            mistakes += 1
            caption += " ✗"
            for spine in axes.spines.values():
                spine.set_edgecolor(COLOURS["mistake"])
                spine.set_linewidth(2.5)
        axes.set_title(caption, fontsize=8, color=COLOURS["mistake"] if wrong else "black")
        if seq.shape[1] == 2:
            axes.set_aspect("equal", adjustable="datalim")
        axes.set_xticks([])
        axes.set_yticks([])
    what = "predicted label" if predictions is not None else "label" if labels is not None else "none"
    paths = all(seq.shape[1] == 2 for seq in sequences)
    shape = "dot = start, arrow = end" if paths else "each feature over time"
    if what == "none":  # no labels in the input and no model to predict them
        heading = f"{title}: unlabelled (give --checkpoint to colour by prediction)\n{shape}"
    else:
        spirals = set(colours) <= set(COLOURS)
        key = "clockwise teal, anticlockwise magenta" if spirals else "classes in the legend"
        heading = f"{title}: coloured by {what}\n{key}; {shape}"
        if not spirals:
            from matplotlib.lines import Line2D

            handles = [Line2D([0], [0], color=c, label=n) for n, c in colours.items() if n not in COLOURS]
            figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=7)
    if predictions is not None:
        heading += "\np = probability of the predicted class"
        if labels is not None:
            heading += f"; {mistakes} of {count} wrong (red frame, ✗)"
    figure.suptitle(heading, fontsize=9)
    _save(figure, Path(out))
    checked = predictions is not None and labels is not None
    return {
        "file": str(out),
        "sequences": count,
        "coloured_by": what,
        "mistakes": mistakes if checked else None,
    }
