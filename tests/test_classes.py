"""The head for K classes: one logit with binary cross-entropy for two classes, K logits with
softmax cross-entropy from three up, each sequence's loss weighted by its mask entry (0 for
padding). Both kernel families' training step (loss, right answers, every gradient) against a
float64 numpy reference and against PyTorch's nn.LSTM + nn.Linear + CrossEntropyLoss(weight=...),
on ragged lengths; the model's logits; and Trainer steps on a four-class problem."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import pytest
from gpu_helpers import GPU, _close, cl, needs_gpu
from helpers import RENDERERS, head_numpy, lstm_numpy, lstm_numpy_lengths, render
from tinygrad import Tensor
from tinygrad.uop.ops import Ops

from spiralctl.config import TrainConfig
from spiralctl.kernels.adam import FusedAdam, adam_scalars
from spiralctl.kernels.family import CPU as CPU_FAMILY
from spiralctl.kernels.family import GPU as GPU_FAMILY
from spiralctl.kernels.gpu import MAX_BLOCK
from spiralctl.kernels.layout import PackedBatch
from spiralctl.kernels.step import step_gradients
from spiralctl.model import PARAMETER_NAMES, ModelConfig, SpiralClassifier, init_parameters
from spiralctl.trainer import Trainer

# lstm_numpy's gradient names for each parameter (both biases share one gradient)
NUMPY_NAMES = dict(zip(PARAMETER_NAMES[:4], ("w_ih", "w_hh", "b", "b")))


@dataclass
class Case:
    """One training batch: sequences of their own lengths, labels, the sequences' weights (the
    mask: 0 for the padding rows at the end) and the model's parameters."""

    x: np.ndarray
    lengths: np.ndarray
    y: np.ndarray
    weights: np.ndarray
    params: dict[str, np.ndarray]

    @property
    def layout(self) -> PackedBatch:
        return PackedBatch(*self.x.shape)

    def packed(self, scalars: np.ndarray | None = None) -> np.ndarray:
        return self.layout.pack(self.x, self.y, self.weights, scalars, lengths=self.lengths)


def _case(
    batch: int,
    steps: int,
    inputs: int,
    hidden: int,
    classes: int,
    seed: int = 0,
    padding: int = 3,
    class_weights: np.ndarray | None = None,
    head_scale: float = 3.0,
) -> Case:
    """A batch with `padding` rows of weight 0 at the end (real data and labels in them, which must
    count for nothing). The sequences' weights are class_weights[y] where given, else 1, 0.5 or 2.5
    at random. The head's weights are scaled by head_scale: PyTorch's init (+-1/sqrt(H)) keeps every
    logit near 0, where a wrong softmax can still pass."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, steps + 1, size=batch)
    lengths[0] = steps
    x = np.zeros((batch, steps, inputs), dtype=np.float32)
    for b, length in enumerate(lengths):
        x[b, :length] = rng.standard_normal((length, inputs)) * 0.8
    y = rng.integers(0, classes, size=batch).astype(np.float32)
    if class_weights is None:
        weights = rng.choice(np.array([1.0, 1.0, 0.5, 2.5], dtype=np.float32), size=batch)
    else:
        weights = class_weights[y.astype(np.int64)].astype(np.float32)
    weights[batch - padding :] = 0.0
    params = init_parameters(ModelConfig(input_size=inputs, hidden=hidden, classes=classes), seed + 1)
    params["head.weight"] *= head_scale
    params["head.bias"] *= head_scale
    return Case(x, lengths, y, weights, params)


def _kernel_step(case: Case, family, device: str) -> tuple[float, float, dict[str, np.ndarray]]:
    """step_gradients on a family's kernels: (loss, right answers, each parameter's gradient read
    out of the gradient buffers through the step's own Adam `sources`)."""
    row = Tensor(case.packed()[None], device=device).realize()
    params = [Tensor(case.params[name], device=device).contiguous().realize() for name in PARAMETER_NAMES]
    result, grads, sources = step_gradients(row, params, case.layout, family)
    Tensor.realize(result, *grads)
    flat = [g.numpy().reshape(-1) for g in grads]
    gradients = {}
    for name, (g, index) in zip(PARAMETER_NAMES, sources):
        shape = case.params[name].shape
        gradients[name] = flat[g][index(np.arange(int(np.prod(shape))))].reshape(shape)
    loss, right = result.numpy()[0]
    return float(loss), float(right), gradients


def _numpy_reference(case: Case) -> tuple[float, int, dict[str, np.ndarray]]:
    """The same step in float64 numpy: each sequence run alone to its own length."""
    lstm_weights = [case.params[name] for name in PARAMETER_NAMES[:4]]
    h = lstm_numpy_lengths(case.x, case.lengths, *lstm_weights)
    p = case.params
    loss, right, _, head = head_numpy(h, p["head.weight"], p["head.bias"], case.y, case.weights)
    _, grads = lstm_numpy_lengths(case.x, case.lengths, *lstm_weights, grad_h=head["h"])
    gradients = {name: grads[short] for name, short in NUMPY_NAMES.items()}
    return loss, right, {**gradients, "head.weight": head["head.weight"], "head.bias": head["head.bias"]}


def _torch_reference(case: Case, class_weights: np.ndarray) -> tuple[float, int, dict[str, np.ndarray]]:
    """The same step in PyTorch (float64): nn.LSTM(D, H) + nn.Linear(H, rows), h at each sequence's
    own last point, and CrossEntropyLoss(weight=class_weights) over the real rows (for one logit:
    BCEWithLogitsLoss(reduction='none'), weighted and divided by the weights' sum)."""
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install '.[torch]')")
    batch, _, inputs = case.x.shape
    rows, hidden = case.params["head.weight"].shape
    lstm = torch.nn.LSTM(inputs, hidden, batch_first=True).double()
    head = torch.nn.Linear(hidden, rows).double()
    with torch.no_grad():
        for module, prefix in ((lstm, "lstm."), (head, "head.")):
            for name, parameter in module.named_parameters():
                parameter.copy_(torch.from_numpy(case.params[prefix + name].astype(np.float64)))
    real = torch.from_numpy(case.weights > 0)
    out, _ = lstm(torch.from_numpy(case.x.astype(np.float64)))
    z = head(out[torch.arange(batch), torch.from_numpy(case.lengths - 1)])[real]
    y = torch.from_numpy(case.y.astype(np.int64))[real]
    if rows == 1:
        w = torch.from_numpy(class_weights.astype(np.float64))[y]
        per_sequence = torch.nn.BCEWithLogitsLoss(reduction="none")(z[:, 0], y.double())
        loss = (w * per_sequence).sum() / w.sum()
        predicted = (z[:, 0] > 0).long()
    else:
        loss = torch.nn.CrossEntropyLoss(weight=torch.from_numpy(class_weights.astype(np.float64)))(z, y)
        predicted = z.argmax(dim=1)
    loss.backward()
    named = {f"lstm.{n}": p for n, p in lstm.named_parameters()}
    named.update({f"head.{n}": p for n, p in head.named_parameters()})
    gradients = {name: named[name].grad.numpy() for name in PARAMETER_NAMES}
    return loss.item(), int((predicted == y).sum()), gradients


def _assert_step(got: tuple, want: tuple, where: str) -> None:
    loss, right, gradients = got
    want_loss, want_right, want_gradients = want
    assert loss == pytest.approx(want_loss, rel=1e-5, abs=1e-6), where
    assert right == want_right, where
    for name in PARAMETER_NAMES:
        assert gradients[name].shape == want_gradients[name].shape, name
        _close(gradients[name], want_gradients[name], f"{where} {name}")


# (inputs D, classes K, hidden H): one input, three and twelve; two classes (one logit), three and
# nine; hidden sizes below one block of 16 rows and exactly one
SIZES = [(1, 2, 5), (3, 3, 16), (12, 9, 5), (1, 9, 16), (12, 3, 5), (3, 2, 16)]


@pytest.mark.parametrize("inputs, classes, hidden", SIZES)
def test_cpu_step_matches_numpy(inputs, classes, hidden):
    case = _case(21, 6, inputs, hidden, classes, seed=inputs + classes + hidden)
    _assert_step(_kernel_step(case, CPU_FAMILY, "CPU"), _numpy_reference(case), "cpu")


@pytest.mark.parametrize("inputs, classes, hidden", SIZES)
def test_cpu_step_matches_pytorch(inputs, classes, hidden):
    """Class weights as --class-weight balanced makes them (the mask entry of a sequence is its
    class's weight), against PyTorch's weighted CrossEntropyLoss."""
    rng = np.random.default_rng(classes)
    class_weights = rng.uniform(0.4, 2.0, size=classes).astype(np.float32)
    case = _case(32, 7, inputs, hidden, classes, seed=hidden, class_weights=class_weights)
    _assert_step(_kernel_step(case, CPU_FAMILY, "CPU"), _torch_reference(case, class_weights), "cpu")


def test_large_logits_stay_finite():
    """Logits of hundreds: exp(z) overflows float32 unless the largest logit is subtracted first."""
    for classes in (2, 5):
        case = _case(8, 3, 2, 4, classes, seed=4, padding=1)
        case.params["head.bias"] += np.linspace(-300, 300, case.params["head.bias"].size, dtype=np.float32)
        got = _kernel_step(case, CPU_FAMILY, "CPU")
        assert np.isfinite(got[0]) and got[0] > 1.0
        _assert_step(got, _numpy_reference(case), f"{classes} classes")


def test_ties_go_to_the_lowest_class():
    """Equal largest logits (a zero head): the first of them is the prediction, as np.argmax says."""
    case = _case(12, 3, 2, 4, 3, seed=6, padding=2)
    case.params["head.weight"][:] = 0.0
    case.params["head.bias"][:] = [1.0, 1.0, -1.0]
    loss, right, _ = _kernel_step(case, CPU_FAMILY, "CPU")
    assert right == int(((case.y == 0) & (case.weights > 0)).sum())
    assert loss == pytest.approx(_numpy_reference(case)[0], rel=1e-6)


def test_unit_weights_count_like_the_mask():
    """With weights 0 and 1 the loss is the mean over real rows and each real row counts once; a
    weight of 3 counts one right answer too, and weighs its loss three times."""
    case = _case(10, 4, 3, 5, 4, seed=8, padding=4)
    case.weights[:6] = 1.0
    ones = _kernel_step(case, CPU_FAMILY, "CPU")
    assert ones[0] == pytest.approx(_numpy_reference(case)[0], rel=1e-5)
    case.weights[0] = 3.0
    weighted = _kernel_step(case, CPU_FAMILY, "CPU")
    assert weighted[1] == ones[1]
    _assert_step(weighted, _numpy_reference(case), "weight 3")


# the GPU family: tinygrad's PYTHON device (tiny: it interprets every thread) and OpenCL, where a
# batch of 300 gives the head's threads two columns each, and H = 128 with nine classes gives the
# head-gradient kernel nine workgroups of 129 threads
GPU_CASES = [
    ("PYTHON", 5, 3, 3, 4, 3),
    ("PYTHON", 4, 2, 1, 3, 2),
    cl(21, 6, 12, 5, 9),
    cl(300, 4, 3, 16, 3),
    cl(40, 3, 3, 128, 9),
    cl(32, 5, 1, 16, 2),
]


@pytest.mark.parametrize("device, batch, steps, inputs, hidden, classes", GPU_CASES)
def test_gpu_step_matches_numpy_and_the_cpu_family(device, batch, steps, inputs, hidden, classes):
    case = _case(batch, steps, inputs, hidden, classes, seed=batch + classes, padding=min(3, batch - 2))
    got = _kernel_step(case, GPU_FAMILY, device)
    _assert_step(got, _numpy_reference(case), device)
    assert got[1] == _kernel_step(case, CPU_FAMILY, "CPU")[1]  # the same right answers, exactly


@functools.cache
def _head_asts(batch: int, hidden: int, classes: int) -> dict:
    """The GPU family's head kernels of a K-class step, scheduled on the CPU device and not run."""
    case = _case(batch, 3, 2, hidden, classes)
    row = Tensor(case.packed()[None]).realize()
    params = [Tensor(case.params[name]).contiguous().realize() for name in PARAMETER_NAMES]
    result, grads, _ = step_gradients(row, params, case.layout, GPU_FAMILY)
    linear = result.schedule_linear(*grads)
    calls = [call.src[0] for call in linear.toposort() if call.op is Ops.CALL and call.src[0].op is Ops.SINK]
    return {ast.arg.name: ast for ast in calls if ast.arg.name.startswith("lstm_head")}


@pytest.mark.parametrize("backend", list(RENDERERS))
def test_gpu_head_kernels_render_for_every_backend(backend):
    """Nine classes at B = 256, H = 32 for CUDA, PTX, Metal and AMD: the loss in one workgroup of
    256 threads, dL/dh_T one thread per element, the head's gradients nine workgroups of H + 1."""
    asts = _head_asts(256, 32, 9)
    launches = {}
    for name, ast in asts.items():
        source, global_size, local_size = render(ast, backend)
        assert name in source
        assert math.prod(local_size) <= MAX_BLOCK, name
        launches[name] = math.prod(global_size), math.prod(local_size)
    assert launches["lstm_head_loss_gpu"] == (1, 256)
    assert math.prod(launches["lstm_head_dh_gpu"]) == 32 * 256
    assert launches["lstm_head_weights_gpu"] == (9, 33)


@pytest.mark.parametrize("device", ["PYTHON", pytest.param(GPU, marks=needs_gpu)])
def test_adam_updates_a_head_larger_than_every_other_parameter(device):
    """H = 2, nine classes: the head's 18 weights outnumber W_hh's 16, so the GPU Adam's one thread
    per element of the largest parameter is the head's; both families' updates agree."""
    case = _case(4, 2, 1, 2, 9, seed=2, padding=1)
    updated = {}
    for family, dev in ((CPU_FAMILY, "CPU"), (GPU_FAMILY, device)):
        params = [Tensor(case.params[name], device=dev).contiguous().realize() for name in PARAMETER_NAMES]
        optimizer = FusedAdam(params, kernel=family.adam_kernel)
        row = Tensor(case.packed(adam_scalars(0.01, 1))[None], device=dev).realize()
        result, grads, sources = step_gradients(row, params, case.layout, family)
        Tensor.realize(result, *optimizer.update(grads, sources, row, offset=case.layout.scalars))
        updated[family.name] = [p.numpy() for p in params]
    for name, cpu, gpu in zip(PARAMETER_NAMES, updated["cpu"], updated["gpu"]):
        np.testing.assert_allclose(gpu, cpu, atol=1e-6, err_msg=name)
    # Adam's first step moves every weight with a nonzero gradient by about lr
    moved = np.abs(updated["cpu"][4] - case.params["head.weight"])
    assert moved.shape == (9, 2) and moved.min() > 0.005


@pytest.mark.parametrize("classes", [2, 4])
def test_model_logits_and_their_gradients(classes):
    """SpiralClassifier's logits: [B] for two classes, [B, K] from three up, by autograd (fused and
    plain recurrence) and by the packed forward kernel; the fused path's gradients as numpy's for
    the loss sum_b,k c[b, k] z[b, k] with c = the weighted cross-entropy's dL/dz."""
    case = _case(6, 4, 3, 5, classes, seed=classes, padding=1)
    case.lengths[:] = 4
    model = SpiralClassifier(ModelConfig(input_size=3, hidden=5, classes=classes), case.params, "CPU")
    p = case.params
    lstm_weights = [p[name] for name in PARAMETER_NAMES[:4]]
    h = lstm_numpy(case.x, *lstm_weights)
    expected = h @ p["head.weight"].astype(np.float64).T + p["head.bias"]
    expected = expected.reshape(-1) if classes == 2 else expected
    for impl in ("fused", "reference"):
        logits = model(Tensor(case.x), impl=impl).numpy()
        np.testing.assert_allclose(logits, expected, atol=1e-5, err_msg=impl)
    state = Tensor.zeros(2, 5, 6).contiguous()
    packed, _ = model.logits_packed(Tensor(case.packed()[None]), case.layout, state)
    np.testing.assert_allclose(packed.numpy(), expected, atol=1e-5)

    _, _, d_z, head = head_numpy(h, p["head.weight"], p["head.bias"], case.y, case.weights)
    logits = model(Tensor(case.x))
    (logits * Tensor(d_z.reshape(logits.shape).astype(np.float32))).sum().backward()
    _, grads = lstm_numpy(case.x, *lstm_weights, grad_h=head["h"])
    want = {**{name: grads[short] for name, short in NUMPY_NAMES.items()}, **head}
    for name in PARAMETER_NAMES:
        _close(model.parameters[name].grad.numpy(), want[name], name)


def test_trainer_learns_four_classes():
    """Trainer.step on a K = 4, D = 6 model: the first step reports the loss of the initial
    weights (numpy's), and the loss falls over a few steps on data whose class shows in one input."""
    batch, steps, inputs, classes = 24, 5, 6, 4
    rng = np.random.default_rng(3)
    y = np.arange(batch) % classes
    x = rng.normal(0, 0.3, (batch, steps, inputs)).astype(np.float32)
    x[np.arange(batch), :, y] += 1.5  # class c: input c high
    mask = np.ones(batch, np.float32)
    mask[-4:] = 0.0  # padding rows
    config = ModelConfig(input_size=inputs, hidden=8, classes=classes)
    weights = init_parameters(config, 0)
    model = SpiralClassifier(config, weights, "CPU")
    trainer = Trainer(model, TrainConfig(hidden=8, batch_size=batch, lr=0.05))
    results = [trainer.step(x, y, mask) for _ in range(12)]
    losses = [loss for loss, _ in results]
    h = lstm_numpy(x, *(weights[name] for name in PARAMETER_NAMES[:4]))
    first, first_right, _, _ = head_numpy(h, weights["head.weight"], weights["head.bias"], y, mask)
    assert losses[0] == pytest.approx(first, rel=1e-5)
    assert results[0][1] == first_right
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert results[-1][1] == batch - 4  # every real sequence right
    assert trainer.model.parameters["head.weight"].shape == (classes, 8)
