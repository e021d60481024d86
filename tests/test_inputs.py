"""predict's inputs: CSV from spreadsheets, JSON, .npy, stdin; every bad input is one clear error
naming the file and the line or sequence, never a numpy warning, a wrong number or a false
"interrupted"."""

from __future__ import annotations

import io
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
from spiralctl.inputs import read_blocks, read_sequences

# a numpy warning (overflow in a cast, a dropped imaginary part) is a test failure
pytestmark = pytest.mark.filterwarnings("error")

PLAIN_CSV = "sequence,x,y\na,0,1\na,1,0\na,0,-1\nb,1,1\nb,2,2.5\n"


def _error(source) -> str:
    """The one-line message reading `source` raises."""
    with pytest.raises(SpiralError) as caught:
        read_sequences(source)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def _npy(name: str, array) -> str:
    np.save(name, np.asarray(array))
    return name


def _text(name: str, text: str) -> str:
    with open(name, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    return name


BAD_INPUTS = {
    # name: (how to make the file, what the error must say)
    "csv beyond float32": (
        lambda: _text("big.csv", "sequence,x,y\na,0,1\na,1e39,2\n"),
        ["big.csv", "line 3", "x = 1e39", "float32", "scale the values down"],
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
    "csv too few fields": (
        lambda: _text("few.csv", "sequence,x,y\na,0,1\na,1\n"),
        ["few.csv: line 3 has 2 fields, expected sequence,x,y"],
    ),
    "csv rows apart": (
        lambda: _text("apart.csv", "sequence,x,y\na,0,1\nb,1,1\nb,2,2\na,3,3\n"),
        ["apart.csv: line 5: sequence a continues after other sequences' rows"],
    ),
    "csv one point": (
        lambda: _text("one.csv", "sequence,x,y\na,0,1\nb,1,1\nb,2,2\n"),
        ["one.csv: line 2: sequence a has 1 point(s); at least 2 are needed"],
    ),
    "csv without a header": (
        lambda: _text("bare.csv", "a,x,1\na,2,3\n"),
        ["bare.csv: a CSV input needs a header", "sequence,x,y,label"],
    ),
    "json beyond float32": (
        lambda: _text("big.json", "[[0, 1], [1e39, 2]]"),
        ["big.json", "sequence 0, point 1", "feature 0 = 1e+39", "float32"],
    ),
    "json huge integer": (
        lambda: _text("int.json", f"[[0, 1], [1, {10**400}]]"),
        ["int.json", "sequence 0, point 1", "feature 1 = ", "float32"],
    ),
    "json infinity": (lambda: _text("inf.json", "[[0, 1], [1, 1e999]]"), ["inf.json", "point 1", "finite"]),
    "json boolean": (
        lambda: _text("bool.json", "[[[0, 1], [1, 2]], [[true, 1], [2, 3]]]"),
        ["bool.json", "sequence 1, point 0", "feature 0 = true is not a number", "no quotes, no true/false"],
    ),
    "json string": (
        lambda: _text("str.json", '[[0, 1], [1, "2"]]'),
        ["str.json", "sequence 0, point 1", 'feature 1 = "2" is not a number'],
    ),
    "json three values after two": (
        lambda: _text("xyz.json", "[[0, 1], [1, 2, 3]]"),
        ["xyz.json", "sequence 0, point 1", "3 value(s) where the first point has 2"],
    ),
    "json named sequence": (
        lambda: _text("named.json", '[{"sequence": "bm0", "points": [[0, 1], [1, "x"]]}]'),
        ["named.json: sequence bm0, point 1: feature 1"],
    ),
    "json deep nesting": (lambda: _text("deep.json", "[" * 100000 + "]" * 100000), ["deep.json", "JSON"]),
    "npy beyond float32": (
        lambda: _npy("big.npy", [[[0, 1], [1, 2]], [[0, 1], [1e39, 2]]]),
        ["big.npy", "sequence 1, point 1", "feature 0 = 1e+39", "float32"],
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
    "npy one dimension": (lambda: _npy("flat.npy", np.ones(5)), ["flat.npy", "found [5]", "x[:, None]"]),
    "npz under a npy name": (lambda: _npz("archive.npy"), ["archive.npy", ".npz archive"]),
    "npy of no sequences": (lambda: _npy("none.npy", np.zeros((0, 5, 2))), ["none.npy", "no sequences"]),
    "not utf-8": (lambda: _bytes("latin.csv", b"sequence,x,y\n\xe9,1,2\n"), ["latin.csv", "UTF-8"]),
    "unknown type": (lambda: _text("points.xlsx", ""), ["points.xlsx: unknown input type '.xlsx'"]),
    "missing file": (lambda: "nothere.csv", ["nothere.csv: no such file", "- for stdin"]),
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
def test_bad_inputs_get_one_clear_error(case):
    make, expected = BAD_INPUTS[case]
    message = _error(make())
    for part in expected:
        assert part in message, (case, message)


def test_an_empty_npy_is_a_bad_file():
    _text("empty.npy", "")
    assert _error("empty.npy") == (
        "empty.npy is empty; save the sequences with numpy.save as a float array of shape "
        "[N, T, D] (or [T, D] for one sequence)"
    )


def test_an_eof_error_elsewhere_is_a_bug_not_ctrl_c(monkeypatch):
    from spiralctl import commands

    def raising(exception):
        def predict(*args, **kwargs):
            raise exception

        return predict

    def predict(*args):
        return CliRunner().invoke(app, ["predict", *map(str, args), "--json"])

    monkeypatch.setattr(commands, "predict_blocks", raising(EOFError("ran out of input")))
    # predict_blocks is where the checkpoint and the input are read: neither needs to exist here
    result = predict("best.safetensors", "whatever.csv")
    assert result.exit_code == 3
    assert result.output.strip().startswith("error: internal error: EOFError: ran out of input")
    monkeypatch.setattr(commands, "predict_blocks", raising(KeyboardInterrupt()))
    result = predict("best.safetensors", "whatever.csv")
    assert result.exit_code == 130 and "internal error" not in result.output  # Ctrl-C stays Ctrl-C


def test_no_numpy_warning_reaches_the_user():
    # `python -W error`: any warning would become an exception other than this SpiralError
    _text("big.csv", "sequence,x,y\na,0,1\na,1e39,2\n")
    _npy("complex.npy", np.ones((3, 2)) * 1j)
    _npy("wide.npy", np.array([[[0.0, 1.0], [1e300, 2.0]]]))
    read = (
        "import sys\nfrom spiralctl.errors import SpiralError\nfrom spiralctl.inputs import read_sequences\n"
        "try:\n    read_sequences(sys.argv[1])\nexcept SpiralError as exc:\n    print(exc)\n"
    )
    for name in ("big.csv", "complex.npy", "wide.npy"):
        done = subprocess.run(
            [sys.executable, "-W", "error", "-c", read, name], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert done.stdout.startswith(name) and len(done.stdout.splitlines()) == 1, done.stdout


SPREADSHEET_CSVS = {
    # what Excel and LibreOffice save: a byte-order mark, CRLF, quoted fields, empty lines and columns
    "excel utf-8": '\ufeffsequence,x,y\r\na,0,1\r\na,1,0\r\n"a","0","-1"\r\nb,1,1\r\nb,2,2.5\r\n\r\n',
    "semicolons and decimal commas": "sequence;x;y\na;0;1\na;1;0\na;0;-1\nb;1;1\nb;2;2,5\n",
    "quoted decimal commas": 'Sequence;x;y\r\n"a";"0";"1"\r\na;1;0\r\na;0;-1\r\nb;1,0;1\r\nb;2;"2,5"\r\n',
    "tabs": "sequence\tx\ty\na\t0\t1\na\t1\t0\na\t0\t-1\nb\t1\t1\nb\t2\t2,5\n",
    "empty trailing columns": "sequence,x,y,,\na,0,1,,\na,1,0,,\na,0,-1,,\nb,1,1,,\nb,2,2.5,,\n,,,,\n",
    "empty lines": "sequence,x,y\n\na,0,1\na,1,0\na,0,-1\n\nb,1,1\nb,2,2.5\n\n",
    "spaces around fields": "sequence, x, y\n a ,0 , 1\na,1,0\na,0,-1\nb, 1,1\nb,2,2.5 \n",
}


def _same(got, expected) -> None:
    names, sequences, labels = got
    assert names == expected[0] and labels == expected[2]
    assert len(sequences) == len(expected[1])
    for one, other in zip(sequences, expected[1]):
        assert one.dtype == np.float32
        np.testing.assert_array_equal(one, other)


@pytest.mark.parametrize("case", sorted(SPREADSHEET_CSVS))
def test_csv_saved_by_a_spreadsheet_loads(case):
    expected = read_sequences(_text("plain.csv", PLAIN_CSV))
    assert expected[0] == ["a", "b"] and [len(s) for s in expected[1]] == [3, 2] and expected[2] is None
    _same(read_sequences(_text("sheet.csv", SPREADSHEET_CSVS[case])), expected)


def test_a_spreadsheet_csv_on_stdin(monkeypatch):
    expected = read_sequences(_text("plain.csv", PLAIN_CSV))
    monkeypatch.setattr(sys, "stdin", io.StringIO(SPREADSHEET_CSVS["excel utf-8"]))
    _same(read_sequences("-"), expected)


def test_stdin_takes_json_and_any_number_of_features(monkeypatch):
    monkeypatch.setattr(
        sys, "stdin", io.StringIO("\n  [[[0, 1, 2], [1, 2, 3]], [[4, 5, 6], [7, 8, 9], [1, 1, 1]]]")
    )
    names, sequences, labels = read_sequences("-")
    assert names == ["0", "1"] and [s.shape for s in sequences] == [(2, 3), (3, 3)] and labels is None
    monkeypatch.setattr(sys, "stdin", io.StringIO("sequence,f1,label\ns,1,up\ns,2,up\n"))
    names, sequences, labels = read_sequences("-")
    assert names == ["s"] and sequences[0].tolist() == [[1], [2]] and labels == ["up"]


def test_an_empty_stdin_says_so(monkeypatch):
    for text in ("", "\n  \n"):
        monkeypatch.setattr(sys, "stdin", io.StringIO(text))
        assert _error("-") == "stdin is empty; pipe CSV or JSON into it, or give a file"


def test_numbers_of_every_real_dtype_load():
    points = np.array([[0, 1], [1, 0], [2, 3]])
    rows = []
    for dtype in (np.float16, np.float32, np.float64, np.longdouble, np.int8, np.int64, np.uint16):
        names, sequences, _ = read_sequences(_npy("points.npy", points.astype(dtype)))
        assert names == ["0"] and sequences[0].dtype == np.float32
        rows.append(sequences[0])
    assert all(np.array_equal(row, rows[0]) for row in rows)


def test_csv_blocks_come_as_the_sequences_end():
    """The first blocks come before the reader meets the bad line at the end of the file."""
    with open("late.csv", "w") as handle:
        handle.write("sequence,x,y\n")
        for i in range(10):
            handle.writelines(f"s{i},{t},{-t}\n" for t in range(3 + i % 5))
        handle.write("s99,1,oops\n")
    blocks = read_blocks("late.csv", block=4)
    first = next(blocks)
    assert first.names == ["s0", "s1", "s2", "s3"] and list(first.lengths) == [3, 4, 5, 6]
    assert not first.x[0, 3:].any() and first.labels is None  # zero past its length
    assert next(blocks).names == ["s4", "s5", "s6", "s7"]
    with pytest.raises(SpiralError, match="late.csv: line 52: y must be a number, found 'oops'"):
        list(blocks)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=st.binary(max_size=300),
    suffix=st.sampled_from([".npy", ".npz", ".csv", ".tsv", ".txt", ".json", ".ts"]),
)
def test_random_input_files_only_raise_spiral_errors(tmp_path, raw, suffix):
    path = tmp_path / f"input{suffix}"
    path.write_bytes(raw)
    try:
        read_sequences(str(path))
    except SpiralError as exc:
        assert str(path) in exc.message


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text(alphabet=st.sampled_from(list('sequencxylab,;\t"\n\r 0123456789.-+eEnaNif')), max_size=200)
)
def test_random_csv_text_only_raises_spiral_errors(tmp_path, text):
    path = tmp_path / "input.csv"
    path.write_text("sequence,x,y,label\n" + text, encoding="utf-8")
    try:
        names, sequences, labels = read_sequences(str(path))
    except SpiralError as exc:
        assert str(path) in exc.message
        return
    assert len(names) == len(sequences) == len(labels)
    assert all(s.dtype == np.float32 and s.shape[1] == 2 and len(s) >= 2 for s in sequences)


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
    depth = sequences[0].shape[1]
    for points in sequences:
        assert points.dtype == np.float32 and points.shape[1] == depth >= 1 and np.isfinite(points).all()
