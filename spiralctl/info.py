"""What a spiralctl file holds: `spiralctl info`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from spiralctl.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from spiralctl.data import DATASET_FORMAT, LABELS, load_dataset
from spiralctl.files import CHECKSUM_KEY, LEGACY_CHECKSUM_KEY, read_safetensors


def _parsed(value: str) -> object:
    """Metadata values are strings; the structured ones hold JSON."""
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return parsed if isinstance(parsed, (dict, list)) else value


def describe(path: Path) -> dict:
    """Kind, format, tensors, configs and checksum status of a dataset or checkpoint file.

    The file gets every check that loading it gets; a damaged file raises SpiralError.
    """
    path = Path(path)
    tensors, metadata = read_safetensors(path)  # verifies the stored checksum
    fmt = metadata.get("format", "")
    report: dict = {
        "file": str(path),
        "bytes": path.stat().st_size,
        "format": fmt or None,
        "kind": "safetensors",
        "checksum": "verified" if {CHECKSUM_KEY, LEGACY_CHECKSUM_KEY} & set(metadata) else "none stored",
        "tensors": [
            {"name": name, "dtype": str(array.dtype), "shape": list(array.shape)}
            for name, array in tensors.items()
        ],
        "metadata": {
            k: _parsed(v) for k, v in metadata.items() if k not in (CHECKSUM_KEY, LEGACY_CHECKSUM_KEY)
        },
    }
    if fmt == DATASET_FORMAT:
        data = load_dataset(path)
        counts = np.bincount(data.y, minlength=2)
        report.update(
            kind="dataset",
            sequences=len(data),
            length=data.length,
            classes={name: int(counts[i]) for i, name in enumerate(LABELS)},
        )
    elif fmt == CHECKPOINT_FORMAT:
        checkpoint = load_checkpoint(path)
        report.update(
            kind="checkpoint",
            epoch=checkpoint.epoch,
            hidden=checkpoint.model.hidden,
            parameters=int(sum(w.size for w in checkpoint.weights.values())),
            resumable=bool(checkpoint.optimizer),
        )
    return report
