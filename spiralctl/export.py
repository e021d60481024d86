"""`spiralctl export`: a checkpoint as an ONNX model with the standard LSTM operator.

The graph: sequences [batch, time, 2] -> Transpose to [time, batch, 2] -> LSTM (hidden H) ->
last hidden state [batch, H] -> Gemm with the head -> logit [batch] -> Sigmoid -> probability
[batch]. Batch and time are free dimensions. The `onnx` package is an optional extra
(`pip install "spiralctl[onnx]"`); it is needed to write the file, not to use spiralctl.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spiralctl import __version__
from spiralctl.checkpoint import Checkpoint
from spiralctl.data import LABELS
from spiralctl.errors import SpiralError
from spiralctl.storage import atomic_output, check_output

INSTALL = 'pip install "spiralctl[onnx]"'
OPSET = 17
INPUT_NAME = "sequences"
OUTPUT_NAMES = ("probability", "logit")
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


def export_onnx(checkpoint: Checkpoint, source: str, out: Path) -> dict:
    """Write `out` (.onnx) from a checkpoint (read from `source`); returns what was written."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, h = checkpoint.weights, checkpoint.model.hidden
    initializers = {
        "W": onnx_gate_order(w["lstm.weight_ih_l0"], h)[None],  # [1, 4H, 2]
        "R": onnx_gate_order(w["lstm.weight_hh_l0"], h)[None],  # [1, 4H, H]
        "B": np.concatenate(
            [onnx_gate_order(w["lstm.bias_ih_l0"], h), onnx_gate_order(w["lstm.bias_hh_l0"], h)]
        )[None],  # [1, 8H]
        "head_weight": w["head.weight"],  # [1, H]
        "head_bias": w["head.bias"],  # [1]
        "squeeze_axes": np.array([0], dtype=np.int64),
        "flat": np.array([-1], dtype=np.int64),
    }
    nodes = [
        helper.make_node("Transpose", [INPUT_NAME], ["time_major"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["time_major", "W", "R", "B"], ["", "h_last_3d"], hidden_size=h),
        helper.make_node("Squeeze", ["h_last_3d", "squeeze_axes"], ["h_last"]),
        helper.make_node("Gemm", ["h_last", "head_weight", "head_bias"], ["logit_2d"], transB=1),
        helper.make_node("Reshape", ["logit_2d", "flat"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes,
        "spiralctl_lstm",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", "time", 2])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch"]) for name in OUTPUT_NAMES],
        [numpy_helper.from_array(np.ascontiguousarray(a), name) for name, a in initializers.items()],
    )
    model = helper.make_model(
        graph,
        producer_name="spiralctl",
        producer_version=__version__,
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string="Spiral direction classifier: probability > 0.5 means anticlockwise.",
    )
    model.ir_version = min(model.ir_version, 8)  # readable by older runtimes too
    helper.set_model_props(
        model,
        {
            "labels": ",".join(LABELS),
            "hidden": str(h),
            "epoch": str(checkpoint.epoch),
            "source": source,
        },
    )
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
        "inputs": {INPUT_NAME: ["batch", "time", 2]},
        "outputs": {name: ["batch"] for name in OUTPUT_NAMES},
    }
