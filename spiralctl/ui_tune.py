"""Rendering of `spiralctl tune`: the live table of trials, the summary, JSON lines. The console
is passed in."""

from __future__ import annotations

import time

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

STATE_STYLE = {"complete": "green", "pruned": "yellow", "fail": "red", "running": "cyan", "waiting": "dim"}
METRIC_LABEL = {"val_loss": "val loss", "val_accuracy": "val acc"}


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if abs(value) < 1e-3 else f"{value:.4f}".rstrip("0").rstrip(".") or "0"


def _param(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# short column titles, so that the table fits 80 columns
HEADER = {"batch_size": "batch", "lr_schedule": "schedule"}


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}s"


def trials_table(rows: list[dict], metric: str | None, title: str | None = None) -> Table:
    """One line per trial: state, parameters, best validation metric, epochs, time."""
    table = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), show_edge=False
    )
    names = list(dict.fromkeys(name for row in rows for name in row.get("params", {})))
    notes = {row["trial"]: _note(row) for row in rows}
    table.add_column("trial", justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for name in names:
        table.add_column(HEADER.get(name, name), justify="right", no_wrap=True)
    table.add_column(METRIC_LABEL.get(metric or "", "value"), justify="right", no_wrap=True)
    table.add_column("epochs", justify="right", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    if any(notes.values()):
        table.add_column("note", overflow="fold")
    for row in sorted(rows, key=lambda r: r["trial"]):
        state = row["state"]
        cells = [
            str(row["trial"]),
            f"[{STATE_STYLE.get(state, '')}]{state}[/]",
            *(_param(row["params"].get(name, "")) for name in names),
            _number(row.get("value")),
            str(row.get("epochs", "")),
            _seconds(row.get("seconds")),
        ]
        table.add_row(*cells, *([notes[row["trial"]]] if any(notes.values()) else []), style=None)
    return table


def _note(row: dict) -> str:
    parts = [f"retry of {row['retry_of']}"] if "retry_of" in row else []
    if row.get("error"):
        parts.append(row["error"])
    return "; ".join(parts)


def trial_line(row: dict, metric: str | None) -> str:
    params = "  ".join(f"{k} {_param(v)}" for k, v in row["params"].items())
    value = (
        f"  best {METRIC_LABEL.get(metric or '', 'value')} {_number(row['value'])}"
        if row["value"] is not None
        else ""
    )
    extra = f"  ({row['error']})" if row.get("error") else ""
    best = "  *best" if row.get("new_best") else ""
    return (
        f"trial {row['trial']} {row['state']}  {params}{value}  epochs {row['epochs']}  "
        f"{_seconds(row.get('seconds'))}{extra}{best}"
    )


class TuneProgress:
    """Renders tune()'s progress events on stderr: in a terminal a live table of this command's
    trials; elsewhere one line per finished trial; nothing when quiet."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.rows: dict[int, dict] = {}
        self.metric: str | None = None
        self.direction = "minimize"
        self.live: Live | None = None
        self.message = ""

    def __call__(self, event: str, info: dict) -> None:
        if self.quiet:
            return
        if event == "start":
            self.metric, self.direction = info["metric"], info["direction"]
            devices = ", ".join(dict.fromkeys(info["devices"]))
            self._print(
                f"tuning study {info['study']} ({info['storage']}): {info['trials']} trials of "
                f"{info['epochs']} epochs, {info['direction']} {info['metric']}, "
                f"{info['workers']} worker{'s' if info['workers'] > 1 else ''} on {devices} -> {info['out']}"
            )
            if self.console.is_terminal:
                self.live = Live(
                    console=self.console, get_renderable=self._render, refresh_per_second=4, transient=True
                )
                self.live.start()
        elif event == "trial_start":
            self.rows[info["trial"]] = {
                "trial": info["trial"],
                "state": "running",
                "params": info["params"],
                "value": None,
                "epochs": 0,
                "started": time.monotonic(),
            }
        elif event == "trial_epoch" and info["trial"] in self.rows:
            row = self.rows[info["trial"]]
            value = info[self.metric] if self.metric else None
            better = min if self.direction == "minimize" else max
            row["value"] = value if row["value"] is None else better(row["value"], value)
            row["epochs"] = info["epoch"]
        elif event == "trial":
            self.rows[info["trial"]] = info
            if self.live is None:
                self._print(trial_line(info, self.metric))
        elif event == "retry":
            self._print(f"trial {info['trial']} lost its worker: it failed and runs again")
        elif event == "waiting":
            running = ", ".join(str(n) for n in info["running"])
            self.message = (
                f"waiting for trial{'s' if len(info['running']) > 1 else ''} {running} (other workers)"
            )
            if self.live is None:
                self._print(self.message)
        if self.live is not None:
            self.live.refresh()

    def _print(self, text: str) -> None:
        (self.live.console if self.live is not None else self.console).print(text, markup=False)

    def _render(self):
        now = time.monotonic()
        rows = [
            {**row, "seconds": now - row["started"]} if "started" in row else row
            for row in self.rows.values()
        ]
        table = trials_table(rows, self.metric)
        return Group(table, self.message) if self.message else table

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def tune_summary(console: Console, summary: dict) -> None:
    """The study's trials, then the best one and how to use it."""
    metric = summary.get("metric")
    if summary["trials"]:
        console.print(trials_table(summary["trials"], metric, title=f"study {summary['study']}"))
    table = Table(title="tune summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("study", f"{summary['study']} ({summary['storage']})")
    counts = ", ".join(f"{n} {state}" for state, n in summary["counts"].items() if n)
    target = f" (target {summary['target']})" if "target" in summary else ""
    table.add_row("trials", (counts or "none") + target)
    best = summary.get("best")
    if best:
        label = METRIC_LABEL.get(metric or "", "value")
        table.add_row("best trial", f"{best['trial']}: {label} {_number(best['value'])}")
        table.add_row("parameters", "  ".join(f"{k} {_param(v)}" for k, v in best["params"].items()))
        if best.get("checkpoint"):
            host = f" (on {best['host']})" if best.get("elsewhere") else ""
            table.add_row("checkpoint", best["checkpoint"] + host)
        if summary.get("best_checkpoint"):
            table.add_row("best copy", summary["best_checkpoint"])
        if best.get("repeat"):
            table.add_row("repeat", best["repeat"])
    else:
        table.add_row("best trial", "none complete yet")
    if summary.get("plots"):
        table.add_row("plots", ", ".join(summary["plots"]))
    if "seconds" in summary:
        table.add_row("time", f"{summary['seconds']:.1f}s")
    console.print(table)
