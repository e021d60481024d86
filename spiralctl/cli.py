"""The spiralctl command line: parse arguments, call the library, render the results."""

from __future__ import annotations

import os
import shlex
import sys
import traceback
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO, Annotated

import typer
from typer.core import TyperGroup

from spiralctl import __version__, commands, ui
from spiralctl.config import RUN_OPTIONS, InferenceOptions, TrainConfig, load_run_options
from spiralctl.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    Interrupted,
    SpiralError,
    Terminated,
)
from spiralctl.kernels.workers import stop_compile_workers

# Typer's parsing errors, found through a public class so this works whether Typer
# uses click or its own copy of it.
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


@dataclass
class State:
    """What the common output flags set for the command being run (the click context's obj),
    given before the command name or after it. The fields are named as the flags' parameters."""

    quiet: bool = False
    verbose: bool = False
    json_output: bool = False
    debug: bool = False
    stdout: IO[str] | None = None  # the real stdout, while --debug sends tinygrad's lines to stderr


def flag(setting: str) -> str:
    """The option that sets a library setting: batch_size -> --batch-size."""
    return "--" + setting.replace("_", "-")


def error_message(exc: SpiralError) -> str:
    text = exc.render(flag)
    if isinstance(exc, Interrupted):
        text += (
            f"; continue with: spiralctl train --resume {shlex.quote(exc.checkpoint)} --epochs {exc.epochs}"
        )
    return text


class SpiralGroup(TyperGroup):
    """Turns every failure into one `error:` line and the exit code the README lists."""

    def list_commands(self, ctx) -> list[str]:
        return list(self.commands)  # the order of the journey, not alphabetical

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        state = State()
        words = list(sys.argv[1:] if args is None else args)
        args = words
        swapped = None  # (typer's rich_utils, its own console class) while help may be drawn
        if not words or any(w == "--help" or (w[:1] == "-" and w[1:2] != "-" and "h" in w) for w in words):
            # Typer draws help on a Rich console of its own (rich_utils, loaded only for help):
            # one that follows spiralctl's rules for a closed pipe (`--help | head`: exit 0) and
            # a failed write (one error line, exit 1). -h may be among short flags (-vh); a
            # false match (-dhip) only swaps the console, which draws nothing else
            from typer import rich_utils

            swapped, rich_utils.Console = (rich_utils, rich_utils.Console), ui.SpiralConsole
        try:
            code = super().main(
                args=args,
                prog_name=prog_name or "spiralctl",
                complete_var=complete_var,
                standalone_mode=False,
                obj=state,
                **extra,
            )
            if code == EXIT_INTERRUPTED:  # Typer's answer to a Ctrl-C before a run starts: a bare 130
                ui.error_line("interrupted")
        except SpiralError as exc:
            if state.debug:
                _print_traceback(exc)
            ui.error_line(error_message(exc))
            code = exc.exit_code
        except _UsageError as exc:
            if exc.format_message():  # bare `spiralctl` shows the help, with nothing to add
                command = exc.ctx.command_path if exc.ctx is not None else "spiralctl"
                # Typer words some conversions as a validation library does: "Value error, ..."
                text = exc.format_message().replace("Value error, ", "")
                ui.error_line(f"{text} (see `{command} --help`)")
            code = EXIT_USAGE
        except _ClickException as exc:
            ui.error_line(exc.format_message())
            code = exc.exit_code
        except (typer.Abort, KeyboardInterrupt) as exc:
            if isinstance(exc, typer.Abort) and not isinstance(exc.__cause__, KeyboardInterrupt):
                code = _internal_error(exc.__cause__ or exc, state)  # click turns EOFError into Abort
            else:
                ui.error_line("interrupted")
                code = EXIT_INTERRUPTED
        except Terminated:  # a SIGTERM outside a training, which stops at a resumable point instead
            ui.error_line("terminated")
            code = EXIT_TERMINATED
        except BrokenPipeError:  # stdout's reader went away: nothing more to say to it
            ui.stdout_closed()
            code = EXIT_OK
        except Exception as exc:  # a bug, not the user's fault: say so, keep the trace for --debug
            code = _internal_error(exc, state)
        finally:
            stop_compile_workers()
            if swapped is not None:
                swapped[0].Console = swapped[1]
        sys.exit(code if isinstance(code, int) else 0)


def _print_traceback(exc: BaseException) -> None:
    """--debug's traceback, on stderr; one that cannot be written leaves the exit code as it is."""
    try:
        traceback.print_exception(exc)
        sys.stderr.flush()
    except OSError:
        ui.stderr_closed()


def _internal_error(exc: BaseException, state: State) -> int:
    if state.debug:
        _print_traceback(exc)
    ui.error_line(
        f"internal error: {type(exc).__name__}: {exc} (a bug in spiralctl: please report it; "
        "rerun with --debug for the traceback)"
    )
    return EXIT_INTERNAL


app = typer.Typer(
    cls=SpiralGroup,
    help="Generate spiral sequence datasets, then train, evaluate and run an LSTM classifier on tinygrad.\n\n"
    "The commands in the order you meet them: gen-data (or import, for your own data), train (tune "
    "searches its settings), eval, predict; then plot, export, info and devices. "
    "`spiralctl COMMAND --help` shows each one's options and examples.",
    add_completion=True,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        ui.write_plain(sys.stdout, f"spiralctl {__version__}\n", lambda: None)
        raise typer.Exit()


# option groups in --help
DATA, MODEL, OPTIMIZE, RUN, OUTPUT = "Data", "Model", "Optimization", "Run folder", "Output"
SPLITS, INFERENCE = "Splits", "Inference"
DEVICE = "Device"


def _output_flag(ctx: typer.Context, param: typer.CallbackParam, value: bool) -> bool:
    """The common output flags mean the same before the command name and after it: either sets
    the flag in the State, and the command's parameter gets the State's value."""
    state = ctx.find_root().obj
    if not isinstance(state, State) or ctx.resilient_parsing:  # shell completion: parsing only
        return value
    if value and not getattr(state, param.name):
        setattr(state, param.name, True)
        if param.name == "debug":
            _debug_on(ctx, state)
    if state.quiet and state.verbose:
        raise SpiralError("and {verbose} ask for opposite things; give one", option="quiet")
    return getattr(state, param.name)


def _debug_on(ctx: typer.Context, state: State) -> None:
    import contextlib

    from tinygrad.helpers import DEBUG, Context

    # tinygrad prints its debug lines to stdout; send them to stderr, keep stdout for results
    state.stdout = sys.stdout
    ctx.with_resource(contextlib.redirect_stdout(sys.stderr))
    ctx.with_resource(Context(DEBUG=max(DEBUG.value, 2)))


# The common output flags: every command takes each of them, also where it has nothing to say
# differently, in these parameters (quiet, verbose, json_output, debug: the State's fields).
# -q: no progress and no notes (errors, warnings and the result stay); -v: more detail on
# stderr where there is more to tell (train, tune), and -q with -v is an error.
QuietOption = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        metavar="",
        callback=_output_flag,
        help="No progress and no notes: only errors, warnings and the result.",
        rich_help_panel=OUTPUT,
    ),
]
VerboseOption = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        metavar="",
        callback=_output_flag,
        help="More detail on stderr where there is more to tell: train shows the settings, every step "
        "and every file saved; tune every epoch of every trial.",
        rich_help_panel=OUTPUT,
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json",
        metavar="",
        callback=_output_flag,
        help="Print the result as JSON on stdout, one object per line (predict: one per sequence).",
        rich_help_panel=OUTPUT,
    ),
]
DebugOption = Annotated[
    bool,
    typer.Option(
        "--debug",
        metavar="",
        callback=_output_flag,
        help="Show tracebacks for errors and tinygrad's debug output (DEBUG=2: every kernel "
        "with its time), on stderr.",
        rich_help_panel=OUTPUT,
    ),
]


@app.callback()
def _main(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", metavar="", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """The common output flags, also taken here before the command name: their callback does
    the work."""


def _results(ctx: typer.Context):
    """The console for results: stdout (the real one, also under --debug)."""
    return ui.make_console(file=ctx.find_root().obj.stdout)


def _show(ctx: typer.Context, result, json_output: bool, render) -> None:
    """A command's result on stdout: one JSON object, or rendered for people."""
    console = _results(ctx)
    if json_output:
        ui.print_json(console, result)
    else:
        render(console, result)


class Style(str, Enum):
    direction = "direction"
    lux = "lux"


DeviceOption = Annotated[
    str,
    typer.Option(
        "--device",
        "-d",
        help="auto, cpu, cuda, amd, metal, or a tinygrad device such as CPU:LLVM.",
        rich_help_panel=DEVICE,
    ),
]
# the options eval, predict and plot share
ThresholdOption = Annotated[
    float,
    typer.Option(
        help="Two-class models: the probability of the second class above which it is predicted.",
        rich_help_panel=INFERENCE,
    ),
]
BatchSizeOption = Annotated[int, typer.Option(help="Sequences per forward pass.", rich_help_panel=INFERENCE)]
ForceOption = Annotated[
    bool, typer.Option("--force", metavar="", help="Replace files that exist.", rich_help_panel=OUTPUT)
]
CheckpointArgument = Annotated[
    Path,
    typer.Argument(
        metavar="CHECKPOINT", help="A checkpoint from train (best.safetensors, last.safetensors)."
    ),
]


@app.command("gen-data")
def gen_data(
    ctx: typer.Context,
    out_dir: Annotated[
        str, typer.Argument(metavar="OUT_DIR", help="Folder to write train/val/test.safetensors into.")
    ],
    sequences: Annotated[
        int, typer.Option(help="Sequences in all splits together (even).", rich_help_panel=DATA)
    ] = 1000,
    length: Annotated[
        str,
        typer.Option(
            metavar="N|MIN:MAX",
            help="Points per sequence, or MIN:MAX to draw each sequence's length uniformly from MIN to MAX.",
            rich_help_panel=DATA,
        ),
    ] = "50",
    noise: Annotated[
        float, typer.Option(help="Standard deviation of the Gaussian noise.", rich_help_panel=DATA)
    ] = 0.1,
    style: Annotated[
        Style,
        typer.Option(
            help="direction: label = true turning direction, random rotation. "
            "lux: the Lux tutorial's make_spiral arms, which both turn the same way "
            "and differ only in where they start.",
            rich_help_panel=DATA,
        ),
    ] = Style.direction,
    val_fraction: Annotated[
        float, typer.Option(help="Share of sequences for validation.", rich_help_panel=SPLITS)
    ] = 0.2,
    test_fraction: Annotated[
        float, typer.Option(help="Share of sequences for a test split (0: none).", rich_help_panel=SPLITS)
    ] = 0.0,
    seed: Annotated[
        int, typer.Option(help="Random seed; same arguments, same bytes.", rich_help_panel=DATA)
    ] = 0,
    force: ForceOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Write a spiral dataset (clockwise vs anticlockwise) to OUT_DIR.

    **Example**

    spiralctl gen-data data/ --test-fraction 0.2
    """
    from spiralctl.data import DataConfig, parse_length

    shortest, longest = parse_length(length)
    config = DataConfig(
        sequences=sequences,
        length=longest,
        min_length=shortest if shortest != longest else None,
        noise=noise,
        style=style.value,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )
    _show(ctx, commands.gen_data(config, out_dir, force=force), json_output, ui.datasets_table)


@app.command("import")
def import_data(
    ctx: typer.Context,
    input: Annotated[
        str,
        typer.Argument(
            metavar="TRAIN",
            help="Labelled sequences: a .ts file (sktime/aeon); the UCR archive's .tsv/.txt/.csv (label "
            "first, then the values); a long CSV (columns sequence, label and one per feature); a JSON "
            'list of {"points": [[...], ...], "label": ...}; .npy [N, T, D] with --labels; .npz with '
            "x, y (and lengths); or ucr:NAME for an archive set (its official train/test split).",
        ),
    ],
    out_dir: Annotated[
        Path, typer.Argument(metavar="OUT_DIR", help="Folder to write train/val/test.safetensors into.")
    ],
    test: Annotated[
        str | None,
        typer.Option(
            help="The official test split, any of TRAIN's formats: kept whole as test.safetensors.",
            rich_help_panel=SPLITS,
        ),
    ] = None,
    val: Annotated[
        str | None,
        typer.Option(
            help="A validation file of its own (default: carved from TRAIN by --val-fraction).",
            rich_help_panel=SPLITS,
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="For a .npy TRAIN: a .npy array [N] of labels (class names).", rich_help_panel=DATA
        ),
    ] = None,
    val_fraction: Annotated[
        float,
        typer.Option(
            help="Share of each class of TRAIN for validation (0: none; train on all of TRAIN).",
            rich_help_panel=SPLITS,
        ),
    ] = 0.2,
    test_fraction: Annotated[
        float,
        typer.Option(
            help="Share of each class for a test split, without --test (0: none).", rich_help_panel=SPLITS
        ),
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed of the split.", rich_help_panel=SPLITS)] = 0,
    force: ForceOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Turn your own labelled sequences into a dataset to train on.

    Sequences have D >= 1 features per point and any lengths (2 points or more); labels are any
    class names (K >= 2 classes). Validation is carved from TRAIN only, stratified and seeded;
    an official test split given with --test stays whole.

    **Examples**

    spiralctl import BasicMotions_TRAIN.ts data/ --test BasicMotions_TEST.ts

    spiralctl import ucr:GunPoint data/gunpoint

    spiralctl import strokes.csv data/ --test-fraction 0.2
    """
    result = commands.import_dataset(
        input,
        out_dir,
        labels=labels,
        test=test,
        val=val,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        force=force,
        given=frozenset(name for name in ("val_fraction", "test_fraction") if _given(ctx, name)),
    )
    _show(ctx, result, json_output, ui.datasets_table)


class Schedule(str, Enum):
    constant = "constant"
    cosine = "cosine"


class Normalize(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"


class ClassWeight(str, Enum):
    none = "none"
    balanced = "balanced"


def _apply_config(ctx: typer.Context, param, path: Path | None) -> Path | None:
    """--config: the file's options become the defaults, so options given on the command line win
    (Click's own precedence)."""
    if path is not None:
        options = load_run_options(path)
        ctx.default_map = {**(ctx.default_map or {}), **options}
    return path


@app.command()
def train(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            help="Take the options from a run's config.json (repeats that run); "
            "options given here override the file.",
            rich_help_panel=RUN,
            is_eager=True,
            callback=_apply_config,
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Folder with train.safetensors and val.safetensors. "
            "Without it: the default dataset, generated from --seed.",
            rich_help_panel=DATA,
        ),
    ] = None,
    device: DeviceOption = "auto",
    hidden: Annotated[int, typer.Option(help="LSTM hidden size.", rich_help_panel=MODEL)] = 8,
    epochs: Annotated[
        int, typer.Option(help="Epochs in total (also when resuming).", rich_help_panel=OPTIMIZE)
    ] = 25,
    batch_size: Annotated[
        int,
        typer.Option(help="Sequences per step (at most the training set's size).", rich_help_panel=OPTIMIZE),
    ] = 128,
    lr: Annotated[float, typer.Option(help="Adam learning rate.", rich_help_panel=OPTIMIZE)] = 0.01,
    lr_schedule: Annotated[
        Schedule,
        typer.Option(
            help="constant, or cosine: from --lr down to 0 over all steps of --epochs.",
            rich_help_panel=OPTIMIZE,
        ),
    ] = Schedule.constant,
    patience: Annotated[
        int,
        typer.Option(
            help="Stop early after this many epochs without a lower validation loss (0: never).",
            rich_help_panel=OPTIMIZE,
        ),
    ] = 0,
    seed: Annotated[
        int,
        typer.Option(help="Seed for weights, shuffling and the default data.", rich_help_panel=OPTIMIZE),
    ] = 0,
    normalize: Annotated[
        Normalize,
        typer.Option(
            help="Z-score each feature with the training split's mean and std (kept in the checkpoint; "
            "eval, predict and export apply it): auto does for imported data, not for generated spirals.",
            rich_help_panel=DATA,
        ),
    ] = Normalize.auto,
    class_weight: Annotated[
        ClassWeight,
        typer.Option(
            help="balanced: weigh each class's loss by n / (K n_k) of the training split (imbalanced data).",
            rich_help_panel=OPTIMIZE,
        ),
    ] = ClassWeight.none,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Run folder (default: a new runs/train-N; with --resume: the checkpoint's folder, "
            "or a new folder to branch into).",
            rich_help_panel=RUN,
        ),
    ] = None,
    exist_ok: Annotated[
        bool,
        typer.Option(
            "--exist-ok",
            metavar="",
            help="Write into an existing folder that holds no run.",
            rich_help_panel=RUN,
        ),
    ] = False,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue the run saved in this checkpoint (its data and settings) up to --epochs.",
            rich_help_panel=RUN,
        ),
    ] = None,
    save_every: Annotated[
        int,
        typer.Option(
            help="Also keep epoch-N.safetensors every this many epochs (0: only best and last).",
            rich_help_panel=RUN,
        ),
    ] = 0,
    plots: Annotated[
        bool,
        typer.Option(
            metavar="",
            help="Draw loss.png and accuracy.png into the run folder (needs spiralctl[plot]).",
            rich_help_panel=OUTPUT,
        ),
    ] = True,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
    json_output: JsonOption = False,
    json_progress: Annotated[
        bool,
        typer.Option(
            "--json-progress",
            metavar="",
            help="Also one JSON object per epoch on stdout, as it finishes (implies --json).",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Train the LSTM classifier; writes checkpoints, metrics and plots to a run folder.

    A run folder (runs/train-1, runs/train-2, ...) holds config.json, best.safetensors,
    last.safetensors, metrics.jsonl, metrics.csv, loss.png and accuracy.png. Ctrl-C or SIGTERM
    saves last.safetensors; --resume continues exactly where it stopped.

    **Examples**

    spiralctl train

    spiralctl train --data data/ --epochs 40 --patience 5 --lr-schedule cosine

    spiralctl train --config runs/train-3/config.json --seed 1

    spiralctl train --resume runs/train-3/last.safetensors --epochs 50
    """
    settings = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        hidden=hidden,
        lr=lr,
        seed=seed,
        lr_schedule=lr_schedule.value,
        patience=patience,
        save_every=save_every,
        normalize=normalize.value,
        class_weight=class_weight.value,
    )
    given = frozenset(name for name in RUN_OPTIONS if ctx.get_parameter_source(name).name != "DEFAULT")
    json_output = json_output or json_progress
    console = _results(ctx)
    progress = ui.TrainProgress(ui.make_console(stderr=True), quiet=quiet, verbose=verbose, setting=flag)

    def on_progress(event: str, info: dict) -> None:
        progress(event, info)
        if json_progress and event == "epoch":
            ui.print_json(console, {"event": "epoch", **info})

    try:
        result = commands.train(
            settings,
            data_dir=data,
            out=out,
            exist_ok=exist_ok,
            resume_path=resume,
            device=device,
            plots=plots,
            given=given,
            on_progress=on_progress,
        )
    finally:
        progress.close()
    if json_output:
        ui.print_json(console, {"event": "summary", **result})
    else:
        ui.train_summary(console, result)
    if "plots_unavailable" in result and not quiet:
        ui.note(f"no loss.png/accuracy.png: {result['plots_unavailable']}")


class Metric(str, Enum):
    val_loss = "val_loss"
    val_accuracy = "val_accuracy"


class Pruner(str, Enum):
    median = "median"
    none = "none"


SEARCH, STUDY = "Search space", "Study"


def _space_option(default: str, what: str):
    return typer.Option(help=f"{what} to search (default {default}).", rich_help_panel=SEARCH)


@app.command()
def tune(
    ctx: typer.Context,
    trials: Annotated[
        int | None,
        typer.Option(help="Finished trials the study should hold, over all workers.", rich_help_panel=STUDY),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Folder with train/val.safetensors (default: generated).", rich_help_panel=DATA),
    ] = None,
    study: Annotated[
        str, typer.Option(help="Study name, shared by all its workers.", rich_help_panel=STUDY)
    ] = ("spiralctl"),
    storage: Annotated[
        str | None,
        typer.Option(
            help="Optuna storage: a database URL (postgresql://user:pass@host/db, sqlite:///f.db) or a "
            "journal file. Default: $SPIRALCTL_STORAGE, else OUT/study.journal. Prefer the environment "
            "variable for URLs with a password.",
            rich_help_panel=STUDY,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Tune folder: trial-K run folders (default runs/tune-STUDY).", rich_help_panel=RUN),
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            "--device",
            "-d",
            help="As for train; several, comma-separated (cuda:0,cuda:1), run one worker each.",
            rich_help_panel=DEVICE,
        ),
    ] = "auto",
    workers: Annotated[
        int | None,
        typer.Option(help="Local worker processes (default: one per device).", rich_help_panel=STUDY),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Epochs per trial.", rich_help_panel=OPTIMIZE)] = 25,
    metric: Annotated[
        Metric,
        typer.Option(help="What the search optimises (best epoch of each trial).", rich_help_panel=STUDY),
    ] = Metric.val_loss,
    space: Annotated[
        Path | None,
        typer.Option(
            help="Search space from a JSON or TOML file; options below override it.", rich_help_panel=SEARCH
        ),
    ] = None,
    hidden: Annotated[str | None, _space_option("4,8,16,32", "LSTM hidden sizes")] = None,
    lr: Annotated[
        str | None, _space_option("1e-4:1e-1:log", "Learning rates, LOW:HIGH[:log] or a list,")
    ] = None,
    batch_size: Annotated[str | None, _space_option("32,64,128", "Batch sizes")] = None,
    lr_schedule: Annotated[str | None, _space_option("constant,cosine", "Learning-rate schedules")] = None,
    seed: Annotated[str | None, _space_option("0", "Seeds")] = None,
    pruner: Annotated[
        Pruner, typer.Option(help="Stop poor trials early (median of earlier trials).", rich_help_panel=STUDY)
    ] = Pruner.median,
    sampler_seed: Annotated[
        int | None, typer.Option(help="Seed of the TPE sampler (worker i: seed + i).", rich_help_panel=STUDY)
    ] = None,
    heartbeat: Annotated[
        int,
        typer.Option(
            help="Database workers' heartbeat, seconds; a trial silent for 3 is failed and run again.",
            rich_help_panel=STUDY,
        ),
    ] = 10,
    show: Annotated[
        str | None,
        typer.Option(
            metavar="DIR|URL",
            help="Print the study in a tune folder or database and exit (-: the study of --storage, "
            "$SPIRALCTL_STORAGE or --out).",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    plots: Annotated[
        bool,
        typer.Option(
            metavar="", help="Plots in every trial folder and of the search.", rich_help_panel=OUTPUT
        ),
    ] = True,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
    json_output: JsonOption = False,
    json_progress: Annotated[
        bool,
        typer.Option(
            "--json-progress",
            metavar="",
            help="Also one JSON object per finished trial (implies --json).",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Search hyperparameters with Optuna; every trial is a run folder OUT/trial-K.

    Run it again, or on other machines with the same --study and a database --storage, to go on
    with the same study. Needs Optuna: pip install "spiralctl[tune]".

    **Examples**

    spiralctl tune --data data/ --trials 40 --epochs 20

    spiralctl tune --trials 20 --hidden 8,16 --lr 1e-3:3e-2:log --workers 2

    SPIRALCTL_STORAGE=postgresql://me:pw@db/tune spiralctl tune --trials 200 --study big

    spiralctl tune --show runs/tune-spiralctl
    """
    from rich.text import Text

    from spiralctl import tune as tuning
    from spiralctl import ui_tune

    out = out if out is not None else Path("runs") / f"tune-{study}"
    console = _results(ctx)
    json_output = json_output or json_progress
    if show is not None:
        if show == "-":
            show = storage or (None if os.environ.get(tuning.ENV_STORAGE) else str(out))
        summary = tuning.show(show, study)
        _show(ctx, summary, json_output, ui_tune.tune_summary)
        return
    if trials is None:
        raise SpiralError("is required: how many finished trials the study should hold", option="trials")
    options = {"hidden": hidden, "lr": lr, "batch_size": batch_size, "lr_schedule": lr_schedule, "seed": seed}
    config = tuning.TuneConfig(
        trials=trials,
        space=tuning.search_space(space, options),
        epochs=epochs,
        metric=metric.value,
        pruner=pruner.value,
        sampler_seed=sampler_seed,
        heartbeat=heartbeat,
    )
    stderr = ui.make_console(stderr=True)
    progress = ui_tune.TuneProgress(stderr, quiet=quiet)

    def on_progress(event: str, info: dict) -> None:
        progress(event, info)
        if verbose and event == "trial_epoch":  # above the live table, in a terminal
            stderr.print(Text(ui.trial_epoch_line(info)))  # Text: the live table keeps its markup
        if json_progress and event == "trial":
            ui.print_json(console, {"event": "trial", **info})

    try:
        summary = tuning.tune(
            config,
            out=out,
            study=study,
            storage=storage,
            data_dir=data,
            device=device,
            workers=workers,
            plots=plots,
            on_progress=on_progress,
        )
    finally:
        progress.close()
    if json_output:
        ui.print_json(console, {"event": "summary", **summary})
    else:
        ui_tune.tune_summary(console, summary)


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the user gave the option (not its default)."""
    return ctx.get_parameter_source(name).name != "DEFAULT"


def _inference(device: str, batch_size: int, threshold: float) -> InferenceOptions:
    return InferenceOptions(device=device, batch_size=batch_size, threshold=threshold)


@app.command("eval")
def evaluate(
    ctx: typer.Context,
    checkpoint: CheckpointArgument,
    data: Annotated[
        Path,
        typer.Argument(
            metavar="DATA",
            help="Labelled sequences: a dataset (e.g. data/test.safetensors from gen-data or import), or a "
            "labelled file of any format import reads (.ts, .tsv, CSV with a label column, JSON, .npz).",
        ),
    ],
    device: DeviceOption = "auto",
    batch_size: BatchSizeOption = 128,
    threshold: ThresholdOption = 0.5,
    min_accuracy: Annotated[
        float | None,
        typer.Option(
            help="Exit with code 1 when the accuracy is below this (for CI pipelines).",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    confusion: Annotated[
        Path | None,
        typer.Option(
            help="Also draw the confusion matrix into this PNG (needs spiralctl[plot]).",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Report loss, accuracy, balanced accuracy, macro F1, per-class precision/recall/F1 and the
    K x K confusion matrix.

    **Example**

    spiralctl eval runs/train-1/best.safetensors data/test.safetensors
    """
    if min_accuracy is not None:
        commands.check_accuracy_bound(min_accuracy)
    report = commands.evaluate(
        checkpoint,
        data,
        _inference(device, batch_size, threshold),
        threshold_given=_given(ctx, "threshold"),
        confusion_png=confusion,
        force=force,
    )
    _show(ctx, report, json_output, ui.eval_report)
    if min_accuracy is not None:
        commands.check_min_accuracy(report, min_accuracy)


@app.command()
def predict(
    ctx: typer.Context,
    checkpoint: CheckpointArgument,
    input: Annotated[
        str,
        typer.Argument(
            metavar="INPUT",
            help="A dataset .safetensors, a .npy array [T, D] or [N, T, D], a CSV with header sequence and "
            "one column per feature (a label column too, shown beside the prediction), a JSON list of "
            "points (or of such lists), a .ts or UCR file, or - for CSV/JSON on stdin.",
        ),
    ],
    device: DeviceOption = "auto",
    batch_size: BatchSizeOption = 128,
    threshold: ThresholdOption = 0.5,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Also write the predictions to this CSV file.", rich_help_panel=OUTPUT
        ),
    ] = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Classify sequences of any length: each one's most probable class and its probability.

    **Example**

    spiralctl predict runs/train-1/best.safetensors points.csv
    """
    from contextlib import ExitStack

    from spiralctl.storage import atomic_output, check_output

    if output is not None:
        check_output(output, force)
    if input == "-" and sys.stdin.isatty() and not quiet:
        ui.note("reading sequences (CSV or JSON) from the terminal; end with Ctrl-D")
    blocks = commands.predict_blocks(
        checkpoint, input, _inference(device, batch_size, threshold), threshold_given=_given(ctx, "threshold")
    )
    stream = ui.PredictionStream(_results(ctx), json_output, ui.prediction_csv_lines)
    with ExitStack() as files:
        # the file is written as the blocks come and renamed into place at the end
        file = files.enter_context(atomic_output(output, "w")) if output is not None else None
        for block in blocks:
            if file is not None:
                file.write(ui.prediction_csv_lines(block, header=stream.total == 0))
            stream.add(block)
            if stream.closed and file is None:
                break
        blocks.close()
    stream.finish()


@app.command()
def plot(
    ctx: typer.Context,
    data: Annotated[
        str,
        typer.Argument(
            metavar="INPUT",
            help="Sequences to draw: a dataset .safetensors, or anything predict reads (- for stdin).",
        ),
    ],
    out: Annotated[
        Path, typer.Option("--output", "-o", help="The PNG file to write.", rich_help_panel=OUTPUT)
    ],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Colour by this checkpoint's predictions and mark its mistakes.", rich_help_panel=INFERENCE
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option(help="Draw the first this many sequences.", rich_help_panel=DATA)
    ] = 36,
    device: DeviceOption = "auto",
    threshold: ThresholdOption = 0.5,
    force: ForceOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Draw sequences, coloured by label, or by a model's prediction with mistakes marked.

    One small panel per sequence: its path, a dot where it starts, an arrow where it ends.
    Needs matplotlib: pip install "spiralctl[plot]".

    **Examples**

    spiralctl plot data/test.safetensors -o test.png

    spiralctl plot data/test.safetensors --checkpoint runs/train-1/best.safetensors -o mistakes.png
    """
    options = _inference(device, 128, threshold)
    report = commands.plot(
        data,
        out,
        checkpoint=checkpoint,
        options=options,
        limit=limit,
        force=force,
        threshold_given=_given(ctx, "threshold"),
    )
    _show(ctx, report, json_output, ui.plot_report)


@app.command()
def export(
    ctx: typer.Context,
    checkpoint: CheckpointArgument,
    out: Annotated[Path, typer.Argument(metavar="OUT", help="The ONNX file to write (.onnx).")],
    force: ForceOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Export a checkpoint to ONNX (the standard LSTM operator, opset 17).

    The model takes one input, "sequences": float32 [batch, time, 2] (x, y points; any batch
    size and length), and gives two outputs, each float32 [batch]: "probability"
    (P(anticlockwise); above 0.5 means anticlockwise) and "logit". Needs the onnx package:
    pip install "spiralctl[onnx]".

    **Example**

    spiralctl export runs/train-1/best.safetensors spiral.onnx
    """
    _show(ctx, commands.export(checkpoint, out, force=force), json_output, ui.export_report)


@app.command()
def info(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A dataset or checkpoint .safetensors file.")],
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Show what a dataset or checkpoint holds: kind, format, tensors, configs, checksum.

    **Example**

    spiralctl info runs/train-1/best.safetensors
    """
    _show(ctx, commands.info(file), json_output, ui.file_info)


@app.command()
def devices(
    ctx: typer.Context,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Show which backends work here, the tinygrad devices behind them, and why not the others.

    **Example**

    spiralctl devices --json
    """
    _show(ctx, commands.devices(), json_output, ui.devices_table)


def main() -> None:
    try:
        command = typer.main.get_command(app)  # reads every option's annotations: about 0.05 s
    except KeyboardInterrupt:  # before SpiralGroup.main's own guard: the same answer
        ui.error_line("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except Terminated:
        ui.error_line("terminated")
        sys.exit(EXIT_TERMINATED)
    command(prog_name="spiralctl")
