"""spiralctl tune: the search space, masked storage URLs, a study of trials that are ordinary run
folders, Ctrl-C and kill -9 followed by a rerun, workers sharing a journal file or a PostgreSQL
database. Trials are tiny (60 sequences of 8 points, 2 epochs) so the whole file runs in about a
minute on 2 cores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spiralctl.checkpoint import load_checkpoint
from spiralctl.cli import app
from spiralctl.errors import SpiralError

optuna = pytest.importorskip("optuna", reason="spiralctl[tune] is not installed")

import postgres  # noqa: E402

from spiralctl import tune as tuning  # noqa: E402

PASSWORD = "s3cretPW4tune"
TINY = ("--epochs", 2, "--hidden", "2,4", "--batch-size", 16, "--no-plots")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from spiralctl.data import DataConfig, generate, save_datasets

    folder = tmp_path_factory.mktemp("tiny")
    save_datasets(folder, generate(DataConfig(sequences=60, length=8, seed=5)))
    return folder


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args, env=None):
        return runner.invoke(app, [str(a) for a in args], env=env)

    return invoke


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _tune_command(*args) -> list[str]:
    return [sys.executable, "-m", "spiralctl", "tune", *(str(a) for a in args)]


def _start(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        _tune_command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _wait_for(condition, what: str, timeout: float = 120) -> None:
    """Poll until `condition()` holds (a file a process writes), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _long_trials(data: Path, trials: int, epochs: int) -> tuple:
    """Trials long enough to be caught in the middle (about 20 ms an epoch)."""
    return (
        "--data",
        data,
        "--trials",
        trials,
        "--epochs",
        epochs,
        "--hidden",
        2,
        "--batch-size",
        16,
        "--no-plots",
    )


def _epochs_written(run_dir: Path) -> int:
    try:
        return len((run_dir / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def _study(storage: str, name: str = "spiralctl"):
    return tuning.summarize(name, tuning.resolve_storage(storage, None))


def _finished(summary: dict) -> int:
    return summary["counts"]["complete"] + summary["counts"]["pruned"]


# ---------------------------------------------------------------------------------------------
# search space, storage URLs, errors


def test_search_space_from_options():
    space = {d.name: d for d in tuning.search_space(None, {"hidden": "4,8", "lr": "1e-3:1e-1:log"})}
    assert space["hidden"].choices == (4, 8)
    assert (space["lr"].low, space["lr"].high, space["lr"].log) == (1e-3, 1e-1, True)
    assert space["batch_size"].choices == (32, 64, 128)  # the defaults for the others
    assert space["lr_schedule"].choices == ("constant", "cosine")
    assert space["seed"].fixed and space["seed"].choices == (0,)
    assert tuning.parse_dimension("batch_size", "16:256").low == 16
    assert tuning.parse_dimension("lr", "0.01").fixed


def test_search_space_from_json_and_toml_files_options_win(tmp_path):
    (tmp_path / "space.json").write_text(json.dumps({"hidden": [2, 3], "lr": {"low": 0.001, "high": 0.1}}))
    (tmp_path / "space.toml").write_text('hidden = [5]\nlr = "1e-4:1e-2:log"\nlr-schedule = ["cosine"]\n')
    space = {d.name: d for d in tuning.search_space(tmp_path / "space.json", {"hidden": "6"})}
    assert space["hidden"].choices == (6,) and space["lr"].low == 0.001 and not space["lr"].log
    space = {d.name: d for d in tuning.search_space(tmp_path / "space.toml")}
    assert space["hidden"].choices == (5,) and space["lr"].log and space["lr_schedule"].choices == ("cosine",)


@pytest.mark.parametrize(
    "args, text",
    [
        (("--lr", "0.1:0.01"), "--lr: the range's low end must be below its high end"),
        (("--lr", "0:1:log"), "--lr: the learning rate must be a positive number"),
        (("--hidden", "4,x"), "--hidden: 'x' is not an int"),
        (("--lr-schedule", "linear"), "--lr-schedule: must be one of constant, cosine"),
        (("--batch-size", "0"), "--batch-size: must be at least 1"),
        (("--trials", 0), "--trials must be at least 1"),
        ((), "--trials is required"),
        (("--storage", "postgresql//u:" + PASSWORD + "@h/db"), "--storage must be a database URL"),
    ],
)
def test_bad_tune_options_get_one_error_line(run, args, text):
    if args and args[0] != "--trials" and "--trials" not in args and text != "--trials is required":
        args = (*args, "--trials", 1)
    result = run("tune", *args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert text in lines[0] and PASSWORD not in result.output


def test_space_file_errors(run, tmp_path):
    (tmp_path / "bad.json").write_text('{"hiddn": [4]}')
    result = run("tune", "--trials", 1, "--space", tmp_path / "bad.json")
    assert result.exit_code == 2 and "unknown hyperparameter 'hiddn'" in result.output


def test_urls_are_masked_everywhere():
    url = f"postgresql://me:{PASSWORD}@db.example:5432/tune"
    assert tuning.mask_url(url) == "postgresql://me:***@db.example:5432/tune"
    assert (
        tuning.mask_url(f"mysql://me:{PASSWORD}@h/db?password={PASSWORD}")
        == "mysql://me:***@h/db?password=***"
    )
    message = f"could not connect with password {PASSWORD} to {url}"
    assert PASSWORD not in tuning.scrub(message, url)
    assert str(tuning.Storage(url=url)) == "postgresql://me:***@db.example:5432/tune"
    assert PASSWORD not in repr(tuning.Storage(url=url))


def test_storage_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(tuning.ENV_STORAGE, f"postgresql://me:{PASSWORD}@h/db")
    assert tuning.resolve_storage(None, tmp_path).dialect == "postgresql"
    monkeypatch.delenv(tuning.ENV_STORAGE)
    assert tuning.resolve_storage(None, tmp_path).journal == tmp_path / "study.journal"


def test_unreachable_database_error_is_masked(run):
    # a port nobody listens on: the driver's error comes back as one line, the password masked
    result = run("tune", "--trials", 1, "--storage", f"postgresql://me:{PASSWORD}@127.0.0.1:9/db")
    assert result.exit_code == 2 and result.output.startswith(
        "error: --storage postgresql://me:***@127.0.0.1:9/db"
    )
    assert PASSWORD not in result.output and "Traceback" not in result.output


def test_missing_optuna_names_the_install_command(run, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    result = run("tune", "--trials", 1)
    assert result.exit_code == 2
    assert (
        result.output.strip()
        == 'error: spiralctl tune needs Optuna; install it with: pip install "spiralctl[tune]"'
    )


# ---------------------------------------------------------------------------------------------
# pruning through train's own job


def test_pruning_leaves_a_sane_run_folder(tiny_data, tmp_path):
    from spiralctl.config import TrainConfig

    def prune_after_first_epoch(event, info):
        if event == "epoch":
            assert {"val_loss", "val_accuracy", "epoch"} <= set(info)
            raise optuna.TrialPruned()

    run_dir = tmp_path / "trial-0"
    config = TrainConfig(epochs=3, batch_size=16, hidden=2)
    before = signal.getsignal(signal.SIGINT)  # a test run in a background job starts with it ignored
    with pytest.raises(optuna.TrialPruned):
        tuning._train_trial(config, tiny_data, run_dir, "cpu", True, prune_after_first_epoch)
    assert _epochs_written(run_dir) == 1
    assert load_checkpoint(run_dir / "last.safetensors").epoch == 1
    assert load_checkpoint(run_dir / "best.safetensors").epoch == 1
    assert (run_dir / "loss.png").exists() and (run_dir / "config.json").exists()
    assert signal.getsignal(signal.SIGINT) is before  # fit gave Ctrl-C back
    from spiralctl.runs import run_lock

    with run_lock(run_dir):  # the run folder's lock was let go
        pass


# ---------------------------------------------------------------------------------------------
# whole studies


def test_a_study_of_six_trials(run, tiny_data):
    result = run(
        "tune", "--data", tiny_data, "--trials", 6, "--epochs", 2, "--hidden", "2,4", "--batch-size", 16,
        "--lr", "1e-3:1e-1:log", "--out", "t", "--sampler-seed", 1, "--json-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    objects = _json_lines(result.stdout)
    trials, summary = objects[:-1], objects[-1]
    assert [o["event"] for o in trials] == ["trial"] * 6 and summary["event"] == "summary"
    assert sorted(o["trial"] for o in trials) == list(range(6))
    assert _finished(summary) == 6 and summary["target"] == 6
    for row in trials:
        folder = Path(f"t/trial-{row['trial']}")
        assert row["state"] in ("complete", "pruned") and row["run_dir"] == str(folder)
        assert row["epochs"] == _epochs_written(folder) and row["epochs"] <= 2
        for name in ("config.json", "metrics.csv", "best.safetensors", "last.safetensors", "loss.png"):
            assert (folder / name).exists(), (folder, name)
        config = json.loads((folder / "config.json").read_text())
        assert {k: config[k] for k in row["params"]} == row["params"] and config["epochs"] == 2
    best = summary["best"]
    assert best["value"] == min(o["value"] for o in trials if o["state"] == "complete")
    assert summary["best_checkpoint"] == "t/best.safetensors"
    assert Path("t/best.safetensors").read_bytes() == Path(best["checkpoint"]).read_bytes()
    assert json.loads(Path("t/best.json").read_text())["trial"] == best["trial"]
    assert sorted(summary["plots"]) == ["t/optimization_history.png", "t/param_importances.png"]
    assert best["repeat"] == f"spiralctl train --config t/trial-{best['trial']}/config.json"

    # the best trial, repeated by `spiralctl train --config`: the same weights, bit for bit
    repeat = run("train", "--config", best["config"], "--out", "again", "-q", "--no-plots")
    assert repeat.exit_code == 0, repeat.output
    a, b = (
        load_checkpoint(Path(best["run_dir"]) / "last.safetensors"),
        load_checkpoint("again/last.safetensors"),
    )
    for name, weights in a.weights.items():
        np.testing.assert_array_equal(weights, b.weights[name])

    # --show prints the study without running it; asking for the same total again runs nothing
    shown = run("tune", "--show", "t", "--json")
    assert shown.exit_code == 0 and _finished(json.loads(shown.stdout)) == 6
    assert run("tune", "--show", "-", "--out", "t").exit_code == 0
    table = run("tune", "--show", "t")
    assert "tune summary" in table.stdout and f"best trial │ {best['trial']}" in table.stdout
    again = run("tune", "--data", tiny_data, "--trials", 6, "--epochs", 3, "--hidden", "2,4", "--out", "t")
    assert again.exit_code == 2 and "was started with other settings (epochs, space" in again.output
    same = run(
        "tune", "--data", tiny_data, "--trials", 6, "--epochs", 2, "--hidden", "2,4", "--batch-size", 16,
        "--lr", "1e-3:1e-1:log", "--out", "t", "--json", "--no-plots",
    )  # fmt: skip
    assert same.exit_code == 0 and _finished(_json_lines(same.stdout)[-1]) == 6


def test_a_study_refuses_trials_on_other_data(run, tiny_data, tmp_path):
    """The data is part of what a study fixes: another --data (or none, the generated default)
    is refused before any trial runs, with one line naming both, and the study is left as it was."""
    from spiralctl.data import DataConfig, generate, load_dataset, save_datasets

    other = tmp_path / "other"
    save_datasets(other, generate(DataConfig(sequences=60, length=8, seed=6)))
    args = ("--epochs", 1, "--hidden", 2, "--batch-size", 16, "--no-plots", "--out", "t", "--sampler-seed", 0)
    assert run("tune", "--data", tiny_data, "--trials", 1, *args).exit_code == 0
    ours, theirs = (load_dataset(d / "train.safetensors").fingerprint() for d in (tiny_data, other))
    result = run("tune", "--data", other, "--trials", 2, *args)
    assert result.exit_code == 2 and result.stdout == "" and len(result.stderr.splitlines()) == 1
    assert result.stderr == (
        f"error: study 'spiralctl' was started on {tiny_data} (train fingerprint {ours}), and --data "
        f"{other} (train fingerprint {theirs}) is other data: validation losses on different data cannot "
        f"be compared; give --data {tiny_data} to go on with the study, or another --study name for a "
        "study on this data\n"
    )
    result = run("tune", "--trials", 2, *args)  # no --data: the generated default, other data too
    assert (
        result.exit_code == 2 and "and the generated default data (no --data) is other data" in result.stderr
    )
    assert _finished(_study("t")) == 1 and not Path("t/trial-1").exists()
    assert _study("t")["settings"]["data"] == {"name": str(tiny_data), "fingerprint": ours}
    assert run("tune", "--data", other, "--trials", 1, *args, "--study", "other", "--out", "o").exit_code == 0


def test_a_study_that_goes_on_proposes_new_parameters(run, tiny_data):
    """A rerun that extends a study (here on SQLite) does not draw the proposals of the run before
    it again, and --sampler-seed still repeats a new study exactly."""
    args = ("--data", tiny_data, "--epochs", 1, "--hidden", 2, "--batch-size", 16, "--no-plots")
    args = (*args, "--sampler-seed", 0, "--storage", "sqlite:///study.db", "--json")

    def params(study: str) -> list[dict]:
        summary = tuning.summarize(study, tuning.resolve_storage("sqlite:///study.db", None))
        return [row["params"] for row in summary["trials"]]

    assert run("tune", *args, "--trials", 1, "--study", "a", "--out", "a").exit_code == 0
    result = run("tune", *args, "--trials", 2, "--study", "a", "--out", "a")
    assert result.exit_code == 0, result.output
    first, later = params("a")
    assert later != first  # a sampler restarted from the seed proposed trial 0's again
    assert run("tune", *args, "--trials", 1, "--study", "b", "--out", "b").exit_code == 0
    assert params("b") == [first]  # a new study with the same seed: the same trials
    assert tuning.sampler_seed(0, 1, 0) == 1 and tuning.sampler_seed(None, 0, 4) is None
    assert len({tuning.sampler_seed(0, w, n) for w in range(2) for n in range(5)}) == 10


def test_ctrl_c_then_rerun_completes_the_study(tiny_data, tmp_path):
    args = _long_trials(tiny_data, trials=3, epochs=30)
    first = _start(*args, "--json-progress")
    line = first.stdout.readline()  # the first finished trial
    assert json.loads(line)["event"] == "trial", line + first.stderr.read()
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("error: SIGINT: stopped") and "Traceback" not in err
    assert "run the same command again" in err
    summary = _study("runs/tune-spiralctl")
    assert _finished(summary) < 3 and summary["counts"]["running"] == 0

    second = subprocess.run(_tune_command(*args, "--json"), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    summary = _study("runs/tune-spiralctl")
    assert _finished(summary) == 3 and summary["counts"]["running"] == summary["counts"]["waiting"] == 0
    for row in summary["trials"]:  # an interrupted trial ran again from the start, with the same parameters
        if row["state"] == "fail":
            retry = next(r for r in summary["trials"] if r.get("retry_of") == row["trial"])
            assert retry["params"] == row["params"] and retry["state"] in ("complete", "pruned")


def test_two_processes_share_one_journal_file(tiny_data):
    args = ("--data", tiny_data, "--trials", 8, *TINY, "--json-progress")
    workers = [_start(*args) for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err for _, err in outputs]
    ran = [[o["trial"] for o in _json_lines(out) if o["event"] == "trial"] for out, _ in outputs]
    assert sorted(ran[0] + ran[1]) == list(range(8))  # every trial once, by one of them
    summary = _json_lines(outputs[0][0])[-1]
    assert _finished(summary) == 8 and summary["counts"]["fail"] == 0
    for number in range(8):
        assert _epochs_written(Path(f"runs/tune-spiralctl/trial-{number}")) >= 1


def test_kill_9_mid_trial_then_rerun(tiny_data):
    args = _long_trials(tiny_data, trials=2, epochs=60)
    first = _start(*args)
    trial = Path("runs/tune-spiralctl/trial-0")
    _wait_for(lambda: _epochs_written(trial) >= 1, "the first epoch of trial 0")
    first.send_signal(signal.SIGSTOP)  # hold it mid-trial, then kill it there
    assert _epochs_written(trial) < 60
    first.kill()
    first.communicate()
    assert _study("runs/tune-spiralctl")["counts"]["running"] == 1

    second = subprocess.run(_tune_command(*args), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "trial 0 lost its worker: it failed and runs again" in second.stderr
    summary = _study("runs/tune-spiralctl")
    assert _finished(summary) == 2 and summary["counts"]["fail"] == 1
    killed, retry = summary["trials"][0], next(r for r in summary["trials"] if r.get("retry_of") == 0)
    assert killed["state"] == "fail" and retry["params"] == killed["params"]


def test_one_worker_process_per_device(run, tiny_data):
    result = run("tune", "--data", tiny_data, "--trials", 4, *TINY, "--device", "cpu,CPU", "--json-progress")
    assert result.exit_code == 0, result.output
    assert "2 workers on cpu, CPU" in result.stderr
    objects = _json_lines(result.stdout)
    assert sorted(o["trial"] for o in objects if o["event"] == "trial") == [0, 1, 2, 3]
    assert _finished(objects[-1]) == 4
    assert {row["device"] for row in objects[-1]["trials"]} <= {"cpu", "CPU"}


# ---------------------------------------------------------------------------------------------
# PostgreSQL: several workers on one database, and a password that never shows


@pytest.fixture(scope="module")
def database():
    reason = postgres.why_not()
    if reason is not None:
        pytest.skip(reason)
    with postgres.postgres_server(PASSWORD) as url:
        yield url


def _assert_no_password(*texts: str, folder: Path = Path(".")) -> None:
    for text in texts:
        assert PASSWORD not in text
    for path in folder.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path
        assert PASSWORD not in str(path)


def test_two_workers_share_a_postgresql_study(tiny_data, database):
    args = ("--data", tiny_data, "--trials", 6, *TINY, "--study", "shared", "--json-progress")
    by_option = _start(*args, "--storage", database, "--out", "a")
    by_env = _start(*args, "--out", "b", "--workers", 2, env={tuning.ENV_STORAGE: database})
    outputs = [w.communicate(timeout=300) for w in (by_option, by_env)]
    assert [by_option.returncode, by_env.returncode] == [0, 0], [err for _, err in outputs]
    ran = [[o["trial"] for o in _json_lines(out) if o["event"] == "trial"] for out, _ in outputs]
    assert sorted(ran[0] + ran[1]) == list(range(6))
    summary = _json_lines(outputs[1][0])[-1]
    assert _finished(summary) == 6 and summary["storage"] == database.replace(PASSWORD, "***")
    for out, number in [("a", n) for n in ran[0]] + [("b", n) for n in ran[1]]:
        assert _epochs_written(Path(f"{out}/trial-{number}")) >= 1

    shown = subprocess.run(
        _tune_command("--show", "-", "--study", "shared"),
        capture_output=True,
        text=True,
        env={**os.environ, tuning.ENV_STORAGE: database},
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert (
        "tune summary" in shown.stdout
        and "study      │ shared (postgresql://spiral:***@127.0.0.1:" in shown.stdout
    )
    _assert_no_password(shown.stdout, shown.stderr, *(text for pair in outputs for text in pair))


def test_postgresql_worker_killed_mid_trial(tiny_data, database):
    args = _long_trials(tiny_data, trials=3, epochs=60)
    args = (*args, "--study", "killed", "--heartbeat", 1)
    env = {tuning.ENV_STORAGE: database}
    first = _start(*args, "--out", "a", env=env)
    trial = Path("a/trial-0")
    _wait_for(lambda: _epochs_written(trial) >= 1, "the first epoch of trial 0")
    first.send_signal(signal.SIGSTOP)
    assert _epochs_written(trial) < 60
    first.kill()
    first.communicate()

    # the other worker does its trials, then finds trial 0 silent for 3 heartbeats, fails it and
    # runs it again
    second = subprocess.run(
        _tune_command(*args, "--out", "b", "--json"),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    assert second.returncode == 0, second.stderr
    summary = _json_lines(second.stdout)[-1]
    assert _finished(summary) == 3 and summary["counts"]["running"] == 0
    killed = summary["trials"][0]
    assert killed["state"] == "fail"
    retry = next(r for r in summary["trials"] if r.get("retry_of") == 0)
    assert retry["params"] == killed["params"] and retry["state"] in ("complete", "pruned")
    _assert_no_password(second.stdout, second.stderr)


def test_diverging_trials_fail_and_three_in_a_row_stop_the_tune(run, tiny_data):
    result = run(
        "tune", "--data", tiny_data, "--trials", 5, *TINY, "--lr", "1e38", "--out", "t", "--json-progress"
    )
    assert result.exit_code == 1
    rows = _json_lines(result.stdout)
    assert [r["state"] for r in rows] == ["fail"] * 3 and "training loss became" in rows[0]["error"]
    assert result.stderr.splitlines()[-1].startswith(
        "error: 3 trials in a row failed (trial 2: training loss became"
    )
    assert _study("t")["counts"]["fail"] == 3


def test_library_errors_are_spiral_errors(tmp_path):
    with pytest.raises(SpiralError, match="no study journal there"):
        tuning.show(str(tmp_path))
    (tmp_path / "study.journal").write_text("")
    with pytest.raises(SpiralError, match="no study named 'nope'"):
        tuning.show(str(tmp_path), "nope")
