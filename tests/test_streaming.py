"""predict streams: its input is read block by block (CSV line by line), its rows are written as
each block is classified, and the table in a terminal stops at a bounded number of rows."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers import count_compiled, installed, shell

from spiralctl import commands
from spiralctl.errors import SpiralError
from spiralctl.inputs import read_blocks

# predict's CSV header for the spirals' two classes
HEADER = "sequence,points,label,probability,probability_clockwise,probability_anticlockwise"


def _csv(path, count, length=lambda i: 3 + i % 5, tail=""):
    rng = np.random.default_rng(0)
    with open(path, "w") as handle:
        handle.write("sequence,x,y\n")
        for i in range(count):
            for x, y in rng.standard_normal((length(i), 2)):
                handle.write(f"s{i},{x:.4f},{y:.4f}\n")
        handle.write(tail)
    return path


def test_csv_is_read_block_by_block():
    """The first blocks come before the reader meets the bad line at the end of the file."""
    _csv("late.csv", 10, tail="s99,1,oops\n")
    blocks = read_blocks("late.csv", block=4)
    first = next(blocks)
    assert first.names == ["s0", "s1", "s2", "s3"] and list(first.lengths) == [3, 4, 5, 6]
    assert not first.x[0, 3:].any()  # zero past its length
    assert next(blocks).names == ["s4", "s5", "s6", "s7"]
    with pytest.raises(SpiralError, match="late.csv: line 52: y must be a number, found 'oops'"):
        list(blocks)


def test_a_sequence_whose_rows_are_apart_is_refused():
    with open("apart.csv", "w") as handle:
        handle.write("sequence,x,y\na,0,1\na,1,0\nb,1,1\nb,2,2\na,3,3\n")
    with pytest.raises(
        SpiralError, match="apart.csv: line 6: sequence a continues after other sequences' rows"
    ):
        list(read_blocks("apart.csv"))


def test_blocks_give_the_same_predictions_as_one_block(trained_run):
    _csv("many.csv", 23)
    checkpoint = trained_run / "best.safetensors"
    small = list(commands.predict_blocks(checkpoint, "many.csv", block=5))
    whole = list(commands.predict_blocks(checkpoint, "many.csv"))
    assert [len(b) for b in small] == [5, 5, 5, 5, 3] and len(whole) == 1
    rows = [row for block in small for row in block.rows()]
    assert [row["sequence"] for row in rows] == [f"s{i}" for i in range(23)]  # input order
    np.testing.assert_array_equal(np.concatenate([b.probability for b in small]), whole[0].probability)
    assert rows == commands.predict(checkpoint, "many.csv")


def test_npy_blocks_check_every_value(tmp_path):
    x = np.zeros((10, 4, 2))
    x[7, 2, 1] = np.inf
    np.save("bad.npy", x)
    blocks = read_blocks("bad.npy", block=4)
    assert next(blocks).names == ["0", "1", "2", "3"]
    message = "bad.npy: sequence 7, point 2: feature 1 = inf is not a finite number; give finite values"
    with pytest.raises(SpiralError, match=message):
        list(blocks)


def test_stdout_gets_csv_lines_unless_it_is_a_terminal(run, trained_run):
    _csv("many.csv", 7)
    checkpoint = trained_run / "best.safetensors"
    result = run("predict", checkpoint, "many.csv")
    assert result.exit_code == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == HEADER and len(lines) == 8
    as_json = [
        json.loads(line) for line in run("predict", checkpoint, "many.csv", "--json").stdout.splitlines()
    ]
    assert lines[1].startswith(f"s0,3,{as_json[0]['label']},")
    assert [
        f"{r['sequence']},{r['points']},{r['label']},{r['probability']!r},"
        f"{r['probabilities']['clockwise']!r},{r['probabilities']['anticlockwise']!r}"
        for r in as_json
    ] == lines[1:]


def test_the_table_in_a_terminal_shows_50_rows_and_a_summary(run, trained_run):
    _csv("many.csv", 60)
    checkpoint = trained_run / "best.safetensors"
    result = run("predict", checkpoint, "many.csv", env={"TTY_COMPATIBLE": "1", "NO_COLOR": "1"})
    assert result.exit_code == 0 and result.stderr == ""
    assert "│ s49 " in result.stdout and "│ s50 " not in result.stdout
    labels = [row["label"] for row in commands.predict(checkpoint, "many.csv")]
    # each class the model predicted, in class order (a class it never predicted is left out)
    counted = ", ".join(
        f"{labels.count(name)} {name}" for name in ("clockwise", "anticlockwise") if name in labels
    )
    assert result.stdout.splitlines()[-1] == (
        f"... and 10 more rows; all 60: {counted} (--json or -o FILE.csv for every row)"
    )


def test_an_output_file_appears_only_when_every_row_is_written(run, trained_run, monkeypatch):
    import spiralctl.inputs

    monkeypatch.setattr(spiralctl.inputs, "BLOCK", 4)
    _csv("late.csv", 10, tail="s99,1,oops\n")
    checkpoint = trained_run / "best.safetensors"
    result = run("predict", checkpoint, "late.csv", "-o", "out.csv", "--json")
    assert result.exit_code == 2
    assert len(result.stdout.splitlines()) == 8  # the rows of the two blocks before the bad line
    assert result.stderr == "error: late.csv: line 52: y must be a number, found 'oops'\n"
    assert not os.path.exists("out.csv") and not [p for p in os.listdir(".") if p.endswith(".tmp")]
    _csv("good.csv", 10)
    assert run("predict", checkpoint, "good.csv", "-o", "out.csv").exit_code == 0
    lines = open("out.csv").read().splitlines()
    assert lines[0] == HEADER and len(lines) == 11
    assert [line.split(",")[0] for line in lines[1:]] == [f"s{i}" for i in range(10)]


@installed
def test_installed_predict_streams_csv_into_a_pipe(trained_run, tmp_path):
    np.save(tmp_path / "many.npy", np.random.default_rng(0).standard_normal((40000, 5, 2)))
    result = shell(f"spiralctl predict {trained_run / 'best.safetensors'} {tmp_path / 'many.npy'} | head -3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == HEADER and lines[2].startswith("1,5,")
    assert len(lines) == 3 and lines[2].split(",")[2] in ("clockwise", "anticlockwise")
    assert result.stderr == ""


def test_a_stream_of_blocks_compiles_one_forward_program(monkeypatch, trained_run):
    """Blocks with other longest lengths and a short last block reuse the first block's program."""
    from tinygrad.helpers import Context

    _csv("many.csv", 23, length=lambda i: 2 + (7 * i) % 19)
    names = count_compiled(monkeypatch)
    with Context(PARALLEL=0):
        options = commands.InferenceOptions(batch_size=4, device="cpu")
        blocks = list(commands.predict_blocks(trained_run / "best.safetensors", "many.csv", options, block=6))
    assert [len(b) for b in blocks] == [6, 6, 6, 5]
    assert len({int(b.points.max()) for b in blocks}) > 1
    assert sum(name.startswith("lstm_forward") for name in names) == 1, names
