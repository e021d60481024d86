"""import's readers: the sktime/aeon .ts format (checked against aeon's own loader on the sets it
bundles), the UCR archive's text formats, long CSV with any features, JSON, .npy/.npz, dataset
files and stdin; any number of features, labels as the file writes them, and every bad input one
error line that names the file and the line (or the sequence by its name)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest

from spiralctl.errors import SpiralError
from spiralctl.formats import table
from spiralctl.inputs import LabelledSequences, read_archive, read_blocks, read_labelled, read_sequences

pytestmark = pytest.mark.filterwarnings("error")


def _text(name: str, text: str) -> str:
    with open(name, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    return name


def _error(read, *args) -> str:
    """The one-line message that read(*args) raises."""
    with pytest.raises(SpiralError) as caught:
        read(*args)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


def _bundled(name: str, split: str = "TRAIN") -> Path:
    aeon = pytest.importorskip("aeon")
    return Path(aeon.__file__).parent / "datasets" / "data" / name / f"{name}_{split}.ts"


def _same_as_aeon(read: LabelledSequences, path: Path) -> None:
    """The values, count, features and lengths that aeon's own loader reads from `path`."""
    from aeon.datasets import load_from_ts_file

    values, _ = load_from_ts_file(str(path))
    assert len(read.sequences) == len(values)
    for points, case in zip(read.sequences, values):
        assert points.dtype == np.float32 and points.shape == case.T.shape
        np.testing.assert_array_equal(points, case.T.astype(np.float32))


def _declared(path: Path) -> list[str]:
    """The class names of a .ts file's @classLabel line, as written."""
    for line in path.read_text().splitlines():
        if line.lower().startswith("@classlabel"):
            return line.split()[2:]
    raise AssertionError(f"{path} has no @classLabel line")


# ---- .ts


def test_bundled_univariate_set_reads_as_aeon_reads_it():
    path = _bundled("ItalyPowerDemand")
    read = read_labelled(str(path))
    _same_as_aeon(read, path)
    assert len(read.sequences) == 67 and {s.shape for s in read.sequences} == {(24, 1)}
    assert read.classes == ["1", "2"] and set(read.labels) == {"1", "2"}
    assert read.source == str(path) and read.names[:3] == ["0", "1", "2"] and read.features is None
    lines = path.read_text().split("\n")
    for line, label in zip(read.lines, read.labels):
        assert lines[line - 1].rstrip().endswith(f":{label}")


def test_bundled_multivariate_set_keeps_its_declared_classes():
    path = _bundled("BasicMotions")
    read = read_labelled(str(path))
    _same_as_aeon(read, path)
    assert len(read.sequences) == 40 and {s.shape for s in read.sequences} == {(100, 6)}
    assert read.classes == _declared(path) == ["Standing", "Running", "Walking", "Badminton"]
    assert read.labels[0] == "Standing" and set(read.labels) == set(
        read.classes
    )  # case kept (aeon lowers it)


def test_bundled_set_of_unequal_lengths():
    from aeon.datasets import load_from_ts_file

    path = _bundled("JapaneseVowels")
    read = read_labelled(str(path))
    _same_as_aeon(read, path)
    values, _ = load_from_ts_file(str(path))
    assert len(read.sequences) == 270 and {s.shape[1] for s in read.sequences} == {12}
    assert [len(s) for s in read.sequences] == [case.shape[1] for case in values]
    assert len({len(s) for s in read.sequences}) > 1
    assert read.classes == [str(i) for i in range(1, 10)]


def test_archive_sets_by_name_read_their_bundled_files():
    train, test = read_archive("BasicMotions")
    assert train.source == "ucr:BasicMotions/train" and test.source == "ucr:BasicMotions/test"
    assert len(train.sequences) == len(test.sequences) == 40
    assert train.classes == test.classes == _declared(_bundled("BasicMotions"))
    _same_as_aeon(test, _bundled("BasicMotions", "TEST"))
    assert test.lines[0] == read_labelled(str(_bundled("BasicMotions", "TEST"))).lines[0]


def test_archive_names_that_cannot_be_read(monkeypatch, tmp_path):
    pytest.importorskip("aeon")
    import aeon.datasets

    monkeypatch.setenv("AEON_DATA", str(tmp_path / "aeon_data"))
    assert "did you mean ucr:BasicMotions?" in _error(read_archive, "basicmotions")
    assert _error(read_archive, "NoSuchSet").startswith("ucr:NoSuchSet is not a classification set")
    assert "not the name of a set" in _error(read_archive, "../etc")

    def offline(*args, **kwargs):
        raise ValueError("Failed to retrieve Zenodo metadata for record 1: <urlopen error [Errno -3]>")

    monkeypatch.setattr(aeon.datasets, "load_classification", offline)
    message = _error(read_archive, "Adiac")
    assert message.startswith("ucr:Adiac: the set could not be fetched (ValueError: Failed to retrieve")
    assert message.endswith(
        "download Adiac_TRAIN.ts and Adiac_TEST.ts (timeseriesclassification.com) and give the files instead"
    )


SMALL_TS = """# a comment
% another, as some archive files have
@problemName Small
@timeStamps false
@missing true
@univariate false
@dimensions 2
@equalLength false
@classLabel true Up down
@data
1,2,3:4,5,6:Up
1.5,2.5:3.5,4.5:down

7,8,?,NaN:1,2,?,?:Up
"""


def test_a_ts_file_of_unequal_lengths_with_padding_and_empty_lines():
    pytest.importorskip("aeon")
    read = read_labelled(_text("small.ts", SMALL_TS))
    assert read.labels == ["Up", "down", "Up"] and read.classes == ["Up", "down"]
    assert read.lines == [11, 12, 14] and read.names == ["0", "1", "2"]
    assert [s.tolist() for s in read.sequences] == [
        [[1, 4], [2, 5], [3, 6]],
        [[1.5, 3.5], [2.5, 4.5]],
        [[7, 1], [8, 2]],  # where every dimension is missing at the end, that is padding
    ]


def test_an_unlabelled_ts_file_is_for_predict_only():
    pytest.importorskip("aeon")
    _text("free.ts", "@problemName Free\n@classLabel false\n@data\n1,2,3\n4,5,6,7\n")
    assert "@classLabel false: the cases have no class labels" in _error(read_labelled, "free.ts")
    with pytest.raises(SpiralError, match="line 5: the case has 4 points and the first case \\(line 4\\)"):
        read_sequences("free.ts")  # aeon's default: one length
    _text("free.ts", "@problemName Free\n@equalLength false\n@classLabel false\n@data\n1,2,3\n4,5,6,7\n")
    names, sequences, labels = read_sequences("free.ts")
    assert names == ["0", "1"] and [len(s) for s in sequences] == [3, 4] and labels is None


def _ts(body: str, header: str = "@problemName Bad\n@univariate true\n@classLabel true a b\n") -> str:
    return header + "@data\n" + body


BAD_TS = {
    # name: (text, what the error says after "bad.ts: ")
    "time stamps": (
        "@problemName T\n@timeStamps true\n@classLabel true 1 2\n@data\n(2007-01-01 00:00:00,1.0):1\n",
        "line 2: @timeStamps true: spiralctl reads values, not time stamps",
    ),
    "regression": (
        "@problemName R\n@targetLabel true\n@data\n1,2,3:0.5\n",
        "line 2: @targetLabel true: the cases hold regression targets and spiralctl classifies",
    ),
    "missing inside": (_ts("1,2,3:a\n1,?,3:b\n"), "line 6: dimension 0, point 1 is missing ('?' or NaN)"),
    "nan inside": (_ts("1,NaN,3:a\n1,2,3:b\n"), "line 5: dimension 0, point 1 is missing"),
    "missing in one dimension": (
        _ts("1,2,3:4,5,?:a\n", "@problemName M\n@univariate false\n@classLabel true a\n"),
        "line 5: dimension 1, point 2 is missing",
    ),
    "undeclared label": (
        _ts("1,2,3:a\n1,2,3:A\n"),
        "line 6: label 'A' is not a class that @classLabel (line 3) declares (a, b)",
    ),
    "other dimensions": (
        _ts("1,2:3,4:a\n1,2:b\n", "@problemName D\n@univariate false\n@classLabel true a b\n"),
        "line 6: the case has 1 dimension(s) and the first case (line 5) has 2",
    ),
    "more than univariate": (_ts("1,2:3,4:a\n"), "line 5: the case has 2 dimension(s) but @univariate true"),
    "more than declared": (
        _ts("1,2:3,4:a\n", "@problemName D\n@dimensions 1\n@classLabel true a\n"),
        "line 5: the case has 2 dimension(s) but @dimensions 1 (line 2) says 1 per case",
    ),
    "dimensions of two lengths": (
        _ts("1,2,3:3,4:a\n", "@problemName D\n@univariate false\n@classLabel true a\n"),
        "line 5: dimension 1 has 2 values and dimension 0 has 3",
    ),
    "one point": (
        _ts("1,2:a\n3:b\n", "@problemName S\n@equalLength false\n@classLabel true a b\n"),
        "line 6: the case has 1 point(s); at least 2",
    ),
    "all missing": (
        _ts("1,2:a\n?,?:b\n", "@problemName S\n@classLabel true a b\n"),
        "line 5: the case has 0 point(s)",
    ),
    "not a number": (_ts("1,2,3:a\n1,x,3:b\n"), "line 6: dimension 0, point 1: 'x' is not a number"),
    "infinite": (_ts("1,2,3:a\n1,inf,3:b\n"), "line 6: dimension 0, point 1 = inf is not a finite number"),
    "no label": (_ts("1,2,3\n"), "line 5: no ':' before a class label"),
    "empty label": (_ts("1,2,3:\n"), "line 5: the class label after the last ':' is empty"),
    "no data line": ("@problemName X\n@classLabel true a\n", "no @data line"),
    "no cases": (_ts("\n\n"), "no cases after @data (line 4)"),
    "empty": ("", "is empty"),
    "data before @data": ("@problemName X\n1,2,3:a\n@data\n", "line 2: expected a header tag (@...)"),
    "classes without names": (
        _ts("1,2:a\n", "@classLabel true\n"),
        "line 1: @classLabel true needs the class names",
    ),
    "class twice": (_ts("1,2:a\n", "@classLabel true a a\n"), "line 1: @classLabel declares 'a' twice"),
    "flag without a value": (
        _ts("1,2:a\n", "@univariate\n@classLabel true a\n"),
        "line 1: @univariate takes one value",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TS))
def test_bad_ts_files_name_the_file_and_line(case):
    pytest.importorskip("aeon")
    text, expected = BAD_TS[case]
    message = _error(read_labelled, _text("bad.ts", text))
    assert message.startswith(f"bad.ts{'' if expected == 'is empty' else ':'} {expected}"), message


def test_a_bundled_regression_set_is_refused():
    path = _bundled("Covid3Month")
    assert "@targetlabel true: the cases hold regression targets" in _error(read_labelled, str(path))


def test_ts_without_aeon_says_how_to_install_it(monkeypatch):
    _text("small.ts", SMALL_TS)
    monkeypatch.setitem(sys.modules, "aeon.datasets", None)  # import aeon.datasets raises ImportError
    assert _error(read_labelled, "small.ts") == (
        "small.ts: reading .ts files needs aeon: pip install 'spiralctl[aeon]'"
    )


# ---- the UCR archive's text formats


def test_ucr_tsv_reads_as_the_bundled_ts_of_the_same_set():
    ts = read_labelled(str(_bundled("GunPoint")))
    tsv = read_labelled(str(_bundled("GunPoint").with_suffix(".tsv")))
    assert tsv.labels == ts.labels and tsv.names == ts.names and tsv.classes is None
    assert tsv.lines == list(range(1, len(ts.labels) + 1))
    for one, other in zip(tsv.sequences, ts.sequences):
        np.testing.assert_allclose(one, other, rtol=1e-6)


def test_ucr_text_formats_keep_labels_as_written_and_drop_nan_padding():
    _text("a.tsv", "1\t0.5\t1.5\t2.5\n-1\t3\t4\tNaN\tNaN\n2.0\t5\t6\t7\t\n")
    _text("b.txt", "  1.0000000e+00  5.0e-01  1.5e+00  2.5\n\n -1  3  4 NaN\n")
    _text("c.txt", "1,0.5,1.5,2.5\nb,3,4,nan\n")
    _text("d.csv", "1,0.5,1.5,2.5\nB,3,4,NaN\n")
    read = read_labelled("a.tsv")
    assert read.labels == ["1", "-1", "2.0"] and read.lines == [1, 2, 3] and read.features is None
    assert [s.ravel().tolist() for s in read.sequences] == [[0.5, 1.5, 2.5], [3, 4], [5, 6, 7]]
    read = read_labelled("b.txt")
    assert read.labels == ["1.0000000e+00", "-1"] and read.lines == [1, 3]
    assert [s.shape for s in read.sequences] == [(3, 1), (2, 1)]
    assert read_labelled("c.txt").labels == ["1", "b"]
    read = read_labelled("d.csv")
    assert read.labels == ["1", "B"] and [len(s) for s in read.sequences] == [3, 2]
    names, sequences, labels = read_sequences("d.csv")
    assert names == ["0", "1"] and labels == ["1", "B"]


BAD_UCR = {
    "nan inside": (
        "a.tsv",
        "1\t1\t2\t3\n2\t1\tNaN\t3\n",
        "a.tsv: line 2: point 1 is missing (NaN) and values follow it",
    ),
    "not a number": ("b.txt", "1 1 2 3\n2 1 x 3\n", "b.txt: line 2: point 1 must be a number, found 'x'"),
    "one point": ("c.csv", "1,1,2\n2,1,NaN\n", "c.csv: line 2: the sequence has 1 point(s); at least 2"),
    "beyond float32": ("d.tsv", "1\t1\t1e39\n", "d.tsv: line 1: point 1 = 1e+39 is beyond float32's range"),
    "empty label": ("e.csv", "1,1,2\n,1,2\n", "e.csv: line 2: the label (the first field) is empty"),
    "empty tsv label": ("e.tsv", "1\t1\t2\n\t1\t2\n", "e.tsv: line 2: the label (the first field) is empty"),
    "empty file": ("f.tsv", "", "f.tsv is empty"),
    "only empty lines": ("g.txt", "\n\n", "g.txt holds no sequences"),
}


@pytest.mark.parametrize("case", sorted(BAD_UCR))
def test_bad_ucr_files_name_the_file_and_line(case):
    name, text, expected = BAD_UCR[case]
    assert _error(read_labelled, _text(name, text)).startswith(expected)


# ---- long CSV


def test_long_csv_of_any_features_in_any_column_order():
    _text(
        "m.csv",
        "Label,sequence,ax,ay,az\nWalk,w1,1,2,3\nWalk,w1,4,5,6\nrun,r1,7,8,9\nrun,r1,1,1,1\nrun,r1,2,2,2\n",
    )
    read = read_labelled("m.csv")
    assert (
        read.names == ["w1", "r1"] and read.labels == ["Walk", "run"] and read.features == ["ax", "ay", "az"]
    )
    assert read.lines == [2, 4] and read.classes is None
    assert [s.tolist() for s in read.sequences] == [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [1, 1, 1], [2, 2, 2]]]
    _text("one.csv", "sequence,value,label\na,1,x\na,2,x\n")
    read = read_labelled("one.csv")
    assert read.features == ["value"] and read.sequences[0].shape == (2, 1)


def test_today_csv_files_still_load():
    _text("s.csv", "sequence,x,y,label\na,0,1,clockwise\na,1,0,clockwise\nb,1,1,1\nb,2,2,1\n")
    read = read_labelled("s.csv")
    assert read.labels == ["clockwise", "1"] and read.features == ["x", "y"]
    blocks = list(read_blocks("s.csv"))
    assert blocks[0].labels == ["clockwise", "1"] and blocks[0].x.shape == (2, 2, 2)


def _rows(count: int, length, features: int = 3, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    lines = ["sequence," + ",".join(f"f{i}" for i in range(features)) + ",label\n"]
    for i in range(count):
        for values in rng.standard_normal((length(i), features)):
            lines.append(f"s{i}," + ",".join(f"{v:.5f}" for v in values) + f",c{i % 3}\n")
    return "".join(lines)


def test_the_fast_and_the_careful_reader_agree(monkeypatch):
    text = _rows(40, lambda i: 2 + i % 7)
    plain = read_labelled(_text("plain.csv", text))
    quoted = text.replace("s1,", '"s1",')  # quotes: the csv module reads those chunks
    for chunk in (table.CHUNK, 5, 2, 1):  # sequences over chunk boundaries
        monkeypatch.setattr(table, "CHUNK", chunk)
        for name, content in (("again.csv", text), ("quoted.csv", quoted)):
            read = read_labelled(_text(name, content))
            assert read.names == plain.names and read.labels == plain.labels and read.lines == plain.lines
            for one, other in zip(read.sequences, plain.sequences):
                np.testing.assert_array_equal(one, other)
    assert len(plain.sequences) == 40 and plain.lines[1] == 4


CSV_ERRORS = {
    # rows after the header: the whole message after "FILE: "
    "a,1,2,A\na,2,3,B\n": (
        "line 3: sequence a is labelled A on its earlier lines and B here; give each sequence one label"
    ),
    "a,1,2,A\na,2,3,A\nb,1,1,B\na,3,3,A\n": (
        "line 5: sequence a continues after other sequences' rows; keep each sequence's rows together, "
        "in time order"
    ),
    "a,1,2,A\nb,1,1,B\nb,2,2,B\na,3,3,A\n": (  # a has one row: what is wrong is that it goes on later
        "line 5: sequence a continues after other sequences' rows; keep each sequence's rows together, "
        "in time order"
    ),
    "a,1,2,A\nb,1,1,B\nb,2,2,B\n": "line 2: sequence a has 1 point(s); at least 2 are needed",
    "a,1,2,A\na,1,2,\n": "line 3: the label is empty; give every row its sequence's label",
    "a,1,2,A\n,1,2,A\n": "line 3: the sequence field is empty; give every row its sequence's name",
    "a,1,2,A\na,1,x,A\n": "line 3: y must be a number, found 'x'",
    "a,1,2,A\na,1,2\n": "line 3 has 3 fields, expected sequence,x,y,label",
    "a,1,2,A\na,1,2,A,5\n": "line 3 has 5 fields, expected sequence,x,y,label",
    "a,1,2,A\na,inf,2,A\n": "line 3: x = inf is not a finite number; give finite values",
    "a,1,2,A\na,1,2e39,A\n": (
        "line 3: y = 2e39 is beyond float32's range (about 3.4e38), which spiralctl computes in; "
        "scale the values down"
    ),
    "": "the CSV holds no points; give one row per point after its header",
}


@pytest.mark.parametrize("chunk", [table.CHUNK, 2, 1])
@pytest.mark.parametrize("rows", sorted(CSV_ERRORS))
def test_csv_errors_are_the_same_from_either_reader(monkeypatch, chunk, rows):
    """The same message from the numpy reader (plain rows) and the csv module (quoted rows), in
    chunks of any size."""
    monkeypatch.setattr(table, "CHUNK", chunk)
    text = "sequence,x,y,label\n" + rows
    assert _error(read_labelled, _text("e.csv", text)) == f"e.csv: {CSV_ERRORS[rows]}"
    quoted = text.replace("a,1,2,A\n", '"a",1,2,A\n', 1)
    assert _error(read_labelled, _text("q.csv", quoted)) == f"q.csv: {CSV_ERRORS[rows]}"


BAD_HEADERS = {
    "sequence,x,x,label": "line 1: the header names column 'x' twice",
    "sequence,,y,label": "line 1: column 2 of the header is empty",
    "sequence,label": "line 1: the header names no feature columns",
    "x,y,label": "a CSV input needs a header on its first line naming a sequence column",
}


@pytest.mark.parametrize("header", sorted(BAD_HEADERS))
def test_bad_csv_headers(header):
    message = _error(read_labelled, _text("h.csv", f"{header}\na,1,2,3\n"))
    assert message.startswith(f"h.csv: {BAD_HEADERS[header]}"), message


def test_a_csv_without_labels_is_for_predict():
    _text("p.csv", "sequence,x,y\na,1,2\na,2,3\n")
    assert _error(read_labelled, "p.csv").startswith("p.csv: line 1: the header has no label column")
    names, sequences, labels = read_sequences("p.csv")
    assert names == ["a"] and labels is None and sequences[0].shape == (2, 2)


def test_a_csv_of_many_chunks(tmp_path):
    """200,000 rows: sequences over the numpy reader's chunk boundaries, read as they were written
    (the speed is measured in benchmarks/, not here)."""
    rng = np.random.default_rng(0)
    values = rng.standard_normal((200_000, 6)).round(5)
    names = np.repeat(np.arange(2000), 100)
    with open("big.csv", "w") as handle:
        handle.write("sequence,a,b,c,d,e,f,label\n")
        handle.writelines(
            f"s{n}," + ",".join(map(str, row)) + f",k{n % 4}\n"
            for n, row in zip(names.tolist(), values.tolist())
        )
    read = read_labelled("big.csv")
    assert len(read.sequences) == 2000 and {s.shape for s in read.sequences} == {(100, 6)}
    assert read.lines[1999] == 2 + 199_900 and read.labels[:5] == ["k0", "k1", "k2", "k3", "k0"]
    np.testing.assert_array_equal(np.concatenate(read.sequences), values.astype(np.float32))


# ---- JSON


def test_labelled_json_of_any_features_with_names_and_number_labels():
    _text(
        "l.json",
        '[{"sequence": "bm0", "points": [[1, 2, 3], [4, 5, 6]], "label": "Walk"},'
        ' {"points": [[0, 0, 0], [1, 1, 1], [2, 2, 2]], "label": 2}]',
    )
    read = read_labelled("l.json")
    assert read.names == ["bm0", "1"] and read.labels == ["Walk", "2"] and read.lines is None
    assert [s.shape for s in read.sequences] == [(2, 3), (3, 3)]
    assert read_blocks("l.json").__next__().labels == ["Walk", "2"]


BAD_JSON = {
    '[{"sequence": "bm0", "points": [[1], [2, 3]], "label": "a"}]': (
        "sequence bm0, point 1: 2 value(s) where the first point has 1"
    ),
    '[{"sequence": "bm0", "points": [[1], [2]], "label": true}]': "sequence bm0: the label must be text",
    '[{"sequence": "bm0", "points": [[1], [2]], "label": " "}]': "sequence bm0: the label must be text",
    '[{"sequence": "bm0", "points": [[1], [2]], "label": 1.5}]': "sequence bm0: the label must be text",
    '[{"sequence": "bm0", "points": [[1], [2]]}]': "sequence bm0 must be an object with points and label",
    '[{"sequence": "bm0", "points": [[1]], "label": "a"}]': "sequence bm0 has 1 point(s); at least 2",
    '[{"sequence": "bm0", "points": [[1], [1e39]], "label": "a"}]': (
        "sequence bm0, point 1: feature 0 = 1e+39"
    ),
    '[{"sequence": [1], "points": [[1], [2]], "label": "a"}]': "sequence 0: the sequence name must be text",
    "[[1, 2], [3, 4]]": "sequence 0 must be an object with points and label",
    "{}": "JSON input must be a list of",
}


@pytest.mark.parametrize("text", sorted(BAD_JSON))
def test_bad_json_names_the_sequence_by_its_name(text):
    message = _error(read_labelled, _text("bad.json", text))
    assert message.startswith(f"bad.json: {BAD_JSON[text]}"), message


def test_json_labels_for_every_sequence_or_none():
    _text("mixed.json", '[{"points": [[1], [2]], "label": "a"}, {"sequence": "b", "points": [[1], [2]]}]')
    assert _error(read_sequences, "mixed.json").startswith(
        "mixed.json: sequence b has no label and sequence 0 has one"
    )
    _text("none.json", '[{"points": [[1], [2]]}, {"sequence": "b", "points": [[1], [2], [3]]}]')
    names, sequences, labels = read_sequences("none.json")
    assert names == ["0", "b"] and labels is None and [len(s) for s in sequences] == [2, 3]


def test_unlabelled_json_of_one_feature():
    _text("u.json", "[[1], [2], [3]]")
    names, sequences, labels = read_sequences("u.json")
    assert names == ["0"] and sequences[0].shape == (3, 1) and labels is None


# ---- .npy and .npz


def test_npy_of_any_features_with_labels_of_ints_or_strings():
    x = np.arange(4 * 5 * 3, dtype=np.float64).reshape(4, 5, 3)
    np.save("x.npy", x)
    np.save("ints.npy", np.array([0, 1, 2, 1]))
    np.save("names.npy", np.array(["Up", "down", " Up ", "x"]))
    read = read_labelled("x.npy", Path("ints.npy"))
    assert read.labels == ["0", "1", "2", "1"] and read.names == ["0", "1", "2", "3"] and read.lines is None
    np.testing.assert_array_equal(np.stack(read.sequences), x.astype(np.float32))
    assert read_labelled("x.npy", Path("names.npy")).labels == ["Up", "down", "Up", "x"]
    np.save("floats.npy", np.array([0.0, 1, 2, 1]))  # whole numbers saved as floats: their digits
    assert read_labelled("x.npy", Path("floats.npy")).labels == ["0", "1", "2", "1"]
    np.save("fractions.npy", np.array([0.5, 1, 2, 1]))
    message = _error(read_labelled, "x.npy", Path("fractions.npy"))
    expected = "labels fractions.npy: labels must be one per sequence, [4] integers or class names"
    assert message == f"{expected}; found float64[4]"
    assert _error(read_labelled, "x.npy").startswith("x.npy holds no labels: give them as a .npy array [N]")


def test_a_two_dimensional_npy_is_named_by_its_own_shape():
    np.save("flat.npy", np.zeros((50, 150)))
    np.save("y.npy", np.zeros(50, dtype=int))
    message = _error(read_labelled, "flat.npy", Path("y.npy"))
    assert message.startswith("flat.npy: a .npy input must have shape [N, T, D], found [50, 150]")
    assert "x[..., None]" in message
    names, sequences, _ = read_sequences("flat.npy")  # predict: one sequence [T, D]
    assert names == ["0"] and sequences[0].shape == (50, 150)


def test_npz_with_lengths_ignores_what_lies_past_them():
    x = np.full((3, 4, 2), np.nan)
    x[0, :4], x[1, :2], x[2, :3] = 1.0, 2.0, 3.0
    np.savez("d.npz", x=x, y=np.array(["a", "b", "a"]), lengths=np.array([4, 2, 3]))
    read = read_labelled("d.npz")
    assert read.labels == ["a", "b", "a"] and [len(s) for s in read.sequences] == [4, 2, 3]
    assert all(np.isfinite(s).all() for s in read.sequences)
    block = next(read_blocks("d.npz"))
    assert (
        block.labels == ["a", "b", "a"] and block.lengths.tolist() == [4, 2, 3] and not block.x[1, 2:].any()
    )
    np.savez("u.npz", x=np.ones((2, 3, 1)))
    assert next(read_blocks("u.npz")).labels is None
    assert _error(read_labelled, "u.npz").startswith(
        "u.npz holds ['x']; a .npz input holds x [N, T, D], y [N]"
    )


BAD_NPZ = {
    "extra key": (dict(x=np.ones((2, 3, 1)), y=[0, 1], X=[1]), "holds ['X', 'x', 'y']"),
    "short length": (
        dict(x=np.ones((2, 3, 1)), y=[0, 1], lengths=[3, 1]),
        ": lengths[1] = 1; each length must be 2 to T (3)",
    ),
    "long length": (dict(x=np.ones((2, 3, 1)), y=[0, 1], lengths=[4, 3]), ": lengths[0] = 4"),
    "nan inside": (
        dict(x=np.array([[[1.0], [np.nan]]]), y=[0]),
        ": sequence 0, point 1: feature 0 = nan is not a finite",
    ),
    "float labels": (
        dict(x=np.ones((2, 3, 1)), y=[0.5, 1]),
        ": y must be one per sequence, [2] integers or class names",
    ),
    "two-dimensional x": (dict(x=np.ones((2, 3)), y=[0, 1]), ": x must have shape [N, T, D], found [2, 3]"),
    "one point": (dict(x=np.ones((2, 1, 1)), y=[0, 1]), ": x: sequence 0 has 1 point(s)"),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_bad_npz_files(case):
    arrays, expected = BAD_NPZ[case]
    np.savez("bad.npz", **{key: np.asarray(value) for key, value in arrays.items()})
    message = _error(read_labelled, "bad.npz")
    assert message.startswith(f"bad.npz{expected}" if expected.startswith(":") else f"bad.npz {expected}"), (
        message
    )


def test_broken_npz_files():
    _text("text.npz", "not an archive")
    assert _error(read_labelled, "text.npz").startswith("text.npz: not a readable .npz archive")
    np.save("array.npy", np.ones((2, 3, 1)))
    Path("array.npy").rename("array.npz")
    assert _error(read_labelled, "array.npz").startswith("array.npz is a .npy array, not a .npz archive")
    _text("empty.npz", "")
    assert _error(read_labelled, "empty.npz").startswith("empty.npz is empty or cut short")


# ---- datasets, dispatch and stdin


def test_a_dataset_file_gives_its_class_names():
    from spiralctl.data import DataConfig, generate, save_datasets

    save_datasets(Path("data"), generate(DataConfig(sequences=20, length=6, seed=1)))
    blocks = list(read_blocks("data/train.safetensors", block=5))
    assert [len(b.names) for b in blocks] == [5, 5, 5, 1]
    assert set(blocks[0].labels) <= {"clockwise", "anticlockwise"} and blocks[0].x.shape[1:] == (6, 2)


def test_unknown_and_missing_inputs():
    _text("x.xlsx", "")
    assert _error(read_labelled, "x.xlsx") == (
        "x.xlsx: unknown input type '.xlsx'; use .ts, .tsv, .txt, .csv, .json, .npz or .npy"
    )
    assert _error(read_labelled, "none.ts").startswith("none.ts: no such file")
    _text("a.csv", "sequence,x,label\na,1,u\na,2,u\n")
    assert (
        _error(read_labelled, "a.csv", Path("y.npy"))
        == "labels is for .npy inputs; a.csv holds its own labels"
    )


def test_stdin_of_several_features_and_labels(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("sequence;a;b;c;label\ns;1,5;2;3;Up\ns;4;5;6;Up\n"))
    blocks = list(read_blocks("-"))
    assert blocks[0].names == ["s"] and blocks[0].labels == ["Up"]
    assert blocks[0].x.tolist() == [[[1.5, 2, 3], [4, 5, 6]]]
    monkeypatch.setattr(sys, "stdin", io.StringIO("1,0.5,1.5\n2,3,4\n"))  # the UCR format's CSV
    names, sequences, labels = read_sequences("-")
    assert names == ["0", "1"] and labels == ["1", "2"] and sequences[1].ravel().tolist() == [3, 4]
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert _error(read_sequences, "-") == "stdin is empty; pipe CSV or JSON into it, or give a file"
