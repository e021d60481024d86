"""End to end through Typer's CliRunner: every command, its JSON, and its errors."""

from __future__ import annotations

import json
import re
import shutil
import struct

import numpy as np
import pytest

from spiralctl import __version__
from spiralctl.storage import read_safetensors, write_safetensors


def _error_line(result) -> str:
    """The one line an error prints: on stderr, with nothing on stdout."""
    assert result.stdout == "", result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_version(run):
    result = run("--version")
    assert result.exit_code == 0 and result.output.strip() == f"spiralctl {__version__}"


def test_help_lists_commands_in_journey_order(run):
    result = run("--help")
    assert result.exit_code == 0
    commands = result.output[result.output.index("Commands") :]
    journey = ("gen-data", "import", "train", "eval", "predict", "plot", "export", "info", "devices")
    positions = [commands.index(f" {name} ") for name in journey]
    assert positions == sorted(positions)


@pytest.mark.parametrize(
    "command", ["gen-data", "import", "train", "eval", "predict", "plot", "export", "info", "devices"]
)
def test_every_command_help_has_a_summary_and_an_example(run, command):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output and f"spiralctl {command}" in result.output


@pytest.mark.parametrize(
    "command, panels",
    [
        ("train", ("Data", "Device", "Model", "Optimization", "Run folder", "Output")),
        ("gen-data", ("Data", "Splits", "Output")),
        ("import", ("Data", "Splits", "Output")),
        ("eval", ("Device", "Inference", "Output")),
        ("predict", ("Device", "Inference", "Output")),
        ("plot", ("Data", "Device", "Inference", "Output")),
        ("export", ("Output",)),
    ],
)
def test_help_groups_the_options(run, command, panels):
    output = run(command, "--help").output
    for panel in panels:
        assert f"─ {panel} ─" in output


def test_no_color_is_respected(run, small_data, trained_run, monkeypatch):
    args = ("eval", trained_run / "best.safetensors", small_data / "test.safetensors")
    monkeypatch.setenv("FORCE_COLOR", "1")  # as if in a terminal
    monkeypatch.delenv("NO_COLOR", raising=False)
    coloured = run(*args).output
    colour_code = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-8]|9[0-7])[;m]")
    assert colour_code.search(coloured)
    monkeypatch.setenv("NO_COLOR", "1")
    plain = run(*args).output
    assert not colour_code.search(plain) and "accuracy" in plain


def test_verbose_and_quiet_training(run, small_data):
    args = ("train", "--data", small_data, "--epochs", 2, "--hidden", 4, "--batch-size", 32, "--no-plots")
    verbose = run(*args, "-v").output
    assert "settings: epochs 2" in verbose and "parameters" in verbose
    assert "epoch 2 step 2/2" in verbose and "saved runs/train-1/best.safetensors" in verbose
    quiet = run(*args, "-q").output
    assert "epoch 1/2" not in quiet and "training finished" in quiet


def test_gen_data_json_and_files(run):
    result = run("gen-data", "data", "--sequences", 40, "--length", 8, "--test-fraction", 0.2, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [s["split"] for s in summary["splits"]] == ["train", "val", "test"]
    assert sum(s["sequences"] for s in summary["splits"]) == 40
    assert all(list(s["classes"]) == ["clockwise", "anticlockwise"] for s in summary["splits"])
    assert all(s["classes"]["clockwise"] == s["classes"]["anticlockwise"] for s in summary["splits"])
    assert all(sum(s["classes"].values()) == s["sequences"] for s in summary["splits"])
    _, metadata = read_safetensors("data/test.safetensors")
    assert metadata["split"] == "test"


def test_gen_data_table_and_lux_style(run):
    result = run("gen-data", "lux", "--sequences", 20, "--style", "lux")
    assert result.exit_code == 0
    assert "train" in result.output and "val" in result.output
    assert '"style": "lux"' in read_safetensors("lux/train.safetensors")[1]["generator"]


def test_train_eval_predict_journey(run, small_data):
    result = run("train", "--data", small_data, "--epochs", 2, "--hidden", 4, "--batch-size", 32, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["run_dir"] == "runs/train-1" and summary["last"]["epoch"] == 2
    checkpoint = "runs/train-1/best.safetensors"

    result = run("eval", checkpoint, small_data / "test.safetensors", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] == 30 and 0 <= report["accuracy"] <= 1
    assert np.array(report["confusion"]).sum() == 30

    result = run("eval", checkpoint, small_data / "test.safetensors")
    assert result.exit_code == 0 and "confusion" in result.output and "precision" in result.output

    result = run("predict", checkpoint, small_data / "test.safetensors", "--json")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 30
    assert {row["label"] for row in rows} <= {"clockwise", "anticlockwise"}
    accuracy = np.mean([row["label"] == row["true_label"] for row in rows])
    assert accuracy == pytest.approx(report["accuracy"])

    # a second train without --out gets the next number
    result = run("train", "--data", small_data, "--epochs", 1, "--hidden", 4, "--batch-size", 32, "-q")
    assert result.exit_code == 0 and "runs/train-2" in result.output


def test_train_progress_is_one_line_per_epoch_when_not_a_terminal(run, small_data):
    result = run("train", "--data", small_data, "--epochs", 2, "--hidden", 4, "--batch-size", 32)
    assert result.exit_code == 0
    epoch_lines = [line for line in result.stderr.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and "val acc" in epoch_lines[0]


def test_predict_inputs(run, trained_run, tmp_path):
    checkpoint = trained_run / "best.safetensors"
    rng = np.random.default_rng(0)
    np.save("one.npy", rng.standard_normal((7, 2)).astype(np.float32))
    np.save("many.npy", rng.standard_normal((3, 9, 2)))
    (tmp_path / "mixed.csv").write_text("sequence,x,y\na,0,1\na,1,0\na,0,-1\nb,1,1\nb,2,2\n")
    (tmp_path / "one.json").write_text(json.dumps([[0, 1], [1, 0], [0, -1]]))
    (tmp_path / "many.json").write_text(json.dumps([[[0, 1], [1, 0]], [[0, 1], [1, 0], [0, -1], [-1, 0]]]))
    expected = {
        "one.npy": [7],
        "many.npy": [9, 9, 9],
        "mixed.csv": [3, 2],
        "one.json": [3],
        "many.json": [2, 4],
    }
    found = {}
    for name, lengths in expected.items():
        result = run("predict", checkpoint, name, "--json")
        assert result.exit_code == 0, (name, result.output)
        rows = found[name] = [json.loads(line) for line in result.stdout.splitlines()]
        assert [row["points"] for row in rows] == lengths
        for row in rows:
            assert list(row["probabilities"]) == ["clockwise", "anticlockwise"]
            assert sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-6)
            assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
            assert row["probability"] == row["probabilities"][row["label"]]
            assert 0.5 <= row["probability"] <= 1 and "true_label" not in row

    result = run("predict", checkpoint, "-", "--json", input="sequence,x,y\ns,0,1\ns,1,0\ns,0,-1\n")
    assert result.exit_code == 0 and json.loads(result.stdout)["sequence"] == "s"
    result = run("predict", checkpoint, "-", "--json", input="[[0, 1], [1, 0]]")
    assert result.exit_code == 0 and json.loads(result.stdout)["points"] == 2

    result = run("predict", checkpoint, "mixed.csv", "--output", "out.csv")
    assert result.exit_code == 0
    lines = (tmp_path / "out.csv").read_text().splitlines()
    header = "sequence,points,label,probability,probability_clockwise,probability_anticlockwise"
    assert lines[0] == header and len(lines) == 3
    for line, row in zip(lines[1:], found["mixed.csv"]):
        sequence, points, label, probability, *every = line.split(",")
        assert [sequence, int(points), label] == [row["sequence"], row["points"], row["label"]]
        assert float(probability) == pytest.approx(row["probability"], abs=1e-6)
        np.testing.assert_allclose([float(p) for p in every], list(row["probabilities"].values()), atol=1e-6)


def test_predict_is_consistent_across_batch_sizes_and_lengths(run, trained_run, small_data):
    checkpoint = trained_run / "best.safetensors"
    outputs = []
    for batch in (1, 7, 128):
        result = run("predict", checkpoint, small_data / "val.safetensors", "--json", "--batch-size", batch)
        outputs.append([json.loads(line)["probability"] for line in result.stdout.splitlines()])
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-6)
    np.testing.assert_allclose(outputs[0], outputs[2], atol=1e-6)


def test_devices_json(run):
    result = run("devices", "--json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)["devices"]
    cpu = next(row for row in rows if row["name"] == "cpu")
    assert cpu["ok"] is True
    assert {row["name"] for row in rows} == {"cpu", "cuda", "amd", "metal", "opencl"}
    assert all(row["reason"] for row in rows if not row["ok"])


def _bad_files(tmp_path, small_data, trained_run):
    """Build the bad inputs the error table below refers to."""
    (tmp_path / "folder.safetensors").mkdir()
    (tmp_path / "text.safetensors").write_text("this is not a safetensors file")
    tensors, meta = read_safetensors(small_data / "val.safetensors")
    x, y, lengths = tensors["x"], tensors["y"], tensors["lengths"]
    write_safetensors(
        tmp_path / "shape.safetensors", {"x": x[:, :, :1].copy(), "y": y, "lengths": lengths}, meta
    )
    write_safetensors(tmp_path / "labels.safetensors", {"x": x, "y": y + 2, "lengths": lengths}, meta)
    nan = x.copy()
    nan[0, 0, 0] = np.nan
    write_safetensors(tmp_path / "nan.safetensors", {"x": nan, "y": y, "lengths": lengths}, meta)
    tensors, ck_meta = read_safetensors(trained_run / "best.safetensors")
    tensors["lstm.weight_hh_l0"] = np.zeros((16, 5), np.float32)
    write_safetensors(tmp_path / "mismatch.safetensors", tensors, ck_meta)
    header = b'{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    (tmp_path / "truncated.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 3)


ERRORS = [
    # (arguments, exit code, text the error line must hold)
    (["eval", "missing.safetensors", "{data}/val.safetensors"], 2, "missing.safetensors"),
    (["eval", "folder.safetensors", "{data}/val.safetensors"], 2, "folder"),
    (["eval", "text.safetensors", "{data}/val.safetensors"], 2, "text.safetensors"),
    (["eval", "{data}/val.safetensors", "{data}/val.safetensors"], 2, "is a dataset, not a checkpoint"),
    (["eval", "{ckpt}", "{ckpt}"], 2, "is a checkpoint, not a dataset"),
    (["eval", "{ckpt}", "shape.safetensors"], 2, "has 1 feature(s) per point but the model takes 2"),
    (["eval", "{ckpt}", "labels.safetensors"], 2, "labels must be 0"),
    (["eval", "{ckpt}", "nan.safetensors"], 2, "NaN"),
    (["eval", "mismatch.safetensors", "{data}/val.safetensors"], 2, "lstm.weight_hh_l0"),
    (["eval", "truncated.safetensors", "{data}/val.safetensors"], 2, "truncated.safetensors"),
    (["eval", "{ckpt}", "{data}/val.safetensors", "--device", "quantum"], 2, "--device quantum"),
    (["eval", "{ckpt}", "{data}/val.safetensors", "--batch-size", "0"], 2, "--batch-size"),
    (["predict", "{ckpt}", "missing.csv"], 2, "missing.csv"),
    (["predict", "{ckpt}", "text.safetensors"], 2, "text.safetensors"),
    (["predict", "{ckpt}", "folder.safetensors"], 2, "folder"),
    (["train", "--device", "metal"], 2, "--device metal"),
    (["train", "--epochs", "0"], 2, "--epochs"),
    (["train", "--hidden", "-3"], 2, "--hidden"),
    (["train", "--lr", "-1"], 2, "--lr"),
    (["train", "--data", "nowhere"], 2, "--data nowhere"),
    (["train", "--data", "{data}", "--out", "{run}"], 2, "holds a run"),
    (["train", "--resume", "{data}/val.safetensors"], 2, "not a checkpoint"),
    (["gen-data", "out", "--sequences", "-4"], 2, "--sequences"),
    (["gen-data", "out", "--val-fraction", "0.7", "--test-fraction", "0.5"], 2, "add up"),
    (["gen-data", "{data}"], 2, "--force"),
    (["gen-data", "out", "--style", "round"], 2, "--style"),
    (["nonsense"], 2, "nonsense"),
]


@pytest.mark.parametrize("args, code, text", ERRORS, ids=[" ".join(e[0][:3]) for e in ERRORS])
def test_errors_are_one_line_with_exit_code(run, tmp_path, small_data, trained_run, args, code, text):
    _bad_files(tmp_path, small_data, trained_run)
    data_copy = tmp_path / "datacopy"
    shutil.copytree(small_data, data_copy)
    fill = {"data": data_copy, "ckpt": trained_run / "best.safetensors", "run": trained_run}
    result = run(*(a.format(**fill) for a in args))
    assert result.exit_code == code, result.output
    assert text in _error_line(result)


def test_failed_gen_data_leaves_existing_files_untouched(run, small_data, tmp_path):
    target = tmp_path / "data"
    shutil.copytree(small_data, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    assert run("gen-data", target, "--seed", 9).exit_code == 2
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before


def test_debug_shows_the_traceback(run):
    result = run("--debug", "eval", "missing.safetensors", "missing.safetensors")
    assert result.exit_code == 2 and "Traceback" in result.output


def test_info_on_dataset_and_checkpoint(run, small_data, trained_run):
    result = run("info", small_data / "test.safetensors", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "dataset" and report["checksum"] == "verified"
    assert report["classes"] == {"clockwise": 15, "anticlockwise": 15}
    assert report["metadata"]["generator"]["sequences"] == 120
    assert {t["name"]: t["shape"] for t in report["tensors"]} == {
        "x": [30, 12, 2],
        "y": [30],
        "lengths": [30],
    }

    result = run("info", trained_run / "best.safetensors", "--json")
    report = json.loads(result.stdout)
    assert report["kind"] == "checkpoint" and report["hidden"] == 4 and report["resumable"]
    assert report["parameters"] == 4 * 4 * 2 + 4 * 4 * 4 + 2 * 4 * 4 + 4 + 1
    assert report["metadata"]["train"]["batch_size"] == 32

    result = run("info", trained_run / "last.safetensors")
    assert result.exit_code == 0 and "checkpoint" in result.output and "lstm.weight_hh_l0" in result.output


def test_info_on_a_damaged_file(run, tmp_path, trained_run):
    raw = bytearray((trained_run / "best.safetensors").read_bytes())
    raw[-1] ^= 0x01
    (tmp_path / "bad.safetensors").write_bytes(bytes(raw))
    result = run("info", "bad.safetensors")
    assert result.exit_code == 2 and "checksum" in _error_line(result)


def test_eval_min_accuracy_fails_the_run_below_the_bar(run, small_data, trained_run):
    args = ["eval", trained_run / "best.safetensors", small_data / "test.safetensors", "--json"]
    accuracy = json.loads(run(*args).output)["accuracy"]
    assert run(*args, "--min-accuracy", accuracy).exit_code == 0
    result = run(*args, "--min-accuracy", min(1.0, accuracy + 0.01) if accuracy < 1 else 1.01)
    assert result.exit_code == 1
    assert "--min-accuracy" in result.output.strip().splitlines()[-1]


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_a_kernel_cache_that_cannot_be_opened_is_named(run, trained_run, small_data, monkeypatch, device):
    """tinygrad opens its kernel cache (CACHEDB) as it sets a device up; a read-only cache folder
    is not a missing clang."""
    import sqlite3

    from tinygrad import Device

    def refuse(self, name):
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(type(Device), "__getitem__", refuse)
    checkpoint = trained_run / "best.safetensors"
    result = run("eval", checkpoint, small_data / "val.safetensors", "--device", device)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --device")
    assert "kernel cache" in lines[0] and "CACHELEVEL=0" in lines[0] and "install clang" not in lines[0]


# ---------------------------------------------------------------------------------------------
# the common output flags: every command, before or after its name

COMMANDS = ["gen-data", "import", "train", "tune", "eval", "predict", "plot", "export", "info", "devices"]
COMMON_FLAGS = {"quiet": ["--quiet", "-q"], "verbose": ["--verbose", "-v"], "json_output": ["--json"]}
COMMON_FLAGS["debug"] = ["--debug"]


def _params(command=None) -> dict:
    import typer

    from spiralctl.cli import app

    group = typer.main.get_command(app)
    target = group if command is None else group.commands[command]
    return {param.name: param for param in target.params}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_the_common_output_flags(command):
    params = _params(command)
    for name, opts in COMMON_FLAGS.items():
        assert name in params, (command, name)
        assert sorted(params[name].opts) == sorted(opts), (command, params[name].opts)


def test_the_common_output_flags_are_one_definition_each():
    """The same option wherever it is taken: the same names, help and panel before the command
    name and after any command's."""
    places = [_params()] + [_params(command) for command in COMMANDS]
    for name in COMMON_FLAGS:
        seen = {(tuple(p[name].opts), p[name].help, p[name].rich_help_panel) for p in places}
        assert len(seen) == 1, (name, seen)


def _labelled_csv(path) -> None:
    rows = ["sequence,label,x,y"]
    for i in range(24):
        label = ("up", "down", "flat")[i % 3]
        rows += [f"s{i},{label},{t},{t * (i % 3 - 1) + i / 10}" for t in range(4 + i % 3)]
    path.write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("flag", ["-q", "--quiet", "-v", "--verbose", "--json"])
def test_output_flags_before_or_after_the_command_name_are_the_same(run, tmp_path, flag):
    _labelled_csv(tmp_path / "seq.csv")
    before = run(flag, "import", "seq.csv", "a")
    after = run("import", "seq.csv", "b", flag)
    assert before.exit_code == 0 and after.exit_code == 0, before.output + after.output
    assert before.stdout.replace("a/", "b/").replace('"a"', '"b"') == after.stdout
    assert before.stderr == after.stderr == ""
    if flag == "--json":
        assert json.loads(after.stdout)["classes"] == ["down", "flat", "up"]


@pytest.mark.parametrize("args", [["--debug", "eval", "{m}", "{m}"], ["eval", "{m}", "{m}", "--debug"]])
def test_debug_before_or_after_the_command_name_shows_the_traceback(run, args):
    result = run(*(a.format(m="missing.safetensors") for a in args))
    assert result.exit_code == 2 and "Traceback" in result.stderr and result.stdout == ""
    assert (
        result.stderr.strip().splitlines()[-1] == "error: missing.safetensors: no such file; check the path"
    )


def test_quiet_and_verbose_train_from_either_side(run, small_data):
    args = ("--data", small_data, "--epochs", 2, "--hidden", 4, "--batch-size", 32, "--no-plots")
    quiet = run("-q", "train", *args)
    assert quiet.exit_code == 0 and "epoch 1/2" not in quiet.stderr and "training finished" in quiet.stdout
    verbose = run("--verbose", "train", *args)
    assert "settings: epochs 2" in verbose.stderr and "epoch 2 step 2/2" in verbose.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["-q", "-v", "devices"],
        ["-q", "devices", "-v"],
        ["devices", "--verbose", "--quiet"],
        ["-v", "info", "x", "-q"],
        ["gen-data", "d", "-qv"],
    ],
)
def test_quiet_with_verbose_is_a_usage_error_on_every_command(run, args):
    result = run(*args)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == "error: --quiet and --verbose ask for opposite things; give one\n"


def test_tune_verbose_shows_every_epoch_of_every_trial(run, small_data):
    pytest.importorskip("optuna", reason="spiralctl[tune] is not installed")
    args = ("tune", "--data", small_data, "--trials", 1, "--epochs", 2, "--hidden", 4, "--batch-size", 32)
    result = run(*args, "--no-plots", "--out", "t", "-v")
    assert result.exit_code == 0, result.output
    epochs = [line.split()[:4] for line in result.stderr.splitlines() if line.startswith("  trial 0 epoch")]
    assert epochs == [["trial", "0", "epoch", "1/2"], ["trial", "0", "epoch", "2/2"]], result.stderr
    quiet = run(*args, "--no-plots", "--out", "t", "--trials", 2, "-q")
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr


def test_eval_data_help_names_every_input_it_takes(run):
    data = next(p for p in _params("eval").values() if p.name == "data")
    assert "gen-data or import" in data.help and "labelled file of any format import reads" in data.help


def test_eval_on_the_models_own_training_split_warns(run, trained_run, small_data):
    checkpoint, train_split = trained_run / "best.safetensors", small_data / "train.safetensors"
    table = run("eval", checkpoint, train_split)
    assert table.exit_code == 0 and "accuracy" in table.stdout
    message = f"{train_split} is the training split this model was trained on"
    warnings = [line.removeprefix("warning: ") for line in table.stderr.splitlines()]
    assert len(warnings) == len(table.stderr.splitlines()) and any(w.startswith(message) for w in warnings)
    report = json.loads(run("eval", checkpoint, train_split, "--json").stdout)
    assert report["warnings"] == warnings  # the same lines, with --json in its "warnings"
    quiet = run("eval", checkpoint, train_split, "-q")
    assert quiet.stderr == table.stderr  # a warning is not a note: -q keeps it
    held_out = small_data / "test.safetensors"
    assert message.replace(str(train_split), str(held_out)) not in run("eval", checkpoint, held_out).stderr
    report = json.loads(run("eval", checkpoint, held_out, "--json").stdout)
    assert not any("training split" in w for w in report["warnings"])
