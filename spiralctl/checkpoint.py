"""Checkpoints: model weights under PyTorch's names, Adam state, and the run's config, as safetensors."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from spiralctl import __version__
from spiralctl.data import LABELS, Normalization, classes_of, json_list
from spiralctl.devices import tinygrad_version
from spiralctl.errors import SpiralError
from spiralctl.model import PARAMETER_NAMES, ModelConfig
from spiralctl.storage import read_spiralctl_file, write_safetensors

CHECKPOINT_FORMAT = "spiralctl-checkpoint/1"
OPTIMIZER_SLOTS = ("exp_avg", "exp_avg_sq")
# Adam's step count and its running powers of beta1 and beta2, stored as they are for an exact resume
OPTIMIZER_SCALARS = {"step": np.int64, "b1_power": np.float32, "b2_power": np.float32}


@dataclass
class Checkpoint:
    model: ModelConfig
    weights: dict[str, np.ndarray]
    epoch: int = 0
    train_config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    data_fingerprint: str = ""
    # Adam's moments per parameter ("<name>.exp_avg", "<name>.exp_avg_sq") and "step"
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    classes: list[str] = field(default_factory=lambda: list(LABELS))  # K names, in label order
    features: list[str] | None = None  # D names, where the data named them
    # per-feature mean and standard deviation of the training split, applied to every input
    # before the model sees it (None: inputs go in as they are)
    normalization: Normalization | None = None


def model_fields(model: ModelConfig) -> dict:
    """The model config as the checkpoint stores it: without `classes` for two, so that the
    releases before K classes (which know no such field) still read a two-class checkpoint."""
    fields = asdict(model)
    if model.classes == 2:
        del fields["classes"]
    return fields


def normalization_fields(normalization: Normalization) -> dict:
    """Normalisation statistics as JSON: {"mean": [D numbers], "std": [D numbers]}."""
    mean, std = normalization
    return {"mean": mean.tolist(), "std": std.tolist()}


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    tensors = {name: checkpoint.weights[name].astype(np.float32) for name in PARAMETER_NAMES}
    tensors.update({f"optimizer.{k}": v for k, v in checkpoint.optimizer.items()})
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "model": json.dumps(model_fields(checkpoint.model), sort_keys=True),
        "train": json.dumps(checkpoint.train_config, sort_keys=True),
        "epoch": str(checkpoint.epoch),
        "metrics": json.dumps(checkpoint.metrics, sort_keys=True),
        "data_fingerprint": checkpoint.data_fingerprint,
        "labels": json.dumps(list(checkpoint.classes)),
        "spiralctl_version": __version__,
        "tinygrad_version": tinygrad_version(),
    }
    if checkpoint.features is not None:
        metadata["features"] = json.dumps(list(checkpoint.features))
    if checkpoint.normalization is not None:
        metadata["normalization"] = json.dumps(normalization_fields(checkpoint.normalization))
    write_safetensors(path, tensors, metadata)


def _normalization(path: Path, metadata: dict[str, str], inputs: int) -> Normalization | None:
    """The checkpoint's normalisation: {"mean": [D numbers], "std": [D positive numbers]}."""
    if "normalization" not in metadata:
        return None
    value = _json_field(path, metadata, "normalization", dict)
    try:
        mean = np.array(value["mean"], dtype=np.float32)
        std = np.array(value["std"], dtype=np.float32)
    except (KeyError, TypeError, ValueError):
        mean = std = np.zeros(0, dtype=np.float32)
    if (
        mean.shape != (inputs,)
        or std.shape != (inputs,)
        or not np.isfinite([mean, std]).all()
        or (std <= 0).any()
    ):
        raise SpiralError(
            f"{path}: checkpoint normalization must hold {inputs} means and {inputs} positive standard "
            "deviations; the file is damaged"
        )
    return mean, std


def _json_field(path: Path, metadata: dict[str, str], key: str, kind: type):
    try:
        value = json.loads(metadata[key])
    except KeyError:
        raise SpiralError(f"{path}: checkpoint metadata has no {key!r}; the file is damaged") from None
    except ValueError:
        raise SpiralError(f"{path}: checkpoint metadata {key!r} is not valid JSON") from None
    if not isinstance(value, kind):
        raise SpiralError(f"{path}: checkpoint metadata {key!r} has the wrong type")
    return value


def load_checkpoint(path: Path) -> Checkpoint:
    """Load and check a checkpoint; rebuilds the model config from the file alone."""
    path = Path(path)
    tensors, metadata = read_spiralctl_file(path, CHECKPOINT_FORMAT)
    model_fields = _json_field(path, metadata, "model", dict)
    try:
        model = ModelConfig(**model_fields)
        sizes = (model.hidden, model.input_size, model.classes)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in sizes) or min(sizes[:2]) < 1:
            raise TypeError
        if model.classes < 2:
            raise TypeError
    except TypeError:
        raise SpiralError(f"{path}: checkpoint model config {model_fields} is not valid") from None
    classes = classes_of(metadata)
    if classes is None or len(classes) != model.classes:
        raise SpiralError(
            f"{path}: checkpoint metadata 'labels' must name the model's {model.classes} classes; "
            "the file is damaged: use another checkpoint of the run"
        )
    features = json_list(metadata.get("features")) if "features" in metadata else None
    if "features" in metadata and (features is None or len(features) != model.input_size):
        raise SpiralError(
            f"{path}: checkpoint metadata 'features' must name {model.input_size} features; the file is "
            "damaged: use another checkpoint of the run"
        )
    try:
        epoch = int(metadata.get("epoch", "0"))
    except ValueError:
        raise SpiralError(f"{path}: checkpoint epoch {metadata['epoch']!r} is not a number") from None

    expected = model.shapes()
    missing = [name for name in PARAMETER_NAMES if name not in tensors]
    if missing:
        raise SpiralError(f"{path}: checkpoint lacks tensors {', '.join(missing)}")
    weights = {}
    for name, shape in expected.items():
        array = tensors[name]
        if array.dtype != np.float32 or array.shape != shape:
            raise SpiralError(
                f"{path}: tensor {name} is {array.dtype}{list(array.shape)} but the model config "
                f"(hidden {model.hidden}) needs float32{list(shape)}"
            )
        if not np.isfinite(array).all():
            raise SpiralError(
                f"{path}: tensor {name} holds NaN or infinite values; use an earlier checkpoint"
            )
        weights[name] = array
    optimizer = {k[len("optimizer.") :]: v for k, v in tensors.items() if k.startswith("optimizer.")}
    unknown = set(tensors) - set(PARAMETER_NAMES) - {f"optimizer.{k}" for k in optimizer}
    if unknown:
        raise SpiralError(f"{path}: unexpected tensors {', '.join(sorted(unknown))}")
    for key, value in optimizer.items():
        if key in OPTIMIZER_SCALARS:
            if value.dtype != OPTIMIZER_SCALARS[key] or value.size != 1:
                raise SpiralError(
                    f"{path}: optimizer tensor {key} must hold one {OPTIMIZER_SCALARS[key].__name__}"
                )
            continue
        name, _, slot = key.rpartition(".")
        if name not in expected or slot not in OPTIMIZER_SLOTS or value.shape != expected[name]:
            raise SpiralError(f"{path}: optimizer tensor {key} does not match the model")
    return Checkpoint(
        model=model,
        weights=weights,
        epoch=epoch,
        train_config=_json_field(path, metadata, "train", dict),
        metrics=_json_field(path, metadata, "metrics", dict),
        data_fingerprint=metadata.get("data_fingerprint", ""),
        optimizer=optimizer,
        classes=classes,
        features=features,
        normalization=_normalization(path, metadata, model.input_size),
    )
