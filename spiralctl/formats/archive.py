"""The time series classification archive's sets by name (ucr:NAME): the NAME_TRAIN.ts and
NAME_TEST.ts files that aeon bundles or has downloaded before (read by ts.py, so that labels and
lines are the files' own), else downloaded by aeon into its data folder first."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from spiralctl.errors import SpiralError

SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def _folders() -> list[Path]:
    """Where aeon keeps the sets: its bundled data, and its data folder for downloads ($AEON_DATA,
    else ~/aeon_data), found without importing aeon."""
    folders = []
    spec = importlib.util.find_spec("aeon")
    if spec is not None and spec.submodule_search_locations:
        folders.append(Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data")
    folders.append(Path(os.environ.get("AEON_DATA", os.path.join("~", "aeon_data"))).expanduser())
    return folders


def _local(name: str) -> tuple[Path, Path] | None:
    for folder in _folders():
        train, test = folder / name / f"{name}_TRAIN.ts", folder / name / f"{name}_TEST.ts"
        if train.is_file() and test.is_file():
            return train, test
    return None


def archive_files(name: str) -> tuple[Path, Path]:
    """The set's train and test .ts files, downloaded by aeon where they are not here yet."""
    if not SET_NAME.fullmatch(name):
        raise SpiralError(
            f"ucr:{name}: not the name of a set; give one as the archive names it, such as ucr:BasicMotions"
        )
    found = _local(name)
    if found is not None:
        return found
    try:
        from aeon.datasets import load_classification
        from aeon.datasets.tsc_datasets import tsc_zenodo
    except ImportError:
        raise SpiralError(
            f"ucr:{name}: reading the archive's sets needs aeon: pip install 'spiralctl[aeon]'"
        ) from None
    if name not in tsc_zenodo:
        spelt = [known for known in tsc_zenodo if known.lower() == name.lower()]
        hint = f"did you mean ucr:{spelt[0]}?" if spelt else "check its spelling, or give the set's .ts files"
        raise SpiralError(f"ucr:{name} is not a classification set of the archive; {hint}")
    try:
        load_classification(name, split="train", return_metadata=True)  # downloads the set
    except Exception as exc:  # no network, a server error, a broken download: aeon raises many kinds
        said = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise SpiralError(
            f"ucr:{name}: the set could not be fetched ({said}); download {name}_TRAIN.ts and "
            f"{name}_TEST.ts (timeseriesclassification.com) and give the files instead"
        ) from None
    found = _local(name)
    if found is None:
        raise SpiralError(
            f"ucr:{name}: aeon fetched the set, but {name}_TRAIN.ts and {name}_TEST.ts are not in "
            f"{' or '.join(str(folder) for folder in _folders())}; give the files instead"
        )
    return found
