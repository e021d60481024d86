"""Sequence datasets: generate spirals, build a user's splits, save, load, check and batch."""

from __future__ import annotations

import hashlib
import json
import numbers
import os
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from spiralctl import __version__
from spiralctl.errors import SpiralError
from spiralctl.storage import _fsync_folder as fsync_folder
from spiralctl.storage import atomic_output, read_spiralctl_file, write_safetensors_to

DATASET_FORMAT = "spiralctl-dataset/2"  # x zero-padded past each sequence's length, and the lengths
# the formats load_dataset reads: version 1 has no lengths (every sequence is T points long)
DATASET_FORMATS = ("spiralctl-dataset/1", DATASET_FORMAT)
LABELS = ("clockwise", "anticlockwise")
STYLES = ("direction", "lux")
SPLITS = ("train", "val", "test")

# MLUtils.Datasets.make_spiral's constants, as the Lux tutorial uses them.
LUX_A, LUX_THETA, LUX_B = 6.5, 16.0, 104.0
# Generating takes about this many bytes per point at its peak (float64 angles, coordinates and
# noise before the float32 result; measured with tracemalloc), and this many per sequence.
BYTES_PER_POINT, BYTES_PER_SEQUENCE = 40, 256
LENGTH_DTYPE = np.int32
GIB = 1024**3


def check_seed(seed: object) -> None:
    """numpy's generators take any whole number from 0 up (of any size), and nothing else."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise SpiralError(f"must be a whole number from 0 up, such as 0 or 42 (got {seed!r})", option="seed")


def parse_length(text: str) -> tuple[int, int]:
    """--length as (shortest, longest): "50" is every sequence 50 points, "20:80" draws each
    sequence's length uniformly from 20 to 80."""
    parts = str(text).strip().split(":")
    try:
        if len(parts) > 2:
            raise ValueError
        values = [int(part) for part in parts]
    except ValueError:
        raise SpiralError(
            f"must be a whole number of points (such as 50) or MIN:MAX (such as 20:80), got {text!r}",
            option="length",
        ) from None
    return values[0], values[-1]


def available_memory() -> int | None:
    """Bytes the system can give without swapping (MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


MAX_NOISE = 1e6


@dataclass(frozen=True)
class DataConfig:
    """How a dataset is generated. Defaults are the Lux tutorial's."""

    sequences: int = 1000
    length: int = 50
    noise: float = 0.1
    style: str = "direction"
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    seed: int = 0
    min_length: int | None = None  # with it, each sequence's length is drawn from min_length..length

    def check(self) -> None:
        if self.sequences < 2 or self.sequences % 2:
            raise SpiralError(
                f"must be an even number of at least 2 so that the two classes "
                f"are balanced (got {self.sequences})",
                option="sequences",
            )
        if self.length < 2 or (self.min_length is not None and self.min_length < 2):
            got = self.length if self.min_length is None else f"{self.min_length}:{self.length}"
            raise SpiralError(f"must be at least 2 points (got {got})", option="length")
        if self.min_length is not None and self.min_length > self.length:
            raise SpiralError(
                f"MIN:MAX needs MIN <= MAX (got {self.min_length}:{self.length})", option="length"
            )
        if not np.isfinite(self.noise) or not 0 <= self.noise <= MAX_NOISE:
            raise SpiralError(
                f"must be a number from 0 to {MAX_NOISE:g} (got {self.noise}); spirals have a radius of "
                "about 6, and far larger noise would not fit in float32",
                option="noise",
            )
        if self.style not in STYLES:
            raise SpiralError(f"must be one of {', '.join(STYLES)} (got {self.style!r})", option="style")
        if not 0 < self.val_fraction < 1:
            raise SpiralError(f"must be above 0 and below 1 (got {self.val_fraction})", option="val_fraction")
        if not 0 <= self.test_fraction < 1:
            raise SpiralError(
                f"must be at least 0 and below 1 (got {self.test_fraction})", option="test_fraction"
            )
        check_seed(self.seed)
        if self.val_fraction + self.test_fraction >= 1:
            raise SpiralError(
                f"({self.val_fraction}) and {{test_fraction}} ({self.test_fraction}) "
                "must add up to less than 1 so that some sequences are left to train on",
                option="val_fraction",
            )
        counts = self.split_counts()
        empty = [name for name, n in counts.items() if n == 0 and (name != "test" or self.test_fraction > 0)]
        if empty:
            raise SpiralError(
                f"{self.sequences} is too few for the fractions given: the "
                f"{' and '.join(empty)} split would be empty; ask for more sequences",
                option="sequences",
            )

    def memory_needed(self) -> int:
        """About the most bytes generating these splits holds at once."""
        return self.sequences * (self.length * BYTES_PER_POINT + BYTES_PER_SEQUENCE)

    def split_counts(self) -> dict[str, int]:
        """Sequences per split; each split holds as many of one class as of the other."""
        per_class = self.sequences // 2
        val = round(per_class * self.val_fraction)
        test = round(per_class * self.test_fraction)
        return {"train": 2 * (per_class - val - test), "val": 2 * val, "test": 2 * test}


@dataclass
class Dataset:
    """Sequences `x: float32[N, T, D]` (zero past each sequence's length), labels `y: uint8[N]`
    (0..K-1, indices into `classes`: for spirals 0 clockwise, 1 anticlockwise) and lengths
    `lengths: int64[N]` (2..T; default all T)."""

    x: np.ndarray
    y: np.ndarray
    metadata: dict[str, str]
    lengths: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.lengths is None:
            self.lengths = np.full(len(self.x), self.x.shape[1], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def length(self) -> int:
        """T: the longest sequence's points (every sequence's, when all have one length)."""
        return int(self.x.shape[1])

    @property
    def classes(self) -> list[str]:
        """The K class names, in label order (the spirals' two for files that name none)."""
        return classes_of(self.metadata) or list(LABELS)

    @property
    def features(self) -> list[str] | None:
        """The D feature names, where the data named them."""
        return json_list(self.metadata.get("features"))

    @property
    def mixed(self) -> bool:
        """Whether the sequences have different lengths."""
        return bool(len(self.lengths)) and int(self.lengths.min()) != int(self.lengths.max())

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.x.tobytes())
        digest.update(self.y.tobytes())
        if self.mixed:  # as before for one length: a run on a version 1 file resumes on its copy
            digest.update(self.lengths.astype(np.int64).tobytes())
        return digest.hexdigest()[:16]


def json_list(text: str | None) -> list[str] | None:
    """A metadata value holding a JSON list of strings, or None where absent or not that."""
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def classes_of(metadata: dict[str, str]) -> list[str] | None:
    """The class names a file's metadata gives under "labels" (the spirals' two where it has no
    such key), or None where they are not two or more distinct names."""
    if "labels" not in metadata:
        return list(LABELS)
    names = json_list(metadata["labels"])
    if names is None or len(names) < 2 or len(set(names)) != len(names):
        return None
    return names


def spiral_points(angle: np.ndarray, step: np.ndarray) -> np.ndarray:
    """make_spiral's arm: radius a*(b-i)/b at angle `angle`, point (r sin, r cos)."""
    radius = LUX_A * (LUX_B - step) / LUX_B
    return np.stack([radius * np.sin(angle), radius * np.cos(angle)], axis=-1)


def _generate_all(config: DataConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, length = config.sequences, config.length
    step = np.arange(length, dtype=np.float64)[None, :]
    labels = np.repeat(np.array([0, 1], dtype=np.uint8), n // 2)
    if config.style == "direction":
        # Increasing angle is clockwise in (sin, cos) coordinates; anticlockwise runs backwards.
        # A random start angle per sequence leaves the turning direction as the only cue.
        start = rng.uniform(0.0, 2 * np.pi, size=(n, 1))
        sign = np.where(labels == 0, 1.0, -1.0)[:, None]
        points = spiral_points(start + sign * step * np.pi / LUX_THETA, step)
    else:
        # The tutorial's data: class 0 is make_spiral's first arm, class 1 its second arm,
        # which is the first one negated (rotated by 180 degrees): both turn the same way.
        points = spiral_points(step * np.pi / LUX_THETA, step).repeat(n, axis=0)
        points[labels == 1] *= -1
    points = (points + rng.normal(0.0, config.noise, size=points.shape)).astype(np.float32)
    lengths = np.full(n, length, dtype=np.int64)
    if config.min_length is not None and config.min_length < length:
        lengths = rng.integers(config.min_length, length + 1, size=n)
        points[np.arange(length)[None, :] >= lengths[:, None]] = 0.0  # zero past each sequence's end
    return points, labels, lengths


def generate(config: DataConfig) -> dict[str, Dataset]:
    """Generate the splits described by `config`; same config, same arrays."""
    config.check()
    needed, available = config.memory_needed(), available_memory()
    size = f"{{sequences}} {config.sequences} of {{length}} {config.length} need about {needed / GIB:.1f} GiB"
    if available is not None and needed > available:
        raise SpiralError(
            f"{size} of memory to generate but {available / GIB:.1f} GiB is available; "
            "ask for fewer {sequences} or a shorter {length}"
        )
    try:
        return _split(config, np.random.default_rng(config.seed))
    except MemoryError:
        raise SpiralError(
            f"out of memory: {size} to generate; ask for fewer {{sequences}} or a shorter {{length}}"
        ) from None


def split_indices(
    y: np.ndarray, val_fraction: float, test_fraction: float, rng: np.random.Generator, classes: int = 2
) -> dict[str, np.ndarray]:
    """Stratified split: each class is shuffled and cut the same way (round(n * fraction) of
    each class for val and for test, the rest for train), then each split is shuffled. No test
    split when test_fraction is 0, and no val split when val_fraction is 0."""
    per_class = [rng.permutation(np.flatnonzero(y == label)) for label in range(classes)]
    sizes = {}
    for split, fraction in (("val", val_fraction), ("test", test_fraction)):
        sizes[split] = [round(len(ids) * fraction) for ids in per_class]
    sizes["train"] = [len(ids) - v - t for ids, v, t in zip(per_class, sizes["val"], sizes["test"])]
    splits: dict[str, np.ndarray] = {}
    starts = [0] * classes
    for split in SPLITS:
        if (split == "test" and test_fraction == 0) or (split == "val" and val_fraction == 0):
            continue
        parts = [ids[start : start + n] for ids, start, n in zip(per_class, starts, sizes[split])]
        starts = [start + n for start, n in zip(starts, sizes[split])]
        index = np.concatenate(parts)
        splits[split] = index[rng.permutation(len(index))]
    return splits


def _split(config: DataConfig, rng: np.random.Generator) -> dict[str, Dataset]:
    x, y, lengths = _generate_all(config, rng)
    return {
        split: Dataset(x[index], y[index], dataset_metadata(config, split), lengths[index])
        for split, index in split_indices(y, config.val_fraction, config.test_fraction, rng).items()
    }


def padded_sequences(sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of any lengths ([T_i, D] each) as x: float32[N, T_max, D], zero past each
    sequence's end, and lengths: int64[N]."""
    lengths = np.array([len(seq) for seq in sequences], dtype=np.int64)
    x = np.zeros((len(sequences), int(lengths.max()), sequences[0].shape[1]), dtype=np.float32)
    for row, seq in enumerate(sequences):
        x[row, : len(seq)] = seq
    return x, lengths


def label_dtype(classes: int) -> type:
    """Labels are stored as uint8 up to 256 classes, int32 beyond."""
    return np.uint8 if classes <= 256 else np.int32


def _natural_key(name: str) -> tuple:
    """Class names in a natural order: numbers by value ("2" before "10"), then text."""
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


def _spiral_points(inputs: int, features: list[str] | None) -> bool:
    """Points as the spirals' files had them: x and y (all that spiralctl read before K classes)."""
    return inputs == 2 and features in (None, ["x", "y"])


def class_names(
    labels: list[str],
    declared: list[str] | None = None,
    *,
    inputs: int = 0,
    features: list[str] | None = None,
    where: str = "",
) -> list[str]:
    """The classes of a labelled file in label order: those the file declares, in its order;
    else the spirals' own two where every label names one of them (clockwise, anticlockwise, any
    case), or where 2-D x, y points are labelled 0 and 1 (spiralctl's files before K classes);
    else the distinct labels in natural order. Labels that are numbers, not all whole, are
    measurements (a regression target), not classes: an error."""
    if declared is not None:
        return list(declared)
    distinct = sorted(set(labels), key=_natural_key)
    lowered = {name.strip().lower() for name in distinct}
    if lowered <= {*LABELS, "0", "1"} and (lowered & set(LABELS) or _spiral_points(inputs, features)):
        return list(LABELS)
    numbers = [_natural_key(name)[1] for name in distinct if _natural_key(name)[0] == 0]
    if len(numbers) == len(distinct) and any(not float(v).is_integer() for v in numbers):
        fractional = [name for name in distinct if not float(name).is_integer()][:3]
        raise SpiralError(
            f"{where}: the labels are numbers with fractions ({', '.join(fractional)}, ...: "
            f"{len(distinct)} distinct values), which look like measurements to predict, not classes; "
            "spiralctl classifies: give each sequence a class name or a whole-number class"
        )
    return distinct


def class_index(label: str, classes: list[str]) -> int | None:
    """A label's index in `classes`: its exact name, else its name in another case, else (for
    the spirals' classes) 0 or 1; None where it names no class."""
    if label in classes:
        return classes.index(label)
    key = label.strip().lower()
    folded = [name.strip().lower() for name in classes]
    if key in folded:
        return folded.index(key)
    if list(classes) == list(LABELS) and key in ("0", "1"):
        return int(key)
    return None


def label_indices(
    labels: list[str],
    classes: list[str],
    where: str,
    names: list[str] | None = None,
    lines: list[int] | None = None,
) -> np.ndarray:
    """Each label's index in `classes` (class_index; each distinct label looked up once). A label
    that names no class is an error naming it, and its sequence by name (and line)."""
    distinct, inverse = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    found = [class_index(str(label), classes) for label in distinct]
    if None in found:
        row = int(np.flatnonzero(inverse == found.index(None))[0])
        sequence = f"sequence {names[row] if names else row}"
        line = f"line {lines[row]}: " if lines and lines[row] is not None else ""
        shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
        raise SpiralError(
            f"{where}: {line}label {labels[row]!r} of {sequence} is not one of the classes ({shown}); "
            "give every sequence one of these labels"
        )
    return np.asarray(found, dtype=label_dtype(len(classes)))[inverse.reshape(-1)]


def imported_datasets(
    sequences: list[np.ndarray],
    labels: np.ndarray,
    source: str,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    *,
    classes: list[str] | None = None,
    features: list[str] | None = None,
    given: dict[str, Dataset] | None = None,
) -> dict[str, Dataset]:
    """A user's labelled sequences (labels: indices into `classes`) as train/val(/test)
    datasets, split stratified and seeded as gen-data splits. `given` holds splits that come
    from files of their own (the archive's official test split, a val file): they are kept
    whole, and only the splits not given are carved from these sequences. val_fraction 0 (or a
    given val) carves no val split."""
    given = given or {}
    classes = list(LABELS) if classes is None else list(classes)
    if not 0 <= val_fraction < 1:
        raise SpiralError(f"must be at least 0 and below 1 (got {val_fraction})", option="val_fraction")
    if not 0 <= test_fraction < 1:
        raise SpiralError(f"must be at least 0 and below 1 (got {test_fraction})", option="test_fraction")
    if val_fraction + test_fraction >= 1:
        raise SpiralError(
            f"({val_fraction}) and {{test_fraction}} ({test_fraction}) must add up to less than 1 so "
            "that some sequences are left to train on",
            option="val_fraction",
        )
    check_seed(seed)
    labels = np.asarray(labels).astype(label_dtype(len(classes)))
    counts = np.bincount(labels, minlength=len(classes))
    if (counts > 0).sum() < 2:
        only = classes[int(np.argmax(counts))]
        raise SpiralError(
            f"{source}: every sequence is of class {only!r}; a classifier needs at least two classes"
        )
    x, lengths = padded_sequences(sequences)
    fractions = (0.0 if "val" in given else val_fraction, 0.0 if "test" in given else test_fraction)
    splits = split_indices(labels, *fractions, np.random.default_rng(seed), len(classes))
    carved = {"train": True, "val": fractions[0] > 0, "test": fractions[1] > 0}
    empty = [split for split, index in splits.items() if carved[split] and len(index) == 0]
    if empty:
        few = [(name, int(n)) for name, n in zip(classes, counts) if 0 < n < 5][:5]
        described = ", ".join(f"{n} of class {name!r}" for name, n in few) or f"{len(labels)} in all"
        more = " (and others)" if sum(1 for n in counts if 0 < n < 5) > len(few) else ""
        raise SpiralError(
            f"{source}: {described}{more} are too few sequences for the fractions given: the "
            f"{' and '.join(empty)} split would be empty; give more sequences, a smaller fraction, or "
            "{val_fraction} 0 to train on all of them"
        )
    from spiralctl.devices import tinygrad_version

    options = {"source": Path(source).name, "val_fraction": val_fraction, "test_fraction": test_fraction}
    metadata = {
        "format": DATASET_FORMAT,
        "imported": json.dumps({**options, "seed": seed}, sort_keys=True),
        "labels": json.dumps(classes),
        "spiralctl_version": __version__,
        "tinygrad_version": tinygrad_version(),
    }
    if features is not None:
        metadata["features"] = json.dumps(list(features))
    datasets = {
        split: Dataset(x[index], labels[index], {**metadata, "split": split}, lengths[index])
        for split, index in splits.items()
    }
    for split, data in given.items():
        data.metadata = {**metadata, **data.metadata, "split": split}
        datasets[split] = data
    return {split: datasets[split] for split in SPLITS if split in datasets}


def dataset_metadata(config: DataConfig, split: str) -> dict[str, str]:
    from spiralctl.devices import tinygrad_version

    return {
        "format": DATASET_FORMAT,
        "generator": json.dumps(asdict(config), sort_keys=True),
        "split": split,
        "labels": json.dumps(list(LABELS)),
        "spiralctl_version": __version__,
        "tinygrad_version": tinygrad_version(),
    }


def save_datasets(out_dir: Path, datasets: dict[str, Dataset], force: bool = False) -> list[Path]:
    """Write each split to OUT_DIR/<split>.safetensors; refuse to overwrite unless `force`.

    A dataset folder holds the splits of one command only: a split file already there that this
    call does not write (test.safetensors of an older gen-data with --test-fraction, say) is
    refused like the others, and removed with `force`, so that no command ever reads it as part
    of the new dataset. No other file in the folder is touched.

    All or nothing: every split goes to a temporary file first and all are renamed at the end, so
    a failure (a full disk) leaves the files that were there as they were, and removes the
    folders this call created (when nothing else is in them). The stale splits go only once the
    new ones are in place.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SpiralError(f"{out_dir} exists and is not a folder; choose another output folder")
    paths = {split: out_dir / f"{split}.safetensors" for split in datasets}
    stale = [out_dir / f"{split}.safetensors" for split in SPLITS if split not in datasets]
    stale = [path for path in stale if path.is_file() or path.is_symlink()]
    existing = [str(p) for p in paths.values() if p.exists()] + [str(p) for p in stale]
    if existing and not force:
        exist = "already exists" if len(existing) == 1 else "already exist"
        message = f"{', '.join(existing)} {exist}; pass {{force}} to overwrite"
        if stale:  # a split the new dataset lacks: --force removes it, or another command reads it
            names = " and ".join(path.name for path in stale)
            message += f" (and to remove {names}: the new dataset has no such split)"
        raise SpiralError(message)
    created = [folder for folder in (out_dir, *out_dir.parents) if not folder.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpiralError(f"cannot create {out_dir}: {exc.strerror}") from exc
    try:
        with ExitStack() as files:
            for split, path in paths.items():
                data = datasets[split]
                handle = files.enter_context(atomic_output(path))
                tensors = {"x": data.x, "y": data.y, "lengths": data.lengths.astype(LENGTH_DTYPE)}
                write_safetensors_to(handle, tensors, {**data.metadata, "format": DATASET_FORMAT})
    except BaseException:
        for folder in created:  # deepest first; rmdir removes only an empty folder
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    for path in stale:  # the new splits are in place: the old dataset's others go
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise SpiralError(
                f"wrote {', '.join(str(p) for p in paths.values())} but cannot remove {path}, a split of "
                f"the dataset that was there before: {exc.strerror}; remove it yourself"
            ) from exc
    if stale:
        fsync_folder(out_dir)
    return list(paths.values())


def load_dataset(path: Path) -> Dataset:
    """Load and check a dataset file (version 2, or version 1: every sequence T points long);
    every problem is a SpiralError naming the file."""
    path = Path(path)
    tensors, metadata = read_spiralctl_file(path, DATASET_FORMATS)
    names = {"x", "y"} if metadata.get("format") == DATASET_FORMATS[0] else {"x", "y", "lengths"}
    if set(tensors) != names:
        raise SpiralError(
            f"{path}: a dataset holds tensors {' and '.join(sorted(names))}, found {sorted(tensors)}"
        )
    x, y = tensors["x"], tensors["y"]
    if x.dtype != np.float32 or x.ndim != 3 or x.shape[2] < 1 or x.shape[1] < 2:
        raise SpiralError(
            f"{path}: x must be float32[N, T, D] with T >= 2 and D >= 1, found {x.dtype}{list(x.shape)}"
        )
    if y.dtype not in (np.uint8, np.int32) or y.shape != (x.shape[0],):
        raise SpiralError(f"{path}: y must be uint8[{x.shape[0]}] (or int32), found {y.dtype}{list(y.shape)}")
    if len(y) == 0:
        raise SpiralError(f"{path} holds no sequences")
    classes = classes_of(metadata)
    if classes is None:
        raise SpiralError(
            f"{path}: metadata 'labels' must be a JSON list of two or more distinct class names; the file "
            "is damaged: write it again (gen-data, import)"
        )
    if int(y.min()) < 0 or int(y.max()) >= len(classes):
        raise SpiralError(
            f"{path}: labels must be 0 to {len(classes) - 1} (one per class: {', '.join(classes[:10])}), "
            f"found {int(y.max()) if int(y.max()) >= len(classes) else int(y.min())}"
        )
    features = metadata.get("features")
    if features is not None and len(json_list(features) or []) != x.shape[2]:
        raise SpiralError(
            f"{path}: metadata 'features' must be a JSON list of {x.shape[2]} feature names; the file is "
            "damaged: write it again (import)"
        )
    if not np.isfinite(x).all():
        raise SpiralError(f"{path}: x holds NaN or infinite values; regenerate the file")
    lengths = tensors.get("lengths")
    if lengths is not None:
        if lengths.dtype.kind not in "iu" or lengths.shape != (x.shape[0],):
            raise SpiralError(
                f"{path}: lengths must be integers [{x.shape[0]}], found {lengths.dtype}{list(lengths.shape)}"
            )
        lengths = lengths.astype(np.int64)
        bad = (lengths < 2) | (lengths > x.shape[1])
        if bad.any():
            i = int(np.argmax(bad))
            raise SpiralError(
                f"{path}: sequence {i} has length {int(lengths[i])}; lengths must be 2 to T ({x.shape[1]})"
            )
    return Dataset(x, y, metadata, lengths)


def load_split(data_dir: Path, split: str) -> Dataset:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise SpiralError(f"{data_dir} is not a folder; give the folder gen-data wrote", option="data")
    return load_dataset(data_dir / f"{split}.safetensors")


@dataclass
class TrainingData:
    """A data folder's train and val splits (val None: imported with no validation split), and
    what looks wrong with them (as messages)."""

    train: Dataset
    val: Dataset | None
    warnings: list[str] = field(default_factory=list)


def _imported_without_val(train: Dataset) -> bool:
    """Whether `train` was imported with --val-fraction 0 (and no val file): no val split exists."""
    try:
        options = json.loads(train.metadata.get("imported", "{}"))
    except ValueError:
        return False
    return isinstance(options, dict) and options.get("val_fraction") == 0 and not options.get("val")


def load_training_data(data_dir: Path) -> TrainingData:
    """train.safetensors and val.safetensors of `data_dir`, with a warning when validation would
    measure nothing new: both files hold the same sequences, or one holds another split. A
    folder imported with no validation split gives val None."""
    data_dir = Path(data_dir)
    train = load_split(data_dir, "train")
    train_path, val_path = data_dir / "train.safetensors", data_dir / "val.safetensors"
    if not val_path.exists() and _imported_without_val(train):
        return TrainingData(train, None)
    data = TrainingData(train, load_split(data_dir, "val"))
    if data.val.classes != train.classes or data.val.x.shape[2] != train.x.shape[2]:
        raise SpiralError(
            f"{val_path} does not match {train_path}: classes {data.val.classes} and "
            f"{data.val.x.shape[2]} features against {train.classes} and {train.x.shape[2]}; "
            "import them together"
        )
    if data.train.fingerprint() == data.val.fingerprint():
        data.warnings.append(
            f"{val_path} holds the same sequences as {train_path}, so validation measures nothing "
            "the training did not see; use the val split gen-data wrote"
        )
        return data
    for split, path in (("train", train_path), ("val", val_path)):
        recorded = getattr(data, split).metadata.get("split")
        if recorded in SPLITS and recorded != split:
            data.warnings.append(
                f"{path} holds the {recorded} split (its metadata says so), not the {split} split; "
                f"use the {split}.safetensors that gen-data wrote"
            )
    return data


Normalization = tuple[np.ndarray, np.ndarray]  # per-feature mean and standard deviation, float32 [D]


def feature_statistics(data: Dataset) -> Normalization:
    """Per-feature mean and standard deviation over every real point of `data` (none past a
    sequence's length), in float64, as float32. A feature that never varies keeps a scale of 1."""
    inside = np.arange(data.length)[None, :] < data.lengths[:, None]
    points = data.x[inside].astype(np.float64)  # [points, D]
    mean = points.mean(axis=0)
    std = points.std(axis=0)
    std = np.where(std > 1e-12 * np.maximum(np.abs(mean), 1.0), std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def normalized(x: np.ndarray, lengths: np.ndarray, statistics: Normalization | None) -> np.ndarray:
    """x [n, L, D] with each feature z-scored by `statistics` (none: x as it is); zero past each
    sequence's length, as the data is stored."""
    if statistics is None:
        return x
    mean, std = statistics
    out = ((x - mean) / std).astype(np.float32)
    out[np.arange(x.shape[1])[None, :] >= np.asarray(lengths)[:, None]] = 0.0
    return out


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffle of epoch `epoch`: a function of the seed and the epoch alone, so resume is exact."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def padded_batches(n: int, batch_size: int, order: np.ndarray | None = None):
    """Yield (index, count) with `index` always `batch_size` long; the tail repeats index 0.

    Every sequence appears once; the last batch is padded so a jitted step keeps one shape,
    and `count` says how many of the rows are real.
    """
    order = np.arange(n) if order is None else order
    for start in range(0, n, batch_size):
        chunk = order[start : start + batch_size]
        count = len(chunk)
        if count < batch_size:
            chunk = np.concatenate([chunk, np.full(batch_size - count, order[0])])
        yield chunk, count
