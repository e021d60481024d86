"""predict's inputs: CSV from spreadsheets, JSON, .npy; every bad input is one clear error, never a
numpy warning, a wrong number or a false "interrupted"."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from spiralctl.cli import app
from spiralctl.errors import SpiralError
from spiralctl.inputs import read_sequences

# a numpy warning (overflow in a cast, a dropped imaginary part) is a test failure
pytestmark = pytest.mark.filterwarnings("error")

PLAIN_CSV = "sequence,x,y\na,0,1\na,1,0\na,0,-1\nb,1,1\nb,2,2.5\n"


def _predict(checkpoint, source, input=None):
    return CliRunner().invoke(app, ["predict", str(checkpoint), str(source), "--json"], input=input)


def _error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output and "Warning" not in result.output
    return lines[0]


def _npy(name: str, array) -> str:
    np.save(name, np.asarray(array))
    return name


def _text(name: str, text: str) -> str:
    with open(name, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    return name


BAD_INPUTS = {
    # name: (how to make the file, what the error line must say)
    "csv beyond float32": (
        lambda: _text("big.csv", "sequence,x,y\na,0,1\na,1e39,2\n"),
        ["big.csv", "line 3", "x = 1e39", "float32", "scale the points down"],
    ),
    "csv negative beyond float32": (
        lambda: _text("small.csv", "sequence,x,y\na,0,1\na,1,-4e38\n"),
        ["small.csv", "line 3", "y = -4e38", "float32"],
    ),
    "csv nan": (lambda: _text("nan.csv", "sequence,x,y\na,0,1\na,nan,2\n"), ["nan.csv", "line 3", "finite"]),
    "csv decimal comma with commas": (
        lambda: _text("comma.csv", 'sequence,x,y\na,"1,5",2\na,1,2\n'),
        ["comma.csv", "line 2", "'1,5'", "separate the fields with ;"],
    ),
    "json beyond float32": (
        lambda: _text("big.json", "[[0, 1], [1e39, 2]]"),
        ["big.json", "sequence 0, point 1", "float32"],
    ),
    "json huge integer": (
        lambda: _text("int.json", f"[[0, 1], [1, {10**400}]]"),
        ["int.json", "sequence 0, point 1", "y = ", "float32"],
    ),
    "json infinity": (lambda: _text("inf.json", "[[0, 1], [1, 1e999]]"), ["inf.json", "point 1", "finite"]),
    "json boolean": (
        lambda: _text("bool.json", "[[[0, 1], [1, 2]], [[true, 1], [2, 3]]]"),
        ["bool.json", "sequence 1, point 0", "x = true is not a number", "no quotes, no true/false"],
    ),
    "json string": (
        lambda: _text("str.json", '[[0, 1], [1, "2"]]'),
        ["str.json", "sequence 0, point 1", 'y = "2" is not a number'],
    ),
    "json three coordinates": (
        lambda: _text("xyz.json", "[[0, 1], [1, 2, 3]]"),
        ["xyz.json", "sequence 0, point 1", "expected [x, y]"],
    ),
    "json deep nesting": (lambda: _text("deep.json", "[" * 100000 + "]" * 100000), ["deep.json", "JSON"]),
    "npy beyond float32": (
        lambda: _npy("big.npy", [[[0, 1], [1, 2]], [[0, 1], [1e39, 2]]]),
        ["big.npy", "sequence 1, point 1", "x = 1e+39", "float32"],
    ),
    "npy complex": (
        lambda: _npy("complex.npy", np.ones((3, 2)) * (1 + 2j)),
        ["complex.npy", "complex numbers", "complex128", "numpy.save"],
    ),
    "npy bool": (lambda: _npy("bool.npy", np.ones((3, 2), bool)), ["bool.npy", "booleans", "dtype bool"]),
    "npy strings": (lambda: _npy("str.npy", [["1", "2"], ["3", "4"]]), ["str.npy", "not numbers"]),
    "npy empty file": (lambda: _text("empty.npy", ""), ["empty.npy", "is empty", "numpy.save"]),
    "npy cut short": (
        lambda: _cut("short.npy"),
        ["short.npy", "shorter than its header says"],
    ),
    "npz under a npy name": (lambda: _npz("archive.npy"), ["archive.npy", ".npz archive"]),
    "npy of no sequences": (lambda: _npy("none.npy", np.zeros((0, 5, 2))), ["none.npy", "no sequences"]),
    "not utf-8": (lambda: _bytes("latin.csv", b"sequence,x,y\n\xe9,1,2\n"), ["latin.csv", "UTF-8"]),
}


def _cut(name: str) -> str:
    np.save(name, np.ones((100, 2)))
    with open(name, "rb") as handle:
        raw = handle.read()
    return _bytes(name, raw[:300])


def _npz(name: str) -> str:
    with open(name, "wb") as handle:
        np.savez(handle, points=np.ones((3, 2)))
    return name


def _bytes(name: str, raw: bytes) -> str:
    with open(name, "wb") as handle:
        handle.write(raw)
    return name


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_get_one_clear_error(trained_run, case):
    make, expected = BAD_INPUTS[case]
    line = _error_line(_predict(trained_run / "best.safetensors", make()))
    for part in expected:
        assert part in line, (case, line)


def test_an_empty_npy_is_a_bad_file_not_an_interruption(trained_run):
    _text("empty.npy", "")
    result = _predict(trained_run / "best.safetensors", "empty.npy")
    assert result.exit_code == 2 and "interrupted" not in result.output
    assert _error_line(result) == (
        "error: empty.npy is empty; save the points with numpy.save as a float array of shape "
        "[T, 2] or [N, T, 2]"
    )


def test_an_eof_error_elsewhere_is_a_bug_not_ctrl_c(trained_run, monkeypatch):
    from spiralctl import commands

    def raising(exception):
        def predict(*args, **kwargs):
            raise exception

        return predict

    monkeypatch.setattr(commands, "predict_blocks", raising(EOFError("ran out of input")))
    result = _predict(trained_run / "best.safetensors", "whatever.csv")
    assert result.exit_code == 3
    assert result.output.strip().startswith("error: internal error: EOFError: ran out of input")
    monkeypatch.setattr(commands, "predict_blocks", raising(KeyboardInterrupt()))
    result = _predict(trained_run / "best.safetensors", "whatever.csv")
    assert result.exit_code == 130 and "internal error" not in result.output  # Ctrl-C stays Ctrl-C


def test_no_numpy_warning_reaches_the_user():
    # `python -W error`: any warning would become an internal error instead of this message
    _text("big.csv", "sequence,x,y\na,0,1\na,1e39,2\n")
    _npy("complex.npy", np.ones((3, 2)) * 1j)
    for name in ("big.csv", "complex.npy"):
        done = subprocess.run(
            [sys.executable, "-W", "error", "-m", "spiralctl", "predict", "missing.safetensors", name],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        assert done.stdout == "" and done.stderr.startswith(f"error: {name}"), done.stderr
        assert len(done.stderr.splitlines()) == 1, done.stderr


SPREADSHEET_CSVS = {
    # what Excel and LibreOffice save: a byte-order mark, CRLF, quoted fields, empty lines and columns
    "excel utf-8": '\ufeffsequence,x,y\r\na,0,1\r\na,1,0\r\n"a","0","-1"\r\nb,1,1\r\nb,2,2.5\r\n\r\n',
    "semicolons and decimal commas": "sequence;x;y\na;0;1\na;1;0\na;0;-1\nb;1;1\nb;2;2,5\n",
    "quoted decimal commas": 'Sequence;X;Y\r\n"a";"0";"1"\r\na;1;0\r\na;0;-1\r\nb;1,0;1\r\nb;2;"2,5"\r\n',
    "tabs": "sequence\tx\ty\na\t0\t1\na\t1\t0\na\t0\t-1\nb\t1\t1\nb\t2\t2,5\n",
    "empty trailing columns": "sequence,x,y,,\na,0,1,,\na,1,0,,\na,0,-1,,\nb,1,1,,\nb,2,2.5,,\n,,,,\n",
}


@pytest.mark.parametrize("case", sorted(SPREADSHEET_CSVS))
def test_csv_saved_by_a_spreadsheet_loads(trained_run, case):
    _text("plain.csv", PLAIN_CSV)
    _text("sheet.csv", SPREADSHEET_CSVS[case])
    expected = _predict(trained_run / "best.safetensors", "plain.csv")
    assert expected.exit_code == 0, expected.output
    result = _predict(trained_run / "best.safetensors", "sheet.csv")
    assert result.exit_code == 0, result.output
    assert result.output == expected.output


def test_a_spreadsheet_csv_on_stdin(trained_run):
    expected = _predict(trained_run / "best.safetensors", _text("plain.csv", PLAIN_CSV))
    result = _predict(trained_run / "best.safetensors", "-", input=SPREADSHEET_CSVS["excel utf-8"])
    assert result.exit_code == 0 and result.output == expected.output, result.output


def test_numbers_of_every_real_dtype_load(trained_run):
    points = np.array([[0, 1], [1, 0], [2, 3]])
    rows = []
    for dtype in (np.float16, np.float32, np.float64, np.longdouble, np.int8, np.int64, np.uint16):
        result = _predict(trained_run / "best.safetensors", _npy("points.npy", points.astype(dtype)))
        assert result.exit_code == 0, (dtype, result.output)
        rows.append(json.loads(result.output))
    assert all(row == rows[0] for row in rows)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300), suffix=st.sampled_from([".npy", ".csv", ".json"]))
def test_random_input_files_only_raise_spiral_errors(tmp_path, raw, suffix):
    path = tmp_path / f"input{suffix}"
    path.write_bytes(raw)
    try:
        read_sequences(str(path))
    except SpiralError as exc:
        assert str(path) in exc.message


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3),
        lambda inner: st.lists(inner, max_size=4),
        max_leaves=12,
    )
)
def test_random_json_only_raises_spiral_errors_or_gives_float32_points(tmp_path, value):
    path = tmp_path / "input.json"
    path.write_text(json.dumps(value))
    try:
        _, sequences, _ = read_sequences(str(path))
    except SpiralError as exc:
        assert str(path) in exc.message
        return
    for points in sequences:
        assert points.dtype == np.float32 and points.shape[1] == 2 and np.isfinite(points).all()
