"""The command line in a shell: pipes that close, outputs that are files, odd arguments, bare commands."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
from helpers import installed, shell

from spiralctl import commands
from spiralctl.checkpoint import load_checkpoint
from spiralctl.data import DataConfig, generate, save_datasets


@installed
def test_predict_into_a_pipe_that_closes_early(trained_run, tmp_path):
    """2000 rows are far more than a pipe holds: head's early exit breaks the pipe mid-output."""
    save_datasets(tmp_path / "many", generate(DataConfig(sequences=2500, length=6, seed=2)))
    checkpoint = trained_run / "best.safetensors"
    result = shell(f"spiralctl predict {checkpoint} {tmp_path}/many/train.safetensors --json | head -1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["points"] == 6 and result.stderr == ""


@installed
def test_training_goes_on_when_its_progress_pipe_closes(small_data, tmp_path):
    run = tmp_path / "run"
    args = f"--data {small_data} --out {run} --epochs 4 --hidden 4 --batch-size 32 --no-plots"
    result = shell(f"spiralctl train {args} --json-progress | head -1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["epoch"] == 1
    assert "Traceback" not in result.stderr and "error" not in result.stderr
    assert load_checkpoint(run / "last.safetensors").epoch == 4


@installed
@pytest.mark.parametrize("command", ["--help", "train --help", "--version"])
def test_help_and_version_into_a_pipe_that_closes_early(command):
    result = shell(f"spiralctl {command} | head -c 1")
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_help_leaves_typers_console_as_it_was(run):
    from rich.console import Console
    from typer import rich_utils

    assert run("--help").exit_code == 0 and run("train", "-h").exit_code == 0
    assert rich_utils.Console is Console  # swapped for the help pages only


@installed
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a device that is always full)")
@pytest.mark.parametrize(
    "command", ["predict", "train", "gen-data", "--help", "train --help", "train -vh", "--version"]
)
def test_a_full_standard_output_is_one_error_line_not_a_bug(trained_run, small_data, tmp_path, command):
    checkpoint = trained_run / "best.safetensors"
    args = {
        "predict": f"predict {checkpoint} {small_data}/test.safetensors",
        "train": f"train --data {small_data} --out {tmp_path}/run --epochs 1 --hidden 4 --batch-size 32",
        "gen-data": f"gen-data {tmp_path}/data --sequences 20",
    }.get(command, command)
    result = shell(f"spiralctl {args} > /dev/full")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (
        "error: cannot write to standard output: No space left on device; "
        "free some space or send the output elsewhere"
    )
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    if command == "train":  # the run itself finished and was saved before the summary failed
        assert load_checkpoint(tmp_path / "run" / "last.safetensors").epoch == 1


def test_bare_spiralctl_shows_help_without_an_empty_error(run):
    result = run()
    assert result.exit_code == 2 and "Usage" in result.stdout + result.stderr
    assert "error:" not in result.stdout + result.stderr


@pytest.mark.parametrize("device", ["gpu", "llvm", "", "disk"])
def test_names_that_are_not_devices(run, trained_run, small_data, device):
    result = run("eval", trained_run / "best.safetensors", small_data / "val.safetensors", "--device", device)
    assert result.exit_code == 2 and result.stdout == ""
    named = device or repr(device)
    assert result.stderr.startswith(f"error: --device {named} is not a device; use one of auto")
    assert len(result.stderr.splitlines()) == 1 and "ModuleNotFound" not in result.stderr


def test_tables_written_to_a_pipe_keep_every_value_whole(run, trained_run, tmp_path):
    deep = tmp_path / ("a-folder-with-a-long-name-" * 4) / "checkpoint-with-a-long-name.safetensors"
    deep.parent.mkdir(parents=True)
    shutil.copy(trained_run / "best.safetensors", deep)
    result = run("info", deep)
    assert result.exit_code == 0 and str(deep) in result.stdout  # one piece, on one line


def test_choice_errors_read_as_plain_words(run):
    result = run("train", "--lr-schedule", "foo")
    assert result.exit_code == 2 and "Value error" not in result.stderr
    assert result.stderr.startswith("error: ") and "'foo' is not one of" in result.stderr


def test_predict_output_files_follow_the_force_rule(run, trained_run, small_data, tmp_path):
    checkpoint, data = trained_run / "best.safetensors", small_data / "val.safetensors"
    out = tmp_path / "predictions.csv"
    assert run("predict", checkpoint, data, "-o", out).exit_code == 0
    lines = out.read_text().splitlines()
    assert lines[0] == (
        "sequence,points,label,probability,probability_clockwise,probability_anticlockwise,true_label"
    )
    assert len(lines) == 31
    assert {line.rsplit(",", 1)[1] for line in lines[1:]} <= {"clockwise", "anticlockwise"}
    result = run("predict", checkpoint, data, "-o", out)
    assert result.exit_code == 2 and "--force" in result.stderr and result.stdout == ""
    assert run("predict", checkpoint, data, "-o", out, "--force").exit_code == 0


def test_info_on_a_checkpoint_saved_inside_an_epoch(run, tmp_path, small_data):
    import signal

    def stop_at_step_1(event: str, info: dict) -> None:
        if event == "batch" and info["epoch"] == 2 and info["batch"] == 1:
            os.kill(os.getpid(), signal.SIGINT)

    from spiralctl.config import TrainConfig
    from spiralctl.errors import Interrupted

    with pytest.raises(Interrupted):
        config = TrainConfig(epochs=3, batch_size=16, hidden=4)
        commands.train(
            config, data_dir=small_data, out=tmp_path / "r", device="cpu", on_progress=stop_at_step_1
        )
    result = run("info", tmp_path / "r" / "last.safetensors")
    assert "1 finished, and 1 step of epoch 2" in result.stdout
    assert json.loads(run("info", tmp_path / "r" / "last.safetensors", "--json").stdout)["partial_steps"] == 1


def test_help_shows_flags_without_a_value_and_arguments_by_name(run):
    help_text = run("gen-data", "--help").stdout
    assert "OUT_DIR" in help_text and "{out_dir}" not in help_text
    force = next(line for line in help_text.splitlines() if "--force" in line)
    assert "<bool>" not in force
    train_help = run("train", "--help").stdout
    for option in ("--exist-ok", "--quiet", "--json-progress", "--no-plots"):
        line = next(line for line in train_help.splitlines() if option in line)
        assert "<bool>" not in line, line


@pytest.mark.parametrize(
    "args, text",
    [
        (["gen-data", ""], "OUT_DIR is empty"),
        (["gen-data", "g", "--noise", "1e40"], "--noise must be a number from 0 to 1e+06"),
        (["train", "--out", " "], "--out is empty"),
        (["train", "-q", "-v"], "--quiet and --verbose ask for opposite things"),
        (["eval", "{ckpt}", "{data}", "--min-accuracy", "1.1"], "--min-accuracy must be between 0 and 1"),
        (["eval", "{ckpt}", "{data}", "--min-accuracy", "nan"], "--min-accuracy must be between 0 and 1"),
        (["eval", "{ckpt}", "{data}", "--device", "NULL"], "--device NULL is not a device"),
    ],
)
def test_more_bad_options_get_one_line(run, trained_run, small_data, args, text):
    fill = {"ckpt": trained_run / "best.safetensors", "data": small_data / "val.safetensors"}
    result = run(*(a.format(**fill) for a in args))
    assert result.exit_code == 2 and result.stdout == "" and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"error: {text}"), result.stderr


def test_a_folder_in_use_says_so_first(run, small_data, tmp_path):
    from spiralctl.runs import run_lock

    folder = tmp_path / "busy"
    folder.mkdir()
    (folder / "last.safetensors").write_bytes(b"")  # looks like a run, but another training holds it
    with run_lock(folder):
        result = run("train", "--data", small_data, "--out", folder, "--exist-ok")
    assert result.exit_code == 2 and "is in use by another training" in result.stderr


def test_plots_that_cannot_be_written_do_not_fail_a_finished_run(run, small_data, tmp_path, monkeypatch):
    import spiralctl.plots
    from spiralctl.errors import WriteFailed

    def full(figure, path):
        raise WriteFailed(str(path), "No space left on device")

    monkeypatch.setattr(spiralctl.plots, "_save", full)
    out = tmp_path / "r"
    result = run(
        "train", "--data", small_data, "--out", out, "--epochs", 1, "--hidden", 4, "--batch-size", 32
    )
    assert result.exit_code == 0, result.stderr
    assert "note: no loss.png/accuracy.png: cannot write" in result.stderr
    assert load_checkpoint(out / "last.safetensors").epoch == 1


def test_a_killed_runs_temporary_files_are_cleared_by_its_resume(trained_run, tmp_path):
    run_dir = Path(shutil.copytree(trained_run, tmp_path / "run"))
    stale = run_dir / ".best.safetensors.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    from spiralctl.config import TrainConfig

    commands.train(TrainConfig(epochs=3), resume_path=run_dir / "last.safetensors", device="cpu", plots=False)
    assert not stale.exists()


@pytest.fixture
def sigterm_handler_kept():
    """entry.main() sets this process's SIGTERM handler, as it does for the command: put it back."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def _raise_signal(signum: int):
    """The exception a signal raises in spiralctl: KeyboardInterrupt for a Ctrl-C, Terminated for
    a SIGTERM (its handler, set as the command starts)."""
    from spiralctl.errors import Terminated

    return KeyboardInterrupt if signum == signal.SIGINT else Terminated


SIGNALS = [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]


@pytest.mark.parametrize("signum, code, message", SIGNALS, ids=["ctrl-c", "sigterm"])
def test_a_signal_while_the_command_loads_is_one_line(
    monkeypatch, capsys, sigterm_handler_kept, signum, code, message
):
    import builtins

    from spiralctl import entry

    real_import = builtins.__import__

    def importing(name, *args, **kwargs):
        if name == "spiralctl.cli":  # the signal, while Python loads the command line
            raise _raise_signal(signum)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", importing)
    with pytest.raises(SystemExit) as exit:
        entry.main()
    assert exit.value.code == code
    assert capsys.readouterr().err == f"error: {message}\n"


def test_the_command_raises_terminated_on_sigterm_from_its_start(monkeypatch, sigterm_handler_kept):
    import builtins

    from spiralctl import entry
    from spiralctl.errors import Terminated

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    real_import = builtins.__import__

    def importing(name, *args, **kwargs):
        if name == "spiralctl.cli":  # the first thing the command does after setting its handler
            signal.raise_signal(signal.SIGTERM)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", importing)
    with pytest.raises(SystemExit) as exit:
        entry.main()
    assert exit.value.code == 143 and isinstance(exit.value.__context__, Terminated)


def test_a_sigterm_the_command_was_started_ignoring_stays_ignored(sigterm_handler_kept):
    from spiralctl.errors import terminate_on_sigterm

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    terminate_on_sigterm()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN


@pytest.mark.parametrize("signum, code, message", SIGNALS, ids=["ctrl-c", "sigterm"])
def test_a_signal_while_the_command_line_is_built_is_one_line(monkeypatch, capsys, signum, code, message):
    import typer

    from spiralctl import cli

    def interrupted(app):  # the signal, while Typer reads the options' annotations
        raise _raise_signal(signum)

    monkeypatch.setattr(typer.main, "get_command", interrupted)
    with pytest.raises(SystemExit) as exit:
        cli.main()
    assert exit.value.code == code
    assert capsys.readouterr().err == f"error: {message}\n"


@pytest.mark.parametrize("signum, code, message", SIGNALS, ids=["ctrl-c", "sigterm"])
def test_a_signal_before_a_run_starts_says_so(run, small_data, monkeypatch, signum, code, message):
    def interrupted(*args, **kwargs):  # before train() sets up its own signal handling
        raise _raise_signal(signum)

    monkeypatch.setattr(commands, "resolve_device", interrupted)
    result = run("train", "--data", small_data, "--out", "run", "--epochs", 1)
    assert result.exit_code == code
    assert result.stderr == f"error: {message}\n" and result.stdout == ""
    assert not Path("run").exists()


# ---------------------------------------------------------------------------------------------
# tables in a pipe or a file


def test_named_values_in_a_pipe_are_name_value_lines(run, trained_run, small_data):
    """info, eval's and train's summaries: `name: value`, each value whole on its line, however
    long; in a terminal, a table."""
    checkpoint = trained_run / "best.safetensors"
    lines = run("info", checkpoint).stdout.splitlines()
    named = lines[: lines.index("tensors")]
    assert named[0] == str(checkpoint) and "kind: checkpoint" in named
    assert "resumable: yes (optimizer state stored)" in named
    metrics = next(line for line in named if line.startswith("metrics: "))
    assert json.loads(metrics.removeprefix("metrics: "))["epoch"] == 2  # one piece, however wide
    assert all(": " in line and "│" not in line for line in named[1:])

    evaluated = run("eval", checkpoint, small_data / "test.safetensors").stdout.splitlines()
    assert evaluated[0] == f"{small_data}/test.safetensors (30 sequences, 2 classes)"
    assert evaluated[1].startswith("accuracy: 0.") and evaluated[4].startswith("loss: ")
    assert evaluated[5] == "threshold: 0.5" and evaluated[6] == "per class"

    args = (
        "--data",
        small_data,
        "--out",
        "r",
        "--epochs",
        1,
        "--hidden",
        4,
        "--batch-size",
        32,
        "--no-plots",
    )
    trained = run("train", *args, "-q").stdout.splitlines()
    assert trained[:3] == ["training finished", "run folder: r", "epochs: 1"]
    assert "files: config.json, metrics.csv" in trained

    terminal = run("info", checkpoint, env={"TTY_COMPATIBLE": "1", "NO_COLOR": "1", "COLUMNS": "100"})
    drawn = re.sub(r"\x1b\[[0-9;]*m", "", terminal.stdout)  # bold and italic are not colours
    assert "│ kind " in drawn and max(map(len, drawn.splitlines())) <= 100


@installed
def test_info_into_a_pipe_is_as_wide_as_its_values(trained_run):
    checkpoint = trained_run / "best.safetensors"
    lines = shell(f"spiralctl info {checkpoint} | cat").stdout.splitlines()
    widest = max(lines, key=len)
    assert widest.startswith("metrics: {") and widest == widest.rstrip()
    assert not any("│" in line for line in lines[: lines.index("tensors")])


def test_grid_tables_in_a_pipe_are_as_wide_as_what_they_hold(run, trained_run, small_data, tmp_path):
    rows = ["sequence,label,x"]
    for i in range(40):  # eight classes: many columns
        rows += [f"s{i},class-{i % 8},{t}" for t in range(3)]
    (tmp_path / "wide.csv").write_text("\n".join(rows) + "\n")
    outputs = {
        "import": run("import", "wide.csv", "w", "--val-fraction", 0.25),
        "gen-data": run("gen-data", "g", "--sequences", 20),
        "eval": run("eval", trained_run / "best.safetensors", small_data / "test.safetensors"),
        "devices": run("devices"),
        "info": run("info", small_data / "test.safetensors"),
    }
    for command, result in outputs.items():
        assert result.exit_code == 0, (command, result.output)
        lines = result.stdout.splitlines()
        assert all(line == line.rstrip() for line in lines), command  # nothing padded
        for line in lines:
            if line[:1] in "┏┃┡│└":  # a row of a table: the table's own width, never the console's
                assert len(line) < 250, (command, len(line))
    header = next(line for line in outputs["import"].stdout.splitlines() if "class-0" in line)
    assert all(f"class-{k}" in header for k in range(8)) and len(header) < 150


# ---------------------------------------------------------------------------------------------
# a standard error that cannot be written


@installed
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a device that is always full)")
@pytest.mark.parametrize(
    "args, code",
    [
        ("eval nope x", 2),
        ("--debug eval nope x", 2),
        ("eval nope", 2),
        ("nonsense", 2),
        ("train --epochs 0", 2),
        ("info nope.safetensors -q -v", 2),
        ("--version", 0),
    ],
)
def test_an_exit_code_stays_when_standard_error_cannot_be_written(args, code):
    result = shell(f"spiralctl {args} 2>/dev/full")
    assert result.returncode == code, result.stderr
