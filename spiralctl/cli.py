"""The spiralctl command line: parse arguments, call the library, render the results."""

from __future__ import annotations

import sys
import traceback
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from spiralctl import __version__, ui
from spiralctl.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, SpiralError

_state = {"debug": False}

# Typer's parsing errors, found through a public class so this works whether Typer
# uses click or its own copy of it.
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class SpiralGroup(TyperGroup):
    """Turns every failure into one `error:` line and the exit code the README lists."""

    def list_commands(self, ctx) -> list[str]:
        return list(self.commands)  # the order of the journey, not alphabetical

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(
                args=args,
                prog_name=prog_name or "spiralctl",
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
        except SpiralError as exc:
            if _state["debug"]:
                traceback.print_exc()
            ui.error_line(exc.message)
            code = exc.exit_code
        except _UsageError as exc:
            command = exc.ctx.command_path if exc.ctx is not None else "spiralctl"
            ui.error_line(f"{exc.format_message()} (see `{command} --help`)")
            code = EXIT_USAGE
        except _ClickException as exc:
            ui.error_line(exc.format_message())
            code = exc.exit_code
        except (typer.Abort, KeyboardInterrupt):
            ui.error_line("interrupted")
            code = EXIT_INTERRUPTED
        except Exception as exc:  # a bug, not the user's fault: say so, keep the trace for --debug
            if _state["debug"]:
                traceback.print_exc()
            ui.error_line(
                f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)"
            )
            code = EXIT_FAILURE
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=SpiralGroup,
    help="Generate spiral sequence datasets, then train, evaluate and run an LSTM classifier on tinygrad.",
    add_completion=True,
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"spiralctl {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    _state["debug"] = debug


class Style(str, Enum):
    direction = "direction"
    lux = "lux"


DeviceOption = Annotated[
    str,
    typer.Option(
        "--device", "-d", help="auto, cpu, cuda, amd, metal, or a tinygrad device such as CPU:LLVM."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


@app.command("gen-data")
def gen_data(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write train/val/test.safetensors into.")],
    sequences: Annotated[int, typer.Option(help="Sequences in all splits together (even).")] = 1000,
    length: Annotated[int, typer.Option(help="Points per sequence.")] = 50,
    noise: Annotated[float, typer.Option(help="Standard deviation of the Gaussian noise.")] = 0.1,
    style: Annotated[
        Style,
        typer.Option(
            help="direction: label = true turning direction, random rotation. "
            "lux: the Lux tutorial's make_spiral arms, which both turn the same way "
            "and differ only in where they start."
        ),
    ] = Style.direction,
    val_fraction: Annotated[float, typer.Option(help="Share of sequences for validation.")] = 0.2,
    test_fraction: Annotated[
        float, typer.Option(help="Share of sequences for a test split (0: none).")
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed; same arguments, same bytes.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Write a spiral dataset (clockwise vs anticlockwise) to OUT_DIR.

    Example: spiralctl gen-data data/ --test-fraction 0.2
    """
    from spiralctl.data import DataConfig, generate, save_datasets

    config = DataConfig(
        sequences=sequences,
        length=length,
        noise=noise,
        style=style.value,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )
    datasets = generate(config)
    paths = save_datasets(out_dir, datasets, force=force)
    rows = [
        {
            "split": split,
            "sequences": len(d),
            "clockwise": int((d.y == 0).sum()),
            "anticlockwise": int((d.y == 1).sum()),
            "length": d.length,
            "file": str(path),
        }
        for (split, d), path in zip(datasets.items(), paths)
    ]
    console = ui.make_console()
    if json_output:
        ui.print_json(console, {"out_dir": str(out_dir), "generator": asdict(config), "splits": rows})
    else:
        ui.datasets_table(console, rows)


@app.command()
def train(
    data: Annotated[
        Path | None,
        typer.Option(
            help="Folder with train.safetensors and val.safetensors. "
            "Without it: the default dataset, generated from --seed."
        ),
    ] = None,
    device: DeviceOption = "auto",
    epochs: Annotated[int, typer.Option(help="Epochs in total (also when resuming).")] = 25,
    batch_size: Annotated[int, typer.Option(help="Sequences per step.")] = 128,
    hidden: Annotated[int, typer.Option(help="LSTM hidden size.")] = 8,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 0.01,
    seed: Annotated[int, typer.Option(help="Seed for weights, shuffling and the default data.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Run folder (default: a new runs/train-N).")] = None,
    exist_ok: Annotated[bool, typer.Option("--exist-ok", help="Write into an existing run folder.")] = False,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue the run saved in this checkpoint (its folder, its settings) up to --epochs."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final result.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Train the LSTM classifier; writes best/last checkpoints and metrics.jsonl to a run folder.

    Example: spiralctl train --data data/ --epochs 25
    """
    from spiralctl.train import TrainConfig, train_job

    config = TrainConfig(epochs=epochs, batch_size=batch_size, hidden=hidden, lr=lr, seed=seed)
    progress = ui.TrainProgress(ui.make_console(stderr=True), quiet=quiet)
    try:
        result = train_job(
            config,
            data_dir=data,
            out=out,
            exist_ok=exist_ok,
            resume_path=resume,
            device=device,
            on_progress=progress,
        )
    finally:
        progress.close()
    console = ui.make_console()
    if json_output:
        ui.print_json(console, result)
    else:
        ui.train_summary(console, result)


@app.command("eval")
def evaluate(
    checkpoint: Annotated[
        Path, typer.Argument(help="A checkpoint from train (best.safetensors, last.safetensors).")
    ],
    data: Annotated[Path, typer.Argument(help="A dataset file from gen-data (e.g. data/test.safetensors).")],
    device: DeviceOption = "auto",
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 128,
    threshold: Annotated[
        float, typer.Option(help="Probability above which a sequence is anticlockwise.")
    ] = 0.5,
    min_accuracy: Annotated[
        float | None,
        typer.Option(help="Exit with code 1 when the accuracy is below this (for CI pipelines)."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Report loss, accuracy, per-class precision/recall/F1 and the confusion matrix.

    Example: spiralctl eval runs/train-1/best.safetensors data/test.safetensors
    """
    from spiralctl.train import check_min_accuracy
    from spiralctl.train import evaluate as run_eval

    report = run_eval(checkpoint, data, device=device, batch_size=batch_size, threshold=threshold)
    console = ui.make_console()
    if json_output:
        ui.print_json(console, report)
    else:
        ui.eval_report(console, report)
    if min_accuracy is not None:
        check_min_accuracy(report, min_accuracy)


@app.command()
def predict(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint from train.")],
    input: Annotated[
        str,
        typer.Argument(
            help="A dataset .safetensors, a .npy array [T, 2] or [N, T, 2], a CSV with header sequence,x,y, "
            "a JSON list of [x, y] points (or a list of them), or - for CSV/JSON on stdin."
        ),
    ],
    device: DeviceOption = "auto",
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 128,
    threshold: Annotated[
        float, typer.Option(help="Probability above which a sequence is anticlockwise.")
    ] = 0.5,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Also write the predictions to this CSV file."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object per sequence per line.")
    ] = False,
) -> None:
    """Classify sequences of any length as clockwise or anticlockwise.

    Example: spiralctl predict runs/train-1/best.safetensors points.csv
    """
    from spiralctl.inference import predict as run_predict
    from spiralctl.inputs import write_predictions_csv

    rows = run_predict(checkpoint, input, device=device, batch_size=batch_size, threshold=threshold)
    if output is not None:
        write_predictions_csv(output, rows)
    console = ui.make_console()
    if json_output:
        for row in rows:
            ui.print_json(console, row)
    else:
        ui.predictions_table(console, rows)


@app.command()
def info(
    file: Annotated[Path, typer.Argument(help="A dataset or checkpoint .safetensors file.")],
    json_output: JsonOption = False,
) -> None:
    """Show what a dataset or checkpoint holds: kind, format, tensors, configs, checksum.

    Example: spiralctl info runs/train-1/best.safetensors
    """
    from spiralctl.info import describe

    report = describe(file)
    console = ui.make_console()
    if json_output:
        ui.print_json(console, report)
    else:
        ui.file_info(console, report)


@app.command()
def devices(json_output: JsonOption = False) -> None:
    """Show which backends work here, the tinygrad devices behind them, and why not the others.

    Example: spiralctl devices --json
    """
    from spiralctl.devices import list_backends

    rows = [asdict(row) for row in list_backends()]
    console = ui.make_console()
    if json_output:
        ui.print_json(console, {"devices": rows})
    else:
        ui.devices_table(console, rows)


def main() -> None:
    typer.main.get_command(app)(prog_name="spiralctl")
