"""Hyperparameter search on Optuna: the search space, the study's storage, the objective, the
workers that run trials, and the summary of a study.

Every trial trains an ordinary run folder, OUT/trial-K (K: Optuna's trial number), through the
same code as `spiralctl train`. The study lives in Optuna's storage: by default a journal file in
the tune folder (OUT/study.journal), or any database URL Optuna supports, which lets workers on
several machines share one study. The library never prints: it reports through `on_progress`.

Killed workers: with a database, the trial of a worker that stops sending heartbeats is marked
failed after the grace period and queued again with the same parameters (Optuna's heartbeat).
With a journal file, each worker holds a lock file for as long as it lives, so a running trial
whose worker's lock is free belongs to a dead worker: it is failed and queued again at once.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import signal
import socket
import threading
import time
import urllib.parse
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from spiralctl.errors import EXIT_FAILURE, EXIT_INTERRUPTED, SpiralError
from spiralctl.storage import atomic_output

INSTALL = 'pip install "spiralctl[tune]"'
ENV_STORAGE = "SPIRALCTL_STORAGE"
JOURNAL_NAME = "study.journal"
DEFAULT_STUDY = "spiralctl"
METRICS = {"val_loss": "minimize", "val_accuracy": "maximize"}
PRUNERS = ("median", "none")
MAX_RETRIES = 3  # a trial whose worker dies this often (out of memory, say) is not queued again
POLL_SECONDS = 1.0  # how often a worker with nothing to run looks at the study again
INTERRUPTED_CODES = (EXIT_INTERRUPTED, 128 + signal.SIGTERM)  # training stopped by Ctrl-C or SIGTERM
MAX_FAILURES_IN_A_ROW = 3  # then the search space is likely wrong (every trial diverges, say): stop

ProgressCallback = Callable[[str, dict], None]


def _no_progress(event: str, info: dict) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# the search space


@dataclass(frozen=True)
class Dimension:
    """One hyperparameter: a list of choices (one choice: a fixed value) or a range."""

    name: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    log: bool = False

    @property
    def fixed(self) -> bool:
        return len(self.choices) == 1

    def suggest(self, trial):
        if self.fixed:
            return self.choices[0]
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if SPACE_TYPES[self.name] is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def describe(self) -> str:
        if self.choices:
            return ",".join(str(c) for c in self.choices)
        return f"{self.low:g}:{self.high:g}" + (":log" if self.log else "")


# what can be searched, the type of each value, and the default search
SPACE_TYPES: dict[str, type] = {
    "hidden": int,
    "lr": float,
    "batch_size": int,
    "lr_schedule": str,
    "seed": int,
}
DEFAULT_SPACE = {
    "hidden": "4,8,16,32",
    "lr": "1e-4:1e-1:log",
    "batch_size": "32,64,128",
    "lr_schedule": "constant,cosine",
    "seed": "0",
}


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _value(name: str, text: object, where: str):
    kind = SPACE_TYPES[name]
    try:
        if kind is str:
            if not isinstance(text, str):
                raise ValueError
            value = text.strip()
        elif kind is int:
            if isinstance(text, bool) or (isinstance(text, float) and not text.is_integer()):
                raise ValueError
            value = int(text.strip()) if isinstance(text, str) else int(text)
        else:
            if isinstance(text, bool):
                raise ValueError
            value = float(text.strip()) if isinstance(text, str) else float(text)
    except (TypeError, ValueError):
        raise SpiralError(f"{where}: {text!r} is not a{'n' if kind is int else ''} {kind.__name__}") from None
    if name == "lr" and not (math.isfinite(value) and value > 0):
        raise SpiralError(f"{where}: the learning rate must be a positive number (got {text!r})")
    if name in ("hidden", "batch_size") and value < 1:
        raise SpiralError(f"{where}: must be at least 1 (got {value})")
    if name == "seed" and value < 0:
        raise SpiralError(f"{where}: must be 0 or more (got {value})")
    if name == "lr_schedule":
        from spiralctl.config import LR_SCHEDULES

        if value not in LR_SCHEDULES:
            raise SpiralError(f"{where}: must be one of {', '.join(LR_SCHEDULES)} (got {value!r})")
    return value


def parse_dimension(name: str, spec: object, where: str | None = None) -> Dimension:
    """A dimension from its text (`4,8,16`, `1e-4:1e-1:log`, `32:256`, `0.01`) or, from a space
    file, a JSON/TOML value: a list of choices, one value, or {"low", "high", "log"}."""
    where = where or _option(name)
    if name not in SPACE_TYPES:
        raise SpiralError(f"{where}: unknown hyperparameter {name!r}; known: {', '.join(SPACE_TYPES)}")
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - {"low", "high", "log"})
        if unknown or "low" not in spec or "high" not in spec:
            raise SpiralError(f"{where}: a range needs exactly low, high and optionally log")
        return _range(name, spec["low"], spec["high"], bool(spec.get("log", False)), where)
    if isinstance(spec, (list, tuple)):
        return _choices(name, list(spec), where)
    if not isinstance(spec, str):
        return _choices(name, [spec], where)
    text = spec.strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) == 3 and parts[2].strip() == "log":
            return _range(name, parts[0], parts[1], True, where)
        if len(parts) == 2:
            return _range(name, parts[0], parts[1], False, where)
        raise SpiralError(f"{where}: a range is LOW:HIGH or LOW:HIGH:log (got {spec!r})")
    return _choices(name, [part for part in text.split(",")], where)


def _choices(name: str, items: list, where: str) -> Dimension:
    if not items or any(isinstance(item, str) and not item.strip() for item in items):
        raise SpiralError(f"{where}: give a value, a comma-separated list or a range LOW:HIGH")
    values = tuple(dict.fromkeys(_value(name, item, where) for item in items))  # unique, in order
    return Dimension(name, choices=values)


def _range(name: str, low: object, high: object, log: bool, where: str) -> Dimension:
    if SPACE_TYPES[name] is str:
        raise SpiralError(f"{where}: takes a list of choices, not a range")
    low, high = _value(name, low, where), _value(name, high, where)
    if not low < high:
        raise SpiralError(f"{where}: the range's low end must be below its high end (got {low}:{high})")
    if log and low <= 0:
        raise SpiralError(f"{where}: a log range must start above 0")
    return Dimension(name, low=low, high=high, log=log)


def load_space_file(path: Path) -> dict:
    """The search space in a JSON or TOML file: {"hidden": [4, 8], "lr": "1e-4:1e-1:log", ...}."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpiralError(f"--space {path}: cannot read it ({exc.strerror})") from None
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib
            except ImportError:
                raise SpiralError(
                    f"--space {path}: TOML needs Python 3.11 or the tomli package; or use a .json file"
                ) from None
        try:
            content = tomllib.loads(raw.decode())
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise SpiralError(f"--space {path}: not valid TOML ({exc})") from None
    else:
        try:
            content = json.loads(raw)
        except ValueError as exc:
            raise SpiralError(f"--space {path}: not valid JSON ({exc})") from None
    if not isinstance(content, dict):
        raise SpiralError(f"--space {path}: must hold an object of hyperparameters")
    content = {str(key).replace("-", "_"): value for key, value in content.items()}
    return {name: parse_dimension(name, spec, f"--space {path}: {name}") for name, spec in content.items()}


def search_space(file: Path | None = None, options: dict[str, str | None] | None = None) -> tuple:
    """The dimensions: the defaults, then the file's, then those given as options."""
    space = {name: parse_dimension(name, text) for name, text in DEFAULT_SPACE.items()}
    if file is not None:
        space.update(load_space_file(file))
    for name, text in (options or {}).items():
        if text is not None:
            space[name] = parse_dimension(name, text)
    return tuple(space[name] for name in SPACE_TYPES)


def space_json(space: tuple) -> dict:
    return {d.name: d.describe() for d in space}


# ---------------------------------------------------------------------------------------------
# the storage and its URL, which can hold a password


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:@/\s]*):(?P<secret>[^@\s]*)@")
_QUERY_SECRET = re.compile(r"(?P<key>(?:password|passwd|pwd)=)[^&\s]*", re.IGNORECASE)


def mask_url(text: str) -> str:
    """Hide every password in `text`: scheme://user:***@host/db and password=*** in a query."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}***", text)


def _secrets(url: str) -> list[str]:
    found = [m["secret"] for m in _USERINFO.finditer(url)]
    found += [m.group(0).split("=", 1)[1] for m in _QUERY_SECRET.finditer(url)]
    found = [s for s in found if s]
    return found + [urllib.parse.unquote(s) for s in found] + [urllib.parse.quote(s, safe="") for s in found]


def scrub(text: str, url: str) -> str:
    """`text` (an error message, say) with the URL's password hidden, however it was written."""
    for secret in sorted(set(_secrets(url)), key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return mask_url(text)


@dataclass(frozen=True)
class Storage:
    """Where a study lives: a journal file, or a database URL (kept out of repr and output)."""

    url: str = field(repr=False)
    journal: Path | None = None

    @property
    def masked(self) -> str:
        return str(self.journal) if self.journal is not None else mask_url(self.url)

    @property
    def dialect(self) -> str:
        if self.journal is not None:
            return "journal"
        return self.url.split("://", 1)[0].split("+", 1)[0].lower()

    def __str__(self) -> str:
        return self.masked


def resolve_storage(url: str | None, out: Path | None) -> Storage:
    """--storage, else $SPIRALCTL_STORAGE, else OUT/study.journal. A value with :// is a database
    URL; anything else is a journal file (or a tune folder holding study.journal)."""
    if url is None or not url.strip():
        url = os.environ.get(ENV_STORAGE, "").strip() or None
    if url is None:
        if out is None:
            raise SpiralError("no study to open: give a tune folder or --storage URL")
        return Storage(url="", journal=Path(out) / JOURNAL_NAME)
    url = url.strip()
    if "://" in url:
        return Storage(url=url)
    path = Path(url)
    if path.is_dir():
        return Storage(url="", journal=path / JOURNAL_NAME)
    if path.suffix != ".journal":
        # not echoed: it may be a mistyped URL with a password in it
        raise SpiralError(
            "--storage must be a database URL (dialect://user@host/db, sqlite:///file.db), "
            "a .journal file or a tune folder"
        )
    return Storage(url="", journal=path)


def _optuna():
    try:
        import optuna
    except ImportError:
        raise SpiralError(f"spiralctl tune needs Optuna; install it with: {INSTALL}") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the UI reports trials; no URL in Optuna's logs
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _storage_error(storage: Storage, exc: BaseException, doing: str = "cannot open it") -> SpiralError:
    missing = exc if isinstance(exc, ModuleNotFoundError) else exc.__cause__
    if isinstance(missing, ModuleNotFoundError) and storage.journal is None:
        driver = missing.name or "its driver"
        return SpiralError(
            f"--storage {storage.masked}: the database driver {driver} is missing; "
            f"install it with: {INSTALL} (PostgreSQL) or pip install {driver}"
        )
    lines = str(exc).strip().splitlines()
    detail = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return SpiralError(f"--storage {storage.masked}: {doing} ({scrub(detail, storage.url)})")


def open_storage(storage: Storage, heartbeat: int = 10):
    """Optuna's storage object. Databases get heartbeats: a running trial silent for 3 heartbeats
    is failed and queued again by whichever worker notices first."""
    optuna = _optuna()
    if storage.journal is not None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        try:
            storage.journal.parent.mkdir(parents=True, exist_ok=True)
            lock = _JournalLock(str(_beside(storage.journal, "lock")))
            return JournalStorage(JournalFileBackend(str(storage.journal), lock_obj=lock))
        except Exception as exc:
            raise _storage_error(storage, exc) from None
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                _with_driver(storage.url),
                heartbeat_interval=heartbeat,
                grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=retry_trial,
                engine_kwargs={"pool_pre_ping": True} if storage.dialect != "sqlite" else None,
            )
        except Exception as exc:
            # workers that start together on a new database race to create Optuna's tables: the
            # losers find them made on their next try
            if attempt < 4 and type(exc).__name__ in ("IntegrityError", "ProgrammingError"):
                time.sleep(0.2 * (attempt + 1))
                continue
            raise _storage_error(storage, exc) from None


def _beside(path: Path, suffix: str) -> Path:
    """A hidden lock file next to a journal or SQLite file: DIR/.NAME.SUFFIX."""
    path = Path(path)
    return path.with_name(f".{path.name}.{suffix}")


class _JournalLock:
    """The journal file's lock: a kernel file lock, which a killed process lets go of at once
    (Optuna's default, a symlink, stays behind after kill -9 and blocks others for 30 s)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._handle = None

    def acquire(self) -> bool:
        import fcntl

        handle = open(self.path, "a")
        fcntl.flock(handle, fcntl.LOCK_EX)
        self._handle = handle
        return True

    def release(self) -> None:
        import fcntl

        handle, self._handle = self._handle, None
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def _with_driver(url: str) -> str:
    """postgresql:// through whichever driver is installed: psycopg (3, the tune extra's) or
    psycopg2 (SQLAlchemy's default before 2.1)."""
    if not url.startswith(("postgresql://", "postgres://")):
        return url
    import importlib.util

    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{driver}://" + url.split("://", 1)[1]
    return url


def retry_trial(study, trial) -> None:
    """Queue a failed trial again with the same parameters (up to MAX_RETRIES times)."""
    optuna = _optuna()
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > MAX_RETRIES:
        return
    study.add_trial(
        optuna.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={"retry_of": trial.number},
            system_attrs={"failed_trial": history[0], "retry_history": history},
        )
    )


# ---------------------------------------------------------------------------------------------
# the tune


@dataclass(frozen=True)
class TuneConfig:
    """What a tune searches and how each trial is judged."""

    trials: int
    space: tuple = field(default_factory=search_space)
    epochs: int = 25
    metric: str = "val_loss"
    pruner: str = "median"
    sampler_seed: int | None = None
    heartbeat: int = 10  # seconds between a database worker's signs of life

    def check(self) -> None:
        if self.trials < 1:
            raise SpiralError(f"--trials must be at least 1 (got {self.trials})")
        if self.epochs < 1:
            raise SpiralError(f"--epochs must be at least 1 (got {self.epochs})")
        if self.metric not in METRICS:
            raise SpiralError(f"--metric must be one of {', '.join(METRICS)} (got {self.metric!r})")
        if self.pruner not in PRUNERS:
            raise SpiralError(f"--pruner must be one of {', '.join(PRUNERS)} (got {self.pruner!r})")
        if self.heartbeat < 1:
            raise SpiralError(f"--heartbeat must be at least 1 second (got {self.heartbeat})")

    @property
    def direction(self) -> str:
        return METRICS[self.metric]

    def settings(self) -> dict:
        """What every worker of one study must agree on (stored in the study)."""
        return {"epochs": self.epochs, "metric": self.metric, "space": space_json(self.space)}


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs (picklable: it crosses to spawned processes in memory,
    so a database URL never appears on a command line)."""

    config: TuneConfig
    storage: Storage
    study: str
    out: Path
    data_dir: Path | None
    device: str
    plots: bool
    index: int = 0
    # the data every trial trains on (data_identity): part of what a study fixes
    data: dict = field(default_factory=dict)
    # the trials the study held when this command started: they move the sampler's seed
    earlier_trials: int = 0


def _open_study(spec: WorkerSpec, create: bool = True):
    optuna = _optuna()
    storage = open_storage(spec.storage, spec.config.heartbeat)
    config = spec.config
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
        if config.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    seed = sampler_seed(config.sampler_seed, spec.index, spec.earlier_trials)
    sampler = optuna.samplers.TPESampler(seed=seed)
    try:
        if create:
            study = optuna.create_study(
                study_name=spec.study,
                storage=storage,
                sampler=sampler,
                pruner=pruner,
                direction=config.direction,
                load_if_exists=True,
            )
        else:
            study = optuna.load_study(study_name=spec.study, storage=storage, sampler=sampler, pruner=pruner)
    except SpiralError:
        raise
    except KeyError:
        raise SpiralError(f"--storage {spec.storage.masked}: no study named {spec.study!r}") from None
    except Exception as exc:
        raise _storage_error(spec.storage, exc) from None
    if create:
        _check_settings(study, spec)
    return study, storage


def sampler_seed(seed: int | None, worker: int, earlier_trials: int) -> int | None:
    """The seed of worker `worker`'s sampler, for a command that found `earlier_trials` trials in
    its study: --sampler-seed + worker for a new study (as always), and for a study that goes on
    a seed drawn from all three, so that a rerun does not draw the proposals of the run before
    it again (a sampler restarted from the same seed repeats them, trial for trial)."""
    if seed is None:
        return None
    if earlier_trials == 0:
        return seed + worker
    import numpy as np

    return int(np.random.SeedSequence([seed, worker, earlier_trials]).generate_state(1)[0])


def data_identity(data_dir: Path | None) -> dict:
    """What a study records of its data: a name to show, and what is compared: the training
    split's fingerprint (as the trials' checkpoints hold it), or for the generated default
    (from each trial's --seed) the generator's settings."""
    from spiralctl.data import DataConfig, load_training_data

    if data_dir is None:
        generator = {k: v for k, v in asdict(DataConfig()).items() if k != "seed"}
        return {
            "name": "the generated default data",
            "fingerprint": "generated: " + json.dumps(generator, sort_keys=True),
        }
    data = load_training_data(data_dir)  # every check train makes, before the first trial
    if data.val is None:  # trials would be compared on how well they fit their training data
        raise SpiralError(
            f"{data_dir} has no validation split (imported with --val-fraction 0), and a study compares "
            "trials by their validation scores; import it again with a --val-fraction above 0 or a --val "
            "file",
            option="data",
        )
    return {"name": str(data_dir), "fingerprint": data.train.fingerprint()}


def _generated(data: dict) -> bool:
    return str(data.get("fingerprint", "")).startswith("generated:")


def _describe_data(data: dict, given: bool = False) -> str:
    name = data.get("name", "?")
    if _generated(data):
        return f"{name} (no --data)" if given else name
    return f"{'--data ' if given else ''}{name} (train fingerprint {data.get('fingerprint')})"


def _check_settings(study, spec: WorkerSpec) -> None:
    wanted = spec.config.settings()
    if study.direction.name.lower() != spec.config.direction:
        raise SpiralError(
            f"study {spec.study!r} {study.direction.name.lower()}s its metric; "
            f"--metric {spec.config.metric} {spec.config.direction}s: "
            "use the study's metric or another --study"
        )
    saved = study.user_attrs.get("spiralctl")
    if saved is None:
        study.set_user_attr("spiralctl", {**wanted, "data": spec.data})
        return
    differ = [key for key in wanted if saved.get(key) != wanted[key]]
    if differ:
        raise SpiralError(
            f"study {spec.study!r} was started with other settings ({', '.join(differ)}: "
            f"{json.dumps({k: saved.get(k) for k in differ})}); give the same options or another --study"
        )
    if not isinstance(saved.get("data"), dict):  # a study from before the data was recorded: this data
        study.set_user_attr("spiralctl", {**saved, "data": spec.data})
    elif saved["data"].get("fingerprint") != spec.data.get("fingerprint"):
        again = "no --data" if _generated(saved["data"]) else f"--data {saved['data'].get('name')}"
        raise SpiralError(
            f"study {spec.study!r} was started on {_describe_data(saved['data'])}, and "
            f"{_describe_data(spec.data, given=True)} is other data: validation losses on different "
            f"data cannot be compared; give {again} to go on with the study, or another --study name "
            "for a study on this data"
        )


def _check_out(out: Path, study: str, storage: Storage) -> None:
    """OUT/tune.json ties a tune folder to one study, so trial-K folders never mix studies."""
    out.mkdir(parents=True, exist_ok=True)
    marker = out / "tune.json"
    record = {"study": study, "storage": storage.dialect}
    if marker.exists():
        try:
            saved = json.loads(marker.read_text())
        except (OSError, ValueError):
            saved = None
        if saved != record:
            raise SpiralError(
                f"--out {out} holds the trials of another study ({json.dumps(saved)}); "
                "choose another --out, or the same --study and --storage"
            )
        return
    with atomic_output(marker) as handle:
        handle.write((json.dumps(record) + "\n").encode())


class _TrialFailed(Exception):
    """A trial that failed on its own (its loss diverged): recorded as failed, the tune goes on."""


@contextmanager
def _file_lock(path: Path, blocking: bool = True) -> Iterator[bool]:
    import fcntl

    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _AskLock:
    """Held while a worker counts the study's trials and asks for a new one, so that the trials
    add up to --trials exactly: a file lock next to a journal or SQLite file, an advisory lock in
    PostgreSQL and MySQL. Other databases go without (a few trials too many at worst)."""

    def __init__(self, storage: Storage, rdb, study: str) -> None:
        self.storage, self.rdb, self.study = storage, rdb, study
        self._release: Callable[[], None] | None = None

    def acquire(self) -> None:
        import fcntl

        dialect = self.storage.dialect
        if dialect in ("journal", "sqlite"):
            path = self.storage.journal or Path(self.rdb.engine.url.database or "")
            handle = open(_beside(path, "ask.lock"), "a")
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._release = lambda: (fcntl.flock(handle, fcntl.LOCK_UN), handle.close())
        elif dialect in ("postgresql", "mysql", "mariadb"):
            from sqlalchemy import text

            name = uuid.uuid5(uuid.NAMESPACE_URL, f"spiralctl:{self.study}")
            key = int.from_bytes(name.bytes[:8], "big", signed=True)  # PostgreSQL's bigint
            connection = self.rdb.engine.connect()
            if dialect == "postgresql":
                lock, unlock, args = (
                    "SELECT pg_advisory_lock(:k)",
                    "SELECT pg_advisory_unlock(:k)",
                    {"k": key},
                )
            else:
                lock, unlock = "SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)"
                args = {"k": f"spiralctl:{self.study}"[:64]}
            connection.execute(text(lock), args)

            def release() -> None:
                try:
                    connection.execute(text(unlock), args)
                finally:
                    connection.close()

            self._release = release
        else:
            self._release = lambda: None

    def release(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            release()


class _Stop:
    """Between trials, Ctrl-C and SIGTERM ask the worker to stop. While a trial trains, fit()
    handles them with its own handler; one that reaches fit() during the trial's last step is
    still seen here, through the signal wakeup pipe, so the tune stops after that trial."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict = {}
        self._pipe: tuple[int, int] | None = None
        self._old_wakeup = -1

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def poll(self) -> int | None:
        """The stop asked for, also when the signal went to fit()'s handler."""
        if self.received is None and self._pipe is not None:
            try:
                arrived = os.read(self._pipe[0], 512)
            except (BlockingIOError, InterruptedError):
                arrived = b""
            for sig in self.SIGNALS:
                if int(sig) in arrived:
                    self.received = int(sig)
        return self.received

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            read, write = os.pipe()
            os.set_blocking(read, False)
            os.set_blocking(write, False)
            self._pipe = (read, write)
            self._old_wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._pipe is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None


def _interrupted(message: str) -> SpiralError:
    return SpiralError(message, exit_code=EXIT_INTERRUPTED)


def _train_trial(config, data_dir: Path | None, out: Path, device: str, plots: bool, on_progress) -> dict:
    """The one call into training: `spiralctl train`'s own job, in the trial's run folder. A trial
    that the pruner stops still gets its plots, like any run folder."""
    import optuna

    from spiralctl.commands import train
    from spiralctl.runs import read_metrics

    try:
        return train(config, data_dir=data_dir, out=out, device=device, plots=plots, on_progress=on_progress)
    except optuna.TrialPruned:
        if plots:
            from spiralctl.plots import PlotsUnavailable, training_plots

            try:
                training_plots(read_metrics(out), out)
            except PlotsUnavailable:
                pass
        raise


class _Worker:
    """Runs trials of one study until it holds --trials finished (complete or pruned) trials."""

    def __init__(self, spec: WorkerSpec, emit: ProgressCallback) -> None:
        self.spec, self.emit = spec, emit
        self.config = spec.config
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.optuna = _optuna()
        self.study, self.rdb = _open_study(spec)
        self.lock = _AskLock(spec.storage, self.rdb, spec.study)
        self.current: int | None = None
        self.failures = 0  # this worker's failed trials in a row
        self.stop: _Stop | None = None

    @property
    def _workers_dir(self) -> Path:
        return self.spec.out / ".workers"

    def run(self) -> None:
        self._workers_dir.mkdir(parents=True, exist_ok=True)
        alive = self._workers_dir / f"{self.id}.lock"
        with _file_lock(alive), _Stop() as stop:
            self.stop = stop
            self._sweep()
            try:
                self._loop()
            finally:
                alive.unlink(missing_ok=True)

    def _loop(self) -> None:
        waiting_for: tuple = ()
        while True:
            self._check_stop()
            self.lock.acquire()
            try:
                self._recover()
                finished, running = self._counts()
                if finished >= self.config.trials:
                    return
                wait = finished + len(running) >= self.config.trials
                if not wait:
                    self.current = None
                    self._run_one()
            finally:
                self.lock.release()
            if wait:
                if tuple(running) != waiting_for:
                    waiting_for = tuple(running)
                    self.emit("waiting", {"running": list(running), "worker": self.spec.index})
                time.sleep(POLL_SECONDS)
                continue
            waiting_for = ()
            self._finished()

    def _check_stop(self, poll: bool = True) -> None:
        """Raise when a stop was asked for. Inside a trial (poll False) only a signal that came
        before fit() took over counts: fit() itself stops at the next step, saving its place."""
        if self.stop is not None and (self.stop.poll() if poll else self.stop.received) is not None:
            raise _interrupted(
                f"{signal.Signals(self.stop.received).name}: stopped between trials; "
                "run the same command again to continue the study"
            )

    def _counts(self) -> tuple[int, list[int]]:
        states = self.optuna.trial.TrialState
        trials = self.study.get_trials(deepcopy=False)
        finished = sum(t.state in (states.COMPLETE, states.PRUNED) for t in trials)
        return finished, [t.number for t in trials if t.state == states.RUNNING]

    def _sweep(self) -> None:
        """Remove the lock files that dead workers left (old ones only: a new worker creates its
        file a moment before it locks it)."""
        for path in self._workers_dir.glob("*.lock"):
            try:
                old = time.time() - path.stat().st_mtime > 60
            except OSError:
                continue
            if old:
                with _file_lock(path, blocking=False) as free:
                    if free:
                        path.unlink(missing_ok=True)

    def _recover(self) -> None:
        """Fail the running trials of dead workers and queue them again."""
        states = self.optuna.trial.TrialState
        if self.spec.storage.journal is None:
            before = {t.number for t in self.study.get_trials(deepcopy=False, states=(states.RUNNING,))}
            self.optuna.storages.fail_stale_trials(self.study)  # runs retry_trial on each
            after = {t.number for t in self.study.get_trials(deepcopy=False, states=(states.FAIL,))}
            for number in sorted(before & after):
                self.emit("retry", {"trial": number})
            return
        storage = self.study._storage
        for trial in self.study.get_trials(deepcopy=False, states=(states.RUNNING,)):
            worker = trial.user_attrs.get("worker")
            if worker == self.id:
                continue
            if worker is not None:
                lock = self._workers_dir / f"{worker}.lock"
                if lock.exists():
                    with _file_lock(lock, blocking=False) as free:
                        if not free:
                            continue  # its worker is alive
            try:
                storage.set_trial_user_attr(trial._trial_id, "error", "its worker stopped")
                failed = storage.set_trial_state_values(trial._trial_id, state=states.FAIL)
            except self.optuna.exceptions.UpdateFinishedTrialError:
                continue
            if failed:
                retry_trial(self.study, storage.get_trial(trial._trial_id))
                self.emit("retry", {"trial": trial.number})

    def _run_one(self) -> None:
        try:
            self.study.optimize(self._objective, n_trials=1, catch=(_TrialFailed,), gc_after_trial=False)
        except SpiralError as exc:
            if exc.exit_code in INTERRUPTED_CODES and self.current is not None:
                self._requeue_current()
                raise _interrupted(
                    f"{exc.message.split(';')[0]}; trial {self.current} will run again: "
                    "run the same command again to continue the study"
                ) from None
            raise
        except KeyboardInterrupt:
            if self.current is not None:
                self._requeue_current()
            raise

    def _requeue_current(self) -> None:
        trial = self.study._storage.get_trial(
            self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, self.current)
        )
        if trial.state == self.optuna.trial.TrialState.FAIL:
            retry_trial(self.study, trial)

    def _objective(self, trial) -> float:
        from spiralctl.config import TrainConfig

        spec = self.spec
        run_dir = spec.out / f"trial-{trial.number}"
        self.current = trial.number
        trial.set_user_attr("worker", self.id)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("device", spec.device)
        self.lock.release()  # the trial is in the study: other workers may count it and ask theirs
        params = {d.name: d.suggest(trial) for d in self.config.space}
        config = TrainConfig(epochs=self.config.epochs, **params)
        self.emit(
            "trial_start",
            {"trial": trial.number, "params": params, "run_dir": str(run_dir), "worker": spec.index},
        )
        metric = self.config.metric
        better = min if self.config.direction == "minimize" else max

        def on_progress(event: str, info: dict) -> None:
            self._check_stop(poll=False)
            if event != "epoch":
                return
            trial.report(info[metric], info["epoch"])
            self.emit(
                "trial_epoch",
                {
                    "trial": trial.number,
                    "epoch": info["epoch"],
                    "epochs": info["epochs"],
                    "val_loss": info["val_loss"],
                    "val_accuracy": info["val_accuracy"],
                },
            )
            if trial.should_prune():
                raise self.optuna.TrialPruned(f"pruned after epoch {info['epoch']}")

        try:
            result = _train_trial(config, spec.data_dir, run_dir, spec.device, spec.plots, on_progress)
        except SpiralError as exc:
            if exc.exit_code == EXIT_FAILURE:  # the trial's own failure, such as a diverged loss
                trial.set_user_attr("error", exc.message)
                raise _TrialFailed(exc.message) from None
            raise
        return better(m[metric] for m in result["history"])

    def _finished(self) -> None:
        if self.current is None:
            return
        storage = self.study._storage
        trial = storage.get_trial(
            storage.get_trial_id_from_study_id_trial_number(self.study._study_id, self.current)
        )
        row = trial_row(trial, self.config.direction)
        row["new_best"] = update_best(self.study, self.spec.out) == trial.number
        self.emit("trial", row)
        self.failures = self.failures + 1 if row["state"] == "fail" else 0
        if self.failures >= MAX_FAILURES_IN_A_ROW:
            raise SpiralError(
                f"{self.failures} trials in a row failed "
                f"(trial {trial.number}: {row.get('error', 'failed')}); check the search space",
                exit_code=EXIT_FAILURE,
            )


def trial_row(trial, direction: str) -> dict:
    """What the table shows of one trial (an Optuna FrozenTrial)."""
    values = list(trial.intermediate_values.values())
    best = (min if direction == "minimize" else max)(values) if values else None
    if trial.state.name == "COMPLETE" and trial.value is not None:
        best = trial.value
    end = trial.datetime_complete
    if trial.datetime_start is None:
        seconds = None
    else:
        seconds = ((end or datetime.datetime.now()) - trial.datetime_start).total_seconds()
    row = {
        "trial": trial.number,
        "state": trial.state.name.lower(),
        "params": dict(trial.params),
        "value": best,
        "epochs": len(values),
        "seconds": seconds,
        "run_dir": trial.user_attrs.get("run_dir"),
        "host": trial.user_attrs.get("host"),
        "device": trial.user_attrs.get("device"),
    }
    if "retry_of" in trial.user_attrs:
        row["retry_of"] = trial.user_attrs["retry_of"]
    if "error" in trial.user_attrs:
        row["error"] = trial.user_attrs["error"]
    return row


def update_best(study, out: Path) -> int | None:
    """Copy the best trial's best.safetensors to OUT/best.safetensors (and describe it in
    OUT/best.json) when the best trial changed and its folder is on this machine."""
    try:
        best = study.best_trial
    except ValueError:  # no complete trial yet
        return None
    source = out / f"trial-{best.number}" / "best.safetensors"
    if not source.exists():
        return None
    with _file_lock(out / ".best.lock"):
        record_path = out / "best.json"
        try:
            current = json.loads(record_path.read_text()).get("trial")
        except (OSError, ValueError, AttributeError):
            current = None
        if current == best.number and (out / "best.safetensors").exists():
            return best.number
        with atomic_output(out / "best.safetensors") as handle:
            handle.write(source.read_bytes())
        record = {
            "trial": best.number,
            "value": best.value,
            "params": best.params,
            "checkpoint": str(source),
            "config": str(source.parent / "config.json"),
        }
        with atomic_output(record_path) as handle:
            handle.write((json.dumps(record, indent=2) + "\n").encode())
    return best.number


def _worker_process(spec: WorkerSpec, queue) -> None:
    """A spawned worker: its own session (Ctrl-C reaches it once, forwarded by the parent)."""
    try:
        os.setsid()
    except OSError:
        pass

    def emit(event: str, info: dict) -> None:
        queue.put((event, {**info, "worker": spec.index}))

    try:
        _Worker(spec, emit).run()
    except SpiralError as exc:
        queue.put(("error", {"message": exc.message, "exit_code": exc.exit_code, "worker": spec.index}))
    except KeyboardInterrupt:
        queue.put(("error", {"message": "interrupted", "exit_code": EXIT_INTERRUPTED, "worker": spec.index}))
    except Exception as exc:
        message = scrub(f"{type(exc).__name__}: {exc}", spec.storage.url)
        queue.put(("error", {"message": f"worker failed: {message}", "exit_code": 1, "worker": spec.index}))
    finally:
        queue.put(("exit", {"worker": spec.index}))


def _run_processes(specs: list[WorkerSpec], on_progress: ProgressCallback) -> None:
    import multiprocessing
    import queue as queues

    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    processes = [context.Process(target=_worker_process, args=(spec, events)) for spec in specs]
    for process in processes:
        process.start()
    errors: list[dict] = []
    exited: set[int] = set()
    interrupted = None
    stop = _Stop()
    with stop:
        while len(exited) < len(processes):
            if stop.received is not None and interrupted is None:
                interrupted = stop.received
                for process in processes:
                    if process.is_alive():
                        os.kill(process.pid, stop.received)
            try:
                event, info = events.get(timeout=0.2)
            except queues.Empty:
                for index, process in enumerate(processes):
                    if not process.is_alive() and index not in exited and process.exitcode is not None:
                        if events.empty():
                            exited.add(index)
                            if process.exitcode != 0 and interrupted is None:
                                errors.append(
                                    {
                                        "message": f"worker {index} died (exit code {process.exitcode})",
                                        "exit_code": EXIT_FAILURE,
                                    }
                                )
                continue
            if event == "exit":
                exited.add(info["worker"])
            elif event == "error":
                errors.append(info)
            else:
                on_progress(event, info)
    for process in processes:
        process.join()
    if interrupted is not None:
        raise _interrupted(
            f"{signal.Signals(interrupted).name}: stopped; the interrupted trials will run again: "
            "run the same command again to continue the study"
        )
    if errors:
        first = min(errors, key=lambda e: e["exit_code"] == EXIT_INTERRUPTED)
        raise SpiralError(first["message"], exit_code=first["exit_code"])


def _check_devices(devices: list[str]) -> None:
    from spiralctl.devices import resolve_device

    for device in devices:
        resolve_device(device)


def tune(
    config: TuneConfig,
    *,
    out: Path,
    study: str = DEFAULT_STUDY,
    storage: str | None = None,
    data_dir: Path | None = None,
    device: str = "auto",
    workers: int | None = None,
    plots: bool = True,
    on_progress: ProgressCallback = _no_progress,
) -> dict:
    """Run trials until the study holds config.trials finished ones; return the summary.

    `device` may name several devices, comma-separated: one worker each (unless `workers`).
    With more than one worker, each runs in its own process.
    """
    started = time.perf_counter()
    config.check()
    out = Path(out)
    where = resolve_storage(storage, out)
    devices = [d.strip() for d in device.split(",") if d.strip()] or ["auto"]
    workers = len(devices) if workers is None else workers
    if workers < 1:
        raise SpiralError(f"--workers must be at least 1 (got {workers})")
    if not study.strip():
        raise SpiralError("--study must not be empty")
    _optuna()
    data = data_identity(data_dir)
    _check_devices(sorted(set(devices)))
    first = WorkerSpec(config, where, study, out, data_dir, devices[0], plots, data=data)
    opened, _ = _open_study(first)  # create it, or check that its settings are ours, before any work
    try:
        earlier = len(opened.get_trials(deepcopy=False))
    except Exception as exc:
        raise _storage_error(where, exc, "cannot read the study") from None
    specs = [
        replace(first, device=devices[i % len(devices)], index=i, earlier_trials=earlier)
        for i in range(workers)
    ]
    _check_out(out, study, where)
    on_progress(
        "start",
        {
            "study": study,
            "storage": where.masked,
            "out": str(out),
            "trials": config.trials,
            "metric": config.metric,
            "direction": config.direction,
            "workers": workers,
            "devices": [s.device for s in specs],
            "space": space_json(config.space),
            "epochs": config.epochs,
        },
    )
    try:
        if workers == 1:
            _Worker(specs[0], on_progress).run()
        else:
            _run_processes(specs, on_progress)
    except (SpiralError, KeyboardInterrupt):
        raise
    except Exception as exc:  # the storage failed under us: never let its message show the URL
        raise SpiralError(
            f"the study failed: {scrub(f'{type(exc).__name__}: {exc}', where.url)}", exit_code=EXIT_FAILURE
        ) from None
    summary = summarize(study, where, out=out, heartbeat=config.heartbeat, plots=plots, write=True)
    summary["target"] = config.trials
    summary["seconds"] = time.perf_counter() - started
    return summary


def summarize(
    study: str,
    storage: Storage,
    *,
    out: Path | None = None,
    heartbeat: int = 10,
    plots: bool = False,
    write: bool = False,
) -> dict:
    """A study at a glance: every trial's row, the counts, the best trial and where its files are.
    With `write`, also bring OUT/best.safetensors up to date and draw the plots of the search."""
    _optuna()
    spec = WorkerSpec(
        TuneConfig(trials=1, heartbeat=heartbeat), storage, study, out or Path("."), None, "auto", False
    )
    loaded, _ = _open_study(spec, create=False)
    try:
        trials = loaded.get_trials(deepcopy=False)
        direction = loaded.direction.name.lower()
        settings = loaded.user_attrs.get("spiralctl", {})
    except Exception as exc:
        raise _storage_error(storage, exc, "cannot read the study") from None
    rows = [trial_row(t, direction) for t in trials]
    counts = {state: 0 for state in ("complete", "pruned", "fail", "running", "waiting")}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    summary: dict = {
        "study": study,
        "storage": storage.masked,
        "metric": settings.get("metric"),
        "direction": direction,
        "settings": settings,
        "counts": counts,
        "trials": rows,
        "best": None,
        "best_checkpoint": None,
        "plots": [],
    }
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if complete:
        best = loaded.best_trial
        run_dir = best.user_attrs.get("run_dir")
        summary["best"] = {
            "trial": best.number,
            "value": best.value,
            "params": best.params,
            "run_dir": run_dir,
            "host": best.user_attrs.get("host"),
            "elsewhere": best.user_attrs.get("host") not in (None, socket.gethostname()),
            "checkpoint": f"{run_dir}/best.safetensors" if run_dir else None,
            "config": f"{run_dir}/config.json" if run_dir else None,
            "repeat": f"spiralctl train --config {run_dir}/config.json" if run_dir else None,
        }
        if out is not None:
            if write:
                update_best(loaded, out)
            if (out / "best.safetensors").exists() and _best_record(out) == best.number:
                summary["best_checkpoint"] = str(out / "best.safetensors")
    if write and plots and out is not None and complete:
        summary.update(search_plots(loaded, out))
    return summary


def _best_record(out: Path) -> int | None:
    try:
        return json.loads((out / "best.json").read_text()).get("trial")
    except (OSError, ValueError, AttributeError):
        return None


def show(target: str | None, study: str = DEFAULT_STUDY) -> dict:
    """`spiralctl tune --show DIR|URL`: the summary of a study, without running anything."""
    if target is None or not target.strip():
        target = os.environ.get(ENV_STORAGE, "").strip() or None
    if target is None:
        raise SpiralError("--show needs a tune folder or a database URL (or $SPIRALCTL_STORAGE)")
    where = resolve_storage(target, None)
    if where.journal is not None and not where.journal.exists():
        raise SpiralError(f"--show {target}: no study journal there ({where.journal} does not exist)")
    out = where.journal.parent if where.journal is not None else None
    return summarize(study, where, out=out)


def search_plots(study, out: Path) -> dict:
    """optimization_history.png and param_importances.png in OUT (needs the plot extra)."""
    from spiralctl.plots import PlotsUnavailable, _figure, _save

    written: list[str] = []
    try:
        complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        numbers = [t.number for t in complete]
        values = [t.value for t in complete]
        better = min if study.direction.name == "MINIMIZE" else max
        running = [better(values[: k + 1]) for k in range(len(values))]
        figure = _figure(6.4, 4.0)
        axes = figure.add_subplot()
        axes.scatter(numbers, values, s=16, label="trial")
        axes.step(numbers, running, where="post", color="C3", label="best so far")
        axes.set_xlabel("trial")
        metric = study.user_attrs.get("spiralctl", {}).get("metric", "value")
        axes.set_ylabel(metric)
        if metric == "val_loss" and min(values) > 0:
            axes.set_yscale("log")
        axes.set_title("optimization history")
        axes.legend()
        written.append(str(_save(figure, out / "optimization_history.png")))
        importances = _importances(study)
        if importances:
            figure = _figure(6.4, 0.6 + 0.5 * len(importances))
            axes = figure.add_subplot()
            names = list(importances)[::-1]
            axes.barh(names, [importances[n] for n in names])
            axes.set_xlabel("importance (fANOVA)")
            axes.set_title("parameter importances")
            written.append(str(_save(figure, out / "param_importances.png")))
    except PlotsUnavailable as exc:
        return {"plots": written, "plots_unavailable": str(exc)}
    return {"plots": written}


def _importances(study) -> dict:
    optuna = _optuna()
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2 or not any(
        len({str(t.params.get(n)) for t in complete}) > 1 for n in complete[0].params
    ):
        return {}
    try:
        return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):
        return {}
