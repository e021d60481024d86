"""`spiralctl export`: a checkpoint as an ONNX model with the standard LSTM operator.

The graph: raw sequences [batch, time, D] -> (the checkpoint's normalisation: Sub the training
split's per-feature mean, Div by its std) -> Transpose to [time, batch, D] -> LSTM (hidden H) ->
last hidden state [batch, H] -> Gemm with the head -> logits [batch, K] -> Softmax ->
probabilities [batch, K] (every class's, in label order). A two-class model's single logit
becomes the two columns [-z/2, z/2], whose softmax is [1 - sigmoid(z), sigmoid(z)], and such a
model also has the outputs of the releases before K classes: `logit` [batch] (z itself) and
`probability` [batch] (sigmoid(z), the second class's). Batch and time are free dimensions. The
`onnx` package is an optional extra (`pip install "spiralctl[onnx]"`); it is needed to write the
file, not to use spiralctl.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from spiralctl import __version__
from spiralctl.checkpoint import Checkpoint
from spiralctl.errors import SpiralError
from spiralctl.storage import atomic_output, check_output

INSTALL = 'pip install "spiralctl[onnx]"'
OPSET = 17
INPUT_NAME = "sequences"
OUTPUT_NAMES = ("probabilities", "logits")
TWO_CLASS_OUTPUTS = ("probability", "logit")  # [batch]: the second class's probability, and z
# PyTorch stacks the gates as input, forget, cell, output; ONNX as input, output, forget, cell
_TORCH_TO_ONNX_GATES = (0, 3, 1, 2)


def onnx_gate_order(array: np.ndarray, hidden: int) -> np.ndarray:
    """Rows of a PyTorch LSTM weight or bias, reordered into ONNX's gate order."""
    blocks = [array[g * hidden : (g + 1) * hidden] for g in range(4)]
    return np.concatenate([blocks[g] for g in _TORCH_TO_ONNX_GATES])


def check_onnx_output(out: Path, force: bool = False) -> None:
    """Refuse a bad output name, an existing file (unless `force`) and a missing onnx package."""
    if out.suffix.lower() != ".onnx":
        raise SpiralError(f"{out}: give the ONNX file a name ending in .onnx")
    check_output(out, force, option=None)
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise SpiralError(f"ONNX export needs the onnx package; install it with: {INSTALL}") from None


def _head(checkpoint: Checkpoint) -> tuple[np.ndarray, np.ndarray]:
    """The head as K rows: a two-class model's one logit z as the pair (-z/2, z/2)."""
    weight, bias = checkpoint.weights["head.weight"], checkpoint.weights["head.bias"]
    if checkpoint.model.head_rows == 1:
        weight, bias = np.concatenate([-weight / 2, weight / 2]), np.concatenate([-bias / 2, bias / 2])
    return weight.astype(np.float32), bias.astype(np.float32)


def export_onnx(checkpoint: Checkpoint, source: str, out: Path) -> dict:
    """Write `out` (.onnx) from a checkpoint (read from `source`); returns what was written."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, h, d = checkpoint.weights, checkpoint.model.hidden, checkpoint.model.input_size
    k = checkpoint.model.classes
    head_weight, head_bias = _head(checkpoint)
    initializers = {
        "W": onnx_gate_order(w["lstm.weight_ih_l0"], h)[None],  # [1, 4H, D]
        "R": onnx_gate_order(w["lstm.weight_hh_l0"], h)[None],  # [1, 4H, H]
        "B": np.concatenate(
            [onnx_gate_order(w["lstm.bias_ih_l0"], h), onnx_gate_order(w["lstm.bias_hh_l0"], h)]
        )[None],  # [1, 8H]
        "head_weight": head_weight,  # [K, H]
        "head_bias": head_bias,  # [K]
        "squeeze_axes": np.array([0], dtype=np.int64),
    }
    nodes = []
    inputs = INPUT_NAME
    if checkpoint.normalization is not None:
        mean, std = checkpoint.normalization
        initializers.update(mean=mean.astype(np.float32), std=std.astype(np.float32))
        nodes += [
            helper.make_node("Sub", [INPUT_NAME, "mean"], ["centred"]),
            helper.make_node("Div", ["centred", "std"], ["normalized"]),
        ]
        inputs = "normalized"
    nodes += [
        helper.make_node("Transpose", [inputs], ["time_major"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["time_major", "W", "R", "B"], ["", "h_last_3d"], hidden_size=h),
        helper.make_node("Squeeze", ["h_last_3d", "squeeze_axes"], ["h_last"]),
        helper.make_node("Gemm", ["h_last", "head_weight", "head_bias"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    outputs = {name: ["batch", k] for name in OUTPUT_NAMES}
    if checkpoint.model.head_rows == 1:
        initializers.update(logit_weight=w["head.weight"], logit_bias=w["head.bias"])
        initializers["flat"] = np.array([-1], dtype=np.int64)
        nodes += [
            helper.make_node("Gemm", ["h_last", "logit_weight", "logit_bias"], ["logit_2d"], transB=1),
            helper.make_node("Reshape", ["logit_2d", "flat"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["probability"]),
        ]
        outputs.update({name: ["batch"] for name in TWO_CLASS_OUTPUTS})
    graph = helper.make_graph(
        nodes,
        "spiralctl_lstm",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", "time", d])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs.items()],
        [numpy_helper.from_array(np.ascontiguousarray(a), name) for name, a in initializers.items()],
    )
    model = helper.make_model(
        graph,
        producer_name="spiralctl",
        producer_version=__version__,
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string=f"Sequence classifier: probabilities of the classes {', '.join(checkpoint.classes)}, "
        "in that order, from raw (unnormalised) sequences.",
    )
    model.ir_version = min(model.ir_version, 8)  # readable by older runtimes too
    props = {
        "labels": json.dumps(checkpoint.classes),
        "hidden": str(h),
        "epoch": str(checkpoint.epoch),
        "source": source,
    }
    if checkpoint.features is not None:
        props["features"] = json.dumps(checkpoint.features)
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    with atomic_output(out) as handle:
        handle.write(data)
    return {
        "checkpoint": source,
        "file": str(out),
        "bytes": len(data),
        "opset": OPSET,
        "hidden": h,
        "classes": checkpoint.classes,
        "normalized": checkpoint.normalization is not None,
        "inputs": {INPUT_NAME: ["batch", "time", d]},
        "outputs": outputs,
    }
